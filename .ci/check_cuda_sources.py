"""Compile every CUDA source exactly as `pip install` would on a GPU machine, with no GPU:
each csrc/cuda/*.cu by nvcc -c with torch's own CUDAExtension flags (COMMON_NVCC_FLAGS: no implicit
half/bfloat16 conversions or operators) plus setup.py's, warnings as errors: once whole (kernels,
launcher and the op's torch glue block) against torch's headers, and once with -DNHL_KERNELS_ONLY
and no torch include path at all, so the kernels and launchers stay torch-free (the form
tests/cuda_sim builds). Any C++ glue left in csrc/cuda/*.cpp is syntax-checked against torch's
headers and the toolkit's. A CPU-only torch still ships the ATen/cuda and c10/cuda headers.

    python .ci/check_cuda_sources.py [--arch 90]      (default: setup.py's sm_80 + sm_90)
"""
import argparse
import glob
import os
import runpy
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

import torch.utils.cpp_extension as cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
build = runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="nhl_setup_flags")  # not __main__: no setup()


# The CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h (generated at torch's build; it only sets export
# macros), hence C10_CUDA_NO_CMAKE_CONFIGURE_FILE. The C++ standard is setup.py's cxx_standard(), the one
# torch's headers are written in (in nvcc_flags()), so no C++20-extension warning needs silencing.
TORCH_HEADER_FLAGS = ["-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-diag-suppress=3306"]


def nvcc_command(src, obj, home, archs, kernels_only=False):
    """What torch's BuildExtension runs for `src` (unix_cuda_flags), with -Werror on top; kernels_only:
    the file without its glue block (-DNHL_KERNELS_ONLY) and without torch's include paths."""
    flags = list(cpp_extension.COMMON_NVCC_FLAGS) + ["--compiler-options", "-fPIC"] + build["nvcc_flags"]()
    if archs:
        flags = [f for f in flags if not f.startswith("-gencode")] + [
            f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    if kernels_only:
        includes, extra = [os.path.join(ROOT, "csrc")], ["-DNHL_KERNELS_ONLY"]
    else:
        includes, extra = cpp_extension.include_paths() + [os.path.join(ROOT, "csrc")], TORCH_HEADER_FLAGS
    return ([os.path.join(home, "bin", "nvcc"), "-c", src, "-o", obj, "-DNHL_WITH_CUDA=1",
             "-DTORCH_EXTENSION_NAME=_C", "-Werror=all-warnings"] + extra + [f"-I{p}" for p in includes] + flags)


def glue_command(src, home):
    includes = cpp_extension.include_paths() + [f"{home}/include", sysconfig.get_paths()["include"],
                                                os.path.join(ROOT, "csrc")]
    return (["c++", build["cxx_standard"](), "-fsyntax-only", "-Wall", "-Werror", "-DNHL_WITH_CUDA=1",
             "-DTORCH_EXTENSION_NAME=_C", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"] + [f"-I{p}" for p in includes] + [src])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="compute capability digits (90); repeatable")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    home = build["cuda_home"]()
    if home is None:
        print("NOTICE: no CUDA toolkit found (nvcc, CUDA_HOME): skipping the CUDA source check")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cus = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        obj = lambda src, tag: os.path.join(tmp, os.path.basename(src) + tag + ".o")
        jobs = [(src, "", nvcc_command(src, obj(src, ""), home, args.arch)) for src in cus]
        # the torch-free form: its device code is the same as above, so one architecture suffices
        one_arch = args.arch[-1:] if args.arch else ["90"]
        jobs += [(src, " (NHL_KERNELS_ONLY)", nvcc_command(src, obj(src, ".k"), home, one_arch, kernels_only=True))
                 for src in cus]
        jobs += [(src, " (glue)", glue_command(src, home))
                 for src in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))]
        print("nvcc flags:", " ".join(jobs[0][2][jobs[0][2].index("-Werror=all-warnings"):]), flush=True)
        run = lambda job: (job[0], job[1], subprocess.run(job[2], capture_output=True, text=True))
        failed = 0
        with ThreadPoolExecutor(args.jobs) as pool:
            for src, form, res in pool.map(run, jobs):
                name = os.path.relpath(src, ROOT) + form
                print(f"{'ok  ' if res.returncode == 0 else 'FAIL'} {name}", flush=True)
                if res.returncode:
                    failed += 1
                    print(res.stdout + res.stderr)
    print(f"{len(jobs) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
