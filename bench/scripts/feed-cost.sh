#!/usr/bin/env bash
# The producer's cost with no client: the feed thread's CPU (utime + stime of `tickfan-feed`)
# over WINDOW seconds, and the process's resident size, for a tickfan binary.
# usage: bench/scripts/feed-cost.sh BIN_DIR LABEL SYMBOLS RATE [WINDOW]
set -euo pipefail
BIN=$1; LABEL=$2; SYMS=$3; RATE=$4; WINDOW=${5:-10}
PORT=$((30000 + RANDOM % 10000))
"$BIN/tickfan" --listen 127.0.0.1:$PORT --symbols "$SYMS" --rate "$RATE" --burst-every 0 >/dev/null 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
sleep 3
feed_ticks() {
    for t in /proc/$GW/task/*; do
        if [ "$(cat "$t/comm")" = "tickfan-feed" ]; then
            awk '{print $14 + $15}' "$t/stat"
        fi
    done
}
a=$(feed_ticks)
sleep "$WINDOW"
b=$(feed_ticks)
rss=$(awk '/VmRSS/ {print $2}' /proc/$GW/status)
hz=$(getconf CLK_TCK)
echo "$LABEL symbols=$SYMS rate=$RATE feed_cpu_cores=$(echo "scale=4; ($b - $a) / $hz / $WINDOW" | bc) rss_kib=$rss"
