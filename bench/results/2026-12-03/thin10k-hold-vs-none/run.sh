cd /work/main
OUT=/tmp/exp10k; rm -rf $OUT; mkdir -p $OUT
for r in 1 2 3; do for rate in 400 800; do
  GWARGS="" bench/scripts/side-by-side.sh target/release hold-$rate-r$r $rate 10000 'trades.{sym},quotes.{sym}' $OUT --random-symbols 3 --count-writes --feed-thread tickfan-feed
  GWARGS="--flush-window-us 0" bench/scripts/side-by-side.sh target/release nohold-$rate-r$r $rate 10000 'trades.{sym},quotes.{sym}' $OUT --random-symbols 3 --count-writes --feed-thread tickfan-feed
done; done
echo ALLDONE
