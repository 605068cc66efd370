#!/usr/bin/env bash
# Build the real CUDA extension on a machine with no GPU, as a GPU user's `pip install` would:
# the CUDA-enabled torch wheel (several GB, in a venv of its own), every .cu compiled with torch's
# real flags and linked against its CUDA libraries, then `import nhl_fast` must list the cuda
# backend. About 10 minutes on 2 cores (sm_90 only), so not part of .ci/run (which compiles the
# same sources with the same flags, .ci/check_cuda_sources.py, without linking): run it before
# changing csrc/cuda or the build.
#   bash .ci/build_cuda_extension.sh [VENV_DIR]     (default: a venv in the temporary folder, kept for reuse)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-$(python -c "import tempfile; print(tempfile.gettempdir())")/nhl-cuda-venv}"
[ -x "$venv/bin/python" ] || python -m venv "$venv"
# --isolated: the plain CUDA torch wheel from the package index, not a CPU wheel that pip's
# configuration may point at
"$venv/bin/pip" install --isolated -q "torch==2.13.0" numpy setuptools wheel ninja
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard | tar cf - -T - | tar xf - -C "$work"   # a clean copy: no CPU build mixed in
cd "$work"
NHL_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
  "$venv/bin/pip" install --no-build-isolation --no-deps -q -e .
"$venv/bin/python" - <<'PY'
import nhl_fast
info = nhl_fast.build_info()
print(info)
assert "cuda" in info["backends"], "the CUDA backend did not register"
print("CUDA extension: built, linked and registered")
PY
