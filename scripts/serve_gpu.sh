#!/usr/bin/env bash
# Usage: OUT=DIR BAMBA=path/to/bamba scripts/serve_gpu.sh PRESET
# On a CUDA machine: `bamba bench` decode of 64 sequences after 1,024 tokens (tg512@d1024), then `bamba serve`
# with seeded random weights of PRESET driven by `bamba bench-serve` at concurrency 64, 1,024-token prompts,
# 512 new tokens. Records go to $OUT (bench-PRESET.jsonl, serve-PRESET.json, serve-PRESET.log).
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
preset=$1
B=${BAMBA:-target/release/bamba}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$B bench --preset "$preset" --backend cuda-unfused -t tg512@d1024 -b 64 -r 1 --warmup 1 --json 2>&1 | tee $OUT/bench-$preset.jsonl | grep -v '"load"' | cut -c1-400
$B serve --preset "$preset" --backend cuda-unfused --port 8000 --max-num-seqs 64 --max-model-len 1536 \
  --max-num-batched-tokens 8192 2>$OUT/serve-$preset.log & server=$!
for _ in $(seq 1800); do curl -sf http://127.0.0.1:8000/health >/dev/null && break; sleep 0.1; done
$B bench-serve --url http://127.0.0.1:8000 --label "bamba serve $preset" --concurrency 64 --num-prompts 64 \
  --input-len 1024 --output-len 512 --max-token-id 100000 --warmup 1 --json 2>&1 | tee $OUT/serve-$preset.json
kill $server; wait $server
tail -5 $OUT/serve-$preset.log
