"""Groups Nsight Compute's raw CSV (`ncu --csv --page raw` with gpu__time_duration.sum and
dram__bytes_{read,write}.sum) by kernel: launches, GPU time, DRAM bytes and their rate.

Usage: python3 scripts/ncu_summary.py FILE.csv
"""

import collections
import csv
import sys


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def main():
    lines = open(sys.argv[1], errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        print("no ncu records (see the .err file)")
        return
    rows = list(csv.DictReader(lines[start:]))
    units = rows[0]
    count, time, dram = collections.Counter(), collections.Counter(), collections.Counter()
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3,
             "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}
    for r in rows[1:]:
        t = number(r.get("gpu__time_duration.sum", ""))
        if t is None:
            continue
        name = r["Kernel Name"].split("(")[0][:70]
        count[name] += 1
        time[name] += t * scale.get(units["gpu__time_duration.sum"], 1)
        for m in ("dram__bytes_read.sum", "dram__bytes_write.sum"):
            b = number(r.get(m, ""))
            if b is not None:
                dram[name] += b * scale.get(units[m], 1)
    total = sum(time.values())
    print(f"{sum(count.values())} launches, {total * 1e3:.2f} ms of GPU time, {sum(dram.values()) / 1e9:.2f} GB of DRAM")
    for name, t in sorted(time.items(), key=lambda kv: -kv[1]):
        print(f"{count[name]:5d} {t * 1e3:8.3f} ms {t / count[name] * 1e6:8.1f} us avg {dram[name] / t / 1e9:7.0f} GB/s  {name}")


main()
