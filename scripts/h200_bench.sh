#!/usr/bin/env bash
# The H200 (or any CUDA card's) runs behind benches/results/h200.json, one part per device call (each must end
# within the device's 10 minutes). Expects in .gpu/ the gzipped, stripped binaries `bamba`
# (`cargo build --release -p bamba-cli --features cuda`), `kernel_tests` and `kernel_bench`
# (`cargo test|bench --release --features wgpu,cuda --no-run`), and for `kernels` the `mamba_ssm` package from
# the mamba-ssm sdist in .gpu/mm. Raw records and logs go to $OUT/raw.tar.gz; scripts/h200_summary.py turns the
# raw directories into benches/results/h200.json.
#
# Parts:
# - tests: every CUDA test (kernels against their references, the model against transformers' fixtures);
# - kernels: the criterion kernel benches beside torch's cuBLAS/SDPA (scripts/bench_torch.py) and mamba_ssm's
#   Triton scan (scripts/bench_mamba_ssm.py), same call;
# - decode: batch-1 and batch-64 decode (8K and 32K context, f32 and bf16 state) of the Bamba-9B and Llama-8B
#   shapes, random bf16 weights;
# - prefill: pp4096 of both shapes;
# - load: a random Bamba-9B checkpoint (scripts/random_checkpoint.py, 19.6 GB) loaded from the page cache;
# - profile: host-to-device copy rates, the host overhead of a decode step (the 32-layer plan at tiny widths),
#   and CubeCL's per-kernel profile of decode steps.
#
# Usage: scripts/h200_bench.sh tests|kernels|decode|prefill|load|profile
set -u
part=${1:?usage: h200_bench.sh tests|kernels|decode|prefill|load|profile}
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
cuda_tests() { # every CUDA test, the log in $RAW/tests.log
  timeout 260 .gpu/kernel_tests cuda --test-threads 1 --nocapture > "$RAW/tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "panicked|test result|mamba_decode_step on" "$RAW/tests.log" | head -8
}
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
criterion() { # filter [file name prefix]: $RAW/PREFIX-bencher.txt (default criterion-bencher.txt)
  local file="$RAW/${2:-criterion}-bencher.txt"
  timeout 200 .gpu/kernel_bench --bench --output-format bencher "$1" > "$file" 2>&1
  echo "criterion $1 rc=$?"
  grep "^test" "$file"
}
scan_vs_mamba_ssm() { # mamba_ssm's Triton chain ($RAW/mamba_ssm.jsonl), then our criterion scan bench
  # ($RAW/ssd-bencher.txt) in the same call
  timeout 150 python3 scripts/bench_mamba_ssm.py .gpu/mm > "$RAW/mamba_ssm.jsonl" 2> "$RAW/mamba_ssm.err"
  echo "mamba_ssm rc=$?"
  grep -h chunk_scan "$RAW/mamba_ssm.jsonl" | cut -c1-100
  criterion "ssd_chunk_scan/kernel" ssd
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
tests)
  cuda_tests
  ;;
kernels)
  criterion "."
  timeout 90 python3 scripts/bench_torch.py > "$RAW/torch.jsonl" 2> "$RAW/torch.err"
  echo "torch rc=$?"
  scan_vs_mamba_ssm
  ;;
decode)
  bamba_decode
  llama_decode
  ;;
prefill)
  prefill_both
  ;;
load)
  # tmpfs is RAM like the page cache, and faster to write than the disk
  shm_gb=$(df --output=avail -BG /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)
  if [ "${shm_gb:-0}" -gt 30 ]; then ckpt=/dev/shm/bamba-9b-random; else ckpt=/tmp/bamba-9b-random; fi
  [ -f "$ckpt/model.safetensors.index.json" ] ||
    timeout 300 python3 scripts/random_checkpoint.py tests/configs/bamba-9b.json "$ckpt" 2>&1 | tail -2
  du -sh "$ckpt"
  cat "$ckpt"/*.safetensors > /dev/null # into the page cache, as the target says
  bench load_bamba 120 --model "$ckpt" -t tg4 -b 1 -r 1 --warmup 0
  grep -h '"load"' "$RAW/load_bamba.jsonl"
  cat /sys/kernel/mm/transparent_hugepage/enabled
  python3 -c "
import time, numpy as np
t = time.time(); a = np.ones(4 << 30, np.uint8); t1 = time.time(); a.fill(2); t2 = time.time()
print(f'host first touch {4.29 / (t1 - t):.1f} GB/s, second {4.29 / (t2 - t1):.1f} GB/s')"
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
