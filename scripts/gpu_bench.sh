#!/usr/bin/env bash
# The GPU benchmark behind benches/results/<card>.json: one build (scripts/gpu_build.sh) on one card. Each part
# writes its raw records and logs to $OUT/<part>/ with the card's name and the build's build.txt;
# scripts/gpu_summary.py turns those directories into the card's record and summary.
#
# Parts (each ends within 10 minutes; `all` runs them in turn):
# - tests:   every CUDA test: each kernel against its reference, every model of the family against transformers;
# - kernels: the criterion kernel benches beside torch's copy, cuBLAS and SDPA (scripts/bench_torch.py) and
#            mamba_ssm's Triton scan (scripts/bench_mamba_ssm.py, when MAMBA_SSM names the sdist's package dir);
# - decode:  batch-1 decode and batch-64 decode at 8K and 32K context (f32 and bf16 SSM state) of the Bamba-9B
#            and Llama-8B shapes, random bf16 weights;
# - prefill: pp512 and pp4096 of both shapes at batch 1, and pp1024 at batch 8 (a group of fresh prompts
#            as `bamba serve` prefills them together);
# - hf:      transformers' BambaForCausalLM (torch code, and mamba_ssm's Triton kernels when MAMBA_SSM is set)
#            against `bamba bench`, batch 1, pp512 and tg128 (scripts/bench_hf_transformers.py);
# - serve:   `bamba serve` of each shape under `bamba bench-serve`, 64 concurrent requests of 1,024 + 512
#            tokens, beside `bamba bench` decode of 64 sequences after 1,024 tokens; the Bamba shape once
#            more with --no-prefix-cache (what recording the prefix cache's snapshots costs);
# - moe:     Granite 4.0-H Tiny (64 experts, 6 picked) beside Granite 4.0-H 1B, the same hybrid with a dense
#            MLP as wide as Tiny's active one (a 1,024 shared + 6 x 512 routed = 4,096): batch-1 and batch-64
#            decode and pp4096, random bf16 weights, both GPU backends at batch 1;
# - load:    a random Bamba-9B checkpoint (scripts/random_checkpoint.py, 19.6 GB) loaded from the page cache.
#
# Usage: BIN=DIR OUT=RAW [MAMBA_SSM=DIR] scripts/gpu_bench.sh [PART...]
#        python3 scripts/gpu_summary.py benches/results/<card>.json RAW
set -u
BIN=$(realpath "${BIN:?BIN: the directory scripts/gpu_build.sh filled}")
OUT=$(realpath -m "${OUT:?OUT: where the raw records go}")
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HF_HUB_OFFLINE=1
B=$BIN/bamba
chmod +x "$BIN/bamba" "$BIN/kernel_tests" "$BIN/kernel_bench"

bench() { # record name, time limit (s), bamba bench arguments...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$B" bench --json "$@" > "$RAW/$name.jsonl" 2> "$RAW/$name.err"
  echo "$name rc=$? ($(grep -c tokens_per_s "$RAW/$name.jsonl") records, $((SECONDS - t0)) s)"
}
wait_healthy() {
  for _ in $(seq 1800); do curl -sf http://127.0.0.1:8000/health > /dev/null && return 0; sleep 0.1; done
  return 1
}

