#!/usr/bin/env bash
# The end-to-end run on the H200 (benches/results/README.md), one call of at most 10 minutes: CUDA tests of
# the decode kernels, `bamba bench` on the Bamba-9B and Llama-8B shapes (random bf16 weights, one process
# per shape and batch), the criterion GEMV/GEMM/attention benches, and the torch references, all in one
# session. Expects in .gpu/ the gzipped, stripped binaries `bamba` (`-p bamba-cli --features cuda`),
# `kernel_tests` and `kernel_bench` (`cargo test|bench --features wgpu,cuda --no-run`). Records go to
# $OUT; scripts/h200_summary.py turns them into benches/results/h200.json.
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export BAMBA_REPO=$PWD
OUT=${OUT:-/tmp/bamba-out}
mkdir -p "$OUT"
(cd .gpu && for f in *.gz; do gunzip -kf "$f"; done; chmod +x bamba kernel_tests kernel_bench)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
CUBECL_AUTOTUNE_LEVEL=minimal timeout 80 .gpu/kernel_tests cuda::gemv cuda::rms_norm cuda::half cuda::tiny \
  --test-threads 1 --nocapture > "$OUT/tests.log" 2>&1
echo "tests rc=$?"
bench() { # name, timeout, args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" .gpu/bamba bench --json "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.err"
  echo "$name rc=$? ($(wc -l < "$OUT/$name.jsonl") records)"
}
bench bamba_b1 90 --preset bamba-9b -t tg32,tg32@d4096 -b 1 -r 3
bench llama_b1 90 --preset llama-8b-shape -t tg32,tg32@d4096 -b 1 -r 3
bench bamba_b64 80 --preset bamba-9b -t tg8@d8192,tg4@d32768 -b 64 -r 2
bench llama_b64 70 --preset llama-8b-shape -t tg8@d8192 -b 64 -r 2
# The Llama shape at 32K: the largest batch up to 64 whose weights and KV fit in 130 of the 141 GB (11 GB
# left for activations and the allocator): 26 sequences by the `bamba info` byte model.
bench llama_b64_32k 50 --preset llama-8b-shape -t tg4@d32768 -b 64 -r 2 --memory 130GB
timeout 80 .gpu/kernel_bench --bench --output-format bencher 'linear_no_bias/n16768|attention' \
  > "$OUT/criterion-bencher.txt" 2>&1
echo "criterion rc=$?"
timeout 60 python3 scripts/bench_torch.py > "$OUT/torch.jsonl" 2> "$OUT/torch.err"
echo "torch rc=$?"
grep -E "worst|relative|max \||panicked|test result" "$OUT/tests.log" | tail -8
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.jsonl")):
    for line in f.read_text().splitlines():
        r = json.loads(line)
        if "tokens_per_s" in r:
            print(f"{r['model']:15} {r['test']:12} b{r['batch']:<3} {r['tokens_per_s']:9.1f} tok/s "
                  f"{r['ms_per_step']:9.2f} ms/step roof {100 * r['roofline_fraction']:5.1f}%")
PY
grep "^test" "$OUT/criterion-bencher.txt"
