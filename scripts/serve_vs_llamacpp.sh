#!/usr/bin/env bash
# Serving on CPU, in one run on this machine, on the checkpoint of scripts/cpu_vs_llamacpp.sh
# (benches/configs/cpu-bamba-114m.json, f32):
#  1. scheduler overhead: `bamba serve` under `bamba bench-serve` (16-token prompts, 128 new tokens) at
#     concurrency 1 and 16 against `bamba bench -t tg128@d16` at batch 1 and 16;
#  2. bamba serve against llama.cpp's llama-server, same workload (128-token prompts, 128 new tokens) at
#     concurrency 1, 8 and 32, both driven by `bamba bench-serve`.
# Writes benches/results/serve-cpu.json and prints its table.
#
# Usage: scripts/serve_vs_llamacpp.sh [WORK_DIR (default target/llama-cpp)]
# Builds what it lacks as scripts/cpu_vs_llamacpp.sh does (llama-server included).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/serve_setup.sh "${1:-target/llama-cpp}" raw-serve 18080
bench() { # label concurrency prompts input output
  "$bamba" bench-serve --url "http://127.0.0.1:$port" --label "$1" --concurrency "$2" --num-prompts "$3" \
    --input-len "$4" --output-len "$5" --max-token-id 500 --warmup 1 --json >"$raw/$1-c$2-in$4.json"
}

"$bamba" --threads "$threads" bench --model "$checkpoint" --dtype f32 -t tg128@d16 -b 1,16 -r 2 --json \
  >"$raw/bench-decode.jsonl" 2>/dev/null

"$bamba" --threads "$threads" serve --model "$checkpoint" --dtype f32 --port "$port" --max-num-seqs 32 \
  2>"$raw/bamba-serve.log" & server=$!
wait_healthy
bench bamba 1 4 16 128
bench bamba 16 32 16 128
for c in 1 8 32; do bench bamba "$c" $((c < 4 ? 4 : 2 * c)) 128 128; done
stop_server

"$llama/build/bin/llama-server" -m "$checkpoint.gguf" -t "$threads" -c $((32 * 512)) -np 32 --port "$port" \
  --no-webui 2>"$raw/llama-server.log" & server=$!
wait_healthy
for c in 1 8 32; do bench llama.cpp "$c" $((c < 4 ? 4 : 2 * c)) 128 128; done
stop_server

python3 scripts/serve_summary.py "$raw" benches/results/serve-cpu.json