part_tests() {
  timeout 300 "$BIN/kernel_tests" cuda --test-threads 1 > "$RAW/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "panicked|^test result|FAILED" "$RAW/tests.log" | head -8
}
part_kernels() {
  timeout 420 "$BIN/kernel_bench" --bench --output-format bencher > "$RAW/criterion-bencher.txt" 2>&1
  echo "criterion rc=$?"
  timeout 60 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"
  if [ -n "${MAMBA_SSM:-}" ]; then
    timeout 110 python3 scripts/bench_mamba_ssm.py "$MAMBA_SSM" > "$RAW/mamba_ssm.jsonl" 2> "$RAW/mamba_ssm.err"
    echo "mamba_ssm rc=$?"
  fi
}
part_decode() {
  bench bamba_b1 60 --preset bamba-9b -t tg128 -b 1 -r 5 --backend cuda-unfused
  bench bamba_b64 90 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 --backend cuda-unfused
  bench bamba_b64_bf16 90 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 --state-dtype bf16 \
    --backend cuda-unfused
  bench llama_b1 60 --preset llama-8b-shape -t tg128 -b 1 -r 5 --backend cuda-unfused
  # At 32K the Llama shape's KV cache holds fewer than 64 sequences: bench runs the largest batch that fits.
  bench llama_b64 120 --preset llama-8b-shape -t tg16@d8192,tg16@d32768 -b 64 -r 3 --backend cuda-unfused
}
part_prefill() {
  bench bamba_pp 90 --preset bamba-9b -t pp512,pp4096 -b 1 -r 5
  bench llama_pp 90 --preset llama-8b-shape -t pp512,pp4096 -b 1 -r 5
  bench bamba_pp_b8 90 --preset bamba-9b -t pp1024 -b 8 -r 3
  bench llama_pp_b8 90 --preset llama-8b-shape -t pp1024 -b 8 -r 3
}
part_hf() {
  local config=tests/configs/bamba-9b.json mode path
  for mode in torch mamba_ssm; do
    path=""
    if [ $mode = mamba_ssm ]; then [ -n "${MAMBA_SSM:-}" ] || continue; path=$MAMBA_SSM; fi
    PYTHONPATH=$path timeout 240 python3 scripts/bench_hf_transformers.py $config --pp 512 --tg 128 --reps 3 \
      > "$RAW/hf-$mode.jsonl" 2> "$RAW/hf-$mode.err"
    echo "transformers $mode rc=$?"
  done
  bench hf-bamba-cuda 120 --config $config -t pp512,tg128 -b 1 -r 3 --backend cuda
  bench hf-bamba-cuda-unfused 120 --config $config -t pp512,tg128 -b 1 -r 3 --backend cuda-unfused
}
part_serve() {
  local run preset name flags server
  for run in bamba-9b llama-8b-shape bamba-9b:--no-prefix-cache; do
    preset=${run%%:*} flags=${run#"$preset"} flags=${flags#:}
    name=$preset${flags:+-${flags#--}}
    [ -n "$flags" ] ||
      bench "serve-bench-$preset" 120 --preset $preset --backend cuda-unfused -t tg512@d1024 -b 64 -r 1 --warmup 1
    "$B" serve --preset $preset --backend cuda-unfused --port 8000 --max-num-seqs 64 --max-model-len 1536 \
      --max-num-batched-tokens 8192 $flags 2> "$RAW/serve-$name.log" & server=$!
    if wait_healthy; then
      timeout 200 "$B" bench-serve --url http://127.0.0.1:8000 --label "bamba serve $name" --concurrency 64 \
        --num-prompts 64 --input-len 1024 --output-len 512 --max-token-id 100000 --warmup 1 --json \
        > "$RAW/serve-$name.json" 2> "$RAW/serve-client-$name.err"
      echo "serve $name rc=$?"
      # the engine's gauges after the load: device memory, allocator cleanups, prefix cache
      curl -s http://127.0.0.1:8000/metrics > "$RAW/serve-$name.metrics"
    else
      echo "serve $name: the server did not come up"
    fi
    kill $server; wait $server
  done
}
part_moe() {
  local model config be
  for model in granite-4.0-h-tiny granite-4.0-h-1b; do
    config=tests/configs/$model.json
    for be in cuda-unfused cuda; do
      bench "${model}_b1_$be" 90 --config $config -t tg128 -b 1 -r 5 --backend $be
    done
    bench "${model}_b64" 90 --config $config -t tg16@d1024 -b 64 -r 3 --backend cuda-unfused
    bench "${model}_pp" 90 --config $config -t pp4096 -b 1 -r 3 --backend cuda-unfused
  done
}
part_load() {
  # tmpfs is RAM like the page cache, and faster to write than the disk
  local shm_gb ckpt
  shm_gb=$(df --output=avail -BG /dev/shm 2> /dev/null | tail -1 | tr -dc 0-9)
  if [ "${shm_gb:-0}" -gt 30 ]; then ckpt=/dev/shm/bamba-9b-random; else ckpt=/tmp/bamba-9b-random; fi
  [ -f "$ckpt/model.safetensors.index.json" ] ||
    timeout 300 python3 scripts/random_checkpoint.py tests/configs/bamba-9b.json "$ckpt" 2>&1 | tail -2
  cat "$ckpt"/*.safetensors > /dev/null # into the page cache, as the benchmark says
  bench load_bamba 120 --model "$ckpt" -t tg4 -b 1 -r 1 --warmup 0
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] || [ "${parts[0]}" = all ] && parts=(tests kernels decode prefill hf serve moe load)
for part in "${parts[@]}"; do
  declare -F "part_$part" > /dev/null || { echo "unknown part $part" >&2; exit 2; }
  RAW=$OUT/$part
  rm -rf "$RAW" && mkdir -p "$RAW"
  cp "$BIN/build.txt" "$RAW/build.txt"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RAW/gpu.txt"
  t0=$SECONDS
  "part_$part"
  echo "== $part: $((SECONDS - t0)) s"
done
