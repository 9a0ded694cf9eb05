cd /work/main
OUT=/tmp/pingab/out; rm -rf $OUT; mkdir -p $OUT
S='trades.{sym},quotes.{sym}'
for r in 1 2; do
  if [ $((r % 2)) = 1 ]; then order="p15 p0"; else order="p0 p15"; fi
  for rate in 100 400; do
    for b in $order; do
      if [ $b = p0 ]; then g="--ping-interval 0"; else g=""; fi
      GWARGS="$g" bench/scripts/side-by-side.sh /tmp/base-bin $b-thin10k-$rate-r$r $rate 10000 "$S" $OUT --count-writes --feed-thread tickfan-feed --random-symbols 3 > /dev/null || echo "$b-$rate-r$r failed" >> $OUT/failed.txt
    done
  done
done
echo ALLDONE >> $OUT/summary.txt
