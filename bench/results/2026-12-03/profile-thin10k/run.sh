#!/usr/bin/env bash
# profile tickfan at thin10k, 200 ticks/s
cd /work/main
PORT=$((30000 + RANDOM % 10000))
taskset -c 0 target/release/tickfan --listen 127.0.0.1:$PORT --workers 1 --rate 200 --burst-every 0 > /tmp/prof10k/gw.log 2>&1 &
GW=$!
sleep 1
(sleep 4; perf record -F 2999 -g -p $GW -o /tmp/prof10k/perf.data -- sleep 6 > /tmp/prof10k/perf.log 2>&1) &
taskset -c 1 target/release/bench run --target ws://127.0.0.1:$PORT/ws --conns 10000 --random-symbols 3 --streams 'trades.{sym},quotes.{sym}' --duration 10 --warmup 2 --server-pid $GW --metrics-url http://127.0.0.1:$PORT/metrics --count-writes > /tmp/prof10k/client.log 2>&1
wait
kill $GW
echo done
