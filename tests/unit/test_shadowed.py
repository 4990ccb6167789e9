"""One acquisition seen by two probe families is counted once
(aggregate.shadowed): by the summary, the live view's per-CPU line, the
report and compare alike.

* A kernel lock spec (`--locks rwsem`, kprobes on down_read/up_read) sees
  every mmap_lock acquisition the mmap_lock tracepoints see: mmap_read_lock
  calls down_read between them. The summary added both (200 acquisitions
  for 100), the report took one.
* A spec-probed kernel lock that is also contended: lock:contention_* sees
  the spec's contended waits again. The summary took the spec's, the report
  and compare's histograms added both.
* A spec's sum rows (calls of its sum function) are no acquisitions: the
  live per-CPU line left them out until their rows were freed from the
  kernel map, then added them back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboards import frames
from profiler import aggregate, compare, schema, session

from .helpers import EMPTY_CALLERS, flat_fields, header_structs, interval_row, intervals_frame

SLOTS = schema.const("LP_HIST_SLOTS")
READ, WRITE = schema.const("LP_LCB_READ"), schema.const("LP_LCB_WRITE")
SUM = WRITE | schema.const("LP_F_SUM")
MMAP, SPEC = schema.const("LP_SRC_MMAP_LOCK"), schema.const("LP_SRC_SPEC")
CONTENTION = schema.const("LP_SRC_CONTENTION")
FAMILIES = ["mmap_lock", "contention", "lockspec"]
MM_LOCK = 0xFFFF888100000100  # a process's mmap_lock
I_RWSEM = 0xFFFF888123450000  # an inode's rwsem: no mmap_lock


def _slots(counts: dict[int, int]) -> list[int]:
    return [counts.get(i, 0) for i in range(SLOTS)]


def _mmap_lock_seen_twice() -> tuple[pd.DataFrame, pd.DataFrame]:
    """100 mmap_read_lock() calls: the mmap_lock tracepoints' row and the
    rwsem spec's, on one lock."""
    figures = dict(
        acquisitions=100, releases=100,
        wait_count=100, wait_total_ns=30_000, wait_running_max_ns=400,
        wait_slots=_slots({9: 100}),
        hold_count=100, hold_total_ns=200_000, hold_running_max_ns=3000,
        hold_slots=_slots({11: 100}),
    )  # fmt: skip
    rows = [interval_row(MM_LOCK, READ, source, 0, **figures) for source in (MMAP, SPEC)]
    frame = intervals_frame(rows)
    locks = aggregate.name_locks(
        frame, {MM_LOCK: (4242, "app")}, EMPTY_CALLERS, {}, spec_class="rwsem"
    )
    return frame, locks


def _spec_lock_also_contended() -> tuple[pd.DataFrame, pd.DataFrame]:
    """50 down_write() calls of a spec, 10 of them contended for ~1 ms,
    which lock:contention_* sees too."""
    rows = [
        interval_row(
            I_RWSEM, WRITE, SPEC, 0,
            acquisitions=50, releases=50, contended=10,
            wait_count=50, wait_total_ns=10_012_000, wait_running_max_ns=1_200_000,
            wait_slots=_slots({9: 40, 20: 10}),
        ),
        interval_row(
            I_RWSEM, WRITE, CONTENTION, 0,
            contended=10, wait_count=10, wait_total_ns=9_900_000,
            wait_running_max_ns=1_190_000, wait_slots=_slots({20: 10}),
        ),
    ]  # fmt: skip
    frame = intervals_frame(rows)
    return frame, aggregate.name_locks(frame, {}, EMPTY_CALLERS, {}, spec_class="rwsem")


def _report_totals(frame: pd.DataFrame, locks: pd.DataFrame) -> pd.Series:
    keys = ["lock", "flags", "source", "lock_class", "mode"]
    merged = frame.merge(locks[keys], on=["lock", "flags", "source"])
    return frames._without_sum(frames._drop_double_counted(merged, []))[
        ["acquisitions", "wait_total_ns", "wait_count"]
    ].sum()


def test_the_rule():
    frame = pd.DataFrame(
        {
            "lock": [1, 1, 1, 2, 2, 3, 3],
            "mode": ["read", "read", "read", "write", "write", "read", "write"],
            "source": [MMAP, SPEC, CONTENTION, SPEC, CONTENTION, CONTENTION, SPEC],
        }
    )
    assert aggregate.shadowed(frame).tolist() == [False, True, True, False, True, False, False]
    assert aggregate.shadowed(frame, contention=False).tolist() == [False, True] + [False] * 5
    assert aggregate.shadowed(frame.iloc[:0]).tolist() == []


