#!/usr/bin/env python3
"""Each server's CPU per write against the loopback floor, tight and paced, from the output of
bench/scripts/paced-floor.sh: per scenario, rate and server, ranges over the rounds of

- the server's writes per second and CPU µs per write (its CPU over its write system calls,
  the frames they carried included),
- the tight floor's CPU µs per write and the paced floor's at the server's writes per second
  (interpolated between the paces measured, in log scale, at the floor's connection count
  nearest the scenario's), both from the same round: the paced floor's bursts of writes
  alone, and with the CPU of its pauses between them (1,000 sleeps and wake-ups a second),
- the server's CPU per write over the paced floor's writes alone, and the share of its CPU
  beyond what its writes cost at each floor (negative: its writes cost less than the floor's).

usage: bench/scripts/paced-floor-summary.py OUT"""
import collections
import glob
import json
import math
import os
import re
import sys


def rng(values, fmt):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else fmt.format(lo) + "–" + fmt.format(hi)


def paced_cost(points, writes_per_s, pauses=False):
    """CPU µs per write of the paced floor at `writes_per_s` (with the CPU of its pauses if
    `pauses`), interpolated in log(writes/s) between the measured paces (the nearest one beyond
    them)."""
    pts = sorted((p["writes_per_s"], (p["cpu_s"] + pauses * p.get("pause_cpu_s", 0)) * 1e6 / p["writes"])
                 for p in points)
    if writes_per_s <= pts[0][0]:
        return pts[0][1]
    if writes_per_s >= pts[-1][0]:
        return pts[-1][1]
    for (w0, c0), (w1, c1) in zip(pts, pts[1:]):
        if w0 <= writes_per_s <= w1:
            t = (math.log(writes_per_s) - math.log(w0)) / (math.log(w1) - math.log(w0))
            return c0 + (c1 - c0) * t
    raise AssertionError("unreachable")


def main(out):
    rows = collections.defaultdict(list)
    for floor_path in sorted(glob.glob(os.path.join(out, "floor-*.json"))):
        rnd = re.search(r"floor-(\d+)\.json$", floor_path).group(1)
        floor = json.load(open(floor_path))["points"]
        for path in sorted(glob.glob(os.path.join(out, f"compare-*-{rnd}", "*", "compare.json"))):
            doc = json.load(open(path))
            conns = doc["config"]["conns"]
            n = min({p["conns"] for p in floor}, key=lambda c: abs(c - conns))
            tight = next(p["cpu_us_per_write"] for p in floor if p["conns"] == n and p["pace"] == 0)
            paced = [p for p in floor if p["conns"] == n and p["pace"] > 0]
            for s in doc["steps"]:
                r = s["report"]
                if not r.get("server_writes"):
                    continue
                secs = r["measured_seconds"]
                wps = r["server_writes"] / secs
                us = r["server_cpu_cores"] * secs * 1e6 / r["server_writes"]
                rows[(doc["config"]["scenario"], s["rate"], s["server"])].append(
                    dict(wps=wps, us=us, tight=tight, paced=paced_cost(paced, wps),
                         paused=paced_cost(paced, wps, pauses=True), held=s["holds"],
                         fpw=r["msgs"] / r["server_writes"]))
    print("| scenario | ticks/s | server | writes/s | frames per write | CPU µs per write | tight floor | "
          "paced floor at its writes/s | the same with its pauses | server / paced floor | "
          "CPU beyond the tight floor | beyond the paced floor | held |")
    print("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    order = {"tickfan": 0, "uws": 1, "ws": 2}
    for (scen, rate, server), v in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 9))):
        print(f"| {scen} | {rate:g} | {server} | {rng([x['wps'] / 1000 for x in v], '{:.1f}k')} "
              f"| {rng([x['fpw'] for x in v], '{:.2f}')} "
              f"| {rng([x['us'] for x in v], '{:.2f}')} | {rng([x['tight'] for x in v], '{:.2f}')} "
              f"| {rng([x['paced'] for x in v], '{:.2f}')} | {rng([x['paused'] for x in v], '{:.2f}')} "
              f"| {rng([x['us'] / x['paced'] for x in v], '{:.2f}')}× "
              f"| {rng([100 * (1 - x['tight'] / x['us']) for x in v], '{:.0f}')} % "
              f"| {rng([100 * (1 - x['paced'] / x['us']) for x in v], '{:.0f}')} % "
              f"| {sum(x['held'] for x in v)}/{len(v)} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
