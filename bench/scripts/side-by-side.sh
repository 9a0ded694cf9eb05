#!/usr/bin/env bash
# One load run against a tickfan binary, server on CPU 0 and client on CPU 1: for comparing two
# builds side by side, alternating, in one session.
# usage: bench/scripts/side-by-side.sh BIN_DIR LABEL RATE CONNS STREAMS OUT_DIR [bench run args...]
# (GWARGS: extra gateway flags; QUERY: appended to the target's /ws, e.g. '?format=binary')
set -euo pipefail
BIN=$1; LABEL=$2; RATE=$3; N=$4; STREAMS=$5; OUT=$6; shift 6
BENCH=${BENCH:-target/release/bench}
GWARGS=${GWARGS:-}
mkdir -p "$OUT"
PORT=$((30000 + RANDOM % 10000))
# shellcheck disable=SC2086
taskset -c 0 "$BIN/tickfan" --listen 127.0.0.1:$PORT --workers 1 --rate "$RATE" --burst-every 0 $GWARGS \
    > "$OUT/$LABEL.gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
sleep 1
taskset -c 1 "$BENCH" run --target "ws://127.0.0.1:$PORT/ws${QUERY:-}" --conns "$N" --streams "$STREAMS" \
    --duration 4 --warmup 1.5 --server-pid $GW --json "$OUT/$LABEL.json" "$@" > "$OUT/$LABEL.client.log" 2>&1
echo "$LABEL: $(grep -E 'delivered|e2e latency|CPU|per server CPU' "$OUT/$LABEL.client.log" | tr '\n' ' ')" | tee -a "$OUT/summary.txt"
