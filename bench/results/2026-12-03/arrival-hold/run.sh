cd /work/main
S='trades.{sym},quotes.{sym}'
bench/scripts/alternate-builds.sh /tmp/ab3 2 cur arr \
  "thin10k 400 10000 $S --random-symbols 3" "thin10k 800 10000 $S --random-symbols 3" \
  "thin1k 8000 1000 $S --random-symbols 3" "thin1k 16000 1000 $S --random-symbols 3" \
  "fat 8000 100 trades.*,quotes.*" "fat 16000 100 trades.*,quotes.*"
