#!/usr/bin/env bash
# The prefix cache on CPU, in one run on this machine, on the checkpoint of scripts/cpu_vs_llamacpp.sh
# (benches/configs/cpu-bamba-114m.json, f32, 4,096-token context), all driven by `bamba bench-serve`:
#  1. conversations: 2 conversations of 4 turns, the first prompt 3,840 tokens, each later turn the whole
#     history (prompts and answers) plus 64 new tokens, 16 new tokens per turn, one request at a time;
#  2. a shared system prompt: 8 requests of a common 2,048-token beginning plus 64 tokens of their own,
#     concurrency 4;
# each against `bamba serve` with the prefix cache and with --no-prefix-cache, then against llama.cpp's
# llama-server (4 slots of 4,096 tokens, its prompt cache on, as by default). llama-server does not
# return the answers' token ids, so its conversations resend the prompts and new tokens only (16 fewer
# tokens per turn).
# Writes benches/results/prefix-cache-cpu.json and prints its table.
#
# Usage: scripts/prefix_cache_cpu.sh [WORK_DIR (default target/llama-cpp)]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serve_setup.sh "${1:-target/llama-cpp}" raw-prefix 18081
bench() { # label workload extra-args...
  local label=$1 workload=$2
  shift 2
  "$bamba" bench-serve --url "http://127.0.0.1:$port" --label "$label" --max-token-id 500 --warmup 1 --json \
    --output-len 16 "$@" >"$raw/$label-$workload.json"
}
conversations=(--num-prompts 2 --turns 4 --input-len 3840 --turn-len 64 --concurrency 1)
system_prompt=(--num-prompts 8 --shared-prefix-len 2048 --input-len 64 --concurrency 4)

for mode in on off; do
  flags=()
  [ "$mode" = off ] && flags=(--no-prefix-cache)
  "$bamba" --threads "$threads" serve --model "$checkpoint" --dtype f32 --port "$port" --max-num-seqs 8 \
    --max-model-len 4096 "${flags[@]}" 2>"$raw/bamba-$mode.log" & server=$!
  wait_healthy
  bench "bamba-cache-$mode" conversations "${conversations[@]}"
  bench "bamba-cache-$mode" system-prompt "${system_prompt[@]}"
  curl -s "http://127.0.0.1:$port/metrics" | grep '^bamba:prefix_cache' >"$raw/bamba-$mode.metrics"
  stop_server
done

"$llama/build/bin/llama-server" -m "$checkpoint.gguf" -t "$threads" -c 16384 -np 4 --port "$port" \
  --no-webui 2>"$raw/llama-server.log" & server=$!
wait_healthy
bench llama.cpp conversations "${conversations[@]}"
bench llama.cpp system-prompt "${system_prompt[@]}"
stop_server

python3 scripts/prefix_cache_summary.py "$raw" benches/results/prefix-cache-cpu.json --on bamba-cache-on \
  --off bamba-cache-off --also llama.cpp --command scripts/prefix_cache_cpu.sh \
  --model "benches/configs/cpu-bamba-114m.json, random f32 weights"
