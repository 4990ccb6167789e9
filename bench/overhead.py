#!/usr/bin/env python3
"""Overhead of lockprof and its peers against the bare workload, in one run (root).

Configurations, in alternating order (forward, then reversed) so drift hits
all alike; each also compared with the bare run of its own repetition:
  bare            the workload alone
  floor-tp        three empty BPF programs on the mmap_lock classic tracepoints
                  (the floor ../shared/kernel-notes.md measured)
  floor-raw       the same three empty programs as raw tracepoints
  floor-contention  two empty raw-tracepoint programs on lock:contention_begin
                  and lock:contention_end (the floor of the contention family)
  floor-all       empty raw-tracepoint programs on all five (the three above
                  and the two contention ones): what lockprof full attaches
  lp-contention   `lockprof record -a --no-mmap-lock`
  lp-full         `lockprof record -a` (mmap_lock wait and hold, contention)
  lp-full-html    the same with --html (the report is built after collection)
  lp-full-i10     lp-full reading its maps every 10 s, not every second
                  (on demand: user space's share of the overhead)
  lp-all-stacks   lp-full with --stack-rate 0 (a kernel stack for every
                  contended wait over --stack-threshold; not in the default set)
  perf-lock       `perf lock record -a` (then `perf lock contention`, untimed)
  bpftrace        a bpftrace script with the same wait and hold histograms

Workloads:
  storm     mmapcount -n N: N one-page mmap+munmap pairs (about 5 tracepoint
            hits per pair), timed from its go byte to "done"
  ebizzy    lpbizzy -t 2: records/s (mmap, copy, search, munmap)
  stress    stress-ng --mmap 2 --mmap-bytes 1M: bogo ops/s (1 MiB maps: finer
            than the default 256 MiB, so 3 s give hundreds of operations)
  cgroup    cgmove -f 2: cgroup.procs moves/s against forking readers
            (percpu rw-semaphore writers)

Every tracer runs system-wide, started before the workload and stopped with
SIGINT after it. Figures are medians over the repetitions, as ratios to bare
from the same run: an absolute time alone means nothing on a shared machine.

    sudo .venv/bin/python bench/overhead.py [--reps 5] [--workloads storm,ebizzy]
        [--configs bare,lp-full] [--write FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
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
CONTENTION_EVENTS = ("contention_begin", "contention_end")
# The floor configurations: (raw tracepoints?, events). Classic tracepoints
# only for mmap_lock (floor-tp); the rest are raw.
FLOORS = {
    "floor-tp": (False, EVENTS),
    "floor-raw": (True, EVENTS),
    "floor-contention": (True, CONTENTION_EVENTS),
    "floor-all": (True, EVENTS + CONTENTION_EVENTS),
}
CONFIGS = (
    "bare",
    "floor-tp",
    "floor-raw",
    "floor-contention",
    "floor-all",
    "lp-contention",
    "lp-full",
    "lp-full-html",
    "perf-lock",
    "bpftrace",
)
WORKLOADS = ("storm", "ebizzy", "stress", "cgroup")
# Which direction is better, per workload: storm is a time, the rest rates.
HIGHER_IS_BETTER = {"storm": False, "ebizzy": True, "stress": True, "cgroup": True}
UNITS = {"storm": "s", "ebizzy": "records/s", "stress": "bogo ops/s", "cgroup": "moves/s"}

BPFTRACE_SCRIPT = r"""
tracepoint:mmap_lock:mmap_lock_start_locking { @start[tid] = nsecs; }
tracepoint:mmap_lock:mmap_lock_acquire_returned /@start[tid]/ {
    @wait[args->write] = hist(nsecs - @start[tid]); delete(@start[tid]);
    @since[tid, args->mm, args->write] = nsecs;
}
tracepoint:mmap_lock:mmap_lock_released /@since[tid, args->mm, args->write]/ {
    @hold[args->write] = hist(nsecs - @since[tid, args->mm, args->write]);
    delete(@since[tid, args->mm, args->write]);
}
tracepoint:lock:contention_begin { @cstart[tid] = nsecs; @cflags[tid] = args->flags; }
tracepoint:lock:contention_end /@cstart[tid]/ {
    @contended[@cflags[tid]] = hist(nsecs - @cstart[tid]);
    delete(@cstart[tid]); delete(@cflags[tid]);
}
"""


# -- tracers ---------------------------------------------------------------------


class Tracer:
    """A system-wide tracer running in the background for one measurement."""

    def __init__(self, config: str, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.progs = None

    def __enter__(self) -> Tracer:
        if self.config in FLOORS:
            self.progs = empty_programs(*FLOORS[self.config])
        elif self.config.startswith("lp-"):
            args = ["record", "-a", "-q", "-o", str(self.workdir / "lp.lpr")]
            if self.config == "lp-contention":
                args.append("--no-mmap-lock")
            if self.config == "lp-full-html":
                args += ["--html", str(self.workdir / "lp.html")]
            if self.config == "lp-all-stacks":
                args += ["--stack-rate", "0"]
            if self.config == "lp-full-i10":
                args += ["-i", "10"]
            self._start([*LOCKPROF, *args], "attached", stream="stderr")
        elif self.config == "perf-lock":
            self.proc = start_perf_lock(self.workdir)
        elif self.config == "bpftrace":
            self.proc = start_bpftrace(BPFTRACE_SCRIPT, self.config)
        return self

    def _start(self, argv: list[str], ready: str, stream: str) -> None:
        self.proc = start_until(argv, ready, stream, self.config)

    def __exit__(self, *_exc) -> None:
        if self.progs is not None:
            self.progs.cleanup()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.communicate(timeout=300)
        if self.config == "perf-lock":
            subprocess.run(
                ["perf", "lock", "contention", "-i", str(self.workdir / "perf.data")],
                capture_output=True,
                timeout=300,
            )


# perf lock record prints nothing when ready; its attach takes well under this.
PERF_READY_S = 1.5


def start_perf_lock(workdir: Path) -> subprocess.Popen:
    """`perf lock record -a` into workdir/perf.data, given a moment to attach."""
    argv = ["perf", "lock", "record", "-a", "-o", str(workdir / "perf.data")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    time.sleep(PERF_READY_S)
    return proc


# bpftrace runs BEGIN once every probe is attached; its "Attaching N
# probes..." line comes before the attach (bench/agree.py found events of
# the first ~10 ms missed when the workload started on that line).
BPFTRACE_ARMED = '\nBEGIN { printf("armed\\n"); }\n'


def start_bpftrace(
    script: str, name: str, options: tuple[str, ...] = (), params: tuple[str, ...] = ()
) -> subprocess.Popen:
    """bpftrace running script (with options before it and positional
    params after), returned once all its probes are attached."""
    argv = ["bpftrace", *options, "-e", script + BPFTRACE_ARMED, *params]
    return start_until(argv, "armed", "stdout", name)


def start_until(argv: list[str], ready: str, stream: str, name: str) -> subprocess.Popen:
    """Start a tracer and return once it prints ready on stream ("stdout"
    or "stderr"); name: named if it exits first."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
        stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    for line in pipe:
        if ready in line:
            return proc
    raise SystemExit(f"{name} did not start (exit {proc.wait()})")


