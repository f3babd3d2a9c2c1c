#!/usr/bin/env python3
"""Summarises scripts/prefix_cache_cpu.sh's raw records into one JSON file and a table.

Usage: prefix_cache_summary.py RAW_DIR OUT_JSON
"""
import json
import pathlib
import platform
import subprocess
import sys

raw, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])


def load(name):
    path = raw / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def row(r):
    return {
        "prompt_tokens": r["prompt_tokens"],
        "cached_tokens": r["cached_tokens"],
        "cache_hit_rate": round(r["cache_hit_rate"], 3),
        "ttft_p50_ms": r["ttft"]["p50_ms"],
        "ttft_p99_ms": r["ttft"]["p99_ms"],
        "ttft_later_turns_p50_ms": r["ttft_later_turns"]["p50_ms"],  # null without later turns
        "output_tok_s": round(r["output_throughput"], 2),
        "duration_s": r["duration_s"],
    }


workloads = {}
for workload in ("conversations", "system-prompt"):
    on, off = load(f"bamba-cache-on-{workload}"), load(f"bamba-cache-off-{workload}")
    entry = {"workload": {k: on[k] for k in ("num_prompts", "turns", "turn_len", "shared_prefix_len",
                                             "input_len", "output_len", "concurrency")},
             "bamba_cache_on": row(on), "bamba_cache_off": row(off)}
    key = "ttft_later_turns_p50_ms" if workload == "conversations" else "ttft_p50_ms"
    entry["ttft_p50_ratio_on_over_off"] = round(entry["bamba_cache_on"][key] / entry["bamba_cache_off"][key], 3)
    peer = load(f"llama.cpp-{workload}")
    if peer:
        entry["llama_server"] = row(peer)
    workloads[workload] = entry

metrics = (raw / "bamba-on.metrics").read_text().split("\n") if (raw / "bamba-on.metrics").exists() else []
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
record = {
    "machine": f"{cpu}, {len([l for l in open('/proc/cpuinfo') if l.startswith('processor')])} threads",
    "commit": commit,
    "command": "scripts/prefix_cache_cpu.sh",
    "checkpoint": "benches/configs/cpu-bamba-114m.json, random f32 weights",
    "workloads": workloads,
    "bamba_prefix_metrics": dict(l.split(" ", 1) for l in metrics if l),
}
out.write_text(json.dumps(record, indent=2) + "\n")
print(f"{'workload':<15} {'server':<16} {'cached/prompt':>15} {'TTFT p50 ms':>12} {'later turns p50':>16} {'out tok/s':>10}")
for name, w in workloads.items():
    for server in ("bamba_cache_on", "bamba_cache_off", "llama_server"):
        r = w.get(server)
        if r:
            print(f"{name:<15} {server:<16} {r['cached_tokens']:>7}/{r['prompt_tokens']:<7} {r['ttft_p50_ms']:>12.1f} "
                  f"{r['ttft_later_turns_p50_ms'] or float('nan'):>16.1f} {r['output_tok_s']:>10.2f}")
    print(f"{name:<15} TTFT p50 with the cache / without: {w['ttft_p50_ratio_on_over_off']}")
