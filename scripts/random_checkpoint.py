"""Writes a Hugging Face checkpoint directory of random weights for a Bamba config.json: the tensor
names and shapes of transformers' own BambaForCausalLM, bf16, sharded like the Hub's
(model-0000N-of-0000M.safetensors + model.safetensors.index.json). For measuring how fast
`bamba bench --model DIR` loads a full-size checkpoint (Bamba-9B: 19.6 GB) on a machine that cannot
download one. Values are uniform in ±1/sqrt(fan_in), norms and D are 1: realistic magnitudes, no
meaning. `--dtype f32` writes f32 instead; `--tokenizer DIR` copies a tokenizer (tokenizer.json,
tokenizer_config.json, generation_config.json) from DIR beside the weights.

Usage: python3 scripts/random_checkpoint.py CONFIG.json OUT_DIR [--shard-gb 5] [--dtype bf16|f32] [--tokenizer DIR]
"""

import argparse
import json
import pathlib
import shutil
import time

import torch
from safetensors.torch import save_file
from transformers import BambaConfig, BambaForCausalLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--shard-gb", type=float, default=5.0)
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--tokenizer", help="a directory whose tokenizer files are copied beside the weights")
    args = parser.parse_args()

    config = BambaConfig.from_json_file(args.config)
    with torch.device("meta"):
        model = BambaForCausalLM(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)

    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    element_bytes = {"bf16": 2, "f32": 4}[args.dtype]

    def tensor(name, shape):
        if name.endswith("norm.weight") or name.endswith(".D"):
            return torch.ones(shape, dtype=dtype)
        bound = shape[-1] ** -0.5 if len(shape) > 1 else 0.1
        t = torch.empty(shape, dtype=torch.float32, device=device).uniform_(-bound, bound, generator=generator)
        return t.to(dtype).cpu()

    # Greedy shards in state-dict order, each up to --shard-gb.
    limit = int(args.shard_gb * 1e9)
    shards, current, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = element_bytes * (int(torch.tensor(shape).prod()) if shape else 1)
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.config, out / "config.json")
    weight_map, total, start = {}, 0, time.time()
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: tensor(name, shapes[name]) for name in names}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        total += sum(t.numel() * element_bytes for t in tensors.values())
        weight_map.update({name: file for name in names})
    if args.tokenizer:
        for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
            if (pathlib.Path(args.tokenizer) / name).exists():
                shutil.copy(pathlib.Path(args.tokenizer) / name, out / name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    print(f"wrote {total / 1e9:.2f} GB in {len(shards)} shards to {out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
