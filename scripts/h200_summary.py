"""Builds benches/results/h200.json from the raw directories of scripts/h200_bench.sh runs (each part writes
$OUT/raw.tar.gz; unpack each into a directory).

Reads, from the directories given: `bamba_*.jsonl` / `llama_*.jsonl` (`bamba bench --json`), `torch.jsonl`
(scripts/bench_torch.py), `*bencher*.txt` (criterion `--output-format bencher`), `mamba_ssm*.jsonl`
(scripts/bench_mamba_ssm.py). Writes the newest `bamba bench` record of each configuration (later
directories are newer), the other records, and a `summary` object; a number that was not measured is
null, never estimated. Which directory or file a record came from is not written: the record describes
the software, the raw directories are the history.

Usage: python3 scripts/h200_summary.py OUT.json DIR [DIR...]
"""

import json
import pathlib
import re
import sys


def load(dirs):
    """Records of later directories come first (a lookup finds the newest); later criterion times win.
    Also each criterion time's directory and each directory's torch records, to pair a time with the
    references (copy, cuBLAS, SDPA) of the same call."""
    bench, torch, criterion, mamba = [], [], {}, []
    criterion_dir, torch_of = {}, {}
    for d in map(pathlib.Path, dirs):
        newer_bench, newer_torch, newer_mamba = [], [], []
        for f in sorted(d.glob("*.jsonl")):
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            if f.name.startswith(("bamba", "llama", "load")):
                newer_bench += [dict(r, source=f"{d.parent.name}/{d.name}/{f.name}") for r in rows]
            elif f.name.startswith("torch"):
                newer_torch += rows
                torch_of.setdefault(d, []).extend(rows)
            elif "mamba_ssm" in f.name:
                newer_mamba += rows
        bench, torch, mamba = newer_bench + bench, newer_torch + torch, newer_mamba + mamba
        for f in sorted(d.glob("*bencher*.txt")):
            for m in re.finditer(r"^test (\S+) \.\.\. bench:\s+(\d+) ns/iter", f.read_text(), re.M):
                criterion[m.group(1)] = int(m.group(2)) * 1e-9
                criterion_dir[m.group(1)] = d
    return bench, torch, criterion, mamba, criterion_dir, torch_of


# What a `bamba bench` record measured, as opposed to what it ran.
MEASURED = {"tokens_per_s", "ms_per_step", "roofline_fraction", "seconds", "gb_per_s", "bytes_per_step",
            "roofline_tokens_per_s", "tflop_per_s", "byte_time_ms", "overhead_ms", "achieved_gb_per_s", "flops"}


def newest_per_configuration(records):
    """The first (newest) record of each configuration, without the internal `source`."""
    seen, kept = set(), []
    for r in records:
        key = tuple(sorted((k, json.dumps(v)) for k, v in r.items() if k not in MEASURED and k != "source"))
        if key not in seen:
            seen.add(key)
            kept.append({k: v for k, v in r.items() if k != "source"})
    return kept


def find(records, **match):
    for r in records:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def ratio(a, b):
    return None if a is None or b is None else a / b


