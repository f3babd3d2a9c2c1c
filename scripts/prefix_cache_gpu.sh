#!/usr/bin/env bash
# Usage: OUT=DIR BAMBA=path/to/bamba scripts/prefix_cache_gpu.sh [PRESET (default bamba-9b)]
# On a CUDA machine, `bamba serve` with seeded random bf16 weights of PRESET (token-id prompts), driven by
# `bamba bench-serve` with two workloads:
#  - conversations: 4 conversations of 4 turns, one request at a time; the first prompt 3,840 tokens, each
#    later turn the whole history (prompts and answers) plus 128 new tokens; 64 new tokens per turn;
#  - a shared system prompt: 32 requests of a common 2,048-token beginning plus 128 tokens of their own,
#    32 new tokens each, concurrency 8;
# with the prefix cache (16 GB, snapshots on the 256-token SSD chunk grid), with snapshots every 2,048 tokens,
# and with --no-prefix-cache. Records go to $OUT (prefix-MODE-WORKLOAD.json, serve-MODE.log, metrics-MODE.txt)
# with their summary, prefix-cache-gpu.json (COMMIT names the build in it).
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
preset=${1:-bamba-9b}
B=${BAMBA:-target/release/bamba}
port=8000

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for mode in grid256 grid2048 off; do
  case $mode in
    grid256) flags=(--prefix-cache-memory 16GB) ;;
    grid2048) flags=(--prefix-cache-memory 16GB --prefix-snapshot-interval 2048) ;;
    off) flags=(--no-prefix-cache) ;;
  esac
  $B serve --preset "$preset" --backend cuda-unfused --port $port --max-num-seqs 16 --max-model-len 8192 \
    --max-num-batched-tokens 4096 "${flags[@]}" 2>"$OUT/serve-$mode.log" & server=$!
  for _ in $(seq 1800); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 0.1; done
  $B bench-serve --url http://127.0.0.1:$port --label "$mode" --num-prompts 4 --turns 4 --input-len 3840 \
    --turn-len 128 --output-len 64 --concurrency 1 --max-token-id 100000 --warmup 2 --json \
    >"$OUT/prefix-$mode-conversations.json"
  $B bench-serve --url http://127.0.0.1:$port --label "$mode" --num-prompts 32 --shared-prefix-len 2048 \
    --input-len 128 --output-len 32 --concurrency 8 --max-token-id 100000 --warmup 0 --json \
    >"$OUT/prefix-$mode-system-prompt.json"
  curl -s http://127.0.0.1:$port/metrics | grep '^bamba:prefix_cache' >"$OUT/metrics-$mode.txt"
  kill $server; wait $server
done
python3 "$(dirname "$0")/prefix_cache_summary.py" "$OUT" "$OUT/prefix-cache-gpu.json" --on prefix-grid256 \
  --off prefix-off --also prefix-grid2048 --machine "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
  --commit "${COMMIT:-unknown}" --command "scripts/prefix_cache_gpu.sh $preset" --model "$preset, random bf16 weights"
