#!/usr/bin/env bash
# Two tickfan builds side by side, alternating which runs first each round, one load run per
# build and workload (bench/scripts/side-by-side.sh, with the syscall count and the feed thread
# left out), into one directory for bench/scripts/ab-summary.py.
# usage: bench/scripts/alternate-builds.sh OUT ROUNDS A B SPEC...
#   A, B: build names, their binaries in /tmp/A-bin and /tmp/B-bin
#   SPEC: "SCENARIO RATE CONNS STREAMS [bench run args...]", one word each but the args,
#         e.g. "thin1k 8000 1000 trades.{sym},quotes.{sym} --random-symbols 3"
# Labels are BUILD-SCENARIO-RATE-rROUND; a run that fails is named in OUT/failed.txt, and
# OUT/summary.txt ends with ALLDONE.
set -uo pipefail
OUT=$1; ROUNDS=$2; A=$3; B=$4; shift 4
SPECS=("$@")
rm -rf "$OUT"; mkdir -p "$OUT"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="$A $B"; else order="$B $A"; fi
  for spec in "${SPECS[@]}"; do
    # shellcheck disable=SC2086
    set -- $spec; sc=$1; rate=$2; n=$3; st=$4; shift 4
    for b in $order; do
      bench/scripts/side-by-side.sh "/tmp/$b-bin" "$b-$sc-$rate-r$r" "$rate" "$n" "$st" "$OUT" \
        --count-writes --feed-thread tickfan-feed "$@" > /dev/null \
        || echo "$b-$sc-$rate-r$r failed" >> "$OUT/failed.txt"
    done
  done
done
echo ALLDONE >> "$OUT/summary.txt"
