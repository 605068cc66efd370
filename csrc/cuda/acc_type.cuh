// Explicit conversions between a code/projection element type and its accumulator type.
// torch builds every .cu with -D__CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__
// (and the _OPERATORS__ pair), so __half and __nv_bfloat16 have no implicit float conversions:
// every kernel that touches them goes through to_acc / from_acc.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace nhl {
namespace cuda {

// float for every type but double (fp16/bf16 arithmetic happens in float, as torch's does).
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

template <typename T>
__device__ __forceinline__ typename AccType<T>::type to_acc(T v) { return static_cast<typename AccType<T>::type>(v); }
template <>
__device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round-to-nearest-even, as torch's own casts.
template <typename T>
__device__ __forceinline__ T from_acc(typename AccType<T>::type v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace cuda
}  // namespace nhl
