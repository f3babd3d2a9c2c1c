#!/usr/bin/env python3
"""Where do 16-bit logits part from the f64 reference? Per layer, for one prompt.

Runs transformers' BambaForCausalLM on a checkpoint in f64 (the reference) and in the given dtypes
(eager and SDPA attention), records each decoder layer's output, and prints max |x - f64| after
every layer, next to ours from `bamba logits --hidden-states --out FILE` (any number of files).

    python3 scripts/layer_diffs.py tests/fixtures/bf16_sharded --ids 79,45,65,89,13 \
        --dtypes bfloat16,float16 --ours bf16=cuda_bf16.safetensors f16=wgpu_f16.safetensors
"""
import argparse

import torch
from safetensors.torch import load_file
from transformers import BambaForCausalLM


def run(path, dtype, attn, ids):
    """Embeddings, every layer's output and the logits, as f64 tensors `[len, width]`."""
    model = BambaForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn).eval()
    states = []
    hooks = [layer.register_forward_hook(lambda m, i, o: states.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.layers]
    embed = model.model.embed_tokens(torch.tensor([ids]))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    for h in hooks:
        h.remove()
    return [t[0].double() for t in [embed] + states + [logits]]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--ids", required=True, help="comma-separated token ids")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--ours", nargs="*", default=[], help="LABEL=FILE from bamba logits --hidden-states")
    a = p.parse_args()
    ids = [int(t) for t in a.ids.split(",")]
    with torch.no_grad():
        ref = run(a.checkpoint, torch.float64, "eager", ids)
        rows = {}
        for name in a.dtypes.split(","):
            for attn in ("eager", "sdpa"):
                rows[f"transformers {name} {attn}"] = run(a.checkpoint, getattr(torch, name), attn, ids)
    for spec in a.ours:
        label, path = spec.split("=", 1)
        t = load_file(path)
        n = len(ref) - 1
        rows[f"ours {label}"] = [t[f"hidden.{i}"].double() for i in range(n)] + [t["logits"].double()]
    names = ["embed"] + [f"layer {i}" for i in range(len(ref) - 2)] + ["logits"]
    width = max(len(r) for r in rows)
    print(f"{'max |x - f64|':<{width}} " + " ".join(f"{n:>9}" for n in names))
    for label, states in rows.items():
        print(f"{label:<{width}} " + " ".join(f"{(s - r).abs().max().item():9.2e}" for s, r in zip(states, ref)))


if __name__ == "__main__":
    main()
