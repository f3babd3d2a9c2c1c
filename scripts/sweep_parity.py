#!/usr/bin/env python3
"""Parity on checkpoints the test fixtures do not cover: random Bamba configs, built and run by transformers.

  python3 scripts/sweep_parity.py BIN [--backend wgpu] [--dtype f32|f16|bf16] [--configs 8] [--seed 0]
                                     [--lengths 1,7,1100] [--keep DIR]

For each of `--configs` configs drawn from `--seed` (sizes, head and group counts, d_state up to 128,
d_conv 2-4, chunk sizes that do and do not divide the prompts, attention layers anywhere or none,
every optional bias, tied embeddings, partial or full RoPE, a time-step clamp), it saves a random
`BambaForCausalLM` with `save_pretrained`, computes transformers' float64 logits (the reference) and
float32 logits (the noise floor) for prompts of 1, 7 and 60-300 tokens (or `--lengths`), then runs `BIN logits` and
`BIN generate` (greedy, against transformers' `generate()`; see `greedy_reference`) on the directory. A prompt passes when
max |logits - reference| <= max(10 x floor, 2e-5), the bound `tests/kernels.rs` puts on wgpu (on
`--backend cuda*` in f32, 6e-2: Burn's TF32 matmuls, the CUDA tests' bound). With
`--dtype f16` or `bf16` the floor is transformers computing in that dtype and the bound 2.5 x floor (as
`check_half_precision_model` in `tests/kernels.rs`), and generation is not compared (16-bit rounding may
flip a near tie). With a transformers whose gated RMSNorm spans the full width (5.17, the H200
image's; bamba follows 5.2x's per-group norm), configs have one group. The script exits 1 if any prompt fails or any run errors. Needs torch, transformers, safetensors, numpy.
"""
import argparse
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import BambaConfig, BambaForCausalLM
from transformers.models.bamba import modeling_bamba

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import logits_of, reload, rerandomise  # noqa: E402


# The gated RMSNorm normalizes each group's d_inner / G channels from transformers 5.2x on (what bamba
# computes); 5.17 (the H200 image's) normalized the full width, so its references differ for G > 1.
# With such a transformers the sweep draws G = 1 only (one draw from the generator either way).
PER_GROUP_NORM = "group_size" in inspect.signature(modeling_bamba.BambaRMSNormGated.__init__).parameters


CUDA_TF32_ABS = 6e-2


def random_config(rng: random.Random) -> dict:
    """A valid Bamba config, small enough for transformers on the CPU, odd where that is allowed."""
    heads = rng.choice([2, 4, 8])
    hidden = heads * rng.choice([8, 16, 24, 32])
    mamba_heads = rng.choice([h for h in (2, 4, 8, 16) if (2 * hidden) % h == 0])
    layers = rng.randint(2, 5)
    attn = sorted(rng.sample(range(layers), rng.randint(0, min(2, layers))))
    cfg = dict(
        vocab_size=rng.randint(60, 300), hidden_size=hidden, intermediate_size=rng.randint(hidden, 3 * hidden),
        num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=rng.choice([k for k in (1, 2, heads) if heads % k == 0]),
        attn_layer_indices=attn or None, mamba_n_heads=mamba_heads, mamba_d_head="auto",
        mamba_n_groups=rng.choice([g for g in (1, 2, 4) if mamba_heads % g == 0 and (g == 1 or PER_GROUP_NORM)]),
        mamba_d_state=rng.choice([8, 16, 48, 64, 128]), mamba_d_conv=rng.choice([2, 3, 4]), mamba_expand=2,
        mamba_chunk_size=rng.choice([4, 16, 32, 64, 256]), rms_norm_eps=rng.choice([1e-5, 1e-6]),
        mamba_conv_bias=rng.random() < 0.7, mamba_proj_bias=rng.random() < 0.3,
        attention_bias=rng.random() < 0.3, mlp_bias=rng.random() < 0.3,
        tie_word_embeddings=rng.random() < 0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": rng.choice([1e4, 5e5]),
                         "partial_rotary_factor": rng.choice([0.5, 1.0])},
    )
    if rng.random() < 0.3:
        cfg["time_step_limit"] = (0.01, rng.choice([0.5, 2.0]))
    return cfg


