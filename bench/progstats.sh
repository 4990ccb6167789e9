#!/bin/bash
# Run time of each lockprof BPF program per run, on the ebizzy-like workload
# (root). `lockprof record -a` runs; after its start-up, `lpbizzy -t 2`
# runs for 5 s; then bpftool reports each lp_ program's run count and mean
# run time (kernel.bpf_stats_enabled is on meanwhile: its own clock reads
# add ~60 ns to every program, empty ones included). Extra arguments go to
# lockprof record.
#
#     sudo bench/progstats.sh [--stack-threshold 100ms ...]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'echo 0 > /proc/sys/kernel/bpf_stats_enabled; rm -rf "$out"' EXIT
echo 1 > /proc/sys/kernel/bpf_stats_enabled
.venv/bin/lockprof record -a -q -o "$out/r.lpr" "$@" >/dev/null 2>&1 &
lockprof=$!
sleep 4
workloads/bin/lpbizzy -t 2 -S 5 -q | tail -1
bpftool prog show --json | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    name = p.get("name", "")
    runs, ns = p.get("run_cnt", 0), p.get("run_time_ns", 0)
    if name.startswith("lp_") and runs:
        print(f"{name:22} {runs:>10} runs {ns / runs:8.0f} ns")
'
kill -INT "$lockprof"
wait "$lockprof"