def empty_programs(raw: bool, events: tuple[str, ...]):
    """Empty programs on events, auto-attached by BCC (classic tracepoints are
    mmap_lock ones). Returns the BPF object; .cleanup() detaches them."""
    from bcc import BPF

    if raw:
        text = "\n".join(f"RAW_TRACEPOINT_PROBE({e}) {{ return 0; }}" for e in events)
    else:
        text = "\n".join(f"TRACEPOINT_PROBE(mmap_lock, {e}) {{ return 0; }}" for e in events)
    return BPF(text=text.encode(), cflags=["-w"])


# -- workloads -------------------------------------------------------------------


class HeldWorkload:
    """A workload that starts on a byte from us: the tracer attaches first."""

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


def _rate(argv: list[str], pattern: str, per_seconds: float | None = None) -> float:
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    match = re.search(pattern, done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    value = float(match.group(1))
    return value / per_seconds if per_seconds else value


def run_workload(name: str, args: argparse.Namespace):
    """A callable measuring the workload once (started inside the tracer)."""
    if name == "storm":
        held = HeldWorkload([str(BIN / "mmapcount"), "-w", "-n", str(args.pairs)])
        return held.run
    seconds = str(args.seconds)
    if name == "ebizzy":
        return lambda: _rate(
            [str(BIN / "lpbizzy"), "-t", "2", "-S", seconds, "-q"], r"(\d+) records/s"
        )
    if name == "stress":
        return lambda: _rate(
            ["stress-ng", "--mmap", "2", "--mmap-bytes", "1M", "-t", seconds, "--metrics-brief"],
            r"mmap\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)",
        )
    if name == "cgroup":
        return lambda: _rate(
            [str(BIN / "cgmove"), "-S", seconds, "-f", "2"], r"moves (\d+)", args.seconds
        )
    raise ValueError(name)


def measure(config: str, workload: str, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory(prefix="lpbench-") as tmp:
        action = run_workload(workload, args)  # started (held) before the tracer
        with Tracer(config, Path(tmp)):
            return action()


# -- report ----------------------------------------------------------------------


def ratio(samples: dict[str, list[float]], config: str, higher_is_better: bool) -> float:
    bare = statistics.median(samples["bare"])
    med = statistics.median(samples[config])
    return bare / med if higher_is_better else med / bare


def paired_ratios(
    samples: dict[str, list[float]], config: str, higher_is_better: bool
) -> list[float]:
    """Each repetition's config against the bare run of the same repetition."""
    pairs = zip(samples["bare"], samples[config], strict=True)
    return [b / c if higher_is_better else c / b for b, c in pairs]


def paired_ratio(samples: dict[str, list[float]], config: str, higher_is_better: bool) -> float:
    """Median over repetitions of config against the bare run of the same
    repetition. This shared machine's speed drifts by 10-20% over minutes;
    the runs of one repetition are adjacent in time, so a drift that moves
    both cancels here, where it does not in the ratio of medians."""
    return statistics.median(paired_ratios(samples, config, higher_is_better))


def _overhead_ratio(paired: float, floor: float | None, config: str) -> str:
    """config's overhead over the floor's ("-" where it means nothing)."""
    if floor is None or floor <= 1.0005 or config == "bare" or config.startswith("floor"):
        return "-"
    return f"{(paired - 1) / (floor - 1):.2f}"


def rep_order(configs: list[str], rep: int) -> list[str]:
    """Configurations in alternating order (ABC, CBA, ...): a drift within a
    repetition does not always favour the same configurations."""
    return configs if rep % 2 == 0 else configs[::-1]


def render(args, results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        f"Command: `sudo .venv/bin/python bench/overhead.py --reps {args.reps} "
        f"--pairs {args.pairs} --seconds {args.seconds}` (part of `make bench`). "
        f"{args.reps} repetitions, configurations in alternating order (forward, "
        "then reversed); medians, the spread is min-max; ratios to bare from this "
        "run (x bare: time ratio, or for rates bare/config, so higher is always "
        "worse). *paired*: the median of each repetition's ratio to its own bare "
        "run, robust to the machine's drift (*paired min-max*: the spread of those "
        "ratios; a target closer to 1 than it cannot be told from noise); the "
        "floor columns use it. Two floors: "
        "*raw*, empty programs on the mmap_lock raw tracepoints lockprof uses; *tp*, "
        "on the classic tracepoints (the floor of ../shared/kernel-notes.md and of "
        "issue 2's target).",
        "",
    ]
    for workload, samples in results.items():
        better = HIGHER_IS_BETTER[workload]
        floors = {
            name: paired_ratio(samples, name, better)
            for name in ("floor-raw", "floor-tp")
            if name in samples
        }
        lines += [
            f"### {workload} ({UNITS[workload]}; {'higher' if better else 'lower'} is better)",
            "",
            "| config | median | min-max | x bare | paired | paired min-max "
            "| overhead / raw floor's | overhead / tp floor's |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for config, values in samples.items():
            x = ratio(samples, config, better)
            paired = paired_ratio(samples, config, better)
            each = paired_ratios(samples, config, better)
            vs_floor = [
                _overhead_ratio(paired, floors.get(name), config)
                for name in ("floor-raw", "floor-tp")
            ]
            lines.append(
                f"| {config} | {statistics.median(values):.4g} | "
                f"{min(values):.4g}-{max(values):.4g} | {x:.3f} | {paired:.3f} | "
                f"{min(each):.3f}-{max(each):.3f} | {vs_floor[0]} | {vs_floor[1]} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--write", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (BPF)", file=sys.stderr)
        return 1
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS) - {"lp-all-stacks", "lp-full-i10"}
    if unknown:
        print(f"bench: unknown configs {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if "bare" not in configs:
        configs.insert(0, "bare")
    if "perf-lock" in configs and not shutil.which("perf"):
        print("bench: perf not installed (apt install linux-perf): skipping perf-lock")
        configs.remove("perf-lock")
    if "bpftrace" in configs and not shutil.which("bpftrace"):
        print("bench: bpftrace not installed: skipping it")
        configs.remove("bpftrace")
    subprocess.run(["make", "-s", "-C", str(REPO / "workloads")], check=True)
    workloads = [w for w in args.workloads.split(",") if w]
    results = {w: {c: [] for c in configs} for w in workloads}
    for rep in range(args.reps):
        for workload in workloads:
            for config in rep_order(configs, rep):
                value = measure(config, workload, args)
                results[workload][config].append(value)
                print(f"rep {rep + 1} {workload:7} {config:14} {value:.4g}", file=sys.stderr)
    report = render(args, results)
    print(report)
    if args.write:
        args.write.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
