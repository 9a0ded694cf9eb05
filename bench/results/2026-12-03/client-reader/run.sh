cd /work/main
OUT=${OUT:-/tmp/clientab}; rm -rf $OUT; mkdir -p $OUT
S='trades.{sym},quotes.{sym}'
for r in 1 2; do
  if [ $((r % 2)) = 1 ]; then order="oldc newc"; else order="newc oldc"; fi
  for spec in "thin1k 16000 1000 $S --random-symbols 3" "thin1k 64000 1000 $S --random-symbols 3" "fat 64000 100 trades.*,quotes.*"; do
    set -- $spec; sc=$1; rate=$2; n=$3; st=$4; shift 4
    for b in $order; do
      BENCH=/tmp/${b%c}-bench bench/scripts/side-by-side.sh /tmp/base-bin $b-$sc-$rate-r$r $rate $n "$st" $OUT --feed-thread tickfan-feed "$@" > /dev/null || echo "$b-$sc-$rate-r$r failed" >> $OUT/failed.txt
    done
  done
done
echo ALLDONE >> $OUT/summary.txt
