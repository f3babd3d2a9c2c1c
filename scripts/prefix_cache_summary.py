#!/usr/bin/env python3
"""Summarises a prefix-cache benchmark's raw `bamba bench-serve` records into one JSON file and a table.

The records are RAW_DIR/LABEL-WORKLOAD.json for WORKLOAD in conversations and system-prompt; `--on` and
`--off` name the labels of the server with and without its prefix cache (their TTFT ratio is reported),
`--also` further labels shown beside them (another snapshot grid, another server).

Usage: prefix_cache_summary.py RAW_DIR OUT_JSON --on LABEL --off LABEL [--also LABEL ...]
       [--machine TEXT] [--commit REV] [--command TEXT] [--model TEXT]
"""
import argparse
import json
import pathlib
import platform
import subprocess

parser = argparse.ArgumentParser()
parser.add_argument("raw", type=pathlib.Path)
parser.add_argument("out", type=pathlib.Path)
parser.add_argument("--on", required=True)
parser.add_argument("--off", required=True)
parser.add_argument("--also", action="append", default=[])
parser.add_argument("--machine")
parser.add_argument("--commit")
parser.add_argument("--command", required=True)
parser.add_argument("--model", required=True)
args = parser.parse_args()


def load(label, workload):
    path = args.raw / f"{label}-{workload}.json"
    return json.loads(path.read_text()) if path.exists() else None


def row(r):
    return {
        "prompt_tokens": r["prompt_tokens"],
        "cached_tokens": r["cached_tokens"],
        "cache_hit_rate": round(r["cache_hit_rate"], 3),
        "ttft_p50_ms": r["ttft"]["p50_ms"],
        "ttft_p99_ms": r["ttft"]["p99_ms"],
        "ttft_first_turns_p50_ms": r["ttft_first_turns"]["p50_ms"],
        "ttft_later_turns_p50_ms": r["ttft_later_turns"]["p50_ms"],  # null without later turns
        "output_tok_s": round(r["output_throughput"], 2),
        "duration_s": r["duration_s"],
    }


workloads = {}
for workload in ("conversations", "system-prompt"):
    on, off = load(args.on, workload), load(args.off, workload)
    if not on or not off:
        continue
    keys = ("num_prompts", "turns", "turn_len", "shared_prefix_len", "input_len", "output_len", "concurrency")
    entry = {"workload": {k: on[k] for k in keys}, "servers": {}}
    for label in [args.on, args.off, *args.also]:
        r = load(label, workload)
        if r:
            entry["servers"][label] = row(r)
    key = "ttft_later_turns_p50_ms" if on["turns"] > 1 else "ttft_p50_ms"
    entry["ttft_p50_on_over_off"] = round(entry["servers"][args.on][key] / entry["servers"][args.off][key], 3)
    workloads[workload] = entry


def this_machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    return f"{cpu}, {sum(1 for l in open('/proc/cpuinfo') if l.startswith('processor'))} threads"


record = {
    "machine": args.machine or this_machine(),
    "commit": args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                            text=True).stdout.strip(),
    "command": args.command,
    "model": args.model,
    "workloads": workloads,
}
args.out.write_text(json.dumps(record, indent=2) + "\n")
print(f"{'workload':<14} {'server':<18} {'cached/prompt':>15} {'TTFT p50':>9} {'1st turns':>10} {'later turns':>12} "
      f"{'out tok/s':>10}")
nan = float("nan")
for name, w in workloads.items():
    for label, r in w["servers"].items():
        print(f"{name:<14} {label:<18} {r['cached_tokens']:>7}/{r['prompt_tokens']:<7} {r['ttft_p50_ms']:>9.1f} "
              f"{r['ttft_first_turns_p50_ms'] or nan:>10.1f} {r['ttft_later_turns_p50_ms'] or nan:>12.1f} "
              f"{r['output_tok_s']:>10.2f}")
    print(f"{name:<14} TTFT p50 ({'later turns' if w['workload']['turns'] > 1 else 'all'}) with the cache / "
          f"without: {w['ttft_p50_on_over_off']}")
