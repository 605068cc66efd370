"""Compile-check (syntax + types) csrc/cuda/ops_cuda.cpp against torch's headers and the CUDA
toolkit's, so the tensor glue of the CUDA backend cannot rot on machines with no GPU.
The CPU torch wheel ships ATen/cuda and c10/cuda headers; the toolkit gives cuda_runtime.h."""
import os
import shutil
import subprocess
import sys
import sysconfig

from torch.utils.cpp_extension import CUDA_HOME, include_paths


def _toolkit():
    """torch's CUDA_HOME, which a CPU-only torch leaves None: then CUDA_HOME/CUDA_PATH, /usr/local/cuda
    or the toolkit of the nvcc on PATH (one with include/cuda_runtime.h)."""
    nvcc = shutil.which("nvcc")
    candidates = [CUDA_HOME, os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates += [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    return next((c for c in candidates if c and os.path.isfile(f"{c}/include/cuda_runtime.h")), None)


CUDA_HOME = _toolkit()
if CUDA_HOME is None:
    print("NOTICE: no CUDA toolkit found: skipping the CUDA glue check")
    sys.exit(0)
includes = include_paths() + [f"{CUDA_HOME}/include", sysconfig.get_paths()["include"], "csrc"]
# The CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h (generated at torch's build; it only sets
# export macros), hence C10_CUDA_NO_CMAKE_CONFIGURE_FILE.
cmd = ["c++", "-std=c++17", "-fsyntax-only", "-DNHL_WITH_CUDA=1", "-DTORCH_EXTENSION_NAME=_C",
       "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"]
cmd += [f"-I{p}" for p in includes] + ["csrc/cuda/ops_cuda.cpp"]
print(" ".join(cmd[:7]), "... csrc/cuda/ops_cuda.cpp", flush=True)
sys.exit(subprocess.call(cmd))
