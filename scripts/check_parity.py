#!/usr/bin/env python3
"""Runs a built `bamba` binary over every fixture and compares with transformers' references.

  python3 scripts/check_parity.py BIN [--backend cuda] [--dtype bf16]

Prints one line per (fixture, prompt): max |logits - reference| for `bamba logits`, and whether
greedy `bamba generate` reproduced transformers' generate() tokens. Needs numpy and safetensors.
Exits 1 if any run fails to execute (the numbers themselves are for the reader: bf16 runs are
expected to differ from the float64 reference by bf16 rounding).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--backend", default="ndarray")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--only", nargs="*", help="fixture names to run (default: all)")
    args = ap.parse_args()
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    manifest = json.load(open(os.path.join(fixtures, "manifest.json")))
    common = ["--backend", args.backend, "--dtype", args.dtype]
    failed = False
    print(f"{'fixture':22} {'prompt':>6} {'max|diff|':>10} {'floor':>9} {'generate':>9}")
    for name, meta in sorted(manifest["fixtures"].items()):
        if args.only and name not in args.only:
            continue
        d = os.path.join(fixtures, name)
        ref = load_file(os.path.join(d, "reference.safetensors"))
        for i in range(meta["prompts"]):
            ids = ",".join(map(str, ref[f"prompt_{i}.ids"].tolist()))
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "logits.safetensors")
                p = subprocess.run([args.bin, "logits", "--model", d, "--prompt-ids", ids, "--out", out] + common,
                                   capture_output=True, text=True)
                if p.returncode:
                    print(f"{name:22} {i:>6} FAILED: {p.stderr.strip()[-300:]}")
                    failed = True
                    continue
                diff = np.abs(load_file(out)["logits"] - ref[f"prompt_{i}.logits"]).max()
            gen = "-"
            if f"generate_{i}.ids" in ref:
                want = ref[f"generate_{i}.ids"].tolist()
                p = subprocess.run([args.bin, "generate", "--model", d, "--prompt-ids", ids, "--max-new-tokens",
                                    str(len(want)), "--json"] + common, capture_output=True, text=True)
                if p.returncode:
                    gen, failed = "FAILED", True
                else:
                    got = json.loads(p.stdout.strip().splitlines()[-1])["generated_ids"]
                    gen = "equal" if got == want else f"{sum(a == b for a, b in zip(got, want))}/{len(want)}"
            print(f"{name:22} {i:>6} {diff:10.2e} {meta['f32_vs_f64_max_abs']:9.1e} {gen:>9}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
