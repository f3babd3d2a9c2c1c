#!/usr/bin/env python3
"""transformers' BambaForCausalLM on the GPU, as users start from it: random bf16 weights of a config.json
(values do not change the speed of a dense model), batch 1, the cache on. Prints one JSON line per test:
ppN (one forward of N random tokens, logits of the last one) and tgN (greedy `generate()` of N tokens after a
one-token prompt: N - 1 decode steps and the prompt's step), each the median of `--reps` timed runs after a
warm-up. transformers takes mamba_ssm's Triton kernels (SSD scan, decode state update) when `mamba_ssm`
imports, and causal_conv1d's when it does; otherwise its torch code. The record says which imported.

Usage: python3 scripts/bench_hf_transformers.py CONFIG.json [--pp 512] [--tg 128] [--reps 3]
"""
import argparse
import importlib
import json
import time

import torch
import transformers
from transformers import BambaConfig, BambaForCausalLM


def version_of(package):
    """The package's version if it imports, else None."""
    try:
        return getattr(importlib.import_module(package), "__version__", "unknown")
    except Exception:
        return None


def median_seconds(fn, reps):
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--tg", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    config = BambaConfig(**json.load(open(args.config)))
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    start = time.perf_counter()
    with torch.device("cuda"):
        model = BambaForCausalLM(config).eval()
    build_s = time.perf_counter() - start
    common = {
        "engine": "transformers",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "mamba_ssm": version_of("mamba_ssm"),
        "causal_conv1d": version_of("causal_conv1d"),
        "gpu": torch.cuda.get_device_name(),
        "batch": 1,
        "dtype": "bf16",
        "build_s": round(build_s, 1),
    }
    ids = torch.randint(0, config.vocab_size, (1, args.pp), device="cuda")
    with torch.no_grad():
        model(ids[:, :16], use_cache=False, logits_to_keep=1)  # warm-up
        seconds = median_seconds(lambda: model(ids, use_cache=False, logits_to_keep=1), args.reps)
        print(json.dumps({**common, "test": f"pp{args.pp}", "tokens_per_s": args.pp / seconds}), flush=True)

        def generate(n):
            return model.generate(ids[:, :1], max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

        assert generate(4).shape[1] == 5
        seconds = median_seconds(lambda: generate(args.tg), args.reps)
        print(json.dumps({**common, "test": f"tg{args.tg}", "tokens_per_s": args.tg / seconds}), flush=True)


if __name__ == "__main__":
    main()
