cd /work/main
S='trades.{sym},quotes.{sym}'
bench/scripts/alternate-builds.sh "${OUT:-/tmp/rideab}" 2 base ride \
  "thin10k 400 10000 $S --random-symbols 3" "thin10k 800 10000 $S --random-symbols 3" \
  "thin1k 16000 1000 $S --random-symbols 3" "fat 32000 100 trades.*,quotes.*"
