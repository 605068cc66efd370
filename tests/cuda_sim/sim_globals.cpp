// Globals of the simulator (fake/cuda_runtime.h).
#include "cuda_runtime.h"
thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
thread_local sim::Warp* sim::warp;
thread_local std::barrier<>* sim::block_barrier;
std::vector<unsigned char> sim::dyn_smem;