def greedy_reference(model, cfg, ids, steps):
    """transformers' greedy continuation, and what it is. With a finite `time_step_limit`, its cached decode
    (transformers 5.24 `mamba2_selective_state_update`) does not clamp dt while its forward does, so its
    `generate()` is not the argmax chain of its own model; there the reference is that chain, each token
    the argmax of the uncached float64 forward (what we compute: decode clamps as prefill does)."""
    if not cfg.get("time_step_limit"):
        ids_t = torch.tensor([ids])  # an explicit mask: else generate() takes pad_token_id tokens for padding
        with torch.no_grad():
            out = model.generate(ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=steps, do_sample=False,
                                 use_cache=True)
        return out[0, len(ids):].tolist(), "generate()"
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(logits_of(model, seq)[-1].argmax()))
    return seq[len(ids):], "uncached argmax"


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--backend", default="ndarray")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lengths", help="prompt lengths, comma-separated (default 1, 7 and one of 60-300)")
    ap.add_argument("--keep", help="write the checkpoints here instead of a temporary folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = args.keep or tempfile.mkdtemp(prefix="bamba-sweep-")
    failed = False
    # f32 on CUDA: Burn runs f32 matmuls as TF32 (10-bit mantissa), so the bound is the CUDA tests'
    # (tests/kernels.rs: 6e-2 absolute, measured on the fixtures), not the CPU's 10x the f32 floor.
    tf32 = args.dtype == "f32" and args.backend.startswith("cuda")
    f32_abs = CUDA_TF32_ABS if tf32 else 2e-5
    if not PER_GROUP_NORM:
        import transformers
        print(f"transformers {transformers.__version__} normalizes the gated RMSNorm over the full width: G = 1 only")
    print(f"{'config':>6} {'layers':14} {'d_state':>7} {'G':>2} {'conv':>4} {'chunk':>5} {'len':>4} "
          f"{'max|diff|':>10} {'floor':>9} {'generate':>9}")
    for k in range(args.configs):
        cfg = random_config(rng)
        path = os.path.join(root, f"config{k}")
        torch.manual_seed(args.seed * 1000 + k)
        model = BambaForCausalLM(BambaConfig(**cfg)).eval()
        rerandomise(model, torch.Generator().manual_seed(args.seed * 1000 + k))
        model.save_pretrained(path)
        floor_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        ref_model, floor_model = reload(path, torch.float64), reload(path, floor_dtype)
        plan = "".join("A" if i in (cfg["attn_layer_indices"] or []) else "M" for i in range(cfg["num_hidden_layers"]))
        common = ["--model", path, "--backend", args.backend, "--dtype", args.dtype]
        singles = []  # (prompt ids, greedy reference) of the prompts whose generation was compared
        lengths = [1, 7, rng.randint(60, 300)]
        if args.lengths:
            lengths = [int(n) for n in args.lengths.split(",")]
        for length in lengths:
            ids = [rng.randrange(3, cfg["vocab_size"]) for _ in range(length)]
            ref = logits_of(ref_model, ids).numpy()
            floor = float(np.abs(logits_of(floor_model, ids).numpy() - ref).max())
            out = os.path.join(path, f"logits{length}.safetensors")
            id_list = ",".join(map(str, ids))
            rc, _, err = run([args.bin, "logits", "--prompt-ids", id_list, "--out", out] + common)
            if rc:
                print(f"{k:>6} {plan:14} logits FAILED: {err.strip()[-400:]}")
                failed = True
                continue
            diff = float(np.abs(load_file(out)["logits"] - ref).max())
            ok = diff <= (max(10 * floor, f32_abs) if args.dtype == "f32" else 2.5 * floor)
            failed |= not ok
            gen = "-"
            if cfg["attn_layer_indices"] and length > 1 and args.dtype == "f32":  # transformers' generate() fails without attention
                want, source = greedy_reference(ref_model, cfg, ids, 8)
                rc, stdout, err = run([args.bin, "generate", "--prompt-ids", id_list, "--max-new-tokens", "8",
                                       "--json"] + common)
                if rc:
                    gen, failed = "FAILED", True
                    print(err.strip()[-400:])
                else:
                    got = json.loads(stdout.strip().splitlines()[-1])["generated_ids"]
                    gen = "equal" if got == want else f"{sum(a == b for a, b in zip(got, want))}/{len(want)}"
                    gen += "" if source == "generate()" else "*"
                    failed |= got != want
                    singles.append((ids, want))
            print(f"{k:>6} {plan:14} {cfg['mamba_d_state']:>7} {cfg['mamba_n_groups']:>2} {cfg['mamba_d_conv']:>4} "
                  f"{cfg['mamba_chunk_size']:>5} {length:>4} {diff:10.2e} {floor:9.1e} {gen:>9}"
                  + ("" if ok else "  FAIL"))
        if len(singles) > 1:
            # The same prompts in one left-padded batch: each row must generate what it did alone.
            prompts_file = os.path.join(path, "prompts.txt")
            with open(prompts_file, "w") as f:
                f.write("".join(",".join(map(str, ids)) + "\n" for ids, _ in singles))
            rc, stdout, err = run([args.bin, "generate", "--prompts-file", prompts_file, "--prompts-format", "ids",
                                   "--batch-size", str(len(singles)), "--max-new-tokens", "8", "--json"] + common)
            rows = [] if rc else [json.loads(line)["generated_ids"] for line in stdout.strip().splitlines()]
            same = rows == [want for _, want in singles]
            failed |= not same
            lens = "+".join(str(len(ids)) for ids, _ in singles)
            print(f"{k:>6} {plan:14} batch of {len(singles)} ({lens} tokens, left-padded): "
                  + ("every row equal to the reference" if same else f"FAIL {err.strip()[-300:]} {rows}"))
    if args.dtype == "f32":
        print("* generation against transformers' uncached argmax chain (time_step_limit set: see greedy_reference)")
    bound = "10x the f32 floor" if args.dtype == "f32" else f"2.5x transformers' {args.dtype} floor"
    if tf32:
        bound += f" or {CUDA_TF32_ABS} (TF32 matmuls)"
    print("sweep:", "FAILED" if failed else f"all within {bound}", f"({root})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
