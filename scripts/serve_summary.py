#!/usr/bin/env python3
"""Summarises scripts/serve_vs_llamacpp.sh's raw records into one JSON file and a table.

Usage: serve_summary.py RAW_DIR OUT_JSON
"""
import json
import os
import pathlib
import platform
import sys

raw, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
runs = [json.loads(p.read_text()) for p in sorted(raw.glob("*-c*-in*.json"))]
decode = {}
for line in (raw / "bench-decode.jsonl").read_text().splitlines():
    r = json.loads(line)
    if r["test"].startswith("tg"):
        decode[r["batch"]] = r["tokens_per_s"]


def find(label, concurrency, input_len):
    return next(r for r in runs if r["label"] == label and r["concurrency"] == concurrency and r["input_len"] == input_len)


overhead = []
for c, b in [(1, 1), (16, 16)]:
    r = find("bamba", c, 16)
    overhead.append({
        "concurrency": c,
        "serve_output_tok_s": round(r["output_throughput"], 1),
        "serve_tpot_ms": r["tpot"]["mean_ms"],
        "bench_decode_batch": b,
        "bench_decode_tok_s": round(decode[b], 1),
        "ratio": round(r["output_throughput"] / decode[b], 3),
    })
side = []
for c in (1, 8, 32):
    ours, theirs = find("bamba", c, 128), find("llama.cpp", c, 128)
    side.append({
        "concurrency": c,
        "bamba_output_tok_s": round(ours["output_throughput"], 1),
        "llamacpp_output_tok_s": round(theirs["output_throughput"], 1),
        "ratio": round(ours["output_throughput"] / theirs["output_throughput"], 3),
        "bamba_ttft_p50_ms": ours["ttft"]["p50_ms"],
        "llamacpp_ttft_p50_ms": theirs["ttft"]["p50_ms"],
        "bamba_tpot_mean_ms": ours["tpot"]["mean_ms"],
        "llamacpp_tpot_mean_ms": theirs["tpot"]["mean_ms"],
    })
def machine_name():
    try:
        cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        model = next(l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name"))
        return f"{model}, {os.cpu_count()} cores"
    except (OSError, StopIteration):
        return platform.machine()


machine = machine_name()
result = {
    "command": "scripts/serve_vs_llamacpp.sh",
    "machine": machine,
    "checkpoint": "benches/configs/cpu-bamba-114m.json, random f32 weights",
    "scheduler_overhead": overhead,
    "vs_llama_server": side,
    "runs": runs,
}
out.write_text(json.dumps(result, indent=1) + "\n")
print("scheduler overhead (16-token prompts, 128 new tokens):")
for o in overhead:
    print(f"  c{o['concurrency']:<3} serve {o['serve_output_tok_s']:>7} tok/s  bench b{o['bench_decode_batch']} {o['bench_decode_tok_s']:>7} tok/s  ratio {o['ratio']}")
print("bamba serve vs llama-server (128-token prompts, 128 new tokens), output tok/s:")
for s in side:
    print(f"  c{s['concurrency']:<3} bamba {s['bamba_output_tok_s']:>7}  llama.cpp {s['llamacpp_output_tok_s']:>7}  ratio {s['ratio']}  "
          f"TTFT p50 {s['bamba_ttft_p50_ms']} / {s['llamacpp_ttft_p50_ms']} ms  TPOT {s['bamba_tpot_mean_ms']} / {s['llamacpp_tpot_mean_ms']} ms")
