"""Build the nhl_fast C++ (always) and CUDA (when available) extension.

Install torch first, then: pip install --no-build-isolation -e .
  NHL_WITH_CUDA=0|1   force the CUDA extension off/on (default: on when torch has CUDA and nvcc exists)
  NHL_MARCH=...       -march for the CPU kernels (default x86-64-v3 on x86_64 with AVX2, else the compiler's)
  MAX_JOBS=N          parallel compile jobs (ninja)
  CUDA_HOME=...       the CUDA toolkit (default: torch's guess, else the real toolkit behind the nvcc on PATH)

.ci/check_cuda_sources.py imports this file (not as __main__) to compile every .cu with the exact
flags this build gives nvcc.
"""
import glob
import os
import platform
import shutil

from setuptools import setup

import torch
import torch.utils.cpp_extension as cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def cxx_standard() -> str:
    """The C++ standard of torch's headers: C++20 from torch 2.13 (its headers use C++20 constructs; 2.14
    refuses anything older), C++17 before. Passed explicitly to the host compiler and nvcc alike (torch adds
    its own default only when no -std is given), so .ci/check_cuda_sources.py can use the same flag."""
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return "-std=c++20" if (major, minor) >= (2, 13) else "-std=c++17"


# No --use_fast_math: it makes tanh tanh.approx.f32 (~5e-4 relative error) and flushes subnormals to
# zero (a tiny positive code would pack as 0 on CUDA and 1 on the CPU).
NVCC_FLAGS = ["-O3", cxx_standard(), "-lineinfo"]
DEFAULT_CUDA_ARCHS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]


def _is_toolkit(path) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def cuda_home():
    """The CUDA toolkit root. torch guesses it from the `nvcc` on PATH, which on some machines is a
    wrapper script outside the toolkit (then cuda_runtime.h is not found): fall back to where the
    nvcc binary really lives (`nvcc --version` runs through any wrapper) and to /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper `exec /opt/cuda-X/bin/nvcc "$@"`: read the path it execs
            with open(nvcc, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):
                candidates += [os.path.dirname(os.path.dirname(w.decode())) for w in head.split()
                               if w.endswith(b"/bin/nvcc") and w.startswith(b"/")]
        except OSError:
            pass
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if _is_toolkit(c)), None)


def _with_cuda() -> bool:
    forced = os.environ.get("NHL_WITH_CUDA")
    if forced is not None:
        if forced == "1" and cuda_home() is None:
            raise RuntimeError("NHL_WITH_CUDA=1 but no CUDA toolkit was found (no include/cuda_runtime.h under "
                               "CUDA_HOME, torch's guess or the nvcc on PATH): set CUDA_HOME to the toolkit root")
        return forced == "1"
    return torch.version.cuda is not None and cuda_home() is not None


def nvcc_flags():
    """Our nvcc flags (torch's CUDAExtension adds its own, COMMON_NVCC_FLAGS, in front)."""
    return NVCC_FLAGS + (DEFAULT_CUDA_ARCHS if os.environ.get("TORCH_CUDA_ARCH_LIST") is None else [])


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
    cxx = ["-O3", "-g0", cxx_standard(), "-fopenmp", "-fvisibility=hidden"] + _march_flags()
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
        home = cuda_home()
        # torch's CUDAExtension reads its module-level CUDA_HOME for include/library paths and nvcc
        os.environ["CUDA_HOME"] = cpp_extension.CUDA_HOME = home
        macros.append(("NHL_WITH_CUDA", "1"))
        return CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags()}, **kwargs)
    return CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)


if __name__ == "__main__":  # setuptools runs this file as __main__; the CI flag check imports it
    setup(
        packages=["nhl_fast", "nhl_fast.app", "nhl_fast.losses", "nhl_fast.kernels"],
        package_dir={"nhl_fast.kernels": "kernels"},
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension},
    )
