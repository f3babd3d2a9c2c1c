#!/usr/bin/env python3
"""Where do 16-bit logits part from the f64 reference? Per layer, for one prompt.

Runs transformers' BambaForCausalLM on a checkpoint in f64 (the reference) and in the given dtypes
(eager and SDPA attention), records each decoder layer's output, and prints max |x - f64| after
every layer, next to ours from `bamba logits --hidden-states --out FILE` (any number of files).
With --local, also each layer's own error: the layer fed our input (the state ours had before it),
ours against transformers' f64 and 16-bit runs of that layer on the same input, so that an error a
layer adds is told apart from one it only amplifies.

    python3 scripts/layer_diffs.py tests/fixtures/bf16_sharded --ids 79,45,65,89,13 \
        --dtypes bfloat16,float16 --ours bf16=cuda_bf16.safetensors f16=wgpu_f16.safetensors
"""
import argparse
import functools

import torch
from safetensors.torch import load_file
from transformers import BambaForCausalLM


@functools.lru_cache(maxsize=None)
def load(path, dtype, attn):
    """The checkpoint as transformers loads it in `dtype` with `attn` attention, once per process
    (`--local` runs every layer of it)."""
    return BambaForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn).eval()


def run(path, dtype, attn, ids):
    """Embeddings, every layer's output and the logits, as f64 tensors `[len, width]`."""
    model = load(path, dtype, attn)
    states = []
    hooks = [layer.register_forward_hook(lambda m, i, o: states.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.layers]
    embed = model.model.embed_tokens(torch.tensor([ids]))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    for h in hooks:
        h.remove()
    return [t[0].double() for t in [embed] + states + [logits]]


def layer_on(path, dtype, attn, ids, i, x):
    """Layer `i`'s output when its input is replaced by `x` (`[len, hidden]`), as f64."""
    model = load(path, dtype, attn)
    out = {}

    def replace_input(module, args, kwargs):
        if args:
            return (x.to(dtype).unsqueeze(0),) + args[1:], kwargs
        return args, {**kwargs, "hidden_states": x.to(dtype).unsqueeze(0)}

    def keep_output(module, args, output):
        out["y"] = (output[0] if isinstance(output, tuple) else output)[0].double()

    hooks = [model.model.layers[i].register_forward_pre_hook(replace_input, with_kwargs=True),
             model.model.layers[i].register_forward_hook(keep_output)]
    model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return out["y"]


def local_errors(path, dtypes, ids, label, ours):
    layers = len([k for k in ours if k.startswith("hidden.")]) - 1
    print(f"each layer given {label}'s input: max |y - f64 layer on that input|")
    for i in range(layers):
        x, mine = ours[f"hidden.{i}"].double(), ours[f"hidden.{i + 1}"].double()
        ref = layer_on(path, torch.float64, "eager", ids, i, x)
        cells = [f"ours {(mine - ref).abs().max().item():9.2e}"]
        for name in dtypes:
            for attn in ("eager", "sdpa"):
                y = layer_on(path, getattr(torch, name), attn, ids, i, x)
                cells.append(f"transformers {name} {attn} {(y - ref).abs().max().item():9.2e}")
        print(f"  layer {i}: " + ", ".join(cells))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--ids", required=True, help="comma-separated token ids")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--ours", nargs="*", default=[], help="LABEL=FILE from bamba logits --hidden-states")
    p.add_argument("--local", action="store_true", help="also each layer's own error on our input")
    a = p.parse_args()
    ids = [int(t) for t in a.ids.split(",")]
    with torch.no_grad():
        ref = run(a.checkpoint, torch.float64, "eager", ids)
        rows = {}
        for name in a.dtypes.split(","):
            for attn in ("eager", "sdpa"):
                rows[f"transformers {name} {attn}"] = run(a.checkpoint, getattr(torch, name), attn, ids)
    ours = {}
    for spec in a.ours:
        label, path = spec.split("=", 1)
        ours[label] = load_file(path)
        n = len(ref) - 1
        rows[f"ours {label}"] = [ours[label][f"hidden.{i}"].double() for i in range(n)] + [ours[label]["logits"].double()]
    names = ["embed"] + [f"layer {i}" for i in range(len(ref) - 2)] + ["logits"]
    width = max(len(r) for r in rows)
    print(f"{'max |x - f64|':<{width}} " + " ".join(f"{n:>9}" for n in names))
    for label, states in rows.items():
        print(f"{label:<{width}} " + " ".join(f"{(s - r).abs().max().item():9.2e}" for s, r in zip(states, ref)))
    if a.local:
        with torch.no_grad():
            for label, t in ours.items():
                local_errors(a.checkpoint, a.dtypes.split(","), ids, label, t)


if __name__ == "__main__":
    main()
