cd /work/main
OUT=${OUT:-/tmp/rideab}; rm -rf $OUT; mkdir -p $OUT
S='trades.{sym},quotes.{sym}'
for r in 1 2; do
  if [ $((r % 2)) = 1 ]; then order="base ride"; else order="ride base"; fi
  for spec in "thin10k 400 10000 $S --random-symbols 3" "thin10k 800 10000 $S --random-symbols 3" "thin1k 16000 1000 $S --random-symbols 3" "fat 32000 100 trades.*,quotes.*"; do
    set -- $spec; sc=$1; rate=$2; n=$3; st=$4; shift 4
    for b in $order; do
      bench/scripts/side-by-side.sh /tmp/$b-bin $b-$sc-$rate-r$r $rate $n "$st" $OUT --count-writes --feed-thread tickfan-feed "$@" > /dev/null || echo "$b-$sc-$rate-r$r failed" >> $OUT/failed.txt
    done
  done
done
echo ALLDONE >> $OUT/summary.txt
