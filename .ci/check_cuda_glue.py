"""Compile-check (syntax + types) csrc/cuda/ops_cuda.cpp against torch's headers and the CUDA
toolkit's, so the tensor glue of the CUDA backend cannot rot on machines with no GPU.
The CPU torch wheel ships ATen/cuda and c10/cuda headers; the toolkit gives cuda_runtime.h."""
import subprocess
import sys
import sysconfig

from torch.utils.cpp_extension import CUDA_HOME, include_paths

if CUDA_HOME is None:
    print("NOTICE: no CUDA toolkit found: skipping the CUDA glue check")
    sys.exit(0)
includes = include_paths() + [f"{CUDA_HOME}/include", sysconfig.get_paths()["include"], "csrc"]
cmd = ["c++", "-std=c++17", "-fsyntax-only", "-DNHL_WITH_CUDA=1", "-DTORCH_EXTENSION_NAME=_C"]
cmd += [f"-I{p}" for p in includes] + ["csrc/cuda/ops_cuda.cpp"]
print(" ".join(cmd[:6]), "... csrc/cuda/ops_cuda.cpp", flush=True)
sys.exit(subprocess.call(cmd))
