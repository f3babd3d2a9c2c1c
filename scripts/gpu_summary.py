"""Builds benches/results/<card>.json from the part directories of one scripts/gpu_bench.sh run.

Every directory must come from the same build (identical build.txt: commit and binary hashes) and the same card
(gpu.txt); records of different builds are refused, so the summary describes one build. Reads `*.jsonl`
(`bamba bench --json`, scripts/bench_torch.py, scripts/bench_mamba_ssm.py, scripts/bench_hf_transformers.py),
`criterion-bencher.txt` (criterion `--output-format bencher`), `serve-*.json` (`bamba bench-serve --json`) and
`tests.log`. A number that was not measured is null, with the reason in `summary_details.missing`.

Usage: python3 scripts/gpu_summary.py [--note TEXT] OUT.json DIR [DIR...]
(--note: how this run departed from `gpu_bench.sh all`, kept in the record as `note`)
"""

import json
import pathlib
import re
import sys


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]


def one(dirs, name):
    """The single text every directory holds in file `name` (build.txt, gpu.txt), else an error."""
    texts = {(d / name).read_text().strip() for d in dirs}
    if len(texts) != 1:
        sys.exit(f"{name} differs between the directories (records of different builds or cards): {texts}")
    return texts.pop()


def load(dirs):
    bench, torch, mamba, hf, serve, criterion, tests = [], [], [], {}, {}, {}, None
    for d in dirs:
        for f in sorted(d.glob("*.jsonl")):
            records = rows(f)
            if f.name.startswith("torch"):
                torch += records
            elif f.name.startswith("mamba_ssm"):
                mamba += records
            elif f.name.startswith("hf-") and not f.name.startswith("hf-bamba"):
                hf[f.stem.removeprefix("hf-")] = records
            else:
                bench += [dict(r, part=d.name, file=f.stem) for r in records]
        for f in d.glob("serve-*.json"):
            serve[f.stem.removeprefix("serve-")] = json.loads(f.read_text())
        for f in d.glob("*bencher*.txt"):
            for m in re.finditer(r"^test (\S+) \.\.\. bench:\s+(\d+) ns/iter", f.read_text(), re.M):
                criterion[m.group(1)] = int(m.group(2)) * 1e-9
        if (d / "tests.log").exists():
            tests = re.findall(r"^test result: .*", (d / "tests.log").read_text(), re.M)
    return bench, torch, mamba, hf, serve, criterion, tests


# The gpu_bench.sh part that measures each summary number.
PART_OF = {
    "decode_b1_tok_s": "decode", "decode_b1_roofline_fraction": "decode", "prefill_pp4096_tok_s": "prefill",
    "gemv_bandwidth_fraction": "kernels", "gemm_fraction_of_cublas": "kernels", "bamba_over_llama_b64_8k": "decode",
    "bamba_over_llama_b64_32k": "decode", "ssd_speedup_vs_mamba_ssm": "kernels",
    "ssd_speedup_vs_mamba_ssm_32k": "kernels", "decode_attention_bandwidth_fraction": "kernels",
    "prefill_attention_fraction_of_sdpa": "kernels", "load_gb_per_s": "load",
    "bamba_over_hf_transformers_tg128": "hf", "serve_bamba_over_llama_c64": "serve",
}


def find(records, **match):
    return next((r for r in records if all(r.get(k) == v for k, v in match.items())), None)


def ratio(a, b):
    return None if a is None or b is None else a / b


