"""`lockprof doctor --overhead`: what lockprof's probes cost on this machine.

In about 10 s, before attaching in production, a user learns:
  - per probe, the kernel's own count of runs and run time (BPF_ENABLE_STATS)
    for lockprof's programs and for empty programs on the same events (the
    price of the mechanism itself);
  - what that adds to an mmap+munmap pair, timed bare, under the empty
    programs and under lockprof, with a generated load of two threads;
  - what the same programs cost on this system as it runs, without the
    load: their events a second and their run time a second.

The load is a Python child mapping and unmapping one page in a loop (CPython
drops the GIL around mmap and munmap, so two threads really contend on their
mmap_lock). Its absolute speed is Python's; the added time per pair is the
probes'.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from profiler import probes
from profiler.errors import LockprofError
from profiler.options import CollectOptions

POLL_S = 0.1  # as a collection drains the event ring (session.POLL_MS)

_LOAD = """
import mmap, sys, threading, time
seconds = float(sys.argv[1])
counts = [0, 0]
def work(slot):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        for _ in range(200):
            mmap.mmap(-1, 4096).close()
        n += 200
    counts[slot] = n
threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(sum(counts), time.monotonic() - start)
"""


@dataclass
class ProbeCost:
    probe: str
    event: str
    mechanism: str
    runs: int
    ns_per_run: float | None  # lockprof's program
    floor_ns_per_run: float | None  # an empty program on the same event
    # The system phase (no load): runs and run time of lockprof's program
    system_runs: int = 0
    system_run_ns: int = 0


@dataclass
class OverheadResult:
    seconds_per_phase: float
    probes: list[ProbeCost]
    pairs_per_s: dict[str, float]  # bare, floor, lockprof
    us_per_pair: dict[str, float]
    settings: dict  # what the probes were asked to do (measured_settings)
    system_seconds: float = 0.0  # the system phase's length

    def system_ns_per_s(self) -> float:
        """Run time of lockprof's programs a second on the system as it ran
        without the load (kernel run-time stats: the programs' own time,
        not the tracepoint's dispatch to them)."""
        total = sum(probe.system_run_ns for probe in self.probes)
        return total / self.system_seconds if self.system_seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "system_ns_per_s": round(self.system_ns_per_s())}


