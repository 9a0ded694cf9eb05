#!/usr/bin/env python3
"""Summarise `bench floor --submit writev,io-uring --json floor-N.json` runs in DIR: per
(connections, k), the range of CPU µs per write each way and the per-run ratio io_uring / writev.
usage: bench/scripts/floor-submit-summary.py DIR > DIR/summary.md"""
import collections
import glob
import json
import sys

rows = collections.defaultdict(list)
for path in sorted(glob.glob(sys.argv[1] + "/floor-*.json")):
    points = json.load(open(path))["points"]
    cost = {(p["conns"], p["k"], p["submit"]): p["cpu_us_per_write"] for p in points}
    for (n, k, submit), us in cost.items():
        if submit == "io-uring" and (n, k, "writev") in cost:
            rows[(n, k)].append((cost[(n, k, "writev")], us))

print("| conns | k | writev µs/write (runs) | io_uring µs/write | io_uring / writev, per run |")
print("|--:|--:|--:|--:|--:|")
for (n, k), runs in sorted(rows.items()):
    w = [a for a, _ in runs]
    u = [b for _, b in runs]
    r = [b / a for a, b in runs]
    print(f"| {n} | {k} | {min(w):.2f}–{max(w):.2f} | {min(u):.2f}–{max(u):.2f} "
          f"| {min(r):.2f}–{max(r):.2f} |")