def main():
    out, dirs = sys.argv[1], sys.argv[2:]
    bench, torch, criterion, mamba, criterion_dir, torch_of = load(dirs)
    copy = find(torch, what="copy")
    copy_gbs = copy["gb_per_s"] if copy else None

    def same_call(key, **match):
        """The torch record matching `match` from the call (directory) of criterion time `key`, else the newest."""
        return find(torch_of.get(criterion_dir.get(key), []), **match) or find(torch, **match)

    def copy_for(key):
        r = same_call(key, what="copy")
        return r["gb_per_s"] if r else None

    def tok_s(model, test, batch):
        r = find(bench, model=model, test=test, batch=batch)
        return r["tokens_per_s"] if r else None

    def decode_records(model, context, requested_batch):
        """Decode records (any step count) of `model` at `context` asked for at `requested_batch` (a Llama
        batch shrunk by --memory counts), newest first."""
        rows = []
        for r in bench:
            test = r.get("test", "")
            at = int(test.split("@d")[1]) if "@d" in test else 0
            asked = r.get("requested_batch", r.get("batch"))
            if r.get("model") == model and test.startswith("tg") and at == context and asked == requested_batch:
                rows.append(r)
        return [r for r in rows if "tokens_per_s" in r]

    def newest_decode(model, context, requested_batch):
        rows = decode_records(model, context, requested_batch)
        return rows[0] if rows else None

    def ratio_at(context):
        """Both shapes' newest records (kept in summary_details.ratio_records)."""
        bamba, llama = newest_decode("bamba-9b", context, 64), newest_decode("llama-8b-shape", context, 64)
        return ratio(bamba and bamba["tokens_per_s"], llama and llama["tokens_per_s"]), bamba, llama

    def attention_fraction(batch, context):
        t = criterion.get(f"attention/decode_b{batch}/{context}")
        key = f"attention/decode_b{batch}/{context}"
        return ratio(None if t is None else 2 * batch * 8 * context * 128 * 2 / t / 1e9, copy_for(key))

    decode = next(iter(decode_records("bamba-9b", 0, 1)), None)
    # Loading a real (random-valued) Bamba-9B checkpoint directory from the page cache, default settings.
    loads = [r for r in bench if r.get("test") == "load" and r.get("weights") == "checkpoint"]
    # The binary under test with its defaults (`load_bamba.jsonl`), not another run of the same call.
    newest_load = next((r for r in loads if r["source"].endswith("/load_bamba.jsonl")), None)
    # GEMV: in_proj shape, one row; bytes = weight + x + y (bf16).
    gemv_s = criterion.get("linear_no_bias/n16768_k4096/1")
    gemv_gbs = None if gemv_s is None else (16768 * 4096 + 4096 + 16768) * 2 / gemv_s / 1e9
    gemm = []
    for m in (512, 2048, 8192):
        key = f"linear_no_bias/n16768_k4096/{m}"
        ours, ref = criterion.get(key), same_call(key, what="gemm", m=m)
        if ours and ref:
            gemm.append(ref["seconds"] / ours)
    scan = {}
    for r in mamba:
        if r.get("op") == "mamba_chunk_scan_combined":
            ours = criterion.get(f"ssd_chunk_scan/kernel/{r['len']}")
            # the newest mamba_ssm record of each length (its times vary between machines: compare within one call)
            if ours and r["len"] not in scan:
                scan[r["len"]] = r["seconds"] / ours
    def gemv_fractions():
        """Per decode shape and rows: our product's and cuBLAS's (torch, same records' call) bytes/s over the copy."""
        rows = {}
        for n, k in ((16768, 4096), (28672, 4096), (4096, 4096), (4096, 14336), (128256, 4096)):
            for m in (1, 4, 16, 64):
                key = f"linear_no_bias/n{n}_k{k}/{m}"
                t, ref = criterion.get(key), same_call(key, what="gemv", m=m, n=n, k=k)
                moved = (n * k + m * k + m * n) * 2
                rows[f"{m}x{k}x{n}"] = {
                    "ours": ratio(None if t is None else moved / t / 1e9, copy_for(key)),
                    "cublas": ref and ref.get("fraction_of_copy"),
                }
        return rows

    def step_fractions():
        """The fused Mamba decode step's state bytes (read + write) per second over the copy, per state dtype and batch."""
        rows = {}
        for name, size in (("fused", 4), ("fused_bf16_state", 2)):
            for batch in (1, 4, 16, 64, 256):
                key = f"mamba_decode_step/{name}/{batch}"
                t = criterion.get(key)
                moved = 2 * batch * 128 * 64 * 128 * size
                rows[f"{name}/{batch}"] = ratio(None if t is None else moved / t / 1e9, copy_for(key))
        return rows

    pre_att = criterion.get("attention/prefill/4096")
    sdpa = same_call("attention/prefill/4096", what="sdpa_prefill", length=4096)
    (ratio_8k, bamba_8k, llama_8k), (ratio_32k, bamba_32k, llama_32k) = ratio_at(8192), ratio_at(32768)
    summary = {
        "decode_b1_tok_s": decode["tokens_per_s"] if decode else None,
        "decode_b1_roofline_fraction": decode["roofline_fraction"] if decode else None,
        "prefill_pp4096_tok_s": tok_s("bamba-9b", "pp4096", 1),
        "gemv_bandwidth_fraction": ratio(gemv_gbs, copy_for("linear_no_bias/n16768_k4096/1")),
        "gemm_fraction_of_cublas": min(gemm) if gemm else None,
        "bamba_over_llama_b64_8k": ratio_8k,
        # The Llama shape at 32K: the largest batch that ran (see benches/results/README.md).
        "bamba_over_llama_b64_32k": ratio_32k,
        "ssd_speedup_vs_mamba_ssm": scan.get(8192),
        # KV bytes of one layer's decode attention (K and V, bf16) over its time, vs the copy bandwidth.
        "decode_attention_bandwidth_fraction": attention_fraction(64, 8192),
        "prefill_attention_fraction_of_sdpa": ratio(sdpa["seconds"] if sdpa else None, pre_att),
        "load_gb_per_s": newest_load["gb_per_s"] if newest_load else None,
    }
    pick = lambda r: r and {k: r.get(k) for k in ("batch", "tokens_per_s", "ms_per_step", "backend", "state_dtype")}

    def bf16_state_ratio(context):
        """The newest Bamba record with a bf16 SSM state (`--state-dtype bf16`) over the ratio's Llama record."""
        rows = [r for r in decode_records("bamba-9b", context, 64) if r.get("state_dtype") == "bf16"]
        llama = newest_decode("llama-8b-shape", context, 64)
        return ratio(rows[0]["tokens_per_s"] if rows else None, llama and llama["tokens_per_s"])

    pick_load = lambda r: r and {k: r.get(k) for k in ("seconds", "gb_per_s")}
    details = {
        "copy_gb_per_s": copy_gbs,
        "gemv_gb_per_s": gemv_gbs,
        "gemm_fraction_of_cublas_by_m": dict(zip((512, 2048, 8192), gemm)),
        "ssd_speedup_vs_mamba_ssm_by_len": scan,
        "load_record": pick_load(newest_load),
        "bamba_over_llama_b64_bf16_state": {"8k": bf16_state_ratio(8192), "32k": bf16_state_ratio(32768)},
        "ratio_records": {"8k": {"bamba": pick(bamba_8k), "llama": pick(llama_8k)},
                          "32k": {"bamba": pick(bamba_32k), "llama": pick(llama_32k)}},
        "gemv_bandwidth_fraction_by_shape": gemv_fractions(),
        "mamba_decode_step_bandwidth_fraction": step_fractions(),
        "decode_attention_bandwidth_fraction_by_shape": {
            f"b{b}@{c}": attention_fraction(b, c) for b, c in ((1, 4096), (16, 8192), (64, 8192), (64, 32768))
        },
    }
    result = {
        "machine": "NVIDIA H200 (141 GB HBM3e), one GPU",
        "summary": summary,
        "summary_details": details,
        "bench_records": newest_per_configuration(bench),
        "torch_records": torch,
        "criterion_seconds": criterion,
        "mamba_ssm_records": mamba,
    }
    pathlib.Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
