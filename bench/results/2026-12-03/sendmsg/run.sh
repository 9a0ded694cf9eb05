cd /work/main
S='trades.{sym},quotes.{sym}'
bench/scripts/alternate-builds.sh /tmp/ab2 3 old send \
  "thin10k 200 10000 $S --random-symbols 3" "thin10k 400 10000 $S --random-symbols 3" \
  "thin1k 2000 1000 $S --random-symbols 3" "thin1k 8000 1000 $S --random-symbols 3" \
  "fat 8000 100 trades.*,quotes.*"
