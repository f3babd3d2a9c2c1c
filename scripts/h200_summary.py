"""Builds benches/results/h200.json from the raw files of H200 runs (benches/results/README.md).

Reads, from the directories given: `bamba_*.jsonl` / `llama_*.jsonl` (`bamba bench --json`), `torch.jsonl`
(scripts/bench_torch.py), `*bencher*.txt` (criterion `--output-format bencher`), `mamba_ssm*.jsonl`
(scripts/bench_mamba_ssm.py). Writes every record plus a `summary` object; a number that was not
measured is null, never estimated.

Usage: python3 scripts/h200_summary.py OUT.json DIR [DIR...]
"""

import json
import pathlib
import re
import sys


def load(dirs):
    bench, torch, criterion, mamba = [], [], {}, []
    for d in map(pathlib.Path, dirs):
        for f in sorted(d.glob("*.jsonl")):
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            if f.name.startswith(("bamba", "llama")):
                bench += [dict(r, source=f"{d.name}/{f.name}") for r in rows]
            elif f.name.startswith("torch"):
                torch += rows
            elif "mamba_ssm" in f.name:
                mamba += rows
        for f in sorted(d.glob("*bencher*.txt")):
            for m in re.finditer(r"^test (\S+) \.\.\. bench:\s+(\d+) ns/iter", f.read_text(), re.M):
                criterion[m.group(1)] = int(m.group(2)) * 1e-9
    return bench, torch, criterion, mamba


def find(records, **match):
    for r in records:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def ratio(a, b):
    return None if a is None or b is None else a / b


def main():
    out, dirs = sys.argv[1], sys.argv[2:]
    bench, torch, criterion, mamba = load(dirs)
    copy = find(torch, what="copy")
    copy_gbs = copy["gb_per_s"] if copy else None

    def tok_s(model, test, batch):
        r = find(bench, model=model, test=test, batch=batch)
        return r["tokens_per_s"] if r else None

    def decode_at(model, context, batch=None):
        """The first decode record (any step count) of `model` at `context`, at `batch` if given."""
        for r in bench:
            test = r.get("test", "")
            at = int(test.split("@d")[1]) if "@d" in test else 0
            if r.get("model") == model and test.startswith("tg") and at == context and batch in (None, r.get("batch")):
                return r
        return None

    def decode_tok_s(model, context, batch=None):
        r = decode_at(model, context, batch)
        return r["tokens_per_s"] if r else None

    decode = decode_at("bamba-9b", 0, 1)
    # GEMV: in_proj shape, one row; bytes = weight + x + y (bf16).
    gemv_s = criterion.get("linear_no_bias/n16768_k4096/1")
    gemv_gbs = None if gemv_s is None else (16768 * 4096 + 4096 + 16768) * 2 / gemv_s / 1e9
    gemm = []
    for m in (512, 2048, 8192):
        ours, ref = criterion.get(f"linear_no_bias/n16768_k4096/{m}"), find(torch, what="gemm", m=m)
        if ours and ref:
            gemm.append(ref["seconds"] / ours)
    scan = {}
    for r in mamba:
        if r.get("op") == "mamba_chunk_scan_combined":
            ours = criterion.get(f"ssd_chunk_scan/kernel/{r['len']}")
            if ours:
                scan[r["len"]] = r["seconds"] / ours
    dec_att = criterion.get("attention/decode_b64/8192")
    pre_att, sdpa = criterion.get("attention/prefill/4096"), find(torch, what="sdpa_prefill", length=4096)
    llama_32k = [r for r in bench if r.get("model") == "llama-8b-shape" and r.get("test", "").endswith("@d32768")]
    summary = {
        "decode_b1_tok_s": decode["tokens_per_s"] if decode else None,
        "decode_b1_roofline_fraction": decode["roofline_fraction"] if decode else None,
        "prefill_pp4096_tok_s": tok_s("bamba-9b", "pp4096", 1),
        "gemv_bandwidth_fraction": ratio(gemv_gbs, copy_gbs),
        "gemm_fraction_of_cublas": min(gemm) if gemm else None,
        "bamba_over_llama_b64_8k": ratio(decode_tok_s("bamba-9b", 8192, 64), decode_tok_s("llama-8b-shape", 8192, 64)),
        # The Llama shape at 32K: the largest batch that fit (see scripts/h200_bench.sh).
        "bamba_over_llama_b64_32k": ratio(
            decode_tok_s("bamba-9b", 32768, 64), llama_32k[0]["tokens_per_s"] if llama_32k else None
        ),
        "ssd_speedup_vs_mamba_ssm": scan.get(8192),
        "decode_attention_bandwidth_fraction": ratio(
            None if dec_att is None else 2 * 64 * 8 * 8192 * 128 * 2 / dec_att / 1e9, copy_gbs
        ),
        "prefill_attention_fraction_of_sdpa": ratio(sdpa["seconds"] if sdpa else None, pre_att),
        "load_gb_per_s": None,
    }
    details = {
        "copy_gb_per_s": copy_gbs,
        "gemv_gb_per_s": gemv_gbs,
        "gemm_fraction_of_cublas_by_m": dict(zip((512, 2048, 8192), gemm)),
        "ssd_speedup_vs_mamba_ssm_by_len": scan,
        "llama_32k_batch": llama_32k[0]["batch"] if llama_32k else None,
    }
    result = {
        "machine": "NVIDIA H200 (141 GB HBM3e), one GPU",
        "summary": summary,
        "summary_details": details,
        "bench_records": bench,
        "torch_records": torch,
        "criterion_seconds": criterion,
        "mamba_ssm_records": mamba,
    }
    pathlib.Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
