#!/usr/bin/env python3
"""Overhead of lockprof against the bare workload, in one run (root).

Configurations, alternated within each repetition so drift hits all alike:
  bare          the workload alone
  floor-tp      three empty BPF programs on the mmap_lock classic tracepoints
                (the floor ../shared/kernel-notes.md measured)
  floor-raw     the same three empty programs as raw tracepoints
  lockprof      `lockprof attach -p PID` with mmap_lock wait/hold and contention

Workloads:
  storm         mmapcount -n N: N one-page mmap+munmap pairs (about 5
                tracepoint hits per pair), timed from its go byte to "done"
  ebizzy        lpbizzy -t 2: records/s (mmap, copy, search, munmap)

Figures are medians over the repetitions, as ratios to bare from the same
run: an absolute time alone means nothing on a shared machine.

    sudo .venv/bin/python bench/overhead.py [--reps 5] [--pairs 300000] \
        [--write docs/performance.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "workloads" / "bin"
LOCKPROF = [sys.executable, "-m", "profiler.cli.main"]
EVENTS = ("mmap_lock_start_locking", "mmap_lock_acquire_returned", "mmap_lock_released")


def empty_programs(raw: bool):
    from bcc import BPF

    if raw:
        text = "\n".join(f"RAW_TRACEPOINT_PROBE({e}) {{ return 0; }}" for e in EVENTS)
    else:
        text = "\n".join(f"TRACEPOINT_PROBE(mmap_lock, {e}) {{ return 0; }}" for e in EVENTS)
    return BPF(text=text.encode(), cflags=["-w"])


class HeldWorkload:
    """A workload that starts on a byte from us: the probes attach first."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().startswith(b"ready")

    def run(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        start = time.perf_counter()
        self.proc.stdin.write(b"g")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == b"done\n"
        elapsed = time.perf_counter() - start
        self.proc.stdin.close()
        self.proc.wait()
        return elapsed


def _temp_recording() -> str:
    fd, path = tempfile.mkstemp(suffix=".lpr")
    os.close(fd)
    return path


def with_lockprof(target_args: list[str], action):
    """Run action() while lockprof collects with target_args (e.g. ["attach",
    "-p", PID] or ["record", "-a"]); stop it with Ctrl-C afterwards."""
    out = _temp_recording()
    lp = subprocess.Popen(
        [*LOCKPROF, *target_args, "-q", "-o", out],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert lp.stderr is not None
    for line in lp.stderr:
        if "attached" in line:
            break
    else:
        raise SystemExit(f"lockprof failed to attach: {lp.wait()}")
    try:
        return action()
    finally:
        lp.send_signal(signal.SIGINT)
        lp.communicate(timeout=120)
        os.unlink(out)


def storm_once(config: str, pairs: int) -> float:
    workload = HeldWorkload([str(BIN / "mmapcount"), "-w", "-n", str(pairs)])
    if config == "bare":
        return workload.run()
    if config == "lockprof":
        return with_lockprof(["attach", "-p", str(workload.proc.pid)], workload.run)
    progs = empty_programs(raw=config == "floor-raw")
    try:
        return workload.run()
    finally:
        progs.cleanup()


def ebizzy_once(config: str, seconds: float) -> float:
    """Records per second of lpbizzy under a configuration."""
    argv = [str(BIN / "lpbizzy"), "-t", "2", "-S", str(seconds), "-q"]

    def run() -> float:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        match = re.search(r"(\d+) records/s", out)
        assert match, out
        return float(match.group(1))

    if config == "bare":
        return run()
    if config == "lockprof":
        # Whole-system attach is the fair equivalent here: lpbizzy is started
        # after the probes, as a fresh pid we cannot name in advance.
        return with_lockprof(["record", "-a"], run)
    progs = empty_programs(raw=config == "floor-raw")
    try:
        return run()
    finally:
        progs.cleanup()


def ratios(samples: dict[str, list[float]], higher_is_better: bool) -> dict[str, float]:
    bare = statistics.median(samples["bare"])
    out = {}
    for config, values in samples.items():
        med = statistics.median(values)
        out[config] = (bare / med) if higher_is_better else (med / bare)
    return out


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--write", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (BPF)", file=sys.stderr)
        return 1
    subprocess.run(["make", "-s", "-C", str(REPO / "workloads")], check=True)
    configs = ["bare", "floor-tp", "floor-raw", "lockprof"]
    storm: dict[str, list[float]] = {c: [] for c in configs}
    ebizzy: dict[str, list[float]] = {c: [] for c in configs}
    for rep in range(args.reps):
        for config in configs:
            storm[config].append(storm_once(config, args.pairs))
            ebizzy[config].append(ebizzy_once(config, args.seconds))
        print(
            f"rep {rep + 1}/{args.reps}: storm "
            + ", ".join(f"{c} {storm[c][-1]:.3f}s" for c in configs)
            + " | ebizzy "
            + ", ".join(f"{c} {ebizzy[c][-1]:.0f}/s" for c in configs),
            file=sys.stderr,
        )
    report = render(args, configs, storm, ebizzy)
    print(report)
    if args.write:
        args.write.write_text(report)
    return 0


def render(args, configs, storm, ebizzy) -> str:
    storm_ratio = ratios(storm, higher_is_better=False)
    ebizzy_ratio = ratios(ebizzy, higher_is_better=True)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    lines = [
        "# lockprof overhead",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs, {cpu}; kernel {platform.release()}",
        f"- command: `sudo .venv/bin/python bench/overhead.py --reps {args.reps} "
        f"--pairs {args.pairs} --seconds {args.seconds}` (or `make bench`)",
        f"- {args.reps} repetitions, configurations alternated within each; medians, "
        "ratios to bare from this run",
        "",
        f"## mmap/munmap storm ({args.pairs:,} pairs; lower is better)",
        "",
        "| config | median s | min-max s | x bare |",
        "|---|---|---|---|",
    ]
    for c in configs:
        lines.append(
            f"| {c} | {statistics.median(storm[c]):.3f} | {spread(storm[c])} | "
            f"{storm_ratio[c]:.3f} |"
        )
    lines += [
        "",
        "## ebizzy-like lpbizzy -t 2 (records/s; higher is better)",
        "",
        "| config | median records/s | min-max | throughput loss |",
        "|---|---|---|---|",
    ]
    for c in configs:
        loss = (1 - 1 / ebizzy_ratio[c]) * 100
        lines.append(
            f"| {c} | {statistics.median(ebizzy[c]):.0f} | "
            f"{min(ebizzy[c]):.0f}-{max(ebizzy[c]):.0f} | {loss:.1f}% |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
