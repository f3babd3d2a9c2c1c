"""Per-shape view of Nsight Compute's raw CSV (`ncu --csv --page raw --metrics ...` with
gpu__time_duration.sum, dram__bytes_{read,write}.sum, launch__grid_size, launch__registers_per_thread,
sm__warps_active.avg.pct_of_peak_sustained_active, smsp__issue_active.avg.pct_of_peak_sustained_active):
launches grouped by kernel and grid size, with time, DRAM rate, registers, occupancy and issue use.

Usage: python3 scripts/ncu_launches.py FILE.csv
"""

import collections
import sys

from ncu_summary import number, records


def main():
    groups = collections.defaultdict(list)
    for r in records(sys.argv[1]):
        groups[(r["name"], r.get("launch__grid_size"))].append(r)
    print(f"{'launches':>8} {'avg us':>8} {'GB/s':>6} {'regs':>4} {'occ%':>5} {'issue%':>6}  grid  kernel")
    for (name, grid), rs in sorted(groups.items(), key=lambda kv: -sum(r["time"] for r in kv[1])):
        t = sum(r["time"] for r in rs)
        b = sum(r["dram"] for r in rs)
        avg = lambda k: sum(number(r.get(k, "")) or 0 for r in rs) / len(rs)
        print(f"{len(rs):8} {1e6 * t / len(rs):8.1f} {b / t / 1e9 if t else 0:6.0f} "
              f"{avg('launch__registers_per_thread'):4.0f} "
              f"{avg('sm__warps_active.avg.pct_of_peak_sustained_active'):5.1f} "
              f"{avg('smsp__issue_active.avg.pct_of_peak_sustained_active'):6.1f}  {grid}  {name}")


if __name__ == "__main__":
    main()
