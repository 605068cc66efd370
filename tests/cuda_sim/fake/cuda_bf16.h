#pragma once
// bfloat16 is not simulated: just the symbols the sources use, so they compile (the drivers
// never launch a bfloat16 kernel).
struct __nv_bfloat16 { unsigned short x; };
inline float __bfloat162float(__nv_bfloat16) { return 0.f; }
inline __nv_bfloat16 __float2bfloat16_rn(float) { return __nv_bfloat16{0}; }