def test_an_mmap_lock_seen_by_a_kernel_spec_is_counted_once_everywhere():
    frame, locks = _mmap_lock_seen_twice()
    (row,) = aggregate.summary_rows(frame, locks, FAMILIES)
    assert row["lock_class"] == "mmap_lock"
    assert row["acquisitions"] == 100 and row["releases"] == 100
    assert row["wait_ns"]["count"] == 100 and row["wait_ns"]["total"] == 30_000
    assert row["hold_ns"]["count"] == 100
    assert sum(cpu["acquisitions"] for cpu in row["per_cpu"]) == 100
    report = _report_totals(frame, locks)
    assert report["acquisitions"] == 100 and report["wait_total_ns"] == 30_000


def test_a_spec_locks_contended_waits_are_counted_once_everywhere():
    frame, locks = _spec_lock_also_contended()
    (row,) = aggregate.summary_rows(frame, locks, FAMILIES)
    assert row["acquisitions"] == 50 and row["wait_ns"]["total"] == 10_012_000
    assert row["contended_wait_ns"]["total"] == 9_900_000  # kept apart, as the distribution
    report = _report_totals(frame, locks)
    assert report["wait_total_ns"] == 10_012_000 and report["wait_count"] == 50
    labels = {I_RWSEM: ("rwsem", "rwsem")}
    hists = compare._histograms(frame, locks, labels)
    assert hists[("rwsem", "rwsem", "write")]["wait"].sum() == 50


def _snapshot_row(columns: list[str], acquisitions: int, wait_ns: int) -> np.ndarray:
    values = np.zeros((1, len(columns)), dtype=np.uint64)
    values[0, columns.index("acquisitions")] = acquisitions
    values[0, columns.index("wait.count")] = acquisitions
    values[0, columns.index("wait.total_ns")] = wait_ns
    return values


def test_the_per_cpu_line_counts_neither_a_spec_row_on_an_mmap_lock_nor_sum_calls():
    columns = flat_fields(header_structs(), "lp_stats")
    rows = {
        (MM_LOCK, READ, MMAP, 0): _snapshot_row(columns, 100, 30_000),
        (MM_LOCK, READ, SPEC, 1): _snapshot_row(columns, 100, 30_000),
        (I_RWSEM, WRITE, SPEC, 2): _snapshot_row(columns, 10, 1000),
        (I_RWSEM, SUM, SPEC, 3): _snapshot_row(columns, 8, 400),
    }
    live = session.cpu_totals(rows, columns)
    assert (live[0].acquisitions, live[0].wait_ns) == (110, 31_000)
    # Every row retired, then freed from the kernel map: their figures stay
    # in the line, the same ones.
    state = session._Collected()
    state.previous = dict(rows)
    session._forget_freed(state, {key[3]: key[:3] for key in rows})
    freed = session.cpu_totals({}, columns, state.retired_totals)
    assert (freed[0].acquisitions, freed[0].wait_ns) == (110, 31_000)


def test_the_reports_row_count_of_a_cut_summary_counts_sum_rows():
    """The report's summary of the busiest locks says how many rows there
    are in all: a spec's sum rows are rows of `show` too."""
    from profiler.recording import Recording

    rows = [
        interval_row(I_RWSEM, WRITE, SPEC, 0, acquisitions=10, wait_count=10, wait_total_ns=50),
        interval_row(I_RWSEM, SUM, SPEC, 0, acquisitions=8, wait_count=8, wait_total_ns=40),
        interval_row(MM_LOCK, READ, MMAP, 0, acquisitions=5, wait_count=5, wait_total_ns=9_000),
    ]
    frame = intervals_frame(rows)
    locks = aggregate.name_locks(
        frame, {MM_LOCK: (4242, "app")}, EMPTY_CALLERS, {}, spec_class="rwsem"
    )
    rec = Recording(meta={"families": FAMILIES, "cpus": 1}, intervals=frame, locks=locks)
    everything = frames.summary_frame(rec)
    assert len(everything) == 3
    top = frames.summary_frame(rec, max_locks=1)
    assert len(top) == 1 and top.attrs["total_rows"] == 3
