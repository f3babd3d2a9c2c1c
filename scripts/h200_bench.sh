#!/usr/bin/env bash
# The end-to-end runs on the H200 (benches/results/README.md). One part per device call (10 minutes
# each): `decode` (bamba bench decode on the Bamba-9B and Llama-8B shapes, random bf16 weights, one
# process per shape and batch), `kernels` (CUDA kernel tests, criterion GEMV/GEMM/attention, torch
# references). Expects in .gpu/ the gzipped, stripped binaries `bamba` (`-p bamba-cli --features cuda`),
# `kernel_tests` and `kernel_bench` (`cargo test|bench --features wgpu,cuda --no-run`; only for
# `kernels`). Raw records and logs go to $OUT/raw.tar.gz (the device returns few files per call);
# scripts/h200_summary.py turns them into benches/results/h200.json.
#
# `load` writes a random Bamba-9B checkpoint (scripts/random_checkpoint.py, 19.6 GB) to /dev/shm and
# times `bamba bench --model` loading it from the page cache, with every gzipped `bamba*` binary in .gpu/
# (e.g. a `bamba-old` to compare against). `profile` measures host->device copy rates, the host
# overhead of a decode step (tiny widths), and CubeCL's per-kernel profile of decode steps.
#
# `quick` re-measures what a change to the decode step moves (overhead, batch 1, batch 64 at 8K).
# `prefill` runs every CUDA test, a cold first generation, and prefill with and without matmul autotune.
# `gemm` times the products (criterion linear_no_bias and attention, torch's cuBLAS/SDPA in the same
# call) and batch-64 decode at 32K, where both shapes' products are large.
#
# `ssd` checks and times the SSD scan: the scan tests (tensor-core and portable paths) and cuBLASLt's,
# mamba_ssm's Triton chain (needs the `mamba_ssm` package from the mamba-ssm sdist in .gpu/mm), our
# criterion scan bench on both paths; `ssd_prefill`: prefill with and without the tensor-core scan.
#
# `stream` (session 10): every CUDA test, then prefill and batch-64 decode with cuBLASLt on the legacy
# stream, and prefill with the previous build. `attention`: every CUDA test, prefill attention in
# criterion against SDPA, prefill of both shapes. `profile_s10`: CubeCL's per-kernel profile of a
# batch-64 decode step at 8K.
#
# `host_s11` (session 11): every CUDA test; a sampling profile of the host (`--cpu-profile`, a bamba
# built with the `cpu-profile` feature, symbols kept) of batch-1 decode (9B shape and the tiny-width
# plan) and of a batch-64 step at 8K; then batch-64 decode at 8K and pp4096 with this build and with
# the previous one (a gzipped .gpu/bamba-s10), same call. `decode_s11`: every CUDA test, then
# decode at batch 1 (with a host profile), batch 64 at 8K and 32K (f32 and bf16 SSM state) and pp4096,
# Bamba and Llama shapes. `ncu_s11`: Nsight Compute's per-kernel GPU time and DRAM bytes of decode
# steps (batch 1, and batch 64 at 8K with a bf16 state), grouped by kernel, then the `decode_s11` runs.
# `final_s11`: every CUDA test and the Bamba-shape runs of `decode_s11` (the Llama shape did not change).
#
# `diag_s12` (session 12): the GEMV's tuning sweep at batch 1 (BAMBA_GEMV_TUNE), its tests with x
# staged in shared memory, and Nsight Compute's per-shape GEMV times (scripts/ncu_launches.py) and
# launch/occupancy/stall sections of the GEMV and the Mamba step. `round2_s12`: every CUDA test, the
# GEMV's loads in flight, and cuBLASLt on CubeCL's stream vs the legacy stream (b64 decode, pp4096).
# `final_s12`: every CUDA test, the `decode_s11` runs of both shapes with the landed build, and
# Nsight Compute's kernel times of a batch-64 step at 8K. `final2_s12`: the same runs with RoPE tables
# made once per cache, and the Mamba step's heads per cube (4, 8, 16) at batch 64. `step_s13`: every
# CUDA test, the Mamba step with and without its state loads a head ahead (criterion and batch-64
# decode); `kernels_s13`: every kernel bench with torch's and mamba_ssm's references in the same call,
# prefill attention in query blocks of 0 (one block), 256, 512 and 1024, pp4096 of both shapes;
# `final_s13`: every CUDA test and the end-to-end runs of the landed build, batch 4 with and without
# the GEMV for 2–8 rows, Nsight Compute's instruction view of the Mamba step; `ratio_s13`: the
# batch-64 ratios with 64-step runs, and a batch-4 step's kernels and host profile; `gemv_rows_s13`:
# batch 2–8 decode with the GEMV per launch shape against cuBLASLt; `batches_s13`: batch 1–8 decode
# in one call, 2–8-row products on cuBLASLt and on the GEMV; `landed_s13`: every CUDA test, batch 1–8.
# `parity_s14` (session 14; never run, superseded by session 15's parts): bf16 and f32 end to end on CUDA.
# `flash_s15`, `diag_s15`, `final_s15`: the flash prefill kernel against the materialized path and SDPA,
# pp4096 each way, every CUDA test, and bf16/f32 parity on random configs (the H200's transformers is
# 5.17: see scripts/sweep_parity.py).
# `diag_s16`: the hidden states after every layer of the bf16_sharded fixture's three prompts on CUDA
# (bf16, f16, f32; `bamba logits --hidden-states`, compared here by scripts/layer_diffs.py), and
# Nsight Compute's sections of one flash prefill attention launch (4096 tokens, Bamba-9B shape).
# `check_s16`: every CUDA test (the tensor-core scan after its loops became one helper; the bf16
# fixtures against the rounding-spread floors). `flash_s16`: the flash kernel on `mma.sync` fragments
# (softmax in registers): its tests, prefill attention with it and without it beside SDPA, pp4096 of
# both shapes each way, and Nsight Compute's sections of one launch. `final_s16`: the landed build (flash
# on by default): every CUDA test, SDPA, prefill attention (flash; the materialized path beside it in
# `attention-materialized.txt`, a name the summary does not read), pp4096 of both shapes, batch-1 decode.
# `ssd_s17`: the scan's chunk-state and output kernels on `mma.sync` fragments: the scan tests, mamba_ssm's
# chain beside this build's and the previous build's scan bench (.gpu/kernel_bench-old), pp4096 with both
# builds (.gpu/bamba-old), Nsight Compute's sections of the two kernels at 32K. `ssd2_s17`: the landed
# candidate (`C·Bᵀ` on fragments too) beside the intermediate and previous builds' scan benches.
# `final_s17`: the landed build: every CUDA test, the scan and flash benches beside mamba_ssm and SDPA,
# pp4096 of both shapes, batch-1 decode.
#
# `gemv_s20`: the GEMV with its first loads before its pre-norm (not landed), in-model GEMV times each way,
# every kernel of two batch-1 steps, cuBLAS's GEMV kernels under Nsight Compute. `rope_s20`: RoPE as one
# kernel against the Burn ops (BAMBA_ROPE_KERNEL=0) in one call, a decode step's launch order, criterion's
# GEMV at 100 calls per sync. `ratio_s20`: the batch-64 ratios. `step_s20`: the Mamba step without its
# conv-weight copy.
#
# `ssd_s21`: the SSD output kernel's loads a stage ahead against the previous build's scan, beside
# mamba_ssm. `step_s21`: the Mamba step's heads per cube by batch, batch-1 decode each way; `batches_s21`:
# batch 2 and 4 each way.
#
# `ssd_s22`: the SSD output kernel on asynchronous copies (two stages in flight) against the landed
# build's scan, beside mamba_ssm, two rounds; `ssd2_s22`, `ssd3_s22`: the same with two heads per cube;
# `tests_s22`: every CUDA test, the RMSNorm holding vectors in registers (GPU time, batch-1 decode).
#
# Usage: [CRITERION_FILTER=regex] scripts/h200_bench.sh decode|kernels|load|profile|quick|prefill|gemm|ssd|ssd_prefill|stream|attention|profile_s10|host_s11|decode_s11|ncu_s11|final_s11
set -u
part=${1:?usage: h200_bench.sh decode|kernels|load|profile|quick|prefill|gemm|ssd|ssd_prefill|stream|attention|profile_s10|host_s11|decode_s11|ncu_s11|final_s11|diag_s12|round2_s12|final_s12|final2_s12|step_s13|kernels_s13|final_s13|ratio_s13|gemv_rows_s13|batches_s13|landed_s13|parity_s14|flash_s15|diag_s15|final_s15|diag_s16|check_s16|flash_s16|final_s16|ssd_s17|ssd2_s17|final_s17|ssd_s18|ssd2_s18|repeat_s18|step_s19|kernels_s19|final_s19|host_s19|gemv_s20|rope_s20|ratio_s20|step_s20|ssd_s21|step_s21|batches_s21|ssd_s22|ssd2_s22|ssd3_s22|tests_s22}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export BAMBA_REPO=$PWD
OUT=${OUT:-/tmp/bamba-out}
RAW=${RAW_DIR:-$(mktemp -d)}
(cd .gpu && for f in *.gz; do gunzip -kf "$f"; done; chmod +x ./*[^z])
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RAW/gpu.txt"
bench() { # name, timeout, args...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "${BAMBA:-.gpu/bamba}" bench --json --progress "$@" > "$RAW/$name.jsonl" 2> "$RAW/$name.err"
  echo "$name rc=$? ($(wc -l < "$RAW/$name.jsonl") records, $((SECONDS - t0)) s)"
}
# Nsight Compute's per-launch metrics that scripts/ncu_launches.py reads.
NCU_METRICS=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active
cuda_tests() { # every CUDA test, the log in $RAW/tests.log
  timeout 260 .gpu/kernel_tests cuda --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "panicked|test result|mamba_decode_step on" "$RAW/tests.log" | head -8
}
# The landed build's decode runs (batch 1; batch 64 at 8K and 32K), per shape, and pp4096 of both.
bamba_decode() {
  bench bamba_b1 60 --preset bamba-9b -t tg128 -b 1 -r 5 --backend cuda-unfused
  bench bamba_b64 80 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 --backend cuda-unfused
  bench bamba_b64_bf16 80 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 --state-dtype bf16 --backend cuda-unfused
}
llama_decode() {
  bench llama_b1 60 --preset llama-8b-shape -t tg128 -b 1 -r 5 --backend cuda-unfused
  bench llama_b64 60 --preset llama-8b-shape -t tg16@d8192 -b 64 -r 3 --backend cuda-unfused
  bench llama_b64_32k 60 --preset llama-8b-shape -t tg16@d32768 -b 64 -r 3 --memory 110GB --backend cuda-unfused
}
prefill_both() {
  bench bamba_pp 60 --preset bamba-9b -t pp4096 -b 1 -r 5
  bench llama_pp 60 --preset llama-8b-shape -t pp4096 -b 1 -r 5
}
sweep_table() { # jsonl files: one line each with its tests' tok/s and ms per step
  for f; do
    python3 - "$f" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1]) if "tokens_per_s" in l]
print(sys.argv[1].split("/")[-1], *["%s %.1f tok/s %.3f ms" % (r["test"], r["tokens_per_s"], r["ms_per_step"]) for r in rs])
PY
  done
}
criterion() { # filter [file name prefix]: $RAW/PREFIX-bencher.txt (default criterion-bencher.txt)
  local file="$RAW/${2:-criterion}-bencher.txt"
  timeout 200 .gpu/kernel_bench --bench --output-format bencher "$1" > "$file" 2>&1
  echo "criterion $1 rc=$?"
  grep "^test" "$file"
}
criterion_of() { # name, kernel_bench build, filter, env...: criterion of that build (under those variables) into
  # $RAW/NAME-criterion.txt (a name the summary does not read), printed without the spreads
  local name=$1 exe=$2 filter=$3; shift 3
  env "$@" timeout 80 "$exe" --bench --output-format bencher "$filter" > "$RAW/$name-criterion.txt" 2>&1
  echo "$name:"; grep "^test" "$RAW/$name-criterion.txt" | sed -E 's/ \(\+\/- [0-9]+\)//'
}
ncu_times() { # name, kernel regex, criterion filter, [kernel_bench build]: Nsight Compute's GPU time, DRAM rate,
  # registers and occupancy of six launches (clocks unlocked) into $RAW/ncu-NAME.{csv,txt}
  local name=$1 kernels=$2 filter=$3 exe=${4:-.gpu/kernel_bench}
  timeout 60 /usr/local/cuda/bin/ncu --csv --page raw --clock-control none --kernel-name regex:"$kernels" \
    --launch-skip 20 --launch-count 6 --metrics "$NCU_METRICS" "$exe" --bench --output-format bencher "$filter" \
    > "$RAW/ncu-$name.csv" 2> "$RAW/ncu-$name.err"
  echo "ncu $name rc=$?"; python3 scripts/ncu_launches.py "$RAW/ncu-$name.csv" | tee "$RAW/ncu-$name.txt"
}
torch_refs() { # grep pattern: scripts/bench_torch.py into $RAW/torch.jsonl, the matching records printed
  timeout 90 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"
  grep -hE "$1" "$RAW/torch.jsonl" | cut -c1-150
}
ncu_gemv_b1() { # name, env...: Nsight Compute's per-shape GEMV times of batch-1 decode (one step's 135 launches
  # after two) into $RAW/ncu_gemv_NAME.{csv,txt}
  local name=$1; shift
  env "$@" timeout 120 /usr/local/cuda/bin/ncu --csv --page raw --clock-control none --kernel-name regex:gemv \
    --launch-skip 270 --launch-count 135 --metrics "$NCU_METRICS" .gpu/bamba bench --backend cuda-unfused --warmup 0 -r 1 \
    --preset bamba-9b -t tg8 -b 1 > "$RAW/ncu_gemv_$name.csv" 2> "$RAW/ncu_gemv_$name.err"
  echo "ncu gemv $name rc=$?"
  python3 scripts/ncu_launches.py "$RAW/ncu_gemv_$name.csv" | tee "$RAW/ncu_gemv_$name.txt"
}
launch_order() { # CubeCL's profile log of two batch-1 decode steps, as runs of kernel names, into $RAW/launch-order.txt
  CUBECL_DEBUG_LOG=/tmp/launches.log CUBECL_DEBUG_OPTION=profile timeout 60 .gpu/bamba bench --backend cuda-unfused --warmup 0 -r 1 \
    --preset bamba-9b -t tg2 -b 1 > /dev/null 2>&1
  echo "launch log rc=$?"
  grep "^|" /tmp/launches.log | awk -F'|' '{gsub(/ +$/, "", $3); print $3}' | tail -330 | uniq -c > "$RAW/launch-order.txt"
  sed -n 1,60p "$RAW/launch-order.txt" | tr -s ' ' | paste -sd' ' | cut -c1-1500
}
ncu_flash() { # [more ncu sections]: Nsight Compute's launch, occupancy and stall sections of one flash prefill
  # attention launch (pp4096, Bamba-9B shape) into $RAW/ncu_flash.txt
  BAMBA_FLASH_ATTENTION=1 timeout 200 /usr/local/cuda/bin/ncu --kernel-name regex:flash --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats "$@" \
    .gpu/bamba bench --backend cuda-unfused --warmup 0 -r 1 --preset bamba-9b -t pp4096 -b 1 > "$RAW/ncu_flash.txt" 2>&1
  echo "ncu flash rc=$?"
  grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit (Reg|Shared)|Issue Slots Busy|Warp Cycles Per Issued|Compute \(SM\) Throughput|Local Memory Spilling Requests " \
    "$RAW/ncu_flash.txt" | head -14
}
flash_comparison() { # SDPA, prefill attention with the flash kernel and without it, pp4096 of both shapes each way
  timeout 60 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"; grep "sdpa_prefill" "$RAW/torch.jsonl" | head -3
  BAMBA_FLASH_ATTENTION=1 criterion "attention/prefill" attention-flash
  BAMBA_FLASH_ATTENTION=0 criterion "attention/prefill" attention-materialized
  for flash in 1 0; do
    BAMBA_FLASH_ATTENTION=$flash bench "sweep_pp_flash$flash" 60 --preset bamba-9b -t pp4096 -b 1 -r 5
    BAMBA_FLASH_ATTENTION=$flash bench "sweep_llama_pp_flash$flash" 60 --preset llama-8b-shape -t pp4096 -b 1 -r 5
  done
  sweep_table "$RAW"/sweep_*.jsonl
}
scan_vs_mamba_ssm() { # mamba_ssm's Triton chain ($RAW/mamba_ssm.jsonl), then our criterion scan bench
  # ($RAW/ssd-bencher.txt) in the same call
  timeout 150 python3 scripts/bench_mamba_ssm.py .gpu/mm > "$RAW/mamba_ssm.jsonl" 2> "$RAW/mamba_ssm.err"
  echo "mamba_ssm rc=$?"
  grep -h chunk_scan "$RAW/mamba_ssm.jsonl" | cut -c1-100
  criterion "ssd_chunk_scan/kernel" ssd
}
scan_of_builds() { # build…: the criterion scan bench of .gpu/kernel_bench-BUILD each ($RAW/ssd-BUILD-criterion.txt,
  # a name the summary does not read), then pp4096 of this build and Nsight Compute's scan sections at 32K
  for build in "$@"; do
    timeout 200 ".gpu/kernel_bench-$build" --bench --output-format bencher "ssd_chunk_scan/kernel" > "$RAW/ssd-$build-criterion.txt" 2>&1
    echo "build $build:"; grep "^test" "$RAW/ssd-$build-criterion.txt"
  done
  bench bamba_pp 60 --preset bamba-9b -t pp4096 -b 1 -r 5
  sweep_table "$RAW"/bamba_pp.jsonl
  ncu_ssd
}
ssd_tests() { # the scan's CUDA tests, the log in $RAW/tests.log
  for t in cuda_scan_runs_on_tensor_cores cuda::ssd_chunk_scan_matches_the_reference; do
    local t0=$SECONDS
    timeout 120 .gpu/kernel_tests "$t" --exact --test-threads 1 --nocapture >> "$RAW/tests.log" 2>&1
    echo "$t rc=$? ($((SECONDS - t0)) s)"
  done
  grep -E "worst|panicked" -A1 "$RAW/tests.log" | head -12
}
ncu_ssd() { # [suffix]: Nsight Compute's sections of one launch of the scan's chunk-state, C·Bᵀ and output kernels at
  # 32K (criterion's bench exits with a segfault after printing, rc 139/11: known, results are complete)
  local file="$RAW/ncu_ssd${1:+-$1}.txt"
  timeout 120 /usr/local/cuda/bin/ncu --kernel-name regex:"chunk_state|chunk_scan|cb_kernel" --launch-skip 3 --launch-count 3 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis .gpu/kernel_bench --bench --output-format bencher "ssd_chunk_scan/kernel/32768" \
    > "$file" 2>&1
  echo "ncu ssd ${1:-} rc=$?"
  grep -E "^  [a-z_]+kernel|Duration|Registers Per|Achieved Occupancy|L1/TEX Cache Throughput|Compute \(SM\) Throughput|DRAM Throughput" \
    "$file" | head -24
}
overhead() { # backend: host overhead per decode step, Bamba-9B's 32-layer plan with tiny widths (kernels
  # take ~nothing; more of Burn's slices copy at these widths, so the launch count is not quite the 9B one)
  bench "overhead_$1" 90 --config benches/configs/bamba-9b-layout-tiny-widths.json -t tg128 -b 1 -r 3 --backend "$1"
}
# CubeCL's own per-kernel profile, unfused so that names are ours and Burn's (cuBLASLt's kernels are not
# CubeCL's and do not appear). Each log (MBs) is reduced to the last full decode step or prefill (the stretch between the last two argmax reductions), grouped
# by kernel name: launches and profiled GPU time (short kernels read ~12 us: each is timed with events).
prof() { # name, bench args...
  local name=$1; shift
  CUBECL_DEBUG_LOG="$RAW/$name.log" CUBECL_DEBUG_OPTION=profile bench "$name" 150 "$@" --backend cuda-unfused
  python3 - "$RAW/$name.log" <<'PY' | tee -a "$RAW/kernels-per-step.txt"
import collections, re, sys
lines = open(sys.argv[1]).read().splitlines()
ends = [i for i, l in enumerate(lines) if l.startswith("|") and "ReduceKernel" in l]
count, total = collections.Counter(), collections.Counter()
for line in lines[ends[-2] + 1:ends[-1] + 1]:
  m = re.match(r"\|\s*([\d.]+)(µs|ms|ns)\s*\|\s*(.*)", line)
  if m:
      name = m.group(3).replace("| CudaRuntime", "").strip()
      name = name.split("|")[0].strip() if name.startswith("MatmulEntry") else name
      count[name] += 1
      total[name] += float(m.group(1)) * {"µs": 1, "ms": 1000, "ns": 0.001}[m.group(2)]
print(f"== {sys.argv[1].rsplit('/', 1)[-1]}: {sum(count.values())} kernels/step, profiled {sum(total.values()) / 1e3:.2f} ms")
for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
  print(f"  {count[name]:5d} {us / 1e3:8.2f} ms {us / count[name]:8.1f} us avg  {name}")
PY
  rm -f "$RAW/$name.log"
}
case $part in
decode)
  # BACKEND=cuda-unfused runs every shape without Burn's fusion stream (default: cuda).
  be=(--backend "${BACKEND:-cuda}")
  bench bamba_b1 130 --preset bamba-9b -t tg128,tg128@d4096 -b 1 -r 3 "${be[@]}"
  bench llama_b1 110 --preset llama-8b-shape -t tg128,tg128@d4096 -b 1 -r 3 "${be[@]}"
  bench bamba_b64 120 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 2 "${be[@]}"
  bench llama_b64 90 --preset llama-8b-shape -t tg16@d8192 -b 64 -r 2 "${be[@]}"
  # The Llama shape at 32K: the largest batch up to 64 whose weights and KV fit in 110 of the 141 GB:
  # 21 sequences by the `bamba info` byte model. At 130 GB (26 sequences) CubeCL 0.10's allocator
  # fails to reserve a 9.38 GB page once per layer and step (results/h200-2026-12-01-s4/run6).
  bench llama_b64_32k 80 --preset llama-8b-shape -t tg16@d32768 -b 64 -r 2 --memory 110GB "${be[@]}"
  # Optional criterion groups in the same session (CRITERION_FILTER=regex).
  if [ -n "${CRITERION_FILTER:-}" ]; then criterion "$CRITERION_FILTER"; fi
  ;;
kernels)
  CUBECL_AUTOTUNE_LEVEL=minimal timeout 80 .gpu/kernel_tests cuda --test-threads 1 --nocapture \
    > "$RAW/tests.log" 2>&1
  echo "tests rc=$?"
  criterion "${CRITERION_FILTER:-linear_no_bias|attention}"
  timeout 60 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"
  grep -E "worst|relative|max \||panicked|test result" "$RAW/tests.log" | tail -8
  ;;
load)
  # tmpfs is RAM like the page cache, and faster to write than the disk
  shm_gb=$(df --output=avail -BG /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)
  if [ "${shm_gb:-0}" -gt 30 ]; then ckpt=/dev/shm/bamba-9b-random; else ckpt=/tmp/bamba-9b-random; fi
  [ -f "$ckpt/model.safetensors.index.json" ] ||
    timeout 300 python3 scripts/random_checkpoint.py tests/configs/bamba-9b.json "$ckpt" 2>&1 | tail -2
  du -sh "$ckpt"
  cat "$ckpt"/*.safetensors > /dev/null # into the page cache, as the target says
  for gz in .gpu/bamba*.gz; do
    name=$(basename "$gz" .gz)
    BAMBA=.gpu/$name bench "load_$name" 120 --model "$ckpt" -t tg4 -b 1 -r 1 --warmup 0
    grep -h '"load"' "$RAW/load_$name.jsonl"
  done
  # Burn's from_data instead of the pinned upload (bamba-kernels/src/cube/upload.rs), same binary.
  BAMBA_PINNED_UPLOAD=0 bench load_bamba_from_data 120 --model "$ckpt" -t tg4 -b 1 -r 1 --warmup 0
  grep -h '"load"' "$RAW/load_bamba_from_data.jsonl"
  # The same with glibc's allocator kept off mmap: freed host buffers are reused instead of every
  # tensor's staging copy faulting in fresh pages.
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776 \
    bench load_bamba_heap 120 --model "$ckpt" -t tg4 -b 1 -r 1 --warmup 0
  grep -h '"load"' "$RAW/load_bamba_heap.jsonl"
  cat /sys/kernel/mm/transparent_hugepage/enabled
  python3 -c "
import time, numpy as np
t = time.time(); a = np.ones(4 << 30, np.uint8); t1 = time.time(); a.fill(2); t2 = time.time()
print(f'host first touch {4.29 / (t1 - t):.1f} GB/s, second {4.29 / (t2 - t1):.1f} GB/s')"
  ;;
quick)
  # The numbers a change to the step moves, in one call: prefill pp4096, host overhead (tiny widths),
  # batch 1 fused and unfused, batch 64 at 8K.
  for backend in cuda cuda-unfused; do
    # (60 s was too short in session 5: compile and matmul autotune of the prefill shapes come first)
    bench "bamba_pp_$backend" 180 --preset bamba-9b -t pp4096 -b 1 -r 2 --backend "$backend"
    overhead "$backend"
    bench "bamba_b1_$backend" 100 --preset bamba-9b -t tg128 -b 1 -r 3 --backend "$backend"
    bench "llama_b1_$backend" 100 --preset llama-8b-shape -t tg128 -b 1 -r 3 --backend "$backend"
  done
  bench bamba_b64 120 --preset bamba-9b -t tg16@d8192 -b 64 -r 2 --backend cuda-unfused
  bench llama_b64 120 --preset llama-8b-shape -t tg16@d8192 -b 64 -r 2 --backend cuda-unfused
  ;;
prefill)
  # The CUDA prefill and parity checks under the matmul policy of cube/matmul.rs (session 6). Every
  # CUDA test, one process each (a hang ends one test, not all); failures' messages at the end.
  for t in $(.gpu/kernel_tests --list 2>/dev/null | sed -n 's/^\(cuda[a-z_]*::[a-z_0-9]*\): test$/\1/p'); do
    t0=$SECONDS
    timeout 120 .gpu/kernel_tests "$t" --exact --include-ignored --test-threads 1 --nocapture >> "$RAW/tests.log" 2>&1
    echo "$t rc=$? ($((SECONDS - t0)) s)"
  done
  grep -A2 panicked "$RAW/tests.log" | head -12
  # The first generation on the embedded model, cold caches (session 5: 137 s, 130 of them tuning).
  for backend in cuda cuda-unfused; do
    t0=$SECONDS
    timeout 120 .gpu/bamba generate --backend "$backend" --prompt "The capital of France is" --max-new-tokens 8 \
      > "$RAW/generate_$backend.txt" 2>&1
    echo "generate $backend rc=$? ($((SECONDS - t0)) s): $(tail -1 "$RAW/generate_$backend.txt")"
  done
  # Prefill of the 9B shape (tuned: warm-up includes tuning), and the 64-row decode steps whose
  # matmuls the policy must keep tuned.
  bench bamba_pp 200 --preset bamba-9b -t pp512,pp4096 -b 1 -r 2
  bench bamba_b64 120 --preset bamba-9b -t tg16@d8192 -b 64 -r 2 --backend cuda-unfused
  bench llama_b64 120 --preset llama-8b-shape -t tg16@d8192 -b 64 -r 2 --backend cuda-unfused
  ;;
gemm)
  criterion "${CRITERION_FILTER:-linear_no_bias|attention}"
  timeout 60 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"
  bench bamba_b64_32k 120 --preset bamba-9b -t tg16@d32768 -b 64 -r 2 --backend cuda-unfused
  bench llama_b64_32k 100 --preset llama-8b-shape -t tg16@d32768 -b 64 -r 2 --memory 110GB --backend cuda-unfused
  ;;
ssd)
  for t in cuda_scan_runs_on_tensor_cores cuda::ssd_chunk_scan_matches_the_reference \
    cuda_cublaslt::large_products_run_through_cublaslt; do
    t0=$SECONDS
    timeout 120 .gpu/kernel_tests "$t" --exact --test-threads 1 --nocapture >> "$RAW/tests.log" 2>&1
    echo "$t rc=$? ($((SECONDS - t0)) s)"
  done
  grep -E "worst|panicked" -A1 "$RAW/tests.log" | head -12
  scan_vs_mamba_ssm
  BAMBA_SSD_TENSOR_CORES=0 criterion "ssd_chunk_scan/kernel/(512|8192)"
  mv "$RAW/criterion-bencher.txt" "$RAW/ssd-portable-criterion.txt"
  ;;
profile_s10)
  # Where a batch-64 step at 8K spends its CubeCL time (session 10 build; cuBLASLt's products are not
  # in CubeCL's profile). A prefill has no argmax between its warm-up and its run, so this reduction
  # cannot separate them: prefill is not profiled here.
  prof prof_bamba_b64 --preset bamba-9b -t tg4@d8192 -b 64 -r 1
  ;;
host_s11)
  timeout 260 .gpu/kernel_tests cuda --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "panicked|test result|linear_residual|swiglu_linear" "$RAW/tests.log" | head -12
  u=(--backend cuda-unfused)
  bench host_b1 100 --preset bamba-9b -t tg128 -b 1 -r 3 "${u[@]}" --cpu-profile "$RAW/host_b1"
  bench host_tiny 60 --config benches/configs/bamba-9b-layout-tiny-widths.json -t tg128 -b 1 -r 3 "${u[@]}" \
    --cpu-profile "$RAW/host_tiny"
  bench host_b64 100 --preset bamba-9b -t tg16@d8192 -b 64 -r 2 "${u[@]}" --cpu-profile "$RAW/host_b64"
  for f in "$RAW"/host_*.txt; do echo "== $f"; sed -n '1p;/## self/,$p' "$f" | head -14; done
  bench bamba_b64 100 --preset bamba-9b -t tg16@d8192 -b 64 -r 2 "${u[@]}"
  bench llama_b64 100 --preset llama-8b-shape -t tg16@d8192 -b 64 -r 2 "${u[@]}"
  bench bamba_pp 100 --preset bamba-9b -t pp4096 -b 1 -r 2
  BAMBA=.gpu/bamba-s10 bench bamba_b64_s10 100 --preset bamba-9b -t tg16@d8192 -b 64 -r 2 "${u[@]}"
  BAMBA=.gpu/bamba-s10 bench bamba_pp_s10 100 --preset bamba-9b -t pp4096 -b 1 -r 2
  ;;
ncu_s11)
  ncu_step() { # name, launches to skip, launches to profile, bench args...
    local name=$1 skip=$2 count=$3; shift 3
    timeout 150 /usr/local/cuda/bin/ncu --csv --page raw --launch-skip "$skip" --launch-count "$count" \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      .gpu/bamba bench --backend cuda-unfused --warmup 0 -r 1 "$@" > "$RAW/$name.csv" 2> "$RAW/$name.err"
    echo "$name rc=$?"
    python3 scripts/ncu_summary.py "$RAW/$name.csv" | tee "$RAW/$name.txt" | head -16
  }
  ncu_step ncu_b1 12000 580 --preset bamba-9b -t tg64 -b 1
  ncu_step ncu_b64 8000 840 --preset bamba-9b -t tg32@d8192 -b 64 --state-dtype bf16
  ;&
final_s11)
  cuda_tests
  bamba_decode
  bench bamba_pp 60 --preset bamba-9b -t pp4096 -b 1 -r 5
  ;;
diag_s12)
  # Session 12: the GEMV's tuning sweep (BAMBA_GEMV_TUNE=features,unroll,stage: cube rows, loads in
  # flight per lane, x staged in shared memory: 1 with a pre-norm, 2 always) at batch 1, the GEMV
  # tests with staging forced on, and Nsight Compute's launch/occupancy/stall sections of the GEMV
  # (batch 1) and the Mamba step (batch 64 at 8K).
  BAMBA_GEMV_TUNE=8,4,2 timeout 120 .gpu/kernel_tests cuda --test-threads 1 --nocapture gemv > "$RAW/tests_staged.log" 2>&1
  echo "staged gemv tests rc=$?"
  grep -E "panicked|test result|worst" "$RAW/tests_staged.log" | head -6
  u=(--backend cuda-unfused)
  for cfg in 8,4,0 8,4,1 8,4,2 8,8,1 8,8,2 4,8,1 16,8,1 4,4,1; do
    BAMBA_GEMV_TUNE=$cfg bench "sweep_${cfg//,/_}" 40 --preset bamba-9b -t tg64 -b 1 -r 3 "${u[@]}"
  done
  sweep_table "$RAW"/sweep_*.jsonl
  for cfg in 8,4,0 8,8,1; do
    ncu_gemv_b1 "${cfg//,/_}" BAMBA_GEMV_TUNE=$cfg
  done
  sections="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats"
  timeout 120 /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:gemv --launch-skip 270 --launch-count 4 $sections \
    .gpu/bamba bench --backend cuda-unfused --warmup 0 -r 1 --preset bamba-9b -t tg8 -b 1 > "$RAW/ncu_sections_gemv.txt" 2>&1
  echo "ncu gemv sections rc=$?"
  for state in f32 bf16; do
    timeout 150 /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:mamba_step --launch-skip 0 --launch-count 1 $sections \
      --metrics "$NCU_METRICS" .gpu/bamba bench --backend cuda-unfused --warmup 0 -r 1 --preset bamba-9b -t tg2@d8192 -b 64 \
      --state-dtype $state > "$RAW/ncu_sections_step_$state.txt" 2>&1
    echo "ncu step $state rc=$?"
  done
  # The CUDA API calls of batch-64 decode steps at 8K: what the host waits on between kernels.
  NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$NSYS" ]; then
    timeout 150 "$NSYS" profile -o "$RAW/nsys_b64" --force-overwrite true -t cuda --stats=true .gpu/bamba bench \
      --backend cuda-unfused --warmup 1 -r 1 --preset bamba-9b -t tg8@d8192 -b 64 --state-dtype bf16 > "$RAW/nsys_b64.txt" 2>&1
    echo "nsys rc=$?"
    rm -f "$RAW"/nsys_b64.nsys-rep "$RAW"/nsys_b64.sqlite
    grep -A14 "cuda_api_sum" "$RAW/nsys_b64.txt" | cut -c1-150
  else
    echo "no nsys"
  fi
  grep -hE "^  [a-z_]+kernel|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit Reg|Issue Slots Busy|One or More Eligible|Warp Cycles Per Issued|Dynamic Shared" \
    "$RAW"/ncu_sections_*.txt | head -70
  ;;
round2_s12)
  # Session 12: every CUDA test; the GEMV's loads in flight (BAMBA_GEMV_TUNE, 5th value: SwiGLU's)
  # at batch 1; cuBLASLt on CubeCL's stream against the legacy stream (BAMBA_CUBLASLT_STREAM=legacy)
  # at batch 64 and in prefill, same call.
  cuda_tests
  u=(--backend cuda-unfused)
  for cfg in 8,8,1,49152,8 8,16,1,49152,8 8,16,1,49152,4 8,12,1,49152,8 4,16,1,49152,8; do
    BAMBA_GEMV_TUNE=$cfg bench "sweep_${cfg//,/_}" 40 --preset bamba-9b -t tg64 -b 1 -r 3 "${u[@]}"
  done
  for mode in cubecl legacy; do
    BAMBA_CUBLASLT_STREAM=$mode bench "b64_$mode" 80 --preset bamba-9b -t tg16@d8192 -b 64 -r 3 --state-dtype bf16 "${u[@]}"
    BAMBA_CUBLASLT_STREAM=$mode bench "pp_$mode" 60 --preset bamba-9b -t pp4096 -b 1 -r 3
  done
  sweep_table "$RAW"/sweep_*.jsonl "$RAW"/b64_*.jsonl "$RAW"/pp_*.jsonl
  ;;
final_s12)
  # Session 12's landed build: every CUDA test; decode at batch 1, batch 64 at 8K and 32K (f32 and
  # bf16 SSM state) and pp4096, Bamba and Llama shapes; Nsight Compute's kernel times of one
  # batch-64 step at 8K (bf16 state; clocks and caches left as they run).
  cuda_tests
  bamba_decode
  llama_decode
  prefill_both
  timeout 150 /usr/local/cuda/bin/ncu --csv --page raw --clock-control none --cache-control none --launch-skip 3000 \
    --launch-count 420 --metrics "$NCU_METRICS" .gpu/bamba bench --backend cuda-unfused --warmup 0 -r 1 --preset bamba-9b \
    -t tg12@d8192 -b 64 --state-dtype bf16 > "$RAW/ncu_b64.csv" 2> "$RAW/ncu_b64.err"
  echo "ncu b64 rc=$?"
  python3 scripts/ncu_summary.py "$RAW/ncu_b64.csv" | tee "$RAW/ncu_b64.txt" | head -8
  python3 scripts/ncu_launches.py "$RAW/ncu_b64.csv" | grep -E "launches|mamba_step" | tee "$RAW/ncu_b64_step.txt"
  ;;
final2_s12)
  # Session 12, second build: RoPE tables made once per cache; the Mamba step's heads per cube
  # (BAMBA_STEP_HEADS_PER_CUBE 8 and 16 against the default 4) at batch 64; every CUDA test and the
  # `final_s12` runs of both shapes.
  cuda_tests
  bamba_decode
  u=(--backend cuda-unfused)
  for n in 8 16; do
    BAMBA_STEP_HEADS_PER_CUBE=$n bench sweep_b64_hpc$n 80 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 "${u[@]}"
    BAMBA_STEP_HEADS_PER_CUBE=$n bench sweep_b64_bf16_hpc$n 80 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 \
      --state-dtype bf16 "${u[@]}"
  done
  llama_decode
  prefill_both
  sweep_table "$RAW"/sweep_*.jsonl
  ;;
step_s13)
  # Session 13, call 1: the Mamba step with the next head's state rows loaded during the current
  # head's update (BAMBA_STEP_PREFETCH=1, the default) against without (0), same build: every CUDA
  # test, criterion `mamba_decode_step/fused` (f32 and bf16 states, batch 1…256) and batch-64 decode at 8K.
  cuda_tests
  for p in 1 0; do
    BAMBA_STEP_PREFETCH=$p criterion "mamba_decode_step/fused" "step-prefetch$p"
    BAMBA_STEP_PREFETCH=$p bench "sweep_b64_prefetch$p" 80 --preset bamba-9b -t tg16@d8192 -b 64 -r 3 --backend cuda-unfused
    BAMBA_STEP_PREFETCH=$p bench "sweep_b64_bf16_prefetch$p" 80 --preset bamba-9b -t tg16@d8192 -b 64 -r 3 \
      --state-dtype bf16 --backend cuda-unfused
  done
  sweep_table "$RAW"/sweep_*.jsonl
  ;;
kernels_s13)
  # Session 13, call 2: every kernel bench (20 back-to-back calls between device syncs, as torch is
  # timed), the kernels only, and torch's and mamba_ssm's references in the same call.
  timeout 60 .gpu/kernel_tests cuda::causal_attention --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "causal attention test rc=$?"
  grep -E "panicked|test result|worst" "$RAW/tests.log" | head -4
  timeout 60 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"
  criterion "linear_no_bias" linear
  criterion "attention/(prefill|decode_b)" attention
  # Prefill attention in query blocks of 256 and 1024, and in one block (the default is 512).
  for block in 0 256 1024; do
    BAMBA_ATTENTION_QUERY_BLOCK=$block criterion "attention/prefill" "attention-block$block"
    mv "$RAW/attention-block$block-bencher.txt" "$RAW/attention-block$block-criterion.txt"
    BAMBA_ATTENTION_QUERY_BLOCK=$block bench "sweep_pp_block$block" 60 --preset bamba-9b -t pp4096 -b 1 -r 3
    BAMBA_ATTENTION_QUERY_BLOCK=$block bench "sweep_llama_pp_block$block" 60 --preset llama-8b-shape -t pp4096 -b 1 -r 3
  done
  prefill_both
  sweep_table "$RAW"/sweep_*.jsonl
  criterion "mamba_decode_step/fused|ssd_decode_step/kernel|causal_conv1d_silu/kernel" step
  scan_vs_mamba_ssm
  ;;
final_s13)
  # Session 13, the landed build (prefill attention in query blocks of 1024; 2–8-row products on
  # cuBLASLt instead of the GEMV): every CUDA test, the `final_s12` runs of both shapes, batch-4
  # decode with and without the GEMV for 2–8 rows (BAMBA_GEMV_CUBLASLT_FROM_ROWS=9), and what the
  # Mamba step issues (its bf16-state form at batch 64 spent 74% of cycles issuing in session 12).
  cuda_tests
  bamba_decode
  llama_decode
  prefill_both
  u=(--backend cuda-unfused)
  bench bamba_b4 60 --preset bamba-9b -t tg64 -b 4 -r 3 "${u[@]}"
  BAMBA_GEMV_CUBLASLT_FROM_ROWS=9 bench sweep_b4_gemv 60 --preset bamba-9b -t tg64 -b 4 -r 3 "${u[@]}"
  bench llama_b4 60 --preset llama-8b-shape -t tg64 -b 4 -r 3 "${u[@]}"
  sweep_table "$RAW"/bamba_b4.jsonl "$RAW"/sweep_b4_gemv.jsonl "$RAW"/llama_b4.jsonl
  timeout 120 /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:mamba_step --launch-skip 0 --launch-count 1 \
    --section SpeedOfLight --section InstructionStats --section SourceCounters --section WarpStateStats \
    .gpu/bamba bench "${u[@]}" --warmup 0 -r 1 --preset bamba-9b -t tg2@d8192 -b 64 --state-dtype bf16 \
    > "$RAW/ncu_step_instructions.txt" 2>&1
  echo "ncu step instructions rc=$?"
  ;;
ratio_s13)
  # Session 13, same build as `final_s13`: the batch-64 ratios again with 64 steps and 5 repeats per
  # shape (16-step runs of ~0.2 s varied by 4% within one call), and where a batch-4 step goes:
  # Nsight Compute's kernel times over two steps and the host's profile.
  u=(--backend cuda-unfused)
  bench bamba_b64 120 --preset bamba-9b -t tg64@d8192,tg64@d32768 -b 64 -r 5 "${u[@]}"
  bench bamba_b64_bf16 120 --preset bamba-9b -t tg64@d8192,tg64@d32768 -b 64 -r 5 --state-dtype bf16 "${u[@]}"
  bench llama_b64 120 --preset llama-8b-shape -t tg64@d8192 -b 64 -r 5 "${u[@]}"
  bench llama_b64_32k 150 --preset llama-8b-shape -t tg64@d32768 -b 64 -r 5 --memory 110GB "${u[@]}"
  bench host_b4 60 --preset bamba-9b -t tg64 -b 4 -r 3 "${u[@]}" --cpu-profile "$RAW/host_b4"
  sed -n '1p;/## self/,$p' "$RAW"/host_b4-*.txt | head -14
  timeout 150 /usr/local/cuda/bin/ncu --csv --page raw --clock-control none --launch-skip 6000 --launch-count 640 \
    --metrics "$NCU_METRICS" .gpu/bamba bench "${u[@]}" --warmup 0 -r 1 --preset bamba-9b -t tg64 -b 4 \
    > "$RAW/ncu_b4.csv" 2> "$RAW/ncu_b4.err"
  echo "ncu b4 rc=$?"
  python3 scripts/ncu_summary.py "$RAW/ncu_b4.csv" | tee "$RAW/ncu_b4.txt" | head -24
  gzip -f "$RAW/ncu_b4.csv"
  ;;
gemv_rows_s13)
  # Session 13, same build: batch 2, 4 and 8 decode with 2–8-row products on the GEMV
  # (BAMBA_GEMV_CUBLASLT_FROM_ROWS=9) per launch shape (BAMBA_GEMV_TUNE=features,unroll,stage,
  # stage_limit,unroll_swiglu: fewer loads in flight leave registers for the per-row accumulators),
  # against cuBLASLt (the build's default).
  u=(--backend cuda-unfused)
  for cfg in 8,8,1,49152,8 8,4,1,49152,2 8,2,1,49152,2 8,2,1,49152,1 8,1,1,49152,1 4,2,1,49152,1 16,2,1,49152,1 8,2,2,49152,1; do
    BAMBA_GEMV_CUBLASLT_FROM_ROWS=9 BAMBA_GEMV_TUNE=$cfg bench "sweep_b4_gemv_${cfg//,/_}" 40 --preset bamba-9b -t tg64 -b 4 -r 3 "${u[@]}"
  done
  for b in 2 8; do
    bench "sweep_b${b}_cublaslt" 40 --preset bamba-9b -t tg64 -b $b -r 3 "${u[@]}"
    BAMBA_GEMV_CUBLASLT_FROM_ROWS=9 BAMBA_GEMV_TUNE=8,2,1,49152,1 bench "sweep_b${b}_gemv_8_2_1" 40 --preset bamba-9b \
      -t tg64 -b $b -r 3 "${u[@]}"
  done
  sweep_table "$RAW"/sweep_*.jsonl
  ;;
batches_s13)
  # Session 13, same build: decode at batch 1, 2, 4 and 8 in one call (5 repeats of 64 steps), with
  # 2–8-row products on cuBLASLt (the default) and on the GEMV (BAMBA_GEMV_CUBLASLT_FROM_ROWS=9).
  u=(--backend cuda-unfused)
  bench bamba_batches 150 --preset bamba-9b -t tg64 -b 1,2,4,8 -r 5 "${u[@]}"
  BAMBA_GEMV_CUBLASLT_FROM_ROWS=9 bench sweep_batches_gemv 150 --preset bamba-9b -t tg64 -b 2,4,8 -r 5 "${u[@]}"
  sweep_table "$RAW"/bamba_batches.jsonl "$RAW"/sweep_batches_gemv.jsonl
  ;;
landed_s13)
  # Session 13, the landed build (GEMV at 1–2 rows, cuBLASLt from 3): every CUDA test, decode at
  # batch 1, 2, 3, 4, 8 in one process (5 repeats of 64 steps).
  cuda_tests
  bench bamba_batches 200 --preset bamba-9b -t tg64 -b 1,2,3,4,8 -r 5 --backend cuda-unfused
  sweep_table "$RAW"/bamba_batches.jsonl
  ;;
flash_s15)
  # Session 15: prefill attention in one flash kernel (16-bit, tensor cores). Every CUDA test (the flash
  # kernel against the reference; the bf16 fixtures against transformers), prefill attention with it,
  # without it (BAMBA_FLASH_ATTENTION=0) and SDPA in the same call, pp4096 of both shapes with and
  # without it, then parity_s14's fixtures through the CLI in bf16 and f32 and a short bf16 sweep.
  cuda_tests
  grep -E "in BF16 on|causal_attention on" "$RAW/tests.log" | head -6
  timeout 60 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"; grep -i "sdpa" "$RAW/torch.jsonl" | grep -v decode | head -3
  criterion "attention/prefill" attention
  BAMBA_FLASH_ATTENTION=0 criterion "attention/prefill" attention-materialized
  prefill_both
  BAMBA_FLASH_ATTENTION=0 bench sweep_pp_materialized 60 --preset bamba-9b -t pp4096 -b 1 -r 3
  BAMBA_FLASH_ATTENTION=0 bench sweep_llama_pp_materialized 60 --preset llama-8b-shape -t pp4096 -b 1 -r 3
  sweep_table "$RAW"/bamba_pp.jsonl "$RAW"/llama_pp.jsonl "$RAW"/sweep_*.jsonl
  criterion "mamba_decode_step/fused" step
  for dt in bf16 f32; do
    timeout 60 python3 scripts/check_parity.py .gpu/bamba --backend cuda --dtype $dt > "$RAW/fixtures_$dt.txt" 2>&1
    echo "fixtures $dt rc=$?"; tail -3 "$RAW/fixtures_$dt.txt"
  done
  timeout 90 python3 scripts/sweep_parity.py .gpu/bamba --backend cuda --dtype bf16 --configs 3 > "$RAW/sweep_bf16.txt" 2>&1
  echo "sweep bf16 rc=$?"; grep -E "FAIL|^sweep" "$RAW/sweep_bf16.txt" | tail -4
  ;;
diag_s16)
  m=tests/fixtures/bf16_sharded
  i=0
  for ids in $(python3 -c "from safetensors import safe_open; f = safe_open('$m/reference.safetensors', 'pt'); [print(','.join(map(str, f.get_tensor(f'prompt_{i}.ids').tolist()))) for i in range(3)]"); do
    for v in cuda:bf16 cuda-unfused:bf16 cuda:f16 cuda:f32; do
      timeout 60 .gpu/bamba logits --model $m --backend ${v%%:*} --dtype ${v##*:} --prompt-ids $ids --hidden-states \
        --out "$RAW/hidden_p${i}_${v%%:*}_${v##*:}.safetensors" 2>> "$RAW/hidden.err"
      echo "hidden p$i $v rc=$?"
    done
    i=$((i + 1))
  done
  ncu_flash --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section InstructionStats
  ;;
flash_s16)
  timeout 150 .gpu/kernel_tests cuda_prefill cuda::causal_attention --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "attention tests rc=$?"; grep -E "panicked|test result|worst|growing" "$RAW/tests.log" | head -8
  flash_comparison
  ncu_flash
  # the CUDA source CubeCL generated for it, ptxas' registers and the SASS opcode counts
  BAMBA_FLASH_ATTENTION=1 CUBECL_DEBUG_LOG=/tmp/cubecl.log timeout 120 .gpu/bamba bench --backend cuda-unfused --warmup 0 -r 1 \
    --preset bamba-9b -t pp512 -b 1 > /dev/null 2>&1
  python3 scripts/kernel_sass.py /tmp/cubecl.log flash_attention_kernel "$RAW/sass" 2>&1 | tail -4
  rm -f "$RAW"/sass/*.cubin
  ;;
ssd_s17)
  # Session 17: the scan's chunk-state and output kernels on `mma.sync` fragments. Its tests, then
  # mamba_ssm's chain, this build's and the previous build's (.gpu/kernel_bench-old) criterion scan
  # bench in the same call, pp4096 with this build and the previous one (.gpu/bamba-old), and Nsight
  # Compute's sections of one launch of each new kernel at 32K.
  ssd_tests
  scan_vs_mamba_ssm
  timeout 200 .gpu/kernel_bench-old --bench --output-format bencher "ssd_chunk_scan/kernel" > "$RAW/ssd-old-criterion.txt" 2>&1
  grep "^test" "$RAW/ssd-old-criterion.txt"
  bench bamba_pp 60 --preset bamba-9b -t pp4096 -b 1 -r 5
  BAMBA=.gpu/bamba-old bench bamba_pp_old 60 --preset bamba-9b -t pp4096 -b 1 -r 5
  sweep_table "$RAW"/bamba_pp.jsonl "$RAW"/bamba_pp_old.jsonl
  ncu_ssd
  ;;
ssd2_s17)
  # Session 17, call 2: the landed candidate (`C·Bᵀ` on fragments too, stored in fragment order; pair
  # loads and stores in the output kernel; the chunk-state kernel's next step loaded during the
  # products, BAMBA_SSD_PREFETCH=0 turns that off): the scan tests, mamba_ssm's chain, then the scan
  # bench of this build (prefetch on and off), of the intermediate build (.gpu/kernel_bench-b: pairs and
  # prefetch, `C·Bᵀ` still on `wmma`) and of session 16's (.gpu/kernel_bench-old) in the same call;
  # pp4096; Nsight Compute's sections of the three fragment kernels at 32K.
  ssd_tests
  scan_vs_mamba_ssm
  # a name the summary does not read (it takes every *bencher*.txt)
  BAMBA_SSD_PREFETCH=0 criterion "ssd_chunk_scan/kernel" ssd-no-prefetch
  mv "$RAW/ssd-no-prefetch-bencher.txt" "$RAW/ssd-no-prefetch-criterion.txt"
  scan_of_builds b old
  ;;
ssd_s18)
  # Session 18: the scan with its chunk-state column blocks adjacent in the grid (x read once from
  # DRAM), the decay below the output kernel's diagonal block as row × column factors (one exp per
  # row and column instead of per element), and y stored in the input dtype (bf16: half the bytes).
  # Every CUDA test (y's dtype reaches the model), mamba_ssm's chain, then the scan bench of this
  # build, of the build without the bf16 y (.gpu/kernel_bench-a) and of session 17's
  # (.gpu/kernel_bench-old) in the same call; pp4096; Nsight Compute at 32K.
  cuda_tests
  grep -E "ssd_chunk_scan on|in BF16 on" "$RAW/tests.log" | grep -oE "ssd_chunk_scan on.*|[0-9.]+ of transformers" | sort | tail -4
  scan_vs_mamba_ssm
  scan_of_builds a old
  ;;
ssd2_s18)
  # Session 18, call 2: a build (not landed: slower) whose output kernel took two 16-row tiles per plane
  # (each B fragment loaded from shared memory serving two products); BAMBA_SSD_ROW_TILES=1 ran the
  # landed one-tile kernel.
  # Every CUDA test, mamba_ssm's chain, the scan bench with 2 and 1 tiles and of session 17's binary in
  # the same call, pp4096, Nsight Compute at 32K.
  cuda_tests
  grep -E "ssd_chunk_scan on|in BF16 on" "$RAW/tests.log" | grep -oE "ssd_chunk_scan on.*|[0-9.]+ of transformers" | sort | tail -4
  scan_vs_mamba_ssm
  BAMBA_SSD_ROW_TILES=1 criterion "ssd_chunk_scan/kernel" ssd-one-tile
  mv "$RAW/ssd-one-tile-bencher.txt" "$RAW/ssd-one-tile-criterion.txt"
  scan_of_builds old
  ;;
tests_s22)
  # Session 22, call 4: every CUDA test (the landed scan, with the tensor-core scan's new case of 3 heads to
  # a group; the RMSNorm holding a unit's first two vectors in registers, with a new 4099-wide case);
  # Nsight Compute's GPU time of the gated norm in criterion's batch-1 fused step, this build's and the
  # landed build's (.gpu/kernel_bench-landed); batch-1 decode with this build and the landed one
  # (.gpu/bamba-landed) in turn, two rounds.
  cuda_tests
  ncu_times norm-b1 "rms_norm" "mamba_decode_step/fused/1\$"
  ncu_times norm-b1-landed "rms_norm" "mamba_decode_step/fused/1\$" .gpu/kernel_bench-landed
  for n in 1 2; do
    bench "bamba_b1_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 --backend cuda-unfused
    BAMBA=.gpu/bamba-landed bench "bamba_b1_landed_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 --backend cuda-unfused
  done
  sweep_table "$RAW"/bamba_b1*.jsonl
  ;;
ssd_s22|ssd2_s22|ssd3_s22)
  # Session 22, calls 1–3 (builds not landed): the SSD output kernel's operands through a two-stage
  # pipeline of asynchronous copies (cp.async into shared memory, a barrier per buffer; call 1: one head
  # per cube, state stages of 32 d_state columns), with two heads of a group per cube (call 2: the staged
  # C and C·Bᵀ pairs shared; call 3: state stages of 64 columns at two heads per cube, the column weights
  # read in pairs). The scan tests; two rounds ($RAW/r1, r2) of mamba_ssm's chain, this build's scan
  # bench, from call 2 the same with one head per cube (BAMBA_SSD_HEADS_PER_CUBE=1: call 1's kernel),
  # and the landed build's (.gpu/kernel_bench-landed, session 18's output kernel), in turn; pp4096;
  # Nsight Compute's sections at 32K.
  ssd_tests
  base=$RAW
  for n in 1 2; do
    RAW=$base/r$n; mkdir -p "$RAW"
    scan_vs_mamba_ssm
    [ "$part" = ssd_s22 ] || criterion_of ssd-hpc1 .gpu/kernel_bench "ssd_chunk_scan/kernel" BAMBA_SSD_HEADS_PER_CUBE=1
    criterion_of ssd-landed .gpu/kernel_bench-landed "ssd_chunk_scan/kernel"
  done
  RAW=$base
  bench bamba_pp 60 --preset bamba-9b -t pp4096 -b 1 -r 5
  sweep_table "$RAW"/bamba_pp.jsonl
  ncu_ssd
  ;;
ssd_s21)
  # Session 21, call 2 (a build not landed: 168 registers, slower): the SSD output kernel with every stage's global loads issued one stage ahead
  # (software pipelining: C and S_in's next columns, x's next block with its dt/cum, the next 16
  # positions' C·Bᵀ pairs). The scan tests; mamba_ssm's chain beside this build's scan bench and the
  # previous build's (.gpu/kernel_bench-old, same scan as session 18) in the same call; pp4096;
  # Nsight Compute's sections at 32K.
  ssd_tests
  scan_vs_mamba_ssm
  scan_of_builds old
  ;;
step_s21)
  # Session 21, call 1: the Mamba step's heads per cube chosen by batch (1 at batch 1, where 4 left 128
  # cubes for 132 SMs). Every CUDA test; batch-1 decode with the new choice and
  # with 4 and 2 heads per cube (BAMBA_STEP_HEADS_PER_CUBE) in turn; Nsight Compute's GPU time of the
  # step kernel at batch 1, 4 and 16 each way.
  cuda_tests
  for n in 1 2; do
    bench "bamba_b1_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 --backend cuda-unfused
    BAMBA_STEP_HEADS_PER_CUBE=4 bench "bamba_b1_hpc4_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 --backend cuda-unfused
    BAMBA_STEP_HEADS_PER_CUBE=2 bench "bamba_b1_hpc2_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 --backend cuda-unfused
  done
  sweep_table "$RAW"/bamba_b1*.jsonl
  for b in 1 4 16; do
    ncu_times "step-b$b" "mamba_step" "mamba_decode_step/fused/$b\$"
    BAMBA_STEP_HEADS_PER_CUBE=4 ncu_times "step-b$b-hpc4" "mamba_step" "mamba_decode_step/fused/$b\$"
  done
  ;;
batches_s21)
  # Session 21, call 3: batch 2 and 4 decode (Bamba-9B) with the heads per cube chosen by batch (1 at batch 2,
  # 2 at batch 4) and with the old 4 (BAMBA_STEP_HEADS_PER_CUBE=4), in turn, two rounds.
  for n in 1 2; do
    for b in 2 4; do
      bench "bamba_b${b}_$n" 40 --preset bamba-9b -t tg128 -b "$b" -r 3 --backend cuda-unfused
      BAMBA_STEP_HEADS_PER_CUBE=4 bench "bamba_b${b}_hpc4_$n" 40 --preset bamba-9b -t tg128 -b "$b" -r 3 --backend cuda-unfused
    done
  done
  sweep_table "$RAW"/bamba_b*.jsonl
  ;;
step_s20)
  # Session 20, call 4: the Mamba step reading the conv weight at its row stride (CUDA pitches its 8-byte
  # rows; it was copied every layer and step). The step's and the models' CUDA tests; the launch order of
  # a decode step; batch-1 decode of both shapes; Bamba's batch-64 decode at 8K and 32K.
  for t in cuda::mamba_decode_step_matches_the_composition cuda::model_matches_transformers cuda::half_precision_model_matches_transformers cuda::tiny_model_generates_like_transformers; do
    timeout 100 .gpu/kernel_tests "$t" --exact --test-threads 1 --nocapture >> "$RAW/tests.log" 2>&1
    echo "$t rc=$?"
  done
  grep -E "panicked|test result|on fusion" "$RAW/tests.log" | cut -c1-200
  launch_order
  for n in 1 2; do
    bench "bamba_b1_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 --backend cuda-unfused
    bench "llama_b1_$n" 40 --preset llama-8b-shape -t tg128 -b 1 -r 3 --backend cuda-unfused
  done
  bench bamba_b64 80 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 --backend cuda-unfused
  bench bamba_b64_bf16 80 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 --state-dtype bf16 --backend cuda-unfused
  sweep_table "$RAW"/*.jsonl
  ;;
ratio_s20)
  # Session 20, call 3 (call 2's binaries): the CUDA test call 2's 200 s limit cut (the pinned weight
  # upload), and batch-64 decode of both shapes at 8K and 32K with RoPE as one kernel.
  timeout 100 .gpu/kernel_tests cuda_weights_upload_through_pinned_buffers --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "upload test rc=$?"; grep -E "panicked|test result" "$RAW/tests.log"
  bamba_decode
  llama_decode
  sweep_table "$RAW"/*.jsonl
  ;;
rope_s20)
  # Session 20, call 2: RoPE as one kernel per tensor (BambaOps::rope; BAMBA_ROPE_KERNEL=0 runs the ten
  # Burn ops as before) and no copy of decode attention's output. Every CUDA test; batch-1 decode of
  # both shapes each way in turn and the host's time per step (the 32-layer plans at tiny widths);
  # the launch order of a decode step (CubeCL's profile log); the GEMV's criterion (100 calls per
  # sync) with the copy rate of this call; batch-64 decode at 8K of both shapes.
  cuda_tests
  u=(--backend cuda-unfused)
  for n in 1 2; do
    for shape in bamba-9b llama-8b-shape; do
      bench "${shape%%-*}_b1_rope_$n" 40 --preset $shape -t tg128 -b 1 -r 3 "${u[@]}"
      BAMBA_ROPE_KERNEL=0 bench "${shape%%-*}_b1_ops_$n" 40 --preset $shape -t tg128 -b 1 -r 3 "${u[@]}"
    done
  done
  for layout in bamba llama; do
    bench "overhead_${layout}_rope" 40 --config benches/configs/$layout-*-layout-tiny-widths.json -t tg128 -b 1 -r 3 "${u[@]}"
    BAMBA_ROPE_KERNEL=0 bench "overhead_${layout}_ops" 40 --config benches/configs/$layout-*-layout-tiny-widths.json -t tg128 -b 1 -r 3 "${u[@]}"
  done
  launch_order
  torch_refs '"copy"|"gemv", "m": 1,'
  criterion 'linear_no_bias/n[0-9]+_k[0-9]+/1$' gemv
  bench bamba_b64 60 --preset bamba-9b -t tg16@d8192 -b 64 -r 3 "${u[@]}"
  bench bamba_b64_bf16 60 --preset bamba-9b -t tg16@d8192 -b 64 -r 3 --state-dtype bf16 "${u[@]}"
  bench llama_b64 60 --preset llama-8b-shape -t tg16@d8192 -b 64 -r 3 "${u[@]}"
  sweep_table "$RAW"/*.jsonl
  ;;
gemv_s20)
  # Session 20: the decode GEMV issuing its first weight loads before the pre-norm and the staging of x
  # (BAMBA_GEMV_TUNE's 6th value: 1 prefetch, the new default; 0 as before). The GEMV tests; batch-1
  # decode each way in turn, and with x staged for every GEMV (`,,2`); Nsight Compute's in-model GEMV
  # time per launch shape each way, its stall sections (in_proj, out_proj), and every kernel of two
  # batch-1 decode steps (the GPU time a step pays, against its measured time); the plain GEMV's GPU time
  # per decode shape beside cuBLAS's (Nsight Compute both), torch's references, criterion (now 100
  # calls per sync).
  timeout 120 .gpu/kernel_tests cuda --test-threads 1 --nocapture gemv > "$RAW/tests.log" 2>&1
  echo "gemv tests rc=$?"
  grep -E "panicked|test result" "$RAW/tests.log" | head -4
  u=(--backend cuda-unfused)
  for n in 1 2; do
    bench "bamba_b1_prefetch_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 "${u[@]}"
    BAMBA_GEMV_TUNE=,,,,,0 bench "bamba_b1_noprefetch_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 "${u[@]}"
    BAMBA_GEMV_TUNE=,,2 bench "bamba_b1_stage2_$n" 40 --preset bamba-9b -t tg128 -b 1 -r 3 "${u[@]}"
  done
  for cfg in prefetch:,,,,,1 noprefetch:,,,,,0; do
    ncu_gemv_b1 "${cfg%%:*}" BAMBA_GEMV_TUNE=${cfg#*:}
  done
  sections="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats"
  timeout 100 /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:gemv --launch-skip 270 --launch-count 4 $sections \
    .gpu/bamba bench "${u[@]}" --warmup 0 -r 1 --preset bamba-9b -t tg8 -b 1 > "$RAW/ncu_sections_gemv.txt" 2>&1
  echo "ncu gemv sections rc=$?"
  grep -E "^  gemv|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|This stall type" "$RAW/ncu_sections_gemv.txt" | head -32
  timeout 150 /usr/local/cuda/bin/ncu --csv --page raw --clock-control none --launch-skip 3000 --launch-count 600 \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum .gpu/bamba bench "${u[@]}" --warmup 0 -r 1 \
    --preset bamba-9b -t tg64 -b 1 > "$RAW/ncu_b1.csv" 2> "$RAW/ncu_b1.err"
  echo "ncu b1 rc=$?"
  python3 scripts/ncu_summary.py "$RAW/ncu_b1.csv" | tee "$RAW/ncu_b1.txt" | head -20
  # The plain GEMV's GPU time per decode shape beside cuBLAS's, both by Nsight Compute (clocks unlocked).
  for shape in n16768_k4096 n28672_k4096 n4096_k4096 n4096_k8192 n4096_k14336 n128256_k4096; do
    ncu_times "gemv-$shape" gemv "linear_no_bias/$shape/1\$" > /dev/null
    tail -n +2 "$RAW/ncu-gemv-$shape.txt"
  done
  timeout 100 /usr/local/cuda/bin/ncu --csv --page raw --clock-control none --metrics "$NCU_METRICS" \
    python3 scripts/torch_gemv_launches.py > "$RAW/ncu-cublas-gemv.csv" 2> "$RAW/ncu-cublas-gemv.err"
  echo "ncu cublas rc=$?"
  python3 scripts/ncu_launches.py "$RAW/ncu-cublas-gemv.csv" | tee "$RAW/ncu-cublas-gemv.txt" | head -12
  torch_refs '"copy"|"gemv", "m": 1,'
  criterion_of gemv-per-sync-100 .gpu/kernel_bench 'linear_no_bias/n[0-9]+_k[0-9]+/1$'
  sweep_table "$RAW"/bamba_b1_*.jsonl
  ;;
step_s19)
  # Session 19: the Mamba step with the state loads of several heads in flight (a ring of
  # BAMBA_STEP_SLOTS heads, default 2; session 18 loaded one head at a time) and kept in the state's
  # dtype until used. The step's CUDA tests; criterion's fused step (f32 and bf16 state, batch 16 / 64
  # / 256) of session 18's build (.gpu/kernel_bench-s18) and of this one at several slot counts and
  # heads per cube, in one call; Nsight Compute's GPU time of the step and norm kernels (criterion's
  # batch-16 time is the host's); then the decode GEMV's launch shapes (BAMBA_GEMV_TUNE) on the
  # batch-1 shapes beside cuBLAS, and decode attention's split target and keys in flight
  # (BAMBA_DECODE_ATTENTION_TUNE) at batch 16 and 64, 8K keys.
  for t in cuda::mamba_decode_step_matches_the_composition cuda::ssd_decode_step_matches_the_reference; do
    timeout 100 .gpu/kernel_tests "$t" --exact --test-threads 1 --nocapture >> "$RAW/tests.log" 2>&1
    echo "$t rc=$?"
  done
  grep -E "panicked|test result" "$RAW/tests.log" | head -6
  steps='mamba_decode_step/fused.*/(16|64|256)$'
  criterion_of step-s18 .gpu/kernel_bench-s18 "$steps"
  criterion_of step-slots1 .gpu/kernel_bench "$steps" BAMBA_STEP_SLOTS=1
  criterion_of step-slots2 .gpu/kernel_bench "$steps" BAMBA_STEP_SLOTS=2
  criterion_of step-slots4 .gpu/kernel_bench "$steps" BAMBA_STEP_SLOTS=4
  criterion_of step-hpc8_slots4 .gpu/kernel_bench "$steps" BAMBA_STEP_HEADS_PER_CUBE=8 BAMBA_STEP_SLOTS=4
  ncu_times s18-b16 "mamba_step|rms_norm" 'mamba_decode_step/fused/16$' .gpu/kernel_bench-s18
  ncu_times new-b16 "mamba_step|rms_norm" 'mamba_decode_step/fused/16$'
  for tune in 8192,4 16384,4 8192,8 16384,8 32768,4; do
    criterion_of "attention-$tune" .gpu/kernel_bench 'attention/decode_b(16|64)/8192$' BAMBA_DECODE_ATTENTION_TUNE=$tune
  done
  for tune in 8,8 8,12 8,16 4,16; do
    criterion_of "gemv-$tune" .gpu/kernel_bench 'linear_no_bias/n[0-9]+_k[0-9]+/1$' BAMBA_GEMV_TUNE=$tune
  done
  torch_refs '"copy"|"gemv", "m": 1,|sdpa_decode'
  ;;
kernels_s19)
  # Session 19, call 2: decode attention's combine with the splits shared by a cube's units (one
  # unit per output vector walked every split before), and the GEMV with the features of products
  # with few outputs split over several rows of lanes (BAMBA_GEMV_TUNE's 6th value, the rows a launch
  # aims at: 1 turns it off). Every CUDA test; criterion's decode attention and batch-1 GEMV shapes of
  # session 18's build (.gpu/kernel_bench-s18) and of this one, without and with the split; cuBLAS and
  # SDPA; Nsight Compute's times of the attention kernels at batch 16; batch-1 decode with and
  # without the split, in turn.
  cuda_tests
  attn='attention/decode_b[0-9]+/'
  gemv='linear_no_bias/n[0-9]+_k[0-9]+/1$'
  criterion_of attention-s18 .gpu/kernel_bench-s18 "$attn"
  criterion_of attention-new .gpu/kernel_bench "$attn"
  criterion_of gemv-s18 .gpu/kernel_bench-s18 "$gemv"
  criterion_of gemv-new .gpu/kernel_bench "$gemv"
  criterion_of gemv-new-nosplit .gpu/kernel_bench "$gemv" BAMBA_GEMV_TUNE=,,,,,1
  criterion_of gemv-new-16k .gpu/kernel_bench "$gemv" BAMBA_GEMV_TUNE=,,,,,16384
  ncu_times attention-b16 "split_kernel|combine_kernel" 'attention/decode_b16/8192$'
  torch_refs '"copy"|"gemv", "m": 1,|sdpa_decode'
  for n in 1 2; do
    bench "bamba_b1_split_$n" 60 --preset bamba-9b -t tg128 -b 1 -r 5 --backend cuda-unfused
    BAMBA_GEMV_TUNE=,,,,,1 bench "bamba_b1_nosplit_$n" 60 --preset bamba-9b -t tg128 -b 1 -r 5 --backend cuda-unfused
  done
  sweep_table "$RAW"/bamba_b1_*.jsonl
  ;;
