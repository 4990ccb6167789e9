"""What a collection is asked to do (CollectOptions) and what its live view
gets (LiveState): plain dataclasses, importable without pandas, so that the
command line can build them before the probes are compiled (cli/common.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# The first snapshot comes this long after the probes are armed (or after
# one interval, if shorter), so that the live view shows a row early; the
# next ones fall on the interval grid from the start. The report's interval
# boundaries follow the same rule (dashboards/figures.py _nominal_end).
FIRST_TICK_S = 0.5

# The most CPUs lockprof takes anywhere: --cpus' what-if, and a recording's
# meta (the report draws a row per CPU: a hand-edited 10**12 took it to the
# OOM killer). Linux's NR_CPUS is at most 8,192.
MAX_CPUS = 65_536

# What `show --sort` orders the rows by, the largest first (perf lock
# contention's -k): each the row's figure of that name (wait_avg: the wait's
# total over its count). Rows that do not know it come last.
SORT_KEYS = (
    "wait_total",
    "contended",
    "acquisitions",
    "wait_max",
    "wait_avg",
    "hold_total",
    "hold_max",
    "hold_avg",
)
# perf lock's names for the same keys (`perf lock contention -k avg_wait`,
# `perf lock report -k acquired`), accepted as well.
SORT_ALIASES = {"avg_wait": "wait_avg", "acquired": "acquisitions"}


@dataclass
class CollectOptions:
    families: tuple[str, ...] = ("mmap_lock", "contention")
    interval_s: float = 1.0
    duration_s: float | None = None
    threshold_ns: int = 100_000
    stack_threshold_ns: int = 10_000
    # At most this many contention stacks per CPU per second (0: no limit);
    # see lp_stack_allowed in probes/lockprof.bpf.c.
    stack_rate: int = 200
    max_events: int = 1_000_000
    locks: tuple = ()  # profiler.lockspec.LockSpec: user lock functions to probe
    sample_hz: int = 99  # cpu-clock sampling frequency, with the "sample" family
    what_if_cpus: int | None = None  # --cpus: scale the writer's sum to N CPUs
    # --lock-types: contention of these types only (None: every type)
    lock_types: tuple[str, ...] | None = None
    # -c: the live view and the final summary show the locks of one name
    # (combine.lock_label) in one row. Display only: the recording keeps
    # every lock, and `show` without -c lists them apart.
    combine_locks: bool = False


class CpuFigures(NamedTuple):
    """One CPU's line in the per-CPU totals, as `show --json`'s per_cpu
    entries add up: the live view and the final summary print the same."""

    # Acquisitions of the locks whose every acquisition is traced (mmap_lock,
    # --locks): the table's `acq`. Contention-only locks have none.
    acquisitions: int = 0
    # Contended waits on every lock: contended acquisitions of the former,
    # lock:contention_* waits of the rest (spinlocks, mutexes, ...). None:
    # not known, lock:contention_* was not traced (--no-contention).
    contended: int | None = 0
    wait_ns: int = 0


@dataclass
class LiveState:
    """What a live view gets every interval."""

    elapsed_s: float
    target: str
    rows: list[dict]
    errors: dict[str, int]
    events: int
    cpus: int
    more_rows: int = 0  # locks left out of `rows` (not the busiest)
    cpu_totals: dict[int, CpuFigures] | None = None  # over every lock
    threshold_ns: int | None = None  # events: waits and holds at least this long


def in_cpu_totals(mode: str | None) -> bool:
    """Does a row of this mode count toward the per-CPU line? Not a lock
    spec's sum row: its calls are no acquisitions, and its time lies inside
    the lock's write wait (the report's per-CPU panel leaves it out as
    well). The live view's line (session.cpu_totals) and the summary's
    (render.add_cpu_totals) both ask."""
    return mode != "sum"
