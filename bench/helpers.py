#!/usr/bin/env python3
"""What the BPF helpers every lockprof program calls cost on this machine.

Each variant is one small program on mmap_lock:start_locking, run under
`mmapcount -t 2` (two threads of mmap/munmap pairs), with the kernel's
run-time stats on; ns per run is the kernel's figure (it includes the stats'
own two clock reads, as the empty program shows). Every variant stores what
it computed in a per-CPU array, so that no cache line moves between CPUs and
the compiler keeps the call. Together they give the least a program that
times a wait per task can cost here (a task-storage lookup and a clock
read), against which lockprof's programs (`bench/toggle.py --run-stats`,
`lockprof doctor --overhead`) can be read.

    sudo .venv/bin/python bench/helpers.py [--reps 5] [--pairs 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from profiler import bpf as lpbpf  # noqa: E402  (the repository's)

PROGRAM = """
struct sink { u64 value; };
struct per_task { u64 value; };
BPF_PERCPU_ARRAY(sinks, struct sink, 1);
BPF_TASK_STORAGE(tasks, struct per_task);
BPF_STACK_TRACE(stacks, 1024);

int probe(struct bpf_raw_tracepoint_args *ctx)
{
    int zero = 0;
    struct sink *sink = sinks.lookup(&zero);
    u64 value = 0;

    if (!sink)
        return 0;
    BODY
    sink->value += value;
    return 0;
}
"""

TASK = (
    "struct per_task *t = tasks.task_storage_get(bpf_get_current_task_btf(), 0, "
    "BPF_LOCAL_STORAGE_GET_F_CREATE);"
)

# name -> what the program does besides storing `value` in its per-CPU sink
VARIANTS = {
    "empty": "",
    "pid_tgid": "value = bpf_get_current_pid_tgid();",
    "ktime": "value = bpf_ktime_get_ns();",
    "task storage": f"{TASK} if (t) value = ++t->value;",
    "task storage + ktime": f"{TASK} if (t) value = t->value = bpf_ktime_get_ns();",
    # lockprof takes one for some contended waits (--stack-rate, naming stacks)
    "kernel stack (get_stackid)": "value = stacks.get_stackid(ctx, 0);",
}


def ns_per_run(body: str, pairs: int) -> float:
    from bcc import BPF

    bpf = BPF(text=PROGRAM.replace("BODY", body), cflags=["-w"])
    try:
        bpf.attach_raw_tracepoint(tp=b"mmap_lock_start_locking", fn_name=b"probe")
        subprocess.run(
            [str(REPO / "workloads" / "bin" / "mmapcount"), "-n", str(pairs), "-t", "2"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ((runs, ns),) = lpbpf.program_run_stats(bpf).values()
        return ns / max(runs, 1)
    finally:
        bpf.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=100_000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (BPF)", file=sys.stderr)
        return 1
    subprocess.run(["make", "-s", "-C", str(REPO / "workloads")], check=True)
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with lpbpf.run_stats_enabled():
        for rep in range(args.reps):
            # alternating order, so that every variant sees the same stretches of the host
            order = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                results[name].append(ns_per_run(VARIANTS[name], args.pairs))
    empty = statistics.median(results["empty"])
    print(
        f"Command: `sudo .venv/bin/python bench/helpers.py --reps {args.reps} "
        f"--pairs {args.pairs}`: ns per run of one program on mmap_lock:start_locking "
        "under `mmapcount -t 2` (kernel run-time stats, their own clock reads included).\n"
    )
    print("| program | ns/run, median | min-max | added to the empty program |")
    print("|---|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.0f} | {min(values):.0f}-{max(values):.0f} | "
            f"{median - empty:+.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