final_s19)
  # Session 19, call 3: a build (not landed: no register or time change) whose decode attention split
  # kernel held the query as loaded (bf16) beside the landed combine. Every CUDA test;
  # criterion's decode attention of session 18's build and of this one beside SDPA; Nsight Compute's
  # GPU time of the attention kernels (batch 16) and of the fused Mamba step and its gated norm
  # (batch 16, 64, 256); batch-1 decode of both shapes.
  cuda_tests
  attn='attention/decode_b[0-9]+/'
  # (session 18's under a name the summary does not read; this build's as attention-bencher.txt)
  criterion_of attention-s18 .gpu/kernel_bench-s18 "$attn"
  criterion "$attn" attention
  ncu_times attention-b16 "split_kernel|combine_kernel" 'attention/decode_b16/8192$'
  for b in 16 64 256; do # the fused Mamba step's GPU time (criterion's batch-16 time is the host's)
    ncu_times "step-b$b" "mamba_step|rms_norm" "mamba_decode_step/fused/$b\$"
  done
  torch_refs '"copy"|sdpa_decode'
  bench bamba_b1 60 --preset bamba-9b -t tg128 -b 1 -r 5 --backend cuda-unfused
  bench llama_b1 60 --preset llama-8b-shape -t tg128 -b 1 -r 5 --backend cuda-unfused
  ;;
