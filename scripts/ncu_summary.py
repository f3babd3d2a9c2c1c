"""Groups Nsight Compute's raw CSV (`ncu --csv --page raw` with gpu__time_duration.sum and
dram__bytes_{read,write}.sum) by kernel: launches, GPU time, DRAM bytes and their rate.

Usage: python3 scripts/ncu_summary.py FILE.csv
"""

import collections
import csv
import sys

SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3,
         "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def scaled(row, units, metric):
    value = number(row.get(metric, ""))
    return None if value is None else value * SCALE.get(units.get(metric, ""), 1)


def records(path):
    """One dict per profiled launch: the raw columns plus `name`, `time` (s) and `dram` (bytes)."""
    lines = open(path, errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        return []
    rows = list(csv.DictReader(lines[start:]))
    units = rows[0]
    out = []
    for r in rows[1:]:
        t = scaled(r, units, "gpu__time_duration.sum")
        if t is None:
            continue
        r["name"] = r["Kernel Name"].split("(")[0][:70]
        r["time"] = t
        r["dram"] = sum(scaled(r, units, m) or 0 for m in ("dram__bytes_read.sum", "dram__bytes_write.sum"))
        out.append(r)
    return out


def main():
    rs = records(sys.argv[1])
    if not rs:
        print("no ncu records (see the .err file)")
        return
    count, time, dram = collections.Counter(), collections.Counter(), collections.Counter()
    for r in rs:
        count[r["name"]] += 1
        time[r["name"]] += r["time"]
        dram[r["name"]] += r["dram"]
    total = sum(time.values())
    print(f"{sum(count.values())} launches, {total * 1e3:.2f} ms of GPU time, {sum(dram.values()) / 1e9:.2f} GB of DRAM")
    for name, t in sorted(time.items(), key=lambda kv: -kv[1]):
        print(f"{count[name]:5d} {t * 1e3:8.3f} ms {t / count[name] * 1e6:8.1f} us avg {dram[name] / t / 1e9:7.0f} GB/s  {name}")


if __name__ == "__main__":
    main()
