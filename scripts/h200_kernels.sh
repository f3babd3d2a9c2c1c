#!/usr/bin/env bash
# The kernel run on the H200 (see backends.md, "Measured"): CUDA kernel tests and model parity, then
# mamba_ssm's Triton kernels and our criterion benches side by side. Expects in .gpu/ the gzipped test
# and bench binaries (`cargo test|bench --release --features wgpu,cuda --no-run`, stripped) and in
# .gpu/mm the `mamba_ssm` package from the mamba-ssm sdist. Usage: scripts/h200_kernels.sh tests|bench
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export BAMBA_REPO=$PWD
OUT=${OUT:-/tmp/bamba-out}
mkdir -p "$OUT"
(cd .gpu && for f in *.gz; do [ -f "${f%.gz}" ] || gunzip -k "$f"; done; chmod +x kernel_tests kernel_bench)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
case "${1:-tests}" in
  tests)
    CUBECL_AUTOTUNE_LEVEL=minimal timeout 420 .gpu/kernel_tests cuda:: --test-threads 1 --nocapture > "$OUT/tests.log" 2>&1
    echo "kernel tests rc=$?"
    grep -E "^test |worst|max \|logits|test result|panicked" "$OUT/tests.log" | tail -40
    ;;
  bench)
    timeout 150 python3 scripts/bench_mamba_ssm.py .gpu/mm > "$OUT/mamba_ssm.jsonl" 2> "$OUT/mamba_ssm.err"
    echo "mamba_ssm rc=$?"; cat "$OUT/mamba_ssm.jsonl"; tail -3 "$OUT/mamba_ssm.err"
    timeout 400 .gpu/kernel_bench --bench --output-format bencher ${2:+"$2"} > "$OUT/bench.txt" 2>&1
    echo "bench rc=$?"; grep -E "^test " "$OUT/bench.txt"
    ;;
esac
