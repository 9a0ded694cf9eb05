#!/usr/bin/env bash
# The loopback floor paced like a thin stream, beside the servers' own CPU per write, in one
# session: ROUNDS rounds, each the floor (tight and paced at the write rates the thin scenarios'
# low rates make) at 1,000 and 9,900 connections, then `bench compare` of tickfan, uWS.js and
# Node `ws` on thin1k and thin10k at those rates, one repeat each.
# usage: bench/scripts/paced-floor.sh OUT ROUNDS   (then bench/scripts/paced-floor-summary.py OUT)
set -euo pipefail
OUT=$1; ROUNDS=$2
BENCH=${BENCH:-target/release/bench}
mkdir -p "$OUT"
for r in $(seq "$ROUNDS"); do
    "$BENCH" floor --conns 1000,9900 --batch 1 --submit sendmsg --pace 0,14000,28000,56000,112000 \
        --duration 2 --json "$OUT/floor-$r.json" > "$OUT/floor-$r.md"
    "$BENCH" compare --servers tickfan,uws,ws --scenario thin1k --rates 500,1000,2000 \
        --repeats 1 --duration 3 --warmup 1.5 --keep-going --no-floor --out "$OUT/compare-thin1k-$r" \
        > "$OUT/compare-thin1k-$r.log" 2>&1
    "$BENCH" compare --servers tickfan,uws,ws --scenario thin10k --rates 50,100,200 \
        --repeats 1 --duration 3 --warmup 1.5 --keep-going --no-floor --out "$OUT/compare-thin10k-$r" \
        > "$OUT/compare-thin10k-$r.log" 2>&1
    echo "round $r done $(date -u +%H:%M:%S)"
done
