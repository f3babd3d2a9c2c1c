#!/usr/bin/env bash
# Usage: OUT=DIR BAMBA=path/to/bamba COMMIT=REV [MAMBA_SSM=DIR] scripts/hf_transformers_gpu.sh
# On a CUDA machine, one call: transformers' BambaForCausalLM (scripts/bench_hf_transformers.py) and
# `bamba bench` (cuda and cuda-unfused backends) on the Bamba-9B shape with random bf16 weights, batch 1:
# pp512 and tg128. transformers runs its torch code, and again with mamba_ssm's Triton kernels when MAMBA_SSM
# names a directory holding the `mamba_ssm` package of the mamba-ssm sdist (its compiled selective-scan
# extension, which Bamba does not call, replaced by an empty `selective_scan_cuda.py` beside it; causal_conv1d
# is a compiled extension only, so the conv stays torch). Records go to $OUT (hf-MODE.jsonl,
# bamba-BACKEND.jsonl, their logs) with their summary, hf-transformers-gpu.json.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HF_HUB_OFFLINE=1
B=${BAMBA:-target/release/bamba}
config=tests/configs/bamba-9b.json

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "$gpu"
hf() { # mode, extra PYTHONPATH
  PYTHONPATH=$2 timeout 240 python3 scripts/bench_hf_transformers.py $config --pp 512 --tg 128 --reps 3 \
    >"$OUT/hf-$1.jsonl" 2>"$OUT/hf-$1.err"
  echo "transformers $1 rc=$?"; grep -h "falling back\|Error" "$OUT/hf-$1.err" | cut -c1-160 | head -4
}
hf torch ""
[ -n "${MAMBA_SSM:-}" ] && hf mamba_ssm "$MAMBA_SSM"
for backend in cuda cuda-unfused; do
  timeout 120 "$B" bench --config $config -t pp512,tg128 -b 1 -r 3 --backend $backend --json \
    >"$OUT/bamba-$backend.jsonl" 2>"$OUT/bamba-$backend.err"
  echo "bamba $backend rc=$?"
done
python3 - "$OUT" "$gpu" "${COMMIT:-unknown}" <<'PY'
import json, pathlib, sys
out, gpu, commit = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def records(name):
    path = out / name
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
summary = {"machine": gpu, "commit": commit, "command": "scripts/hf_transformers_gpu.sh",
           "model": "bamba-9b shape (tests/configs/bamba-9b.json), random bf16 weights, batch 1",
           "transformers": {}, "bamba": {}, "bamba_over_transformers": {}}
for mode in ("torch", "mamba_ssm"):
    rows = records(f"hf-{mode}.jsonl")
    if rows:
        versions = {k: rows[0][k] for k in ("transformers", "torch", "mamba_ssm", "causal_conv1d")}
        summary["transformers"][mode] = {"versions": versions, **{r["test"]: round(r["tokens_per_s"], 2) for r in rows}}
for backend in ("cuda", "cuda-unfused"):
    rows = {r["test"]: r["tokens_per_s"] for r in records(f"bamba-{backend}.jsonl") if "tokens_per_s" in r}
    summary["bamba"][backend] = {t: round(v, 2) for t, v in rows.items()}
# each test: bamba's faster backend over transformers' faster mode
for test in ("pp512", "tg128"):
    ours = max((b.get(test, 0) for b in summary["bamba"].values()), default=0)
    theirs = max((m.get(test, 0) for m in summary["transformers"].values()), default=0)
    if ours and theirs:
        summary["bamba_over_transformers"][test] = round(ours / theirs, 2)
(out / "hf-transformers-gpu.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
