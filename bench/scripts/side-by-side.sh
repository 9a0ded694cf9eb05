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
# shellcheck disable=SC2086
taskset -c 0 "$BIN/tickfan" --listen 127.0.0.1:0 --workers 1 --rate "$RATE" --burst-every 0 $GWARGS \
    > "$OUT/$LABEL.gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
# The port it was given (a fixed one could be in use: 10,000 client sockets take as many
# ephemeral ports), from its first line, once it listens (at most 10 s).
PORT=
for _ in $(seq 100); do
    PORT=$(sed -n 's|^tickfan listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$OUT/$LABEL.gateway.log")
    [ -n "$PORT" ] && break
    sleep 0.1
done
[ -n "$PORT" ] || { echo "$LABEL: the gateway did not start: $(tail -1 "$OUT/$LABEL.gateway.log")" >&2; exit 1; }
taskset -c 1 "$BENCH" run --target "ws://127.0.0.1:$PORT/ws${QUERY:-}" --conns "$N" --streams "$STREAMS" \
    --duration 4 --warmup 1.5 --server-pid $GW --metrics-url "http://127.0.0.1:$PORT/metrics" --json "$OUT/$LABEL.json" "$@" > "$OUT/$LABEL.client.log" 2>&1
echo "$LABEL: $(grep -E 'delivered|e2e latency|internal latency|CPU|per server CPU' "$OUT/$LABEL.client.log" | tr '\n' ' ')" | tee -a "$OUT/summary.txt"