def main():
    args, note = sys.argv[1:], None
    if args[:1] == ["--note"]:
        note, args = args[1], args[2:]
    out, dirs = pathlib.Path(args[0]), [pathlib.Path(d) for d in args[1:]]
    build, gpu = one(dirs, "build.txt"), one(dirs, "gpu.txt")
    bench, torch, mamba, hf, serve, criterion, tests = load(dirs)
    missing = {}

    def tok_s(file, test, **match):
        r = find(bench, file=file, test=test, **match)
        return r and r.get("tokens_per_s")

    copy = find(torch, what="copy")
    copy_gbs = copy and copy["gb_per_s"]
    decode = find(bench, file="bamba_b1", test="tg128")
    gemv_s = criterion.get("linear_no_bias/n16768_k4096/1")
    gemv_gbs = None if gemv_s is None else (16768 * 4096 + 4096 + 16768) * 2 / gemv_s / 1e9

    gemm = {}
    for m in (512, 2048, 8192):
        ours, ref = criterion.get(f"linear_no_bias/n16768_k4096/{m}"), find(torch, what="gemm", m=m)
        if ours and ref:
            gemm[m] = ref["seconds"] / ours
    scan = {}
    for r in mamba:
        ours = criterion.get(f"ssd_chunk_scan/kernel/{r.get('len')}")
        if r.get("op") == "mamba_chunk_scan_combined" and ours:
            scan[r["len"]] = r["seconds"] / ours
    if not mamba:
        missing["ssd_speedup_vs_mamba_ssm"] = missing["ssd_speedup_vs_mamba_ssm_32k"] = (
            "mamba_ssm not run (gpu_bench.sh part kernels without MAMBA_SSM)")

    def b64_ratio(context, bamba_file="bamba_b64"):
        test = f"tg16@d{context}"
        return ratio(tok_s(bamba_file, test), tok_s("llama_b64", test))

    def gemv_fractions():
        """Per decode shape and rows: our product's and cuBLAS's (torch) bytes/s over the copy rate."""
        fractions = {}
        for n, k in ((16768, 4096), (28672, 4096), (4096, 4096), (4096, 14336), (128256, 4096)):
            for m in (1, 4, 16, 64):
                t, ref = criterion.get(f"linear_no_bias/n{n}_k{k}/{m}"), find(torch, what="gemv", m=m, n=n, k=k)
                moved = (n * k + m * k + m * n) * 2
                fractions[f"{m}x{k}x{n}"] = {"ours": ratio(None if t is None else moved / t / 1e9, copy_gbs),
                                             "cublas": ref and ref.get("fraction_of_copy")}
        return fractions

    def step_fractions():
        """The fused Mamba decode step's state bytes (read + write) per second over the copy rate."""
        fractions = {}
        for name, size in (("fused", 4), ("fused_bf16_state", 2)):
            for batch in (1, 4, 16, 64, 256):
                t = criterion.get(f"mamba_decode_step/{name}/{batch}")
                moved = 2 * batch * 128 * 64 * 128 * size
                fractions[f"{name}/{batch}"] = ratio(None if t is None else moved / t / 1e9, copy_gbs)
        return fractions

    def attention_fraction(batch, context):
        """KV bytes of one layer's decode attention (K and V, bf16) per second over the copy rate."""
        t = criterion.get(f"attention/decode_b{batch}/{context}")
        return ratio(None if t is None else 2 * batch * 8 * context * 128 * 2 / t / 1e9, copy_gbs)

    def best(records_by_mode, test):
        values = [r["tokens_per_s"] for records in records_by_mode for r in records if r.get("test") == test]
        return max(values, default=None)

    bamba_hf = [[r for r in bench if r["file"].startswith("hf-bamba")]]
    hf_over = {t: ratio(best(bamba_hf, t), best(hf.values(), t)) for t in ("pp512", "tg128")}

    def served(preset):
        s = serve.get(preset)
        return s and s.get("output_throughput")

    serve_details = {}
    for name in ("bamba-9b", "llama-8b-shape", "bamba-9b-no-prefix-cache"):
        preset = name.removesuffix("-no-prefix-cache")
        step = find(bench, file=f"serve-bench-{preset}", test="tg512@d1024")
        serve_details[name] = {
            "serve_output_tok_s": served(name),
            "bench_tg512_at_d1024_b64_tok_s": step and step.get("tokens_per_s"),
            "serve_over_bench": ratio(served(name), step and step.get("tokens_per_s")),
            "ttft_p50_ms": serve.get(name, {}).get("ttft", {}).get("p50_ms"),
            "itl_p50_ms": serve.get(name, {}).get("itl", {}).get("p50_ms"),
        }
    load_record = find(bench, file="load_bamba", test="load")
    missing["fp8_decode_b1_speedup"] = "FP8 weights are not implemented"
    missing["bamba_over_llamacpp_tg128"] = missing["bamba_over_llamacpp_pp512"] = (
        "no gpu_bench.sh part builds llama.cpp for CUDA yet; the llama.cpp comparison runs on CPU "
        "(scripts/cpu_vs_llamacpp.sh)")

    pre_att, sdpa = criterion.get("attention/prefill/4096"), find(torch, what="sdpa_prefill", length=4096)
    summary = {
        "decode_b1_tok_s": decode and decode["tokens_per_s"],
        "decode_b1_roofline_fraction": decode and decode["roofline_fraction"],
        "prefill_pp4096_tok_s": tok_s("bamba_pp", "pp4096"),
        "gemv_bandwidth_fraction": ratio(gemv_gbs, copy_gbs),
        "gemm_fraction_of_cublas": min(gemm.values(), default=None),
        "bamba_over_llama_b64_8k": b64_ratio(8192),
        "bamba_over_llama_b64_32k": b64_ratio(32768),
        "ssd_speedup_vs_mamba_ssm": scan.get(8192),
        "ssd_speedup_vs_mamba_ssm_32k": scan.get(32768),
        "decode_attention_bandwidth_fraction": attention_fraction(64, 8192),
        "prefill_attention_fraction_of_sdpa": ratio(sdpa and sdpa["seconds"], pre_att),
        "load_gb_per_s": load_record and load_record.get("gb_per_s"),
        "fp8_decode_b1_speedup": None,
        "bamba_over_llamacpp_tg128": None,
        "bamba_over_llamacpp_pp512": None,
        "bamba_over_hf_transformers_tg128": hf_over["tg128"],
        "serve_bamba_over_llama_c64": ratio(served("bamba-9b"), served("llama-8b-shape")),
    }
    for key, value in summary.items():
        if value is None and key not in missing:
            missing[key] = f"not measured: gpu_bench.sh part {PART_OF[key]} did not run or failed"
    llama_32k = find(bench, file="llama_b64", test="tg16@d32768")
    details = {
        "tests": tests,
        "copy_gb_per_s": copy_gbs,
        "gemv_gb_per_s": gemv_gbs,
        "gemm_fraction_of_cublas_by_m": gemm,
        "ssd_speedup_vs_mamba_ssm_by_len": scan,
        "bamba_over_llama_b64_bf16_state": {"8k": b64_ratio(8192, "bamba_b64_bf16"),
                                            "32k": b64_ratio(32768, "bamba_b64_bf16")},
        "llama_batch_at_32k": llama_32k and llama_32k.get("batch"),
        "prefill_pp1024_b8_tok_s": {"bamba-9b": tok_s("bamba_pp_b8", "pp1024"),
                                    "llama-8b-shape": tok_s("llama_pp_b8", "pp1024")},
        "bamba_over_hf_transformers": hf_over,
        "serve": serve_details,
        "gemv_bandwidth_fraction_by_shape": gemv_fractions(),
        "mamba_decode_step_bandwidth_fraction": step_fractions(),
        "decode_attention_bandwidth_fraction_by_shape": {
            f"b{b}@{c}": attention_fraction(b, c) for b, c in ((1, 4096), (16, 8192), (64, 8192), (64, 32768))
        },
        "missing": missing,
    }
    result = {
        "machine": gpu,
        "build": build,
        "command": "scripts/gpu_build.sh BIN, then BIN=BIN OUT=RAW MAMBA_SSM=DIR scripts/gpu_bench.sh all, then "
                   "python3 scripts/gpu_summary.py OUT.json RAW/*",
        **({"note": note} if note else {}),
        "summary": summary,
        "summary_details": details,
        "bench_records": [{k: v for k, v in r.items() if k not in ("part", "file")} | {"record": r["file"]}
                          for r in bench],
        "torch_records": torch,
        "criterion_seconds": criterion,
        "mamba_ssm_records": mamba,
        "transformers_records": hf,
        "serve_records": serve,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
