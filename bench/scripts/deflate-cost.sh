#!/usr/bin/env bash
# permessage-deflate end to end: one gateway (`--permessage-deflate --workers 1`, pinned to
# CPU 0) and N Node `ws` clients (CPU 1) on every trade, quote and book, alternately without and
# with compression. For each run, over the window: data frames queued (tickfan_frames_out),
# bytes written (tickfan_bytes_out), the gateway's CPU (utime + stime), and both per frame;
# then the clients' own count (messages, undeclared seq jumps, what was negotiated).
# usage: bench/scripts/deflate-cost.sh BIN_DIR [CLIENTS] [RATE] [WINDOW] [REPEATS]
set -euo pipefail
BIN=$1; N=${2:-20}; RATE=${3:-1000}; WINDOW=${4:-15}; REPEATS=${5:-3}
cd "$(dirname "$0")/../.."
hz=$(getconf CLK_TCK)
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$REPEATS"); do
    for mode in plain deflate; do
        PORT=$((30000 + RANDOM % 10000))
        taskset -c 0 "$BIN/tickfan" --listen 127.0.0.1:$PORT --workers 1 --rate "$RATE" \
            --burst-every 0 --permessage-deflate >/dev/null 2>&1 &
        GW=$!
        sleep 2
        taskset -c 1 node bench/scripts/deflate-clients.mjs \
            "ws://127.0.0.1:$PORT/ws?streams=trades.*,quotes.*,book.*" "$N" $((WINDOW + 3)) "$mode" \
            > /tmp/deflate-clients.$$ &
        CL=$!
        sleep 3 # connected, snapshots sent
        c0=$(cpu $GW); b0=$(metric $PORT tickfan_bytes_out_total); f0=$(metric $PORT tickfan_frames_out_total)
        sleep "$WINDOW"
        c1=$(cpu $GW); b1=$(metric $PORT tickfan_bytes_out_total); f1=$(metric $PORT tickfan_frames_out_total)
        wait $CL
        kill $GW; wait $GW 2>/dev/null || true
        line=$(cat /tmp/deflate-clients.$$)
        awk -v mode="$mode" -v r="$r" -v c="$((c1 - c0))" -v hz="$hz" -v w="$WINDOW" \
            -v b="$b0 $b1" -v f="$f0 $f1" -v line="$line" 'BEGIN {
            split(b, B, " "); split(f, F, " "); bytes = B[2] - B[1]; frames = F[2] - F[1];
            printf "run %d %-7s gateway_cpu=%.3f_cores frames_out=%.0f/s bytes_out=%.0f/s bytes/frame=%.1f cpu_us/frame=%.2f  clients: %s\n",
                r, mode, c / hz / w, frames / w, bytes / w, bytes / frames, c / hz / frames * 1e6, line }'
    done
done
rm -f /tmp/deflate-clients.$$
