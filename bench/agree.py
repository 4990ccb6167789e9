#!/usr/bin/env python3
"""Do lockprof's figures agree with an independent tracer's? (root, bpftrace)

One workload process at a time, held at a gate until both tracers are
armed: bpftrace (bench/agree.bt, filtered on the process) and `lockprof
attach -p PID` watch the same tracepoints over the same window, the whole
life of the process. Then, per mmap_lock mode and per contention type:
acquisitions, downgrades, failed trylocks, waits and holds (count and total
ns), from lockprof's recording and from bpftrace's maps, side by side.

Counts should agree exactly, but for the runs each tool's programs were
skipped (counted). Totals differ by where each tool reads the clock (both
read it in their own program on the same tracepoint, the second tool after
the first's whole program): by up to a few hundred ns a wait, a few percent
of waits and holds of microseconds, up to ~20% of spinlock waits of ~1 µs.

lockprof's mmap_lock rows also count other processes' tasks taking the
process's mmap_lock (foreign tasks); those are subtracted here, since
bpftrace counts the process's own tasks only.

    sudo .venv/bin/python bench/agree.py [--seconds 2] [--workloads rwcontend,lpbizzy]
        [--lockprof-first] [--write FILE]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import overhead
from overhead import BIN, LOCKPROF, REPO

SCRIPT = REPO / "bench" / "agree.bt"
MODES = {"0": "read", "1": "write"}


def workloads(seconds: float) -> dict[str, list[str]]:
    return {
        # readers and writers of one mmap_lock: rwsem contention both ways,
        # downgrades (munmap), failed trylocks now and then
        "rwcontend": [str(BIN / "rwcontend"), "-w", "2", "-r", "2", "-S", str(seconds)],
        # the ebizzy-like workload: page-table and zone spinlocks too
        "lpbizzy": [str(BIN / "lpbizzy"), "-t", "2", "-q", "-S", str(seconds)],
    }


def start_lockprof(pid: int, recording: Path) -> subprocess.Popen:
    """`lockprof attach -p PID`, returned once its probes are attached."""
    argv = [*LOCKPROF, "attach", "-p", str(pid), "-q", "-o", str(recording)]
    return overhead.start_until(argv, "attached", "stderr", "lockprof attach")


def start_bpftrace(pid: int, _recording: Path) -> subprocess.Popen:
    script = SCRIPT.read_text()
    return overhead.start_bpftrace(script, "bpftrace", ("-f", "json"), (str(pid),))


def recursion_misses(pid: int) -> int:
    """Runs of a process's BPF programs that the kernel skipped (fdinfo's
    recursion_misses): a classic tracepoint's program is skipped while any
    such program runs on the CPU (an interrupt's contended spinlock then)."""
    total = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("recursion_misses:"):
                total += int(line.split()[1])
    return total


def run_both(argv: list[str], workdir: Path, lockprof_first: bool) -> tuple[dict, dict, int]:
    """The workload run once under both tracers: (lockprof's show --json,
    bpftrace's maps, the process's pid). The tracer attached first runs
    first on each tracepoint (the kernel calls a tracepoint's probes in the
    order they were added), so its clock reads come earlier. Whatever
    fails, nothing is left running (a test after this one checks that no
    lockprof program stays loaded)."""
    gate = subprocess.Popen(
        ["sh", "-c", 'read _ && exec "$@"', "sh", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    pid = gate.pid
    recording = workdir / f"agree-{pid}.lpr"
    started: list[subprocess.Popen] = []
    try:
        order = (start_lockprof, start_bpftrace)
        for start in order if lockprof_first else order[::-1]:
            started.append(start(pid, recording))
        lockprof, tracer = started if lockprof_first else started[::-1]
        assert gate.stdin is not None
        gate.stdin.write("go\n")
        gate.stdin.close()
        gate.wait()
        _, errors = lockprof.communicate(timeout=120)
        if lockprof.returncode != 0:
            raise SystemExit(f"lockprof attach failed (exit {lockprof.returncode}): {errors}")
        maps: dict = {"recursion_misses": recursion_misses(tracer.pid)}
        tracer.send_signal(signal.SIGINT)
        out, _ = tracer.communicate(timeout=60)
    finally:
        for proc in [gate, *started]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for line in out.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            if item.get("type") == "map":
                maps.update(item["data"])
    shown = subprocess.run(
        [*LOCKPROF, "show", str(recording), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(shown.stdout), maps, pid


def lockprof_figures(summary: dict, recording: Path, pid: int) -> dict[str, float]:
    """lockprof's figures for the process's own tasks, named as figures()."""
    from profiler import recording as recording_mod
    from profiler import schema

    figures: dict[str, float] = defaultdict(int)
    for row in summary["locks"]:
        if row["lock_class"] != "mmap_lock" or row.get("owner_pid") != pid:
            continue
        mode = row["mode"]
        figures[f"mmap_lock {mode} acquisitions"] += row["acquisitions"]
        figures[f"mmap_lock {mode} trylock failures"] += row["trylock_failures"]
        figures["mmap_lock downgrades"] += row["downgrades"]
        figures[f"mmap_lock {mode} wait ns"] += row["wait_ns"]["total"]
        figures[f"mmap_lock {mode} holds"] += row["hold_ns"]["count"]
        figures[f"mmap_lock {mode} hold ns"] += row["hold_ns"]["total"]
    tasks = recording_mod.load(recording).tasks
    mmap_source = schema.const("LP_SRC_MMAP_LOCK")
    contention_source = schema.const("LP_SRC_CONTENTION")
    # The process's own tasks have no mmap_lock task rows (only other
    # processes' tasks on its lock do: LP_TASK_SPLIT_OWN).
    foreign = tasks[(tasks["source"] == mmap_source) & (tasks["tgid"] != pid)]
    # Their failed trylocks and downgrades have no task row to subtract:
    # where there are any, those two figures may exceed bpftrace's.
    figures["other processes' tasks on the mmap_lock"] = foreign["tid"].nunique()
    for flags, rows in foreign.groupby("flags"):
        mode = "write" if flags == schema.const("LP_LCB_WRITE") else "read"
        figures[f"mmap_lock {mode} acquisitions"] -= int(rows["waits"].sum())
        figures[f"mmap_lock {mode} wait ns"] -= int(rows["wait_ns"].sum())
        figures[f"mmap_lock {mode} holds"] -= int(rows["holds"].sum())
        figures[f"mmap_lock {mode} hold ns"] -= int(rows["hold_ns"].sum())
    own = tasks[(tasks["source"] == contention_source) & (tasks["tgid"] == pid)]
    for flags, rows in own.groupby("flags"):
        figures[f"contention flags {flags:#x} waits"] += int(rows["waits"].sum())
        figures[f"contention flags {flags:#x} wait ns"] += int(rows["wait_ns"].sum())
    skipped = summary["errors"].get("recursion_misses", 0)
    figures["probe runs the kernel skipped (system-wide)"] = skipped
    return dict(figures)


def bpftrace_figures(maps: dict) -> dict[str, float]:
    figures: dict[str, float] = {}
    for key, mode in MODES.items():
        figures[f"mmap_lock {mode} acquisitions"] = maps.get("@acquisitions", {}).get(key, 0)
        figures[f"mmap_lock {mode} trylock failures"] = maps.get("@trylock_failures", {}).get(
            key, 0
        )
        figures[f"mmap_lock {mode} wait ns"] = maps.get("@wait_ns", {}).get(key, 0)
        figures[f"mmap_lock {mode} holds"] = maps.get("@holds", {}).get(key, 0)
        figures[f"mmap_lock {mode} hold ns"] = maps.get("@hold_ns", {}).get(key, 0)
    figures["mmap_lock downgrades"] = maps.get("@downgrades", 0)
    figures["other processes' tasks on the mmap_lock"] = 0  # filtered on the pid
    figures["probe runs the kernel skipped (system-wide)"] = maps["recursion_misses"]
    for key, count in maps.get("@waits", {}).items():
        flags = int(key)
        figures[f"contention flags {flags:#x} waits"] = count
        figures[f"contention flags {flags:#x} wait ns"] = maps.get("@waits_ns", {}).get(key, 0)
    return figures


def table(name: str, ours: dict, theirs: dict) -> list[str]:
    lines = [
        f"### {name}",
        "",
        "| figure | lockprof | bpftrace | difference |",
        "|---|---|---|---|",
    ]
    for figure in sorted(set(ours) | set(theirs)):
        a, b = ours.get(figure, 0), theirs.get(figure, 0)
        if a == b:
            diff = "equal"
        elif b:
            diff = f"{(a - b) / b:+.2%} ({a - b:+,})"
        else:
            diff = f"{a - b:+,}"
        lines.append(f"| {figure} | {a:,} | {b:,} | {diff} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workloads", default="rwcontend,lpbizzy")
    parser.add_argument(
        "--lockprof-first",
        action="store_true",
        help="Attach lockprof before bpftrace (default: after), so that its programs run first.",
    )
    parser.add_argument("--write", type=Path, help="Also write the tables to this file.")
    args = parser.parse_args()
    available = workloads(args.seconds)
    lines = [
        f"Command: `sudo .venv/bin/python bench/agree.py --seconds {args.seconds:g} "
        f"--workloads {args.workloads}{' --lockprof-first' if args.lockprof_first else ''}`",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="lockprof-agree-") as tmp:
        for name in args.workloads.split(","):
            summary, maps, pid = run_both(available[name], Path(tmp), args.lockprof_first)
            ours = lockprof_figures(summary, Path(tmp) / f"agree-{pid}.lpr", pid)
            lines += table(f"{name} (pid {pid})", ours, bpftrace_figures(maps))
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")


if __name__ == "__main__":
    main()
