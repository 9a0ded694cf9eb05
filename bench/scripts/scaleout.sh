#!/usr/bin/env bash
# Gateways scaled out on NATS against one gateway with its embedded feed, under one load.
#
# usage: bench/scripts/scaleout.sh [OUT_DIR] [REPEATS]
#   (binaries from target/release: cargo build --release -p gateway -p feed-sim -p bench;
#    nats-server on the PATH)
#
# The load, the same in every setup: 1,000 connections, each on trades+quotes of 3 random
# symbols of 50; the feed at $RATE (default 2,000) ticks/s without bursts; 10 s measured after 2 s of warm-up.
# Setups:
#   embedded  one tickfan with its embedded feed (no NATS)
#   nats-1    feed-sim --sink nats:// -> nats-server -> one tickfan --source nats://
#   nats-2    the same feed -> two tickfan --source nats://, bench run spreading the
#             connections over both (--target a,b) and reporting the aggregate
# Every server-side process (gateways, nats-server, feed-sim) is pinned to CPU 0 (FEED_CPU=1
# moves nats-server and feed-sim to the client's CPU 1), the bench client to CPU 1. The gateways' CPU (the whole process: with the embedded feed that includes
# generating the ticks; on NATS, parsing them) is the "server" CPU; feed-sim's and
# nats-server's are reported as the feed's. On a 2-core machine two gateways share CPU 0: this shows what the
# NATS hop and a second gateway cost, not added capacity.
set -euo pipefail
OUT=${1:-target/scaleout}
REPEATS=${2:-3}
BIN=${BIN:-target/release}
RATE=${RATE:-2000}
# Where nats-server and feed-sim run: CPU 0 with the gateways (default), or 1 with the client.
FEED_CPU=${FEED_CPU:-0}
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; PIDS=(); }
trap cleanup EXIT

port() { echo $((20000 + RANDOM % 20000)); }
wait_http() { for _ in $(seq 1 100); do curl -sf "http://$1/readyz" >/dev/null && return 0; sleep 0.1; done; echo "no /readyz 200 from $1" >&2; return 1; }

gateway() { # ADDR EXTRA_ARGS... ; echoes its pid
    local addr=$1; shift
    taskset -c 0 "$BIN/tickfan" --listen "$addr" --workers 1 "$@" > "$LOG.gateway-${addr##*:}.log" 2>&1 &
    PIDS+=($!); echo $!
}

run_bench() { # NAME TARGETS SERVER_PIDS FEED_PIDS
    local name=$1 targets=$2 server=$3 feed=$4 args=()
    for p in $server; do args+=(--server-pid "$p"); done
    for p in $feed; do args+=(--feed-pid "$p"); done
    taskset -c 1 "$BIN/bench" run --target "$targets" --conns 1000 --random-symbols 3 \
        --streams 'trades.{sym},quotes.{sym}' --duration 10 --warmup 2 "${args[@]}" \
        --out "$OUT/$name" > "$OUT/$name.client.log" 2>&1
}

for r in $(seq 1 "$REPEATS"); do
    # embedded
    LOG="$OUT/embedded-$r"; A=127.0.0.1:$(port)
    G=$(gateway "$A" --symbols 50 --rate $RATE --burst-every 0)
    wait_http "$A"
    run_bench "embedded-$r" "ws://$A/ws" "$G" ""
    cleanup

    # NATS: one server, one feed, then one and two gateways
    NP=$(port)
    taskset -c "$FEED_CPU" nats-server -a 127.0.0.1 -p "$NP" > "$OUT/nats-$r.log" 2>&1 &
    N=$!; PIDS+=($N); sleep 0.5
    taskset -c "$FEED_CPU" "$BIN/feed-sim" --sink "nats://127.0.0.1:$NP" --symbols 50 --rate $RATE \
        --burst-every 0 > "$OUT/feed-$r.log" 2>&1 &
    F=$!; PIDS+=($F)
    for n in 1 2; do
        LOG="$OUT/nats-$n-$r"; targets=""; servers=""; GS=()
        for _ in $(seq 1 "$n"); do
            A=127.0.0.1:$(port)
            G=$(gateway "$A" --source "nats://127.0.0.1:$NP")
            wait_http "$A"
            GS+=("$G"); servers="$servers $G"; targets="${targets:+$targets,}ws://$A/ws"
        done
        run_bench "nats-$n-$r" "$targets" "$servers" "$F $N"
        for g in "${GS[@]}"; do kill "$g"; done
    done
    cleanup
done

# One line per run from the reports, then per setup the range over the repeats.
python3 - "$OUT" <<'EOF'
import json, sys, pathlib, collections
out = pathlib.Path(sys.argv[1])
rows = collections.defaultdict(list)
for rep in sorted(out.glob("*/report.json")):
    r = json.loads(rep.read_text())
    setup = rep.parent.name.rsplit("-", 1)[0]
    rows[setup].append(r)
lines = ["| setup | runs | delivered msgs/s | e2e p50 ms | e2e p99 ms | gateways' CPU (cores) | feed-sim + nats-server CPU | undeclared gaps |",
         "|---|--:|--:|--:|--:|--:|--:|--:|"]
def rng(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals: return "n/a"
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if lo == hi else (fmt + "–" + fmt).format(lo, hi)
for setup in ["embedded", "nats-1", "nats-2"]:
    rs = rows.get(setup, [])
    if not rs: continue
    lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
        setup, len(rs),
        rng([r["msgs_per_sec"] for r in rs], "{:,.0f}"),
        rng([r["latency_us"]["p50"] / 1000 for r in rs], "{:.2f}"),
        rng([r["latency_us"]["p99"] / 1000 for r in rs], "{:.2f}"),
        rng([r.get("server_cpu_cores") for r in rs], "{:.2f}"),
        rng([r.get("feed_cpu_cores") for r in rs], "{:.2f}"),
        rng([r["undeclared_gaps"] for r in rs], "{}")))
text = "\n".join(lines) + "\n"
(out / "summary.md").write_text(text)
print(text)
EOF
