"""Rewrites a .cu file for the host simulator: <<<>>> launches -> sim::launch, __shared__ arrays ->
statics (blocks run one at a time), dynamic shared memory -> the per-block buffer; then applies
OLD=>NEW replacements given as arguments (used to shrink tuning constants)."""
import re, sys
src = open(sys.argv[1]).read()
src = src.replace("extern __shared__ unsigned smem[];", "unsigned* smem = reinterpret_cast<unsigned*>(sim::dyn_smem.data());")
src = re.sub(r"__shared__ (\w+) (\w+)\[", r"static \1 \2[", src)  # blocks run one at a time
src = re.sub(r"([\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);", lambda m: f"sim::launch({m.group(2)}, {m.group(1)}, {m.group(3)});", src, flags=re.S)
for a, b in [a.split("=>", 1) for a in sys.argv[2:]]:
    assert a in src, a
    src = src.replace(a, b)
print(src)
