#!/usr/bin/env python3
"""The CUDA source CubeCL generated for one kernel, its ptxas resource use and an instruction count of
its SASS, from a CubeCL compilation log (run any binary with CUBECL_DEBUG_LOG=FILE first).

    python3 scripts/kernel_sass.py LOG NAME OUT_DIR     (needs nvcc and cuobjdump; sm_90a)

Writes OUT_DIR/NAME.cu, NAME.ptxas.txt (registers, spills) and NAME.sass.txt, and prints the
ptxas lines and the most frequent SASS opcodes.
"""
import collections
import os
import re
import subprocess
import sys

log, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)
text = open(log, errors="replace").read()
# The logger writes each kernel as [START_KERNEL_COMPILATION] name: ... source: ```cpp ... ``` [END_...].
blocks = re.findall(r"\[START_KERNEL_COMPILATION\](.*?)\[END_KERNEL_COMPILATION\]", text, re.S)
source = None
for block in blocks:
    code = re.search(r"```\w*\n(.*)```", block, re.S)
    if code and name in block:
        source = code.group(1)
        break
if source is None:
    sys.exit(f"no kernel named like {name} among {len(blocks)} in {log}")
cu = os.path.join(out, f"{name}.cu")
open(cu, "w").write(source + "\n")
cubin = os.path.join(out, f"{name}.cubin")
nvcc = ["/usr/local/cuda/bin/nvcc", "-cubin", "-arch=sm_90a", "-O3", "-I/usr/local/cuda/include/cccl",
        "-Xptxas", "-v", "-o", cubin, cu]
r = subprocess.run(nvcc, capture_output=True, text=True)
open(os.path.join(out, f"{name}.ptxas.txt"), "w").write(r.stdout + r.stderr)
print("\n".join(l for l in (r.stdout + r.stderr).splitlines() if "registers" in l or "spill" in l or "error" in l)[:3000])
if r.returncode != 0:
    sys.exit(f"nvcc rc={r.returncode}")
sass = subprocess.run(["/usr/local/cuda/bin/cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
open(os.path.join(out, f"{name}.sass.txt"), "w").write(sass)
ops = collections.Counter(m.group(1).split(".")[0] for m in re.finditer(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass))
print(f"SASS instructions: {sum(ops.values())}")
print(", ".join(f"{op} {n}" for op, n in ops.most_common(25)))
