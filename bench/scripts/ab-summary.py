#!/usr/bin/env python3
"""Per build, scenario and rate, each repeat's figures from a `side-by-side.sh` output directory
whose labels are BUILD-SCENARIO-RATE-rN (e.g. old-thin1k-8000-r1): msgs per server CPU-second,
server and client cores, p50 and p99 end to end, writes per delivered message, gaps.
usage: bench/scripts/ab-summary.py DIR"""
import collections
import glob
import json
import os
import sys

runs = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    build, scenario, rate, _repeat = os.path.basename(path)[:-5].split("-")
    r = json.load(open(path))
    pct = dict((q, us / 1000) for q, us in r["latency_percentiles_us"])
    writes = r["server_writes"] / r["msgs"] if r.get("server_writes") and r["msgs"] else float("nan")
    runs[(scenario, int(rate), build)].append(
        f"{r['msgs_per_server_cpu_sec'] / 1000:.0f}k msgs/CPU-s, {r['server_cpu_cores']:.2f} cores, "
        f"client {r['client_cpu_cores']:.2f} cores, "
        f"p50 {pct[0.5]:.1f} ms, p99 {pct[0.99]:.1f} ms, {writes:.2f} writes/msg, "
        f"{r['declared_gaps'] + r['undeclared_gaps']} gaps")
for (scenario, rate, build), cells in sorted(runs.items()):
    print(f"{scenario} {rate} ticks/s {build}: " + " | ".join(cells))
