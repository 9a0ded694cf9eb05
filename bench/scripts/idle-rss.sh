#!/usr/bin/env bash
# RSS per idle subscribed connection of a tickfan binary: one worker, 20 ticks/s, N connections
# each on trades+quotes of 3 random symbols; RSS read 15 s after the gateway counts all N (after
# the feed's bursts and a ping round, not just after connecting).
# usage: bench/scripts/idle-rss.sh BIN_DIR LABEL [N] [OUT_DIR]   (BIN_DIR holds tickfan; bench
# is taken from target/release). Prints one line; keeps the gateway's and the client's logs.
# The kernel figure is the growth of the machine's slab memory over both ends of every
# connection: approximate (anything else on the machine moves it too).
set -euo pipefail
BIN=$1; LABEL=$2; N=${3:-10000}; OUT=${4:-target/idle-rss}
BENCH=${BENCH:-target/release/bench}
mkdir -p "$OUT"
PORT=$((20000 + RANDOM % 10000))
"$BIN/tickfan" --listen 127.0.0.1:$PORT --workers 1 --rate 20 > "$OUT/$LABEL.gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
sleep 1.5
rss() { awk '/VmRSS/{print $2}' /proc/$GW/status; }
# Kernel memory (socket structures live in slab caches), for both ends of every loopback
# connection: the client's sockets are on this machine too.
slab() { awk '/^Slab:/{print $2}' /proc/meminfo; }
conns() { curl -s http://127.0.0.1:$PORT/metrics | awk '/^tickfan_connections /{print $2}'; }
R0=$(rss); S0=$(slab)
"$BENCH" run --target ws://127.0.0.1:$PORT/ws --conns "$N" --random-symbols 3 \
    --streams 'trades.{sym},quotes.{sym}' --duration 25 --warmup 1 > "$OUT/$LABEL.client.log" 2>&1 &
B=$!
for _ in $(seq 1 120); do
    sleep 0.5
    c=$(conns); [ "${c%.*}" -ge "$N" ] 2>/dev/null && break
done
sleep 15
R1=$(rss); S1=$(slab); C=$(conns)
wait $B || true
echo "$LABEL connections=$C rss_before_kib=$R0 rss_connected_kib=$R1 bytes_per_connection=$(( (R1 - R0) * 1024 / N )) kernel_slab_bytes_per_socket=$(( (S1 - S0) * 1024 / (2 * N) ))" | tee -a "$OUT/summary.txt"
