"""Rewrites a .cu file for the host simulator (fake/cuda_runtime.h): <<<>>> launches -> sim::launch,
dynamic shared memory (extern __shared__ T name[];) -> the block's buffer sim::dyn_smem (static
__shared__ variables need nothing: the fake header makes them per-worker statics);
then applies OLD=>NEW replacements given as arguments (used to shrink tuning constants).
Usage: transform.py FILE [OLD=>NEW ...] > out.cpp"""
import re, sys
src = open(sys.argv[1]).read()
align = r"(?:__align__\(\d+\)\s+)?"
src = re.sub(rf"extern\s+__shared__\s+{align}((?:[\w:]+\s+)+?){align}(\w+)\[\];",
             lambda m: f"{m[1].strip()}* {m[2]} = reinterpret_cast<{m[1].strip()}*>(sim::dyn_smem.data());", src)
src = re.sub(r"([\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);", lambda m: f"sim::launch({m.group(2)}, {m.group(1)}, {m.group(3)});", src, flags=re.S)
for a, b in [a.split("=>", 1) for a in sys.argv[2:]]:
    assert a in src, f"{sys.argv[1]}: {a!r} not found"
    src = src.replace(a, b)
print(f'#line 1 "{sys.argv[1]}"')  # diagnostics point at the real source
print(src)
