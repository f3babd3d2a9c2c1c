#!/usr/bin/env bash
# Builds the three CUDA binaries that scripts/gpu_bench.sh runs, from one commit, into DIR: `bamba`, the CUDA
# kernel and model tests (`kernel_tests`, tests/kernels.rs) and the criterion kernel benches (`kernel_bench`),
# with DIR/build.txt naming the commit and each binary's sha256 (gpu_summary.py refuses records of different
# builds). Builds on a machine without a GPU too: the GPU machine then needs only the CUDA runtime.
#
# Usage: scripts/gpu_build.sh DIR   (CUDARC_CUDA_VERSION picks the CUDA API cudarc binds, default 13000;
# CARGO_TARGET_DIR as usual)
set -euo pipefail
dir=${1:?usage: gpu_build.sh DIR}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
mkdir -p "$dir"
cargo build --release -p bamba-cli --features cuda
# The last line of --no-run's output names the test or bench executable.
path_of() { cargo "$@" --no-run --message-format json 2>/dev/null |
  python3 -c "import json,sys; print([r['executable'] for r in map(json.loads, sys.stdin) if r.get('executable')][-1])"; }
tests=$(path_of test --release --features cuda --test kernels)
bench=$(path_of bench --features cuda --bench kernels)
cp "${CARGO_TARGET_DIR:-target}/release/bamba" "$dir/bamba"
cp "$tests" "$dir/kernel_tests"
cp "$bench" "$dir/kernel_bench"
strip "$dir/bamba" "$dir/kernel_tests" "$dir/kernel_bench"
{
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!benches/results' || echo -dirty)"
  (cd "$dir" && sha256sum bamba kernel_tests kernel_bench)
} > "$dir/build.txt"
cat "$dir/build.txt"