def _load(seconds: float, meanwhile: Callable[[], object] | None = None) -> float:
    """Run the load; mmap+munmap pairs per second. meanwhile: called every
    POLL_S while it runs (the event ring's drain, as a collection's)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOAD, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + seconds * 10 + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if meanwhile is not None:
            meanwhile()
        time.sleep(POLL_S)
    try:
        out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise LockprofError(f"the overhead load did not end in {seconds * 10 + 30:g} s") from None
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no message"])[-1]
        raise LockprofError(f"the overhead load failed (exit {proc.returncode}): {last}")
    pairs, elapsed = out.split()
    return int(pairs) / float(elapsed)


def _system_phase(session, seconds: float) -> tuple[dict[str, tuple[int, int]], float]:
    """The runs and run time each program gained over `seconds` of the
    system as it runs, the load gone (the question before attaching in
    production), and the seconds it really took, snapshot to snapshot."""
    before = session.run_stats()
    start = time.monotonic()
    _drain_for(seconds, session.drain_events)
    after = session.run_stats()
    elapsed = time.monotonic() - start
    gained = {}
    for fn, (runs, run_ns) in after.items():
        runs_before, ns_before = before.get(fn, (0, 0))
        gained[fn] = (runs - runs_before, run_ns - ns_before)
    return gained, elapsed


def _drain_for(seconds: float, drain: Callable[[], object]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        drain()
        time.sleep(min(POLL_S, max(0.0, end - time.monotonic())))
    drain()


def _per_run(stats: dict[str, tuple[int, int]], fn: str) -> tuple[int, float | None]:
    runs, ns = stats.get(fn, (0, 0))
    return runs, (ns / runs if runs else None)


def measured_settings(options: CollectOptions) -> dict:
    """The settings that decide how often the programs' costliest paths run:
    a ring-buffer record per event over the threshold, a kernel stack walk
    (~2.7 us) per long contended wait, as often as the stack rate allows
    (and one per lock and mode on each CPU, its naming stack)."""
    return {
        "families": list(options.families),
        "threshold_ns": options.threshold_ns,
        "stack_threshold_ns": options.stack_threshold_ns,
        "stack_rate": options.stack_rate,
        "lock_types": list(options.lock_types) if options.lock_types is not None else None,
        "sample_hz": options.sample_hz if "sample" in options.families else None,
    }


def measure(
    seconds: float = 1.5,
    options: CollectOptions | None = None,
    working: frozenset[str] = frozenset({"raw_tracepoint", "perf_event"}),
    on_start: Callable[[], object] | None = None,
    target_tgid: int = 0,
) -> OverheadResult:
    """Bare, floor, lockprof and system phases of `seconds` each (needs root), the
    probes set up as a system-wide collection (`record -a`) with these
    options would be (default: attach's defaults), on the mechanisms
    `working` (doctor's); on_start is called once the probes are planned.
    target_tgid: the system phase's probes as `attach -p` that process's
    would run (other processes' events end at the pid check)."""
    options = options or CollectOptions()
    plans = probes.plan(options.families, set(working))  # MechanismUnavailable first
    if on_start is not None:
        on_start()
    from profiler import bpf

    # The floor: an empty program on each tracepoint (a perf event's
    # sampling has no tracepoint to share; its row has no floor).
    on_tracepoints = [c for c in plans if c.point.mechanism == "raw_tracepoint"]
    floor_of = {chosen.probe.fn: f"floor_{i}" for i, chosen in enumerate(on_tracepoints)}
    events = [chosen.point.target for chosen in on_tracepoints]
    rates = {"bare": _load(seconds)}
    with bpf.run_stats_enabled():
        floor = bpf.empty_programs(events)
        try:
            rates["floor"] = _load(seconds)
            floor_stats = bpf.program_run_stats(floor)
        finally:
            floor.cleanup()
        with bpf.BpfSession.for_collection(plans, options) as session:
            session.attach()
            # The per-event costs a run keeps: its runqueue-lock learner
            # runs only in its first seconds, on every enqueue and dequeue.
            session.stop_rq_learning()
            # The ring drained as a collection drains it: a full ring would
            # make every later record a cheap failed reserve.
            rates["lockprof"] = _load(seconds, session.drain_events)
            session.drain_events()
            lp_stats = session.run_stats()
            if not target_tgid:
                system_stats, system_seconds = _system_phase(session, seconds)
        if target_tgid:
            with bpf.BpfSession.for_collection(plans, options, target_tgid) as session:
                session.attach()
                session.stop_rq_learning()
                session.learn_target_lock(target_tgid)  # as attach does
                system_stats, system_seconds = _system_phase(session, seconds)
    costs = []
    for chosen in plans:
        runs, ns = _per_run(lp_stats, chosen.probe.fn)
        floor_fn = floor_of.get(chosen.probe.fn)
        floor_ns = _per_run(floor_stats, floor_fn)[1] if floor_fn else None
        system_runs, system_run_ns = system_stats.get(chosen.probe.fn, (0, 0))
        costs.append(
            ProbeCost(
                chosen.probe.name,
                chosen.point.target,
                chosen.point.mechanism,
                runs,
                ns,
                floor_ns,
                system_runs=system_runs,
                system_run_ns=system_run_ns,
            )
        )
    return OverheadResult(
        seconds_per_phase=seconds,
        probes=costs,
        pairs_per_s={k: round(v, 1) for k, v in rates.items()},
        us_per_pair={k: round(1e6 / v, 3) for k, v in rates.items()},
        settings={**measured_settings(options), "target_pid": target_tgid or None},
        system_seconds=round(system_seconds, 3),
    )
