#!/bin/sh
# Is the cgroup workload bound by how busy the CPUs are, not by lock cost?
# cgmove -S 3 -f 2 alone and beside a nice-19 busy loop, five alternating
# pairs (docs/performance.md, ninth session: 2.2-3.0x more moves beside it).
#     bench/cgspin.sh        (root: cgmove moves tasks between cgroups)
cd "$(dirname "$0")/.." || exit 1
make -s -C workloads >/dev/null || exit 1
for rep in 1 2 3 4 5; do
  for cfg in alone spinner; do
    if [ "$cfg" = spinner ]; then
      nice -n 19 sh -c 'while :; do :; done' &
      spin=$!
      sleep 0.3
    fi
    moves=$(workloads/bin/cgmove -S 3 -f 2 2>&1 | grep -o "moves [0-9]*")
    if [ "$cfg" = spinner ]; then
      kill "$spin"
      wait "$spin" 2>/dev/null
    fi
    echo "$rep $cfg $moves"
  done
done
