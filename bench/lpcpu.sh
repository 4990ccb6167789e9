#!/bin/sh
# lockprof's own CPU (utime+stime, /proc/PID/stat) over 10 s of a
# system-wide record beside lpbizzy -t 2, with the maps read every second
# and every 10 s: user space's share of the ebizzy-like overhead
# (docs/performance.md, ninth session: 80 and 70 ms).
#     sudo bench/lpcpu.sh
cd "$(dirname "$0")/.." || exit 1
make -s -C workloads >/dev/null || exit 1
tick=$(getconf CLK_TCK)
for interval in 1 10; do
  workloads/bin/lpbizzy -t 2 -S 25 -q >/dev/null 2>&1 &
  bizzy=$!
  .venv/bin/lockprof record -a -q -i "$interval" -o /tmp/lpcpu.lpr >/dev/null 2>&1 &
  lp=$!
  sleep 6 # compiled and attached
  before=$(awk '{print $14 + $15}' "/proc/$lp/stat")
  sleep 10
  after=$(awk '{print $14 + $15}' "/proc/$lp/stat")
  echo "-i $interval: lockprof CPU over 10 s: $(( (after - before) * 1000 / tick )) ms"
  kill -INT "$lp"
  wait "$lp" 2>/dev/null
  wait "$bizzy" 2>/dev/null
done
rm -f /tmp/lpcpu.lpr
