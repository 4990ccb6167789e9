#!/bin/bash
# Kernel stacks kept and failed (stack-map bucket taken, or map full) under a
# mixed stress-ng load: every contended wait asks for a stack. Run it from a
# worktree of an older commit and from this one, in turns, to compare stack
# maps (docs/reliability.md, "Kernel stacks that found their bucket taken").
#   sudo bench/stacks.sh [REPO_DIR] [OUT.lpr]
set -eu
dir=${1:-$(cd "$(dirname "$0")/.." && pwd)}
out=${2:-/tmp/lp-stacks.lpr}
python=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python
cd "$dir"
"$python" -m profiler.cli.main record -a -q -d 40 --stack-threshold 1ns --stack-rate 0 \
    -o "$out" >/dev/null 2>&1 &
lockprof=$!
sleep 4
stress-ng --mmap 2 --fork 2 --pipe 2 --sem 2 --futex 2 --sock 2 --timer 2 -t 30 >/dev/null 2>&1
wait "$lockprof"
"$python" - "$out" "$dir" <<'PY'
import sys
import profiler.recording as r
rec = r.load(sys.argv[1])
errors = rec.meta["errors"]
print(f"{sys.argv[2]}: {len(rec.stacks)} stacks kept, {errors['stack']} failed")
PY