host_s19)
  # Session 19, call 4 (run 3's binaries): is the Llama shape's batch-1 decode (65.8 tok/s in run 3, 105.4 in
  # session 13) bound by the host here? Host time per decode step of the 32-layer plans with tiny widths
  # (Bamba's layout and the Llama shape's, kernels taking ~nothing) beside both shapes' batch-1 decode.
  for n in 1 2; do
    bench "overhead_bamba_$n" 60 --config benches/configs/bamba-9b-layout-tiny-widths.json -t tg128 -b 1 -r 3 --backend cuda-unfused
    bench "overhead_llama_$n" 60 --config benches/configs/llama-8b-layout-tiny-widths.json -t tg128 -b 1 -r 3 --backend cuda-unfused
    bench "llama_b1_$n" 60 --preset llama-8b-shape -t tg128 -b 1 -r 3 --backend cuda-unfused
  done
  bench bamba_b1 60 --preset bamba-9b -t tg128 -b 1 -r 3 --backend cuda-unfused
  sweep_table "$RAW"/*.jsonl
  ;;
repeat_s18)
  # Session 18, call 3: the landed scan against mamba_ssm's chain three times in turn in one call (their
  # 32K times moved 12% between calls 1 and 2): $RAW/rN/mamba_ssm.jsonl and ssd-bencher.txt. Run with the
  # landed build's kernel_bench only.
  base=$RAW
  for n in 1 2 3; do
    RAW=$base/r$n; mkdir -p "$RAW"
    scan_vs_mamba_ssm
  done
  RAW=$base
  ;;
final_s17)
  # Session 17, call 3: the landed build (chunk-state without the prefetch, staging shared with the flash
  # kernel): every CUDA test, mamba_ssm's chain beside the scan bench, the flash prefill bench beside
  # SDPA, pp4096 of both shapes, batch-1 decode.
  cuda_tests
  grep -E "ssd_chunk_scan on|causal_attention on|growing|in BF16 on" "$RAW/tests.log" | cut -c1-150 | head -8
  scan_vs_mamba_ssm
  timeout 60 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"; grep "sdpa_prefill" "$RAW/torch.jsonl" | cut -c1-100 | head -3
  criterion "attention/prefill" attention
  prefill_both
  bench bamba_b1 60 --preset bamba-9b -t tg128 -b 1 -r 5 --backend cuda-unfused
  sweep_table "$RAW"/bamba_pp.jsonl "$RAW"/llama_pp.jsonl "$RAW"/bamba_b1.jsonl
  ;;
final_s16)
  cuda_tests
  grep -E "in BF16 on" "$RAW/tests.log" | grep -o "[0-9.]* of transformers" | sort -n | tail -2
  grep -E "causal_attention on|growing" "$RAW/tests.log" | head -4
  timeout 60 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"; grep "sdpa_prefill" "$RAW/torch.jsonl" | head -3
  criterion "attention/prefill" attention
  BAMBA_FLASH_ATTENTION=0 timeout 200 .gpu/kernel_bench --bench --output-format bencher "attention/prefill" > "$RAW/attention-materialized.txt" 2>&1
  grep "^test" "$RAW/attention-materialized.txt"
  prefill_both
  bench bamba_b1 60 --preset bamba-9b -t tg128 -b 1 -r 5 --backend cuda-unfused
  sweep_table "$RAW"/bamba_pp.jsonl "$RAW"/llama_pp.jsonl "$RAW"/bamba_b1.jsonl
  ;;
check_s16)
  cuda_tests
  grep -E "in BF16 on" "$RAW/tests.log" | grep -o "[0-9.]* of transformers" | sort -n | tail -3
  grep -E "^test .*(ok|FAILED)$" "$RAW/tests.log" | sed 's/^test //' | tail -25
  ;;
diag_s15)
  # Session 15, call 2: the flash kernel with a lazily moved row maximum (its tests, prefill attention
  # with and without it beside SDPA, pp4096 of both shapes), then where random configs in bf16 lose
  # parity on CUDA (flash_s15's sweep: 30x transformers' bf16 floor): one 7-token prompt of two
  # configs per variant (fused, unfused, without cuBLASLt/flash/tensor-core scan, f16, f32).
  timeout 120 .gpu/kernel_tests cuda::causal_attention cuda_prefill --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "attention tests rc=$?"; grep -E "panicked|test result|worst|growing" "$RAW/tests.log" | head -6
  criterion "attention/prefill" attention
  prefill_both
  sweep_table "$RAW"/bamba_pp.jsonl "$RAW"/llama_pp.jsonl
  variant() { # name, dtype, backend, env...
    local name=$1 dt=$2 be=$3; shift 3
    env "$@" timeout 60 python3 scripts/sweep_parity.py .gpu/bamba --backend $be --dtype $dt --configs 2 --lengths 7 \
      --keep "$RAW/ckpt_$name" > "$RAW/variant_$name.txt" 2>&1
    echo "variant $name rc=$?"; grep -E "^ +[0-9]+ [AM]+ " "$RAW/variant_$name.txt"
  }
  variant bf16 bf16 cuda
  variant bf16_unfused bf16 cuda-unfused
  variant bf16_plain bf16 cuda BAMBA_CUBLASLT=0 BAMBA_FLASH_ATTENTION=0 BAMBA_SSD_TENSOR_CORES=0
  variant f16 f16 cuda
  variant f32 f32 cuda
  rm -rf "$RAW"/ckpt_bf16_* "$RAW"/ckpt_f*
  timeout 60 .gpu/kernel_tests cuda::half_precision_model --test-threads 1 --nocapture > "$RAW/half.log" 2>&1
  echo "half precision test rc=$?"; grep -E "bf16_sharded|panicked" "$RAW/half.log" | head -4
  BAMBA_CUBLASLT=0 timeout 60 .gpu/kernel_tests cuda::half_precision_model --test-threads 1 --nocapture > "$RAW/half_nolt.log" 2>&1
  echo "half precision test without cuBLASLt rc=$?"; grep -E "bf16_sharded|panicked" "$RAW/half_nolt.log" | head -4
  ;;
final_s15)
  # Session 15, call 3: the flash kernel with 16-byte stages. Every CUDA test; SDPA, prefill attention
  # with the flash kernel and without it, pp4096 of both shapes each way (same call); batch-1 decode;
  # random configs in bf16 and f32 against this machine's transformers (5.17: G = 1 configs only).
  cuda_tests
  grep -E "causal_attention on|growing|in BF16 on" "$RAW/tests.log" | sort -t= -k2 | tail -5
  flash_comparison
  bench bamba_b1 60 --preset bamba-9b -t tg128 -b 1 -r 5 --backend cuda-unfused
  sweep_table "$RAW"/bamba_b1.jsonl
  for dt in bf16 f32; do
    timeout 90 python3 scripts/sweep_parity.py .gpu/bamba --backend cuda --dtype $dt --configs 3 --lengths 7,150 \
      > "$RAW/sweep_$dt.txt" 2>&1
    echo "sweep $dt rc=$?"; grep -E "^ +[0-9]+ [AM]+ |^sweep|G = 1" "$RAW/sweep_$dt.txt" | tail -8
  done
  ;;
parity_s14)
  # Session 14: bf16 end to end against transformers. Every CUDA test (among them the fixtures in bf16
  # within 2.5x transformers' own bf16 error), the fixtures through `bamba logits|generate` in bf16 and
  # f32, and random configs (scripts/sweep_parity.py, transformers on this machine's CPU) in bf16 and f32.
  cuda_tests
  grep -E "in BF16 on" "$RAW/tests.log" | sort -t= -k2 | tail -4
  for dt in bf16 f32; do
    timeout 120 python3 scripts/check_parity.py .gpu/bamba --backend cuda --dtype $dt > "$RAW/fixtures_$dt.txt" 2>&1
    echo "fixtures $dt rc=$?"; tail -4 "$RAW/fixtures_$dt.txt"
    timeout 150 python3 scripts/sweep_parity.py .gpu/bamba --backend cuda --dtype $dt --configs 8 \
      > "$RAW/sweep_$dt.txt" 2>&1
    echo "sweep $dt rc=$?"; grep -E "FAIL|^sweep" "$RAW/sweep_$dt.txt" | tail -4
  done
  ;;
decode_s11)
  timeout 260 .gpu/kernel_tests cuda --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "panicked|test result|mamba_decode_step on|swiglu_linear" "$RAW/tests.log" | head -12
  u=(--backend cuda-unfused)
  bench bamba_b1 60 --preset bamba-9b -t tg128 -b 1 -r 5 "${u[@]}" --cpu-profile "$RAW/host_b1"
  sed -n '1p;/## self/,$p' "$RAW"/host_b1-*.txt | head -8
  bench bamba_tiny_b1 60 --config benches/configs/bamba-9b-layout-tiny-widths.json -t tg128 -b 1 -r 5 "${u[@]}"
  bench llama_b1 60 --preset llama-8b-shape -t tg128 -b 1 -r 5 "${u[@]}"
  bench bamba_b64 80 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 "${u[@]}"
  bench bamba_b64_bf16 80 --preset bamba-9b -t tg16@d8192,tg16@d32768 -b 64 -r 3 --state-dtype bf16 "${u[@]}"
  bench llama_b64 60 --preset llama-8b-shape -t tg16@d8192 -b 64 -r 3 "${u[@]}"
  bench llama_b64_32k 60 --preset llama-8b-shape -t tg16@d32768 -b 64 -r 3 --memory 110GB "${u[@]}"
  bench bamba_pp 60 --preset bamba-9b -t pp4096 -b 1 -r 5
  bench llama_pp 60 --preset llama-8b-shape -t pp4096 -b 1 -r 5
  ;;
stream)
  # Session 10: cuBLASLt on the legacy stream (no host syncs, any row count) and pinned weight uploads.
  # Every CUDA test in one process, then prefill and batch-64 decode; last, prefill with the previous
  # build (a gzipped .gpu/bamba-s9, with host syncs around cuBLASLt from 2048 rows) for a same-call
  # comparison.
  timeout 260 .gpu/kernel_tests cuda --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "panicked|test result|chained products" "$RAW/tests.log" | head -12
  bench bamba_pp 150 --preset bamba-9b -t pp512,pp4096 -b 1 -r 2
  bench bamba_b64 100 --preset bamba-9b -t tg16@d8192 -b 64 -r 2 --backend cuda-unfused
  bench llama_b64 100 --preset llama-8b-shape -t tg16@d8192 -b 64 -r 2 --backend cuda-unfused
  [ -x .gpu/bamba-s9 ] && BAMBA=.gpu/bamba-s9 bench bamba_pp_s9 120 --preset bamba-9b -t pp512,pp4096 -b 1 -r 2
  ;;
attention)
  # Session 10: the causal softmax kernel of prefill attention. Every CUDA test, criterion prefill
  # attention against SDPA (torch, same call), prefill of both shapes.
  timeout 260 .gpu/kernel_tests cuda --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "panicked|test result|causal_attention on" "$RAW/tests.log" | head -12
  criterion "attention/prefill"
  timeout 90 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"
  grep -h sdpa_prefill "$RAW/torch.jsonl"
  bench bamba_pp 150 --preset bamba-9b -t pp512,pp4096 -b 1 -r 2
  bench llama_pp 150 --preset llama-8b-shape -t pp512,pp4096 -b 1 -r 2
  ;;
ssd_prefill)
  bench bamba_pp 200 --preset bamba-9b -t pp512,pp4096 -b 1 -r 2
  BAMBA_SSD_TENSOR_CORES=0 bench portable_scan_pp 200 --preset bamba-9b -t pp4096 -b 1 -r 2
  ;;
profile)
  # Host->device copy rates the loader can hope for, pageable vs pinned (torch, same card).
  timeout 60 python3 - <<'PY' 2>&1 | tee "$RAW/h2d.txt"
import time, torch
for pinned in (False, True):
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=pinned)
    host.fill_(1)
    dev = torch.empty_like(host, device="cuda")
    for i in range(4):
        torch.cuda.synchronize(); t = time.time(); dev.copy_(host, non_blocking=pinned); torch.cuda.synchronize()
    print(f"h2d {'pinned' if pinned else 'pageable'}: {host.numel() / (time.time() - t) / 1e9:.1f} GB/s")
PY
  overhead cuda
  overhead cuda-unfused
  prof prof_bamba_b1 --preset bamba-9b -t tg16 -b 1 -r 1
  prof prof_bamba_b64 --preset bamba-9b -t tg4@d8192 -b 64 -r 1
  prof prof_llama_b64 --preset llama-8b-shape -t tg4@d8192 -b 64 -r 1
  ;;
esac
tar -czf "$OUT/raw.tar.gz" -C "$RAW" .
grep -h ": run\|warm-up" "$RAW"/*.err 2>/dev/null | tail -30
python3 - "$RAW" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("[blp]*.jsonl")):
    for line in f.read_text().splitlines():
        r = json.loads(line)
        if "tokens_per_s" in r:
            print(f"{r['model']:15} {r['test']:13} b{r['batch']:<3} {r['tokens_per_s']:9.1f} tok/s "
                  f"{r['ms_per_step']:9.2f} ms/step roof {100 * r['roofline_fraction']:5.1f}% "
                  f"overhead {r.get('overhead_ms', 0):7.2f} ms")
PY
