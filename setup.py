"""Build the nhl_fast C++ (always) and CUDA (when available) extension.

Install torch first, then: pip install --no-build-isolation -e .
  NHL_WITH_CUDA=0|1   force the CUDA extension off/on (default: on when torch has CUDA and nvcc exists)
  NHL_MARCH=...       -march for the CPU kernels (default x86-64-v3 on x86_64 with AVX2, else the compiler's)
  MAX_JOBS=N          parallel compile jobs (ninja)
"""
import glob
import os
import platform

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _with_cuda() -> bool:
    forced = os.environ.get("NHL_WITH_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False


def _march_flags():
    march = os.environ.get("NHL_MARCH")
    if march:
        return [f"-march={march}"]
    if platform.machine() in ("x86_64", "AMD64"):
        # popcnt is the hot instruction; v2 has it on every x86-64 CPU since 2009.
        return ["-march=x86-64-v3" if _cpu_has_avx2() else "-march=x86-64-v2"]
    return []


def _extension():
    with_cuda = _with_cuda()
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = ["csrc/nhl_ops.cpp"] + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-g0", "-std=c++17", "-fopenmp", "-fvisibility=hidden"] + _march_flags()
    macros = []
    kwargs = dict(
        name="nhl_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
        define_macros=macros,
    )
    if with_cuda:
        sources += rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        if arch is None:
            nvcc += ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        macros.append(("NHL_WITH_CUDA", "1"))
        return CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    packages=["nhl_fast", "nhl_fast.losses", "nhl_fast.kernels"],
    package_dir={"nhl_fast.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
)
