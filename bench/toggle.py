#!/usr/bin/env python3
"""Overhead on a running workload, with the probes switched on and off (root).

bench/overhead.py starts a tracer per run, and on this shared machine the
ebizzy-like workload's bare rate moves 10-20% from one run to the next: six
repetitions cannot tell 1% from 4%. Here one workload runs throughout, and
one process holds both program sets, compiled once, attaching and detaching
them between short windows:

  bare    nothing attached
  floor   empty raw-tracepoint programs on the five events lockprof full
          attaches (mmap_lock x3, lock:contention_begin/end)
  lp      lockprof's own programs on them, compiled and configured as
          `lockprof record -a` does (system-wide, default thresholds)
  lp-mmap, lp-contention   only lockprof's mmap_lock, or only its
          contention programs (on demand: where the cost is)
  (--lock-types TYPES: the lp states as `lockprof record -a --lock-types
  TYPES`, for what leaving out a lock type saves)
  base    with --baseline REV: lockprof's programs as of git revision REV
          (probes/ only; the same flags), or from a directory holding
          lockprof.bpf.c and lockprof.h, to tell whether a change to the
          probes made them cheaper
  bpftrace, perf-lock   the peers of bench/overhead.py, system-wide: its
          bpftrace script (the same wait and hold histograms as lp) and
          `perf lock record -a` (lock:contention_* only, as lp-contention).
          Each is started for its window and stopped after it (SIGINT, as
          a user ends it), so its start-up and its exit's work (bpftrace
          printing its maps, perf writing its file) fall outside the
          windows, as lockprof's do in the lp states.
  bpftrace-mmap, bpftrace-contention   the bpftrace script's mmap_lock
          probes alone, or its lock:contention_* probes alone

Each cycle visits the states in turn (forward, then reversed); a window
is the workload's own count of operations between two of its clock reads
(lpbizzy -P), after a settling pause following the switch. A state's
figure is the mean over cycles of its rate against the bare window of the
same cycle, with a 95% confidence interval (t distribution): drift slower
than a cycle cancels.

The workload's sensitivity to the probes stays put for a whole process
and differs between processes (docs/performance.md, thirteenth session):
--processes N runs the cycles in N blocks, each under a fresh lpbizzy,
and adds each process's figures and an interval over the processes'
means, which is the one to judge a target by.

Not measured here: lockprof's user space (reading the maps every second;
bench/lpcpu.sh gives its CPU time), the compile and attach at start. The
programs are switched without lockprof's arming, so a hold that spans a
switch leaves a stale entry that the next release of that lock clears;
the aggregates are not used.

    sudo .venv/bin/python bench/toggle.py [--cycles 30] [--window 1.0]
        [--states bare,floor,lp] [--threads 2] [--baseline REV] [--processes 1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from profiler import probes, schema  # noqa: E402
from profiler.cli.common import parse_lock_types  # noqa: E402
from profiler.options import CollectOptions  # noqa: E402

if TYPE_CHECKING:  # imported where used: the unit tests load this file without it
    from profiler import bpf as bpf_mod

sys.path.insert(0, str(REPO / "bench"))
import overhead  # noqa: E402  (its bpftrace script)

LPBIZZY = REPO / "workloads" / "bin" / "lpbizzy"
BPFTRACE_STATES = ("bpftrace", "bpftrace-mmap", "bpftrace-contention")
PEER_TOOLS = {**dict.fromkeys(BPFTRACE_STATES, "bpftrace"), "perf-lock": "perf"}
STATES = ("bare", "floor", "lp", "lp-mmap", "lp-contention", "base", *PEER_TOOLS)


def bpftrace_script(state: str) -> str:
    """bench/overhead.py's bpftrace script, or its mmap_lock or its
    lock:contention_* probes alone (each probe is a block that starts with
    its tracepoint's name at the start of a line)."""
    if state == "bpftrace":
        return overhead.BPFTRACE_SCRIPT
    family = "tracepoint:mmap_lock:" if state == "bpftrace-mmap" else "tracepoint:lock:"
    blocks = re.split(r"\n(?=tracepoint:)", overhead.BPFTRACE_SCRIPT.strip())
    return "\n".join(block for block in blocks if block.startswith(family)) + "\n"


# Two-sided 95% t quantiles by degrees of freedom (1-30; then 40, 60, 120).
T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(dof: int) -> float:
    if dof <= len(T95):
        return T95[dof - 1]
    return 2.021 if dof <= 40 else 2.000 if dof <= 60 else 1.980 if dof <= 120 else 1.960


class Workload:
    """lpbizzy -P: answers each line on stdin with (operations, ns)."""

    def __init__(self, threads: int):
        self.proc = subprocess.Popen(
            [str(LPBIZZY), "-t", str(threads), "-P", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def progress(self) -> tuple[int, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        ops, ns = self.proc.stdout.readline().split()
        return int(ops), int(ns)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Switch:
    """Attach and detach a program set's raw tracepoints (BCC keeps the
    loaded programs, so re-attaching does not verify them again)."""

    def __init__(self, bcc_object, programs: dict[str, str]):
        self.bcc_object = bcc_object
        self.programs = programs  # event -> function name
        self.on = False

    def set(self, on: bool) -> None:
        if on == self.on:
            return
        # Programs are listed beginning first (start_locking before
        # acquire_returned before released, contention_begin before _end).
        # Ends are attached before their beginnings and detached after them:
        # a beginning seen without its end (in the gap between two attaches,
        # ~10k contended waits a second) leaves a stale entry in the task's
        # nest of waits, which fills after four and turns every later wait
        # of that task into a cheap nest_overflow.
        events = list(self.programs.items())
        for event, fn in reversed(events) if on else events:
            if on:
                self.bcc_object.attach_raw_tracepoint(tp=event.encode(), fn_name=fn.encode())
            else:
                self.bcc_object.detach_raw_tracepoint(tp=event.encode())
        self.on = on


class ProcessSwitch:
    """A peer tracer as a switch: started (and waited for until it has
    attached) when switched on, stopped with SIGINT when switched off
    (bench/overhead.py's tracers, started as it starts them)."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.on = False

    def set(self, on: bool) -> None:
        if on == self.on:
            return
        if on:
            self._start()
        else:
            self._stop()
        self.on = on

    def _start(self) -> None:
        if self.name == "perf-lock":
            self.proc = overhead.start_perf_lock(self.workdir)
            return
        self.proc = overhead.start_bpftrace(bpftrace_script(self.name), self.name)

    def _stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Seen once with bpftrace-contention (10:15 UTC, sixteenth
            # session): SIGINT after its window, no exit in 120 s.
            print(f"toggle: {self.name} did not stop on SIGINT: killed", file=sys.stderr)
            self.proc.kill()
            self.proc.communicate()
        (self.workdir / "perf.data").unlink(missing_ok=True)
        self.proc = None


def floor_switch() -> Switch:
    from profiler import bpf as bpf_mod

    events = [p.point.target for p in lockprof_plans()]
    prog = bpf_mod.empty_programs(events)  # attached: switched off below
    switch = Switch(prog, {e.split(":", 1)[1]: f"floor_{i}" for i, e in enumerate(events)})
    switch.on = True
    switch.set(False)
    return switch


def lockprof_plans() -> list:
    return probes.plan(probes.DEFAULT_FAMILIES, {"raw_tracepoint", "tracepoint"})


def lockprof_switches(
    lock_types: tuple[str, ...] | None = None,
) -> tuple[bpf_mod.BpfSession, dict[str, Switch]]:
    """lockprof's programs as `lockprof record -a [--lock-types ...]`
    compiles and configures them, armed, then detached: one switch per state
    that uses them."""
    from profiler import bpf as bpf_mod

    options = CollectOptions(lock_types=lock_types)
    plans = lockprof_plans()
    session = bpf_mod.BpfSession.for_collection(plans, options)
    session.attach()
    # A run keeps lp_learn_rq for its first seconds only; left on, it ran in
    # every window of every state, bare included.
    session.stop_rq_learning()
    bcc_object = session._bpf  # the bench switches what the session attached
    by_family: dict[str, dict[str, str]] = {}
    for chosen in plans:
        event = chosen.point.target.split(":", 1)[1]
        by_family.setdefault(chosen.probe.family, {})[event] = chosen.probe.fn
    everything = {e: fn for fns in by_family.values() for e, fn in fns.items()}
    switches = {
        "lp": Switch(bcc_object, everything),
        "lp-mmap": Switch(bcc_object, by_family.get("mmap_lock", {})),
        "lp-contention": Switch(bcc_object, by_family.get("contention", {})),
    }
    switches["lp"].on = True
    switches["lp"].set(False)
    return session, switches


@contextlib.contextmanager
def probes_of(revision: str):
    """probes/ as of a git revision (or a directory holding lockprof.bpf.c and
    lockprof.h: an experiment), in place of the working tree's."""
    with tempfile.TemporaryDirectory(prefix="lp-probes-") as tmp:
        for name in ("lockprof.bpf.c", "lockprof.h"):
            if Path(revision).is_dir():
                text = (Path(revision) / name).read_text()
            else:
                text = subprocess.run(
                    ["git", "-C", str(REPO), "show", f"{revision}:probes/{name}"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            (Path(tmp) / name).write_text(text)
        # The header's constants are cached: read the baseline's, then ours again.
        schema.constants.cache_clear()
        try:
            with mock.patch.object(schema, "probes_dir", lambda: Path(tmp)):
                yield
        finally:
            schema.constants.cache_clear()


# /proc/stat's "cpu" line, in its order (clock ticks summed over the CPUs).
CPU_TIMES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> list[int]:
    """The machine's CPU time so far, by kind (CPU_TIMES)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return [int(v) for v in fields[1 : 1 + len(CPU_TIMES)]]


def measure(workload: Workload, settle: float, window: float, wait, run_stats):
    """Operations, seconds, the programs' run stats (run_stats() before,
    after) and the CPU time by kind over one window, after settling."""
    time.sleep(settle)
    before = run_stats()
    ops0, ns0 = workload.progress()
    times0 = cpu_times()
    wait(window)
    ops1, ns1 = workload.progress()
    times = [after - first for after, first in zip(cpu_times(), times0, strict=True)]
    return ops1 - ops0, (ns1 - ns0) / 1e9, before, run_stats(), times


class Results:
    """Per state: the rate of each window; with --run-stats, each BPF
    program's runs and run time over all its windows, and the operations."""

    def __init__(self, states: list[str]):
        self.rates: dict[str, list[float]] = {s: [] for s in states}
        self.window_ops: dict[str, list[int]] = {s: [] for s in states}
        # the workload process (0, 1, ...) of each cycle
        self.process_of_cycle: list[int] = []
        self.seconds: dict[str, float] = dict.fromkeys(states, 0.0)
        self.runs: dict[str, dict[str, list[int]]] = {s: {} for s in states}
        self.errors: dict[str, dict[str, int]] = {}  # lockprof session -> lp_errors
        # lockprof session -> per workload process: contended waits on each
        # lock, over every window its contention programs were attached in
        self.waits_by_lock: dict[str, list[dict[int, int]]] = {}
        # CPU time by kind (CPU_TIMES) over the state's windows, in ticks
        self.cpu_times: dict[str, list[int]] = {s: [0] * len(CPU_TIMES) for s in states}

    def add(
        self, state: str, ops: int, seconds: float, before: dict, after: dict, times: list[int]
    ) -> None:
        self.cpu_times[state] = [a + b for a, b in zip(self.cpu_times[state], times, strict=True)]
        self.rates[state].append(ops / seconds)
        self.window_ops[state].append(ops)
        self.seconds[state] += seconds
        for fn, (runs, ns) in after.items():
            total = self.runs[state].setdefault(fn, [0, 0])
            total[0] += runs - before.get(fn, (0, 0))[0]
            total[1] += ns - before.get(fn, (0, 0))[1]


def load(states: list[str], args: argparse.Namespace, cleanup: contextlib.ExitStack):
    """Switches by state, lockprof sessions by name ("lp", "base"), and the
    BCC object whose run stats each state reads; released by cleanup."""
    switches: dict[str, Switch] = {}
    sessions: dict[str, bpf_mod.BpfSession] = {}
    objects: dict[str, object] = {}
    if "floor" in states:
        switches["floor"] = floor_switch()
        cleanup.callback(switches["floor"].bcc_object.cleanup)
        objects["floor"] = switches["floor"].bcc_object
    if any(s.startswith("lp") for s in states):
        session, lp_switches = lockprof_switches(args.lock_types)
        cleanup.callback(session.close)
        sessions["lp"] = session
        switches.update(lp_switches)
        objects.update(dict.fromkeys(lp_switches, session._bpf))
    for peer in PEER_TOOLS:
        if peer in states:
            workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="lp-peer-")))
            switches[peer] = ProcessSwitch(peer, workdir)
    if "base" in states:
        with probes_of(args.baseline):
            base_session, base_switches = lockprof_switches()
        cleanup.callback(base_session.close)
        sessions["base"] = base_session
        switches["base"] = base_switches["lp"]
        objects["base"] = base_session._bpf
    return switches, sessions, objects


def run(args: argparse.Namespace) -> Results:
    from profiler import bpf as bpf_mod

    states = args.states.split(",")
    results = Results(states)
    with contextlib.ExitStack() as cleanup:
        switches, sessions, objects = load(states, args, cleanup)

        # With lockprof's programs loaded, wait as lockprof does: draining the
        # event ring every 10 ms (in every state alike); the baseline's ring
        # too, or a full ring would spare its programs the writes.
        def wait(seconds: float) -> None:
            if not sessions:
                time.sleep(seconds)
                return
            first, *others = sessions.values()
            first.poll_events(int(seconds * 1000))
            for other in others:
                other.drain_events()

        # Detached before the workload stops and the sessions close.
        cleanup.callback(lambda: [switch.set(False) for switch in switches.values()])
        if args.run_stats:
            cleanup.enter_context(bpf_mod.run_stats_enabled())

        def run_stats(state: str) -> dict:
            if not args.run_stats or state not in objects:
                return {}
            return bpf_mod.program_run_stats(objects[state])

        waits_before = {name: contended_by_lock(session) for name, session in sessions.items()}
        for process, cycles in enumerate(process_blocks(args.cycles, args.processes)):
            workload = Workload(args.threads)
            try:
                time.sleep(args.settle)
                for _ in range(cycles):
                    run_cycle(results, states, switches, workload, args, wait, run_stats)
                    results.process_of_cycle.append(process)
            finally:
                for switch in switches.values():
                    switch.set(False)
                workload.stop()
            for name, session in sessions.items():
                waits_now = contended_by_lock(session)
                results.waits_by_lock.setdefault(name, []).append(
                    {lock: n - waits_before[name].get(lock, 0) for lock, n in waits_now.items()}
                )
                waits_before[name] = waits_now
        for name, session in sessions.items():
            results.errors[name] = session.read_errors()
    return results


def process_blocks(cycles: int, processes: int) -> list[int]:
    """How many cycles each workload process runs: as even as can be."""
    return [cycles // processes + (i < cycles % processes) for i in range(processes)]


def run_cycle(results, states, switches, workload, args, wait, run_stats) -> None:
    """One window per state, forward on even cycles, reversed on odd ones."""
    cycle = len(results.process_of_cycle)
    for state in states if cycle % 2 == 0 else states[::-1]:
        # All off first: lp, lp-mmap and lp-contention share programs.
        for name, switch in switches.items():
            if name != state:
                switch.set(False)
        if state in switches:
            switches[state].set(True)
        window = measure(
            workload, args.settle, args.window, wait, functools.partial(run_stats, state)
        )
        results.add(state, *window)
    print(
        f"cycle {cycle + 1}/{args.cycles}: "
        + ", ".join(f"{s} {results.rates[s][-1]:.0f}" for s in states),
        file=sys.stderr,
    )


def contended_by_lock(session: bpf_mod.BpfSession) -> dict[int, int]:
    """Contended waits so far per lock (all flags)."""
    snapshot = session.read_stats(time.monotonic_ns())
    column = snapshot.columns.index("contended")
    by_lock: dict[int, int] = {}
    contention = schema.const("LP_SRC_CONTENTION")
    for (lock, _flags, source, _index), per_cpu in snapshot.rows.items():
        if source == contention:
            by_lock[lock] = by_lock.get(lock, 0) + int(per_cpu[:, column].sum())
    return by_lock


def process_ops(results: Results, states: tuple[str, ...], process: int) -> int:
    """The workload's operations in those states' windows of one process."""
    return sum(
        ops
        for state in states
        for ops, owner in zip(
            results.window_ops.get(state, []), results.process_of_cycle, strict=False
        )
        if owner == process
    )


def mode_figures(results: Results, name: str, processes: list[int]) -> tuple | None:
    """Contended waits per operation, locks seen, the busiest lock's share of
    the waits and its waits per operation, over those processes' windows
    where session `name`'s contention programs ran (each process's busiest
    lock is its own: its page-table pages are not another's)."""
    states = ("lp", "lp-contention") if name == "lp" else (name,)
    per_process = results.waits_by_lock.get(name) or []
    waits = [sorted((n for n in per_process[p].values() if n), reverse=True) for p in processes]
    ops = sum(process_ops(results, states, p) for p in processes)
    total = sum(sum(w) for w in waits)
    if not total or not ops:
        return None
    busiest = sum(w[0] for w in waits if w)
    return total / ops, sum(len(w) for w in waits), busiest / total, busiest / ops


def workload_mode(results: Results, name: str) -> str | None:
    """How lpbizzy's contended waits fell, in the windows where lockprof's
    contention programs ran: on one hot lock (both threads' chunks under one
    page-table page, one page-table spinlock taken by every fault), or
    spread over many. The probes' cost differs between these modes
    (docs/performance.md, twelfth session)."""
    figures = mode_figures(results, name, sorted(set(results.process_of_cycle)))
    if figures is None:
        return None
    per_op, locks, share, busiest_per_op = figures
    return (
        f"Workload mode ({name}'s contention windows): {per_op:.1f} contended "
        f"waits per operation over {locks:,} locks, {share:.0%} "
        f"of them on the busiest lock ({busiest_per_op:.1f} per operation)."
    )


def per_process_table(results: Results) -> list[str]:
    """Each workload process's figures, then each state's mean over the
    processes' means with a 95% interval over processes: windows of one
    process are not independent of each other, processes are."""
    states = [s for s in results.rates if s != "bare"]
    processes = sorted(set(results.process_of_cycle))
    lines = [
        "Per workload process (a fresh `lpbizzy` each; loss means over its cycles; mode: "
        "contended waits per operation, the busiest lock's share):",
        "",
        "| process | cycles | bare median ops/s | "
        + " | ".join(f"{s} loss" for s in states)
        + " | mode |",
        "|---|---|---|" + "---|" * len(states) + "---|",
    ]
    means: dict[str, list[float]] = {s: [] for s in states}
    for process in processes:
        cycles = [i for i, p in enumerate(results.process_of_cycle) if p == process]
        bare = [results.rates["bare"][i] for i in cycles]
        cells = []
        for state in states:
            losses = [1 - results.rates[state][i] / results.rates["bare"][i] for i in cycles]
            means[state].append(statistics.fmean(losses))
            cells.append(f"{means[state][-1]:+.2%}")
        figures = mode_figures(results, "lp", [process]) if "lp" in results.rates else None
        mode = f"{figures[0]:.1f}/op, {figures[2]:.0%}" if figures else "-"
        lines.append(
            f"| {process + 1} | {len(cycles)} | {statistics.median(bare):,.0f} | "
            + " | ".join(cells)
            + f" | {mode} |"
        )
    lines += [
        "",
        "| state | mean of the processes' means | 95% CI over processes |",
        "|---|---|---|",
    ]
    for state in states:
        mean, low, high = mean_interval(means[state])
        lines.append(f"| {state} | {mean:+.2%} | {low:+.2%} to {high:+.2%} |")
    return lines


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """The mean and its two-sided 95% t interval (nan with one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarise(results: Results, args: argparse.Namespace) -> str:
    rates = results.rates
    bare = rates["bare"]
    command = " ".join(["bench/toggle.py", *sys.argv[1:]])
    lines = [
        f"Command: `sudo .venv/bin/python {command}`. {args.cycles} cycles of "
        f"{args.window:g} s windows (settle {args.settle:g} s after each switch) under "
        + (
            f"one running `lpbizzy -t {args.threads}`"
            if args.processes == 1
            else f"{args.processes} `lpbizzy -t {args.threads}` processes in turn"
        )
        + ", states in alternating order; "
        "loss = 1 - the window's rate / the bare window's rate of the same cycle: "
        "mean, its 95% interval, median. Empty programs (*floor*) and lockprof's "
        "(*lp*: mmap_lock and contention families; *lp-mmap*, *lp-contention*: "
        "one family) are attached and detached between windows; lockprof's user "
        "space and start-up are not in these figures."
        + (
            " The peers (*bpftrace*: the same wait and hold histograms; *perf-lock*: "
            "`perf lock record -a`, contention only) are started before their window "
            "and stopped after it: their user space is in their figures, their "
            "start-up and exit are not."
            if set(PEER_TOOLS) & set(rates)
            else ""
        ),
        "",
        "| state | median ops/s | loss, mean | 95% CI | loss, median |",
        "|---|---|---|---|---|",
    ]
    for state, values in rates.items():
        median = statistics.median(values)
        lines.append(f"| {state} | {median:,.0f} | {_loss_cells(values, bare)} |")
    if "base" in rates and "lp" in rates:
        lines.append(f"| lp against base | | {_loss_cells(rates['lp'], rates['base'])} |")
    for name, errors in results.errors.items():
        # A full map or lost pairing makes the programs return early: the
        # state would then time a cheaper path than lockprof's.
        counted = ", ".join(f"{k} {v:,}" for k, v in errors.items() if v) or "none"
        lines.append(f"\nKernel-side counters of {name}'s programs: {counted}.")
        mode = workload_mode(results, name)
        if mode:
            lines.append(f"\n{mode}")
    lines += ["", *_cpu_times_table(results)]
    if args.processes > 1:
        lines += ["", *per_process_table(results)]
    if args.run_stats:
        lines += ["", *_run_stats_table(results)]
    return "\n".join(lines)


def _cpu_times_table(results: Results) -> list[str]:
    """Where the machine's CPU time went in each state's windows: a tracer
    whose programs lengthen the workload's critical sections can change how
    long its waiters spin, sleep or halt (a paravirtual spinlock halts its
    vCPU), or how often the host deschedules a vCPU (steal), beyond its
    programs' own run time."""
    kinds = ("user", "system", "irq+softirq", "idle+iowait", "steal")
    lines = [
        "CPU time in each state's windows, as a share of all CPUs' time (/proc/stat):",
        "",
        "| state | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for state, ticks in results.cpu_times.items():
        by_kind = dict(zip(CPU_TIMES, ticks, strict=True))
        shares = (
            by_kind["user"] + by_kind["nice"],
            by_kind["system"],
            by_kind["irq"] + by_kind["softirq"],
            by_kind["idle"] + by_kind["iowait"],
            by_kind["steal"],
        )
        total = max(sum(ticks), 1)
        lines.append(f"| {state} | " + " | ".join(f"{v / total:.1%}" for v in shares) + " |")
    return lines


def _run_stats_table(results: Results) -> list[str]:
    """Each program's runs per operation and ns per run, by state (kernel
    run-time stats: they add their own clock reads to every run)."""
    lines = [
        "BPF run-time stats while each state was on (runs per workload operation; "
        "ns per run, which includes the stats' own two clock reads):",
        "",
        "| state | program | runs/op | ns/run | ms per s of window |",
        "|---|---|---|---|---|",
    ]
    for state, programs in results.runs.items():
        seconds = max(results.seconds[state], 1e-9)
        for fn, (runs, ns) in sorted(programs.items()):
            if runs:
                lines.append(
                    f"| {state} | {fn} | {runs / max(sum(results.window_ops[state]), 1):.2f} | "
                    f"{ns / runs:.0f} | {ns / 1e6 / seconds:.2f} |"
                )
    return lines


def _loss_cells(values: list[float], against: list[float]) -> str:
    """Mean loss, its 95% interval and median loss, as table cells."""
    losses = [1 - v / b for v, b in zip(values, against, strict=True)]
    mean, low, high = mean_interval(losses)
    return f"{mean:+.2%} | {low:+.2%} to {high:+.2%} | {statistics.median(losses):+.2%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--window", type=float, default=1.0, help="seconds measured per state")
    parser.add_argument("--settle", type=float, default=0.2, help="seconds after a switch")
    parser.add_argument("--states", default="bare,floor,lp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run the cycles under this many workload processes in turn (a fresh "
        "lpbizzy each) and add an interval over the processes' means",
    )
    parser.add_argument("--baseline", help="git revision of probes/ for the state 'base'")
    parser.add_argument(
        "--lock-types",
        type=lambda text: parse_lock_types(text, False),
        help="the lp states trace contention of these lock types only (as lockprof's "
        "--lock-types); base, if any, traces every type",
    )
    parser.add_argument(
        "--raw", type=Path, help="also write each window's rate and process here (JSON)"
    )
    parser.add_argument(
        "--run-stats",
        action="store_true",
        help="also the kernel's run-time stats of each program (costs two clock reads a run)",
    )
    args = parser.parse_args()
    states = args.states.split(",")
    if args.baseline and "base" not in states:
        states.append("base")
        args.states = ",".join(states)
    if set(states) - set(STATES) or "bare" not in states:
        parser.error(f"--states: bare and some of {', '.join(STATES)}")
    if not 1 <= args.processes <= args.cycles:
        parser.error("--processes: from 1 to --cycles")
    if "base" in states and not args.baseline:
        parser.error("the state 'base' needs --baseline REV")
    for peer, exe in PEER_TOOLS.items():
        if peer in states and shutil.which(exe) is None:
            parser.error(f"the state {peer!r} needs {exe}, which is not installed")
    results = run(args)
    if args.raw:
        args.raw.write_text(
            json.dumps({"rates": results.rates, "process_of_cycle": results.process_of_cycle})
        )
    print(summarise(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
