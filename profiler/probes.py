"""Declarative probe table and run-time choice of attach mechanism.

Each probe names the BPF function that implements it and, in order of
preference, the points it can attach to. At run time the first point whose
mechanism works on this kernel (as `lockprof doctor` checks) and whose event
exists is chosen. Nothing here imports bcc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from profiler.errors import MechanismUnavailable

TRACEFS = Path("/sys/kernel/tracing")

# Preference order among mechanisms, cheapest and most stable first.
MECHANISM_ORDER = ("raw_tracepoint", "tracepoint", "fentry", "kprobe", "uprobe", "perf_event")


@dataclass(frozen=True)
class AttachPoint:
    mechanism: str  # one of MECHANISM_ORDER
    target: str  # "category:event" for tracepoints, a symbol for kprobes,
    # "/path/to/binary:symbol" for uprobes
    ret: bool = False  # kretprobe / uretprobe: at the function's return


@dataclass(frozen=True)
class Probe:
    name: str
    family: str  # "mmap_lock" or "contention": what the user turns on
    fn: str  # BPF function in probes/lockprof.bpf.c
    points: tuple[AttachPoint, ...]


def _raw_tp(event: str) -> AttachPoint:
    return AttachPoint("raw_tracepoint", event)


# The BPF functions read TP_PROTO arguments, so raw tracepoints are their
# mechanism; the same events as classic tracepoints would build the trace
# record for every hit (for mmap_lock that includes a memcg id lookup), which
# costs about twice as much (docs/performance.md).
PROBES: tuple[Probe, ...] = (
    Probe(
        "mmap_lock.start",
        "mmap_lock",
        "lp_mmap_start",
        (_raw_tp("mmap_lock:mmap_lock_start_locking"),),
    ),
    Probe(
        "mmap_lock.acquired",
        "mmap_lock",
        "lp_mmap_acquired",
        (_raw_tp("mmap_lock:mmap_lock_acquire_returned"),),
    ),
    Probe(
        "mmap_lock.released",
        "mmap_lock",
        "lp_mmap_released",
        (_raw_tp("mmap_lock:mmap_lock_released"),),
    ),
    Probe(
        "contention.begin", "contention", "lp_contention_begin", (_raw_tp("lock:contention_begin"),)
    ),
    Probe("contention.end", "contention", "lp_contention_end", (_raw_tp("lock:contention_end"),)),
    # Opt-in: a kernel stack per block of every traced task.
    Probe("offcpu.switch", "offcpu", "lp_offcpu_switch", (_raw_tp("sched:sched_switch"),)),
    # Opt-in: cpu-clock sampling on every CPU (target: the sampling frequency).
    Probe("sample.cpu", "sample", "lp_sample", (AttachPoint("perf_event", "cpu-clock"),)),
    # Opt-in (--follow): the target's descendants, from fork on.
    Probe("follow.fork", "follow", "lp_follow_fork", (_raw_tp("sched:sched_process_fork"),)),
)

FAMILIES = ("mmap_lock", "contention", "offcpu", "sample", "follow")
DEFAULT_FAMILIES = ("mmap_lock", "contention")
# Opt-in probe families and the define that compiles each into the probes:
# a run compiles only those it uses (compiling is most of its start-up).
OPTIONAL_FAMILIES = {
    "locks": "LP_WITH_LOCK_SPECS",
    "offcpu": "LP_WITH_OFFCPU",
    "sample": "LP_WITH_SAMPLE",
}

# Lock spec probes share one BPF family taking pt_regs, which kprobes and
# uprobes give; fentry's context differs, so kernel specs use kprobes.
SPEC_KERNEL_MECHANISMS = ("kprobe",)


def tracepoint_exists(target: str) -> bool:
    category, event = target.split(":", 1)
    try:
        return (TRACEFS / "events" / category / event).is_dir()
    except PermissionError:
        # tracefs is root-only (0700), and lockprof may run with CAP_BPF and
        # CAP_PERFMON alone: raw tracepoints need no tracefs, so the attach
        # itself decides (and names the tracepoint if it is missing).
        return True


def point_available(point: AttachPoint, working: set[str]) -> bool:
    if point.mechanism not in working:
        return False
    if point.mechanism in ("raw_tracepoint", "tracepoint"):
        return tracepoint_exists(point.target)
    return True


@dataclass(frozen=True)
class Plan:
    probe: Probe
    point: AttachPoint


def plan(families: tuple[str, ...], working: set[str]) -> list[Plan]:
    """Choose an attach point for every probe of the requested families.

    Raises MechanismUnavailable naming the probe and what it would need.
    """
    chosen = []
    for probe in PROBES:
        if probe.family not in families:
            continue
        point = next((p for p in probe.points if point_available(p, working)), None)
        if point is None:
            wanted = ", ".join(f"{p.mechanism} {p.target}" for p in probe.points)
            raise MechanismUnavailable(
                f"cannot attach {probe.name}: this kernel lacks {wanted} "
                f"(see `lockprof doctor`; leave out --{probe.family.replace('_', '-')})"
            )
        chosen.append(Plan(probe, point))
    return chosen


def spec_probes(spec) -> list[Probe]:
    """Probes for a lock spec (profiler.lockspec.LockSpec): each function's
    entry, plus the return of lock and sum functions."""
    from profiler import lockspec

    def point(symbol: str, ret: bool = False) -> AttachPoint:
        if spec.in_kernel:
            return AttachPoint("kprobe", symbol, ret)
        return AttachPoint("uprobe", f"{spec.target}:{symbol}", ret)

    probes = []
    for role in lockspec.ROLES:
        for symbol in spec.role(role):
            entry_fn = lockspec.ENTRY_FN[role]
            probes.append(Probe(f"{spec.name}.{symbol}", "locks", entry_fn, (point(symbol),)))
            if role in ("read_lock", "write_lock", "sum"):
                if role == "sum":
                    ret_fn = "lp_spec_sum_ret"
                elif symbol in spec.status:
                    ret_fn = "lp_spec_lock_ret_rc"
                else:
                    ret_fn = "lp_spec_lock_ret"
                probes.append(
                    Probe(f"{spec.name}.{symbol}.return", "locks", ret_fn, (point(symbol, True),))
                )
    return probes


def spec_plan(spec, working: set[str]) -> list[Plan]:
    """Plans for a lock spec, or MechanismUnavailable naming the spec and the
    mechanism it lacks."""
    needed = "kprobe" if spec.in_kernel else "uprobe"
    if needed not in working:
        what = "kernel functions" if spec.in_kernel else f"functions of {spec.target}"
        raise MechanismUnavailable(
            f"lock spec {spec.name}: its {what} need {needed}s (entry and return), which "
            f"do not work on this kernel (see `lockprof doctor`)"
        )
    return [Plan(probe, probe.points[0]) for probe in spec_probes(spec)]
