#!/usr/bin/env python3
"""Per server and rate, the range over repeats of server cores, msgs per server CPU-second, p99
and writes per delivered message, from `bench compare` output directories; and tickfan's
msgs per server CPU-second over the other server's, per repeat (same repeat, same rate), saying
when a step behind a ratio did not hold.
usage: bench/scripts/head-to-head-summary.py DIR... (each a compare --out or a scenario dir)"""
import collections
import glob
import json
import os
import sys


def rng(values, fmt):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else fmt.format(lo) + "–" + fmt.format(hi)


for top in sys.argv[1:]:
    files = sorted(glob.glob(os.path.join(top, "*", "compare.json"))) or [os.path.join(top, "compare.json")]
    for path in files:
        steps = json.load(open(path))["steps"]
        cells = collections.defaultdict(list)
        per_cpu = {}
        for s in steps:
            r = s["report"]
            p99 = next((us for q, us in r["latency_percentiles_us"] if q == 0.99), None)
            writes = r.get("server_writes")
            wpm = writes / r["msgs"] if writes and r["msgs"] else None
            cells[(s["server"], s["rate"])].append(
                (r["server_cpu_cores"], r["msgs_per_server_cpu_sec"], p99, wpm, s["holds"]))
            per_cpu[(s["server"], s["rate"], s["repeat"])] = (r["msgs_per_server_cpu_sec"], s["holds"])
        print(f"\n{path}\n")
        print("| server | ticks/s | server cores | msgs per server CPU-s | p99 ms | writes per msg | held |")
        print("|---|--:|--:|--:|--:|--:|--:|")
        for (server, rate), v in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            p99s = [x[2] / 1000 for x in v if x[2] is not None]
            wpms = [x[3] for x in v if x[3] is not None]
            print(f"| {server} | {rate:g} | {rng([x[0] for x in v], '{:.2f}')} "
                  f"| {rng([x[1] / 1000 for x in v], '{:.0f}k')} "
                  f"| {rng(p99s, '{:.1f}') if p99s else 'n/a'} | {rng(wpms, '{:.2f}') if wpms else 'n/a'} "
                  f"| {sum(x[4] for x in v)}/{len(v)} |")
        ratios = collections.defaultdict(list)
        for (server, rate, rep), (v, held) in per_cpu.items():
            mine = per_cpu.get(("tickfan", rate, rep))
            if server != "tickfan" and mine and v:
                ratios[(server, rate)].append((mine[0] / v, held and mine[1]))
        for (server, rate), v in sorted(ratios.items(), key=lambda kv: kv[0][1]):
            both = sum(h for _, h in v)
            note = "" if both == len(v) else f" (both held in {both} of {len(v)}: the others describe an overloaded server)"
            print(f"\ntickfan / {server} at {rate:g} ticks/s, msgs per server CPU-s, per repeat: "
                  f"{rng([x for x, _ in v], '{:.2f}')}×{note}", end="")
        print()
