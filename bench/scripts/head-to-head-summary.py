#!/usr/bin/env python3
"""Per server and rate, the range over repeats of server cores, msgs per server CPU-second, p99
and writes per delivered message, from `bench compare` output directories; and tickfan's
msgs per server CPU-second over the other server's, per repeat (same repeat, same rate), saying
when a step behind a ratio did not hold.

With --table SERVER: instead, the head-to-head table docs/benchmarks.md quotes, tickfan against
SERVER, one row per ladder rate (bisection steps left out), every range taken over the repeats
in which *both* servers held that rate: the ratio of msgs per server CPU-second, both p99s and
both writes per delivered message. "‡" marks SERVER's p99 where the load client used >= 80 %
of its CPUs against SERVER in one of those repeats; "(k repeats of n)" says when both held in
fewer than all. --group LO-HI (ticks/s, repeatable) merges the ladder rates from LO to HI into
one row.

usage: bench/scripts/head-to-head-summary.py [--table SERVER [--group LO-HI]...] DIR...
       (each DIR a compare --out or a scenario directory)"""
import argparse
import collections
import glob
import json
import os


def rng(values, fmt):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else fmt.format(lo) + "–" + fmt.format(hi)


def rate_label(rate):
    """Ticks/s as the docs write them: 250, 4k, 76.1k."""
    if rate < 1000:
        return f"{rate:g}"
    return f"{rate / 1000:.3g}k"


def p99_us(report):
    return next((us for q, us in report["latency_percentiles_us"] if q == 0.99), None)


def writes_per_msg(report):
    writes = report.get("server_writes")
    return writes / report["msgs"] if writes and report["msgs"] else None


def compare_files(top):
    return sorted(glob.glob(os.path.join(top, "*", "compare.json"))) or [os.path.join(top, "compare.json")]


def summary(path):
    steps = json.load(open(path))["steps"]
    cells = collections.defaultdict(list)
    per_cpu = {}
    for s in steps:
        r = s["report"]
        cells[(s["server"], s["rate"])].append(
            (r["server_cpu_cores"], r["msgs_per_server_cpu_sec"], p99_us(r), writes_per_msg(r), s["holds"]))
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


def table(path, other, groups):
    doc = json.load(open(path))
    repeats = doc["config"]["repeats"]
    ladder = {}
    for s in doc["steps"]:
        if not s["bisect"] and s["server"] in ("tickfan", other):
            ladder[(s["server"], s["rate"], s["repeat"])] = s
    rates = sorted({rate for (_, rate, _) in ladder})

    def group_of(rate):
        return next(((lo, hi) for lo, hi in groups if lo <= rate <= hi), (rate, rate))

    rows = collections.defaultdict(list)  # (lo, hi) -> [(tickfan step, other step)], both held
    tried = collections.defaultdict(set)  # (lo, hi) -> repeats in which both were measured
    for rate in rates:
        for rep in range(repeats):
            mine, theirs = ladder.get(("tickfan", rate, rep)), ladder.get((other, rate, rep))
            if not (mine and theirs):
                continue
            tried[group_of(rate)].add(rep)
            if mine["holds"] and theirs["holds"]:
                rows[group_of(rate)].append((mine, theirs))
    print(f"\n{path}: tickfan / {other}, ladder rates both held, per repeat\n")
    print(f"| rate (ticks/s) | tickfan / {other} | tickfan p99 | {other} p99 | writes per message, tickfan / {other} |")
    print("|--:|--:|--:|--:|--:|")
    for group, pairs in sorted(rows.items()):
        reps = {m["repeat"] for m, _ in pairs}
        held = sorted({m["rate"] for m, _ in pairs})  # a group's row names the rates both held
        lo, hi = held[0], held[-1]
        label = rate_label(lo) if lo == hi else f"{rate_label(lo)}–{rate_label(hi)}"
        if len(reps) < len(tried[group]):
            label += f" ({len(reps)} repeats of {len(tried[group])})"
        ratio = [m["report"]["msgs_per_server_cpu_sec"] / t["report"]["msgs_per_server_cpu_sec"] for m, t in pairs]
        p99_mine = [p99_us(m["report"]) / 1000 for m, _ in pairs]
        p99_theirs = [p99_us(t["report"]) / 1000 for _, t in pairs]
        limited = " ‡" if any(t["client_limited"] for _, t in pairs) else ""
        wpm_mine = [w for w in (writes_per_msg(m["report"]) for m, _ in pairs) if w is not None]
        wpm_theirs = [w for w in (writes_per_msg(t["report"]) for _, t in pairs) if w is not None]
        wpm = (f"{rng(wpm_mine, '{:.2f}')} / {rng(wpm_theirs, '{:.2f}')}"
               if wpm_mine and wpm_theirs else "n/a")
        print(f"| {label} | {rng(ratio, '{:.2f}')}× | {rng(p99_mine, '{:.1f}')} ms "
              f"| {rng(p99_theirs, '{:.1f}')} ms{limited} | {wpm} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", metavar="SERVER", help="the head-to-head table against SERVER")
    ap.add_argument("--group", metavar="LO-HI", action="append", default=[],
                    help="merge the ladder rates from LO to HI ticks/s into one row (with --table)")
    ap.add_argument("dirs", nargs="+", metavar="DIR")
    args = ap.parse_args()
    if args.group and not args.table:
        ap.error("--group needs --table")
    try:
        groups = [tuple(float(x) for x in g.split("-")) for g in args.group]
        if any(len(g) != 2 or g[0] > g[1] for g in groups):
            raise ValueError
    except ValueError:
        ap.error("--group takes LO-HI, two rates in ticks/s, LO <= HI")
    for top in args.dirs:
        for path in compare_files(top):
            if args.table:
                table(path, args.table, groups)
            else:
                summary(path)


if __name__ == "__main__":
    main()
