# Sourced by the CPU serving scripts after `cd` to the repository: sets up what
# scripts/llamacpp_setup.sh does (llama-server built, the cpu-bamba-114m checkpoint and its GGUF), builds
# bamba, and defines `stop_server` (also on exit) and `wait_healthy` for the server whose pid is in
# `server`, listening on `port`. Sets `work`, `threads`, `bamba`, `llama`, `checkpoint`, and `raw` (emptied).
# Usage: source scripts/serve_setup.sh WORK_DIR RAW_SUBDIR PORT
work=$(realpath -m "$1")
threads=$(nproc)
mkdir -p "$work"
source scripts/llamacpp_setup.sh "$work" llama-server

cargo build --release -q -p bamba-cli
bamba=target/release/bamba
raw="$work/$2"
rm -rf "$raw" && mkdir -p "$raw"
port=$3
server=""
stop_server() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; server=""; }
trap stop_server EXIT
wait_healthy() {
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0; sleep 0.1; done
  echo "server did not come up" >&2; return 1
}
