"""From kernel snapshots to interval tables, and from those to summary rows.

Everything here is a pure function of plain data (numpy arrays, DataFrames),
so reports and comparisons work on recordings without root.

Units: every *_ns column is nanoseconds; *_slots columns are log2 histograms
(see profiler/hist.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import numpy as np
import pandas as pd

from profiler import hist, schema
from profiler.options import SORT_KEYS

# Scalar columns of an interval row (from struct lp_stats), in order.
COUNTER_COLUMNS = ["acquisitions", "contended", "releases", "downgrades", "failures"]
HIST_SCALARS = ["count", "total_ns", "max_ns"]
KEY_COLUMNS = ["lock", "flags", "source"]


def _hist_columns(h: str) -> list[str]:
    return [f"{h}_count", f"{h}_total_ns", f"{h}_max_ns", f"{h}_running_max_ns", f"{h}_slots"]


INTERVAL_COLUMNS = [
    "interval",
    "t_s",
    *KEY_COLUMNS,
    "cpu",
    *COUNTER_COLUMNS,
    *_hist_columns("wait"),
    *_hist_columns("hold"),
]
# Maxima of an interval row. The kernel keeps one running maximum per lock,
# mode and CPU, and a maximum cannot be differenced, so:
#   {wait,hold}_running_max_ns: the maximum since collection started, up to the
#       end of this interval, on this CPU (always known; an upper bound of the
#       interval's own maximum);
#   {wait,hold}_max_ns: the maximum of this interval's samples on this CPU
#       where that is known, else null (pandas <NA>). It is known when the
#       running maximum rose during the interval (the sample that raised it is
#       the interval's largest), or when every sample so far was 0 ns. When
#       the running maximum did not rise, the interval's maximum is somewhere
#       in [0, running max] and is left null rather than guessed; samples over
#       --threshold are in the events table with their exact durations.
INTERVAL_MAX_COLUMNS = ["wait_max_ns", "hold_max_ns"]
# The histogram columns: (rows, slots) arrays in records, lists in frames.
SLOT_COLUMNS = ("wait_slots", "hold_slots")
RUNNING_MAX_COLUMNS = ["wait_running_max_ns", "hold_running_max_ns"]


# The lp_stats columns whose deltas say whether a CPU had activity in an
# interval (it gets a row when they do not sum to zero).
_ACTIVITY_COLUMNS = ["wait.count", "hold.count", "failures"]


_INT64_MAX = 2**63 - 1


def interval_maxima(
    running_before: np.ndarray, running_now: np.ndarray, samples: np.ndarray
) -> np.ndarray:
    """The maximum of each interval's samples, from the running maximum at
    its start and end and the number of samples in it; UNKNOWN_MAX where
    unknowable (an int64 array)."""
    known = np.full(np.shape(running_now), UNKNOWN_MAX, dtype=np.int64)
    # every sample so far took 0 ns
    known[(running_now == 0) & (samples > 0)] = 0
    # The sample that raised it is the interval's largest; one over 2**63-1
    # is a corrupt sample (see lp_contention_end), not a figure.
    raised = (running_now > running_before) & (running_now <= _INT64_MAX)
    known[raised] = running_now[raised]
    return known


def delta_records(
    previous: dict[tuple[int, int, int, int], np.ndarray],
    current: dict[tuple[int, int, int, int], np.ndarray],
    columns: list[str],
    interval: int,
    t_s: float,
) -> np.ndarray:
    """Per-CPU deltas between two cumulative snapshots keyed by (lock, flags,
    source, index), as interval records (interval_record_dtype()): one per
    (lock, flags, source, cpu) whose wait.count, hold.count and failures
    deltas do not sum to zero, in the order of current's keys, then by cpu.
    A key held at two indexes (a retired row and its successor) gives one
    record, where its first one would be (_merged_records). Counters, sums
    and histogram slots are exact deltas, signed (a uint64 counter that went
    backwards gives a negative delta, not one >= 2**63 that no int64 field
    holds); *_running_max_ns is the maximum since the start, capped at
    2**63-1 (a corrupt ~2**64 sample must not fail the recording), and
    *_max_ns the interval's own maximum where known, else UNKNOWN_MAX (see
    INTERVAL_MAX_COLUMNS). Every array of the snapshots has the same shape
    (CPUs, columns): ValueError if not.

    numpy throughout (bench/cpus.py): per lock row, a few array calls (its
    activity columns, then its active CPUs' rows); nothing per (lock row,
    CPU) in Python. Only the rows of active CPUs are copied whole: with
    hundreds of CPUs, most of a snapshot (64 MB at most, profiler/bpf.py
    probe_cflags) is CPUs that did not touch the lock."""
    keys = list(current)
    if not keys:
        return np.zeros(0, dtype=interval_record_dtype())
    now = list(current.values())
    unseen = np.zeros_like(now[0])  # a key new since previous counts from zero
    before = [previous.get(key, unseen) for key in keys]
    if len({values.shape for values in now} | {values.shape for values in before}) > 1:
        raise ValueError("snapshot rows of different numbers of CPUs")
    cpus = len(unseen)
    layout = _DeltaLayout.of(columns)
    # Which CPUs of which keys had activity: three columns of each row.
    change = np.concatenate([values.take(layout.activity, axis=1) for values in now])
    was = np.concatenate([values.take(layout.activity, axis=1) for values in before])
    change = _signed(np.subtract(change, was, out=change))
    key_at, cpu = np.divmod(np.flatnonzero(change.sum(axis=1)), cpus)
    del change, was
    if not len(cpu):
        return np.zeros(0, dtype=interval_record_dtype())
    starts = np.flatnonzero(np.r_[True, key_at[1:] != key_at[:-1]])  # of each key's CPUs
    ends = np.r_[starts[1:], len(key_at)]
    runs = list(zip(key_at[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))
    # The active CPUs' rows, now and before, each key's taken into place.
    now_rows = np.empty((len(cpu), len(columns)), dtype=np.uint64)
    before_rows = np.empty_like(now_rows)
    for k, start, end in runs:
        at = cpu[start:end]
        now[k].take(at, axis=0, out=now_rows[start:end], mode="clip")
        before[k].take(at, axis=0, out=before_rows[start:end], mode="clip")
    records = layout.records(now_rows, before_rows)
    idents = np.array([keys[k][:3] for k, _start, _end in runs], dtype=np.uint64)
    for i, name in enumerate(KEY_COLUMNS):
        records[name] = np.repeat(idents[:, i], ends - starts)
    records["cpu"] = cpu
    records["interval"] = interval
    records["t_s"] = t_s
    if len({key[:3] for key in keys}) < len(keys):
        records = _merged_records(records)
    return records


@dataclass(frozen=True)
class _DeltaLayout:
    """Where delta_records() finds each interval column in a flattened
    lp_stats row."""

    activity: np.ndarray  # _ACTIVITY_COLUMNS
    differenced: dict[str, int | slice]  # counters, counts, sums, slots
    running: list[int]  # {wait,hold}.max_ns

    @classmethod
    def of(cls, columns: list[str]) -> _DeltaLayout:
        where: dict[str, int | slice] = {c: columns.index(c) for c in COUNTER_COLUMNS}
        for h in ("wait", "hold"):
            where[f"{h}_count"] = columns.index(f"{h}.count")
            where[f"{h}_total_ns"] = columns.index(f"{h}.total_ns")
            first = columns.index(f"{h}.slots[0]")  # a flattened array: consecutive
            where[f"{h}_slots"] = slice(first, first + schema.const("LP_HIST_SLOTS"))
        return cls(
            activity=np.array([columns.index(c) for c in _ACTIVITY_COLUMNS], dtype=np.intp),
            differenced=where,
            running=[columns.index(f"{h}.max_ns") for h in ("wait", "hold")],
        )

    def records(self, now: np.ndarray, before: np.ndarray) -> np.ndarray:
        """The records of rows now and before (before is overwritten with
        the deltas): all but their key, cpu, interval and t_s."""
        records = np.zeros(len(now), dtype=interval_record_dtype())
        running = now[:, self.running]  # running, not differenced
        running_before = before[:, self.running]
        delta = _signed(np.subtract(now, before, out=before))
        for name, index in self.differenced.items():
            records[name] = delta[:, index]
        for i, h in enumerate(("wait", "hold")):
            records[f"{h}_running_max_ns"] = np.minimum(running[:, i], _INT64_MAX)
            records[f"{h}_max_ns"] = interval_maxima(
                running_before[:, i], running[:, i], records[f"{h}_count"]
            )
        return records


def _signed(difference: np.ndarray) -> np.ndarray:
    """A uint64 difference (wrapped) as the signed delta it is: a counter
    that went backwards gives a negative delta, not one >= 2**63."""
    return difference.view(np.int64)


# Added when the records of a key held at two indexes are merged.
_MERGE_SUMMED = [
    *COUNTER_COLUMNS,
    *(f"{h}_{name}" for h in ("wait", "hold") for name in ("count", "total_ns", "slots")),
]


def _merged_records(records: np.ndarray) -> np.ndarray:
    """One record per (lock, flags, source, cpu), where its first record
    is: counts, sums and slots added, running maxima the larger, interval
    maxima the larger of those with samples (unknown if either of those is
    unknown). A key's records are folded into its first one in their order
    (three indexes of one key fold as (a + b) + c)."""
    idents = np.column_stack([records[name].astype(np.uint64) for name in _COLLAPSE_KEY])
    _unique, first, inverse = np.unique(idents, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)  # each record's ident
    by_first = np.argsort(first)
    position = np.empty_like(by_first)  # of each ident's merged record: by first record
    position[by_first] = np.arange(len(first))
    into = position[inverse]
    merged = records[first[by_first]]
    later = np.flatnonzero(np.arange(len(records)) != first[inverse])
    while len(later):
        # The next record of each ident still to fold: at most one each.
        _seen, next_of_each = np.unique(into[later], return_index=True)
        step = later[next_of_each]
        _fold(merged, into[step], records[step])
        later = np.delete(later, next_of_each)
    return merged


def _fold(merged: np.ndarray, at: np.ndarray, rows: np.ndarray) -> None:
    """Merge rows into merged[at] (at: distinct positions)."""
    for h in ("wait", "hold"):
        count, maximum, running = f"{h}_count", f"{h}_max_ns", f"{h}_running_max_ns"
        mine, theirs = merged[maximum][at], rows[maximum]
        both = np.where(
            (mine == UNKNOWN_MAX) | (theirs == UNKNOWN_MAX), UNKNOWN_MAX, np.maximum(mine, theirs)
        )
        merged[maximum][at] = np.where(
            rows[count] == 0, mine, np.where(merged[count][at] == 0, theirs, both)
        )
        merged[running][at] = np.maximum(merged[running][at], rows[running])
    for name in _MERGE_SUMMED:
        merged[name][at] += rows[name]


def _interval_dtype(column: str) -> str:
    if column.endswith("_slots"):
        return "object"
    if column in INTERVAL_MAX_COLUMNS:
        return "Int64"  # nullable: null where the interval's maximum is unknown
    return {"t_s": "float64", "lock": "uint64"}.get(column, "int64")


def empty_intervals() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_interval_dtype(c)) for c in INTERVAL_COLUMNS})


# -- interval rows as fixed-size records (spilled during collection) ---------

# Where an interval's maximum is unknown (null in the frame).
UNKNOWN_MAX = -1


def interval_record_dtype() -> np.dtype:
    """One interval row as a fixed-size record: about 730 bytes, against
    ~1.2 KB as a dict, and it can be spilled to disk (profiler/spool.py)."""
    slots = schema.const("LP_HIST_SLOTS")
    fields: list[tuple] = []
    for column in INTERVAL_COLUMNS:
        if column.endswith("_slots"):
            fields.append((column, np.int64, (slots,)))
        else:
            fields.append((column, {"t_s": np.float64, "lock": np.uint64}.get(column, np.int64)))
    return np.dtype(fields)


def records_frame(records: np.ndarray) -> pd.DataFrame:
    """The interval frame of records: one column per INTERVAL_COLUMNS, a
    null *_max_ns where the record holds UNKNOWN_MAX."""
    if len(records) == 0:
        return empty_intervals()
    columns: dict[str, object] = {}
    for column in INTERVAL_COLUMNS:
        values = records[column]
        if column.endswith("_slots"):
            # Row views of the records' (rows, slots) array, not lists of
            # Python ints (27M of them for a 2-hour run's 334k rows).
            columns[column] = slot_views(values)
        elif column in INTERVAL_MAX_COLUMNS:
            columns[column] = known_maxima(values)
        else:
            columns[column] = values.astype(_interval_dtype(column), copy=False)
    return pd.DataFrame(columns, columns=INTERVAL_COLUMNS)


def slot_views(matrix: np.ndarray) -> pd.Series:
    """A *_slots column from a (rows, slots) array: one row view each."""
    column = np.empty(len(matrix), dtype=object)
    column[:] = list(matrix)
    return pd.Series(column, dtype=object)


# collapse_intervals(): the key of a collapsed row, and the columns kept as
# their largest value (the rest are added).
_COLLAPSE_KEY = [*KEY_COLUMNS, "cpu"]
_COLLAPSE_LARGEST = (*RUNNING_MAX_COLUMNS, "interval", "t_s")
# The columns collapsed (an interval's own maxima are not).
_COLLAPSED_COLUMNS = [c for c in INTERVAL_COLUMNS if c not in INTERVAL_MAX_COLUMNS]


def collapse_intervals(intervals: pd.DataFrame) -> pd.DataFrame:
    """One row per (lock, flags, source, cpu) for the whole of intervals:
    counts, sums and slots added, running maxima the largest, `interval` and
    t_s the last. The summary (summary_rows) of the result is that of
    intervals; the interval maxima are left unknown (null)."""
    if intervals.empty:
        return empty_intervals()
    return _arrays_frame(_collapse_arrays(_interval_arrays(intervals)))


def _interval_arrays(intervals: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns collapse_intervals() keeps, as arrays ((rows, slots) for
    the histograms)."""
    slots = {name: _slots_matrix(intervals[name]) for name in SLOT_COLUMNS}
    return {**scalar_arrays(intervals), **slots}


def scalar_arrays(intervals: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns collapse_intervals() keeps but the histograms, as arrays."""
    return {
        name: intervals[name].to_numpy() for name in _COLLAPSED_COLUMNS if name not in SLOT_COLUMNS
    }


def _collapse_arrays(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reduce the rows of each key. Consumes columns: each column is
    dropped once reduced, so that the input and output are not held whole
    at once (a 2-hour recording's totals are ~130k rows of 80 slots)."""
    keys = pd.MultiIndex.from_arrays([columns[name] for name in _COLLAPSE_KEY])
    codes, _uniques = keys.factorize()
    del keys
    # Rows sorted by key, then each run of one key reduced in one call.
    order, starts = _runs(codes)
    out = {}
    for name in list(columns):
        values = columns.pop(name)
        if name in _COLLAPSE_KEY:
            out[name] = values[order[starts]]
        else:
            reduce = np.maximum if name in _COLLAPSE_LARGEST else np.add
            out[name] = _reduce_runs(reduce, values, order, starts)
    return out


def _runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the rows sorted by code (stable), and where in
    order each code's run of rows starts."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    return order, starts


# Rows taken at once, in their runs' order, by _run_chunks(): a 2-hour
# recording's histogram column (~40 MB) was copied whole in that order.
RUN_CHUNK_ROWS = 8192


def _run_chunks(
    order: np.ndarray, starts: np.ndarray
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """The runs of _runs() in chunks of about RUN_CHUNK_ROWS rows (a longer
    run is a chunk of its own): (first run, end of its runs, the chunk's rows
    from order, where each of its runs starts in them)."""
    firsts = np.searchsorted(starts, np.arange(0, len(order), RUN_CHUNK_ROWS))
    bounds = np.unique(np.r_[firsts, len(starts)]).tolist()
    run_rows = np.r_[starts, len(order)]  # where each run begins, and the end
    for first, last in pairwise(bounds):
        begin = run_rows[first]
        yield first, last, order[begin : run_rows[last]], starts[first:last] - begin


def _reduce_runs(reduce: np.ufunc, values: np.ndarray, order: np.ndarray, starts: np.ndarray):
    """reduce.reduceat(values[order], starts), a chunk of runs at a time."""
    out = np.empty((len(starts), *values.shape[1:]), dtype=values.dtype)
    for first, last, rows, run_starts in _run_chunks(order, starts):
        out[first:last] = reduce.reduceat(values[rows], run_starts, axis=0)
    return out


def _arrays_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = len(columns["lock"])
    frame = pd.DataFrame(
        {
            name: slot_views(columns[name])
            if name.endswith("_slots")
            else pd.array([pd.NA] * rows, dtype="Int64")
            if name in INTERVAL_MAX_COLUMNS
            else columns[name]
            for name in INTERVAL_COLUMNS
        },
        columns=INTERVAL_COLUMNS,
    )
    return frame.astype({name: _interval_dtype(name) for name in INTERVAL_COLUMNS})


class IntervalTotals:
    """collapse_intervals() of a table given a part at a time. What is kept
    is collapsed again whenever it has grown past its last collapse, so
    memory follows the distinct locks and CPUs, not the rows."""

    def __init__(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []
        self._collapsed_rows = 0  # rows of _parts[0] at the last collapse

    def add(self, intervals: pd.DataFrame) -> None:
        if not intervals.empty:
            self._add(_interval_arrays(intervals))

    def add_arrays(self, columns: dict[str, np.ndarray]) -> None:
        """add() of a table given as its collapsed columns' arrays (the
        histograms as (rows, slots) uint64 arrays)."""
        if len(columns["lock"]):
            self._add({name: columns[name] for name in _COLLAPSED_COLUMNS})

    def add_records(self, records: np.ndarray) -> None:
        """add() of spooled interval records (interval_record_dtype()), from
        their arrays as they are."""
        if len(records):
            self._add({name: records[name] for name in _COLLAPSED_COLUMNS})

    def _add(self, columns: dict[str, np.ndarray]) -> None:
        self._parts.append(_collapse_arrays(columns))
        kept = sum(len(part["lock"]) for part in self._parts)
        if kept - self._collapsed_rows > max(
            4 * len(self._parts[-1]["lock"]), self._collapsed_rows
        ):
            self._collapse()

    def _collapse(self) -> None:
        if len(self._parts) > 1:
            # Column by column, each part's column dropped once joined.
            joined = {
                name: np.concatenate([part.pop(name) for part in self._parts])
                for name in list(self._parts[0])
            }
            self._parts = [_collapse_arrays(joined)]
        self._collapsed_rows = len(self._parts[0]["lock"]) if self._parts else 0

    def result(self) -> pd.DataFrame:
        self._collapse()
        return _arrays_frame(self._parts[0]) if self._parts else empty_intervals()


def known_maxima(values: np.ndarray):
    """Interval maxima as a nullable Int64 array: UNKNOWN_MAX becomes null."""
    known = pd.array(values, dtype="Int64")
    known[values == UNKNOWN_MAX] = pd.NA
    return known


def interval_maxima_from_running(intervals: pd.DataFrame) -> pd.DataFrame:
    """*_max_ns (per-interval, where known) from *_running_max_ns, for interval
    tables that only have the running maxima (schema 1 recordings). A key and
    CPU with no row in an interval had no sample there, so each row's running
    maximum at the interval's start is that of the key and CPU's previous row."""
    frame = intervals.copy()
    order = frame.sort_values("interval", kind="stable")
    groups = order.groupby([*KEY_COLUMNS, "cpu"], sort=False)
    for h in ("wait", "hold"):
        running = order[f"{h}_running_max_ns"].to_numpy()
        before = groups[f"{h}_running_max_ns"].shift(1, fill_value=0).to_numpy()
        maxima = interval_maxima(before, running, order[f"{h}_count"].to_numpy())
        frame[f"{h}_max_ns"] = pd.Series(known_maxima(maxima), index=order.index, dtype="Int64")
    ordered = [c for c in INTERVAL_COLUMNS if c in frame.columns]
    return frame[ordered + [c for c in frame.columns if c not in ordered]]


# -- naming locks -------------------------------------------------------------

# The locks table: one row per (lock, flags, source). `lock` is a lock id
# (profiler/lockids.py): the address, except for the second and later
# processes on one mm address, whose address is in `address`.
LOCK_COLUMNS = [
    *KEY_COLUMNS,
    "address",
    "lock_class",
    "mode",
    "name",
    "owner_pid",
    "owner_comm",
]

# Frames inside the locking primitives themselves: the caller is the first
# frame below them (as perf lock contention skips them).
_LOCK_INTERNALS = (
    "__mutex_lock",
    "mutex_lock",
    "__rwsem",
    "rwsem_",
    "down_read",
    "down_write",
    "up_read",
    "up_write",
    "_raw_",
    "__pv_queued",
    "queued_",
    "native_queued",
    "percpu_down",
    "__percpu_down",
    "percpu_rwsem",
    "rt_mutex",
    "rtlock",
    "__down",
    "down",
    "mmap_read_lock",
    "mmap_write_lock",
    "lock_mm_and_find_vma",
    "__lock_",
    "schedule",
    "__schedule",
    "preempt_schedule",
)


def caller_of(frames: list[str]) -> str | None:
    """First frame that is not a locking primitive, or None."""
    for frame in frames:
        function = frame.split("+", 1)[0]
        if not function.startswith(_LOCK_INTERNALS):
            return frame
    return frames[-1] if frames else None


def name_locks(
    keys: pd.DataFrame,
    owners: dict[int, tuple[int, str]],
    callers: pd.DataFrame,
    stacks: dict[int, list[str]],
    data_symbols: dict[int, str] | None = None,
    spec_class: str = "lockspec",
    addresses: dict[int, int] | None = None,
) -> pd.DataFrame:
    """One row per (lock, flags, source): class, mode and a human name.

    owners maps a lock id to its owning (pid, comm). An rwsem that is some
    mm's mmap_lock is named mmap_lock (with the owning pid). Others: a
    kallsyms data symbol if one starts at the address, else the top
    contending caller (function+offset, top_callers) and the address, else
    the class and the address. addresses maps the
    lock ids that are not their own address (lockids.py) to it.
    """
    data_symbols = data_symbols or {}
    addresses = addresses or {}
    top_caller = top_callers(callers, stacks)
    unique_keys = keys[KEY_COLUMNS].drop_duplicates()
    # A lock the mmap_lock tracepoints fired on is an mmap_lock even when its
    # owner was never learned (owner map full, or only foreign tasks took it).
    seen_as_mmap = {
        int(lock)
        for lock in unique_keys.loc[
            unique_keys["source"] == schema.const("LP_SRC_MMAP_LOCK"), "lock"
        ]
    }
    rows = []
    for lock, flags, source in unique_keys.itertuples(index=False):
        lock_class, mode = schema.classify(int(source), int(flags))
        owner_pid, owner_comm = owners.get(int(lock), (None, None))
        if lock_class == "rwsem" and (owner_pid is not None or int(lock) in seen_as_mmap):
            lock_class = "mmap_lock"
        if lock_class == "lockspec":
            lock_class = spec_class  # a lock spec's functions: the spec names the class
        if lock_class == "mmap_lock":
            name = "mmap_lock"
        elif int(source) == schema.const("LP_SRC_SPEC"):
            symbol = data_symbols.get(int(lock))
            name = symbol or f"{lock_class} {int(lock):#x}"
        elif int(lock) in data_symbols:
            name = data_symbols[int(lock)]
        else:
            caller = top_caller.get(int(lock))
            name = f"{caller} ({int(lock):#x})" if caller else f"{lock_class} {int(lock):#x}"
        rows.append(
            {
                "lock": int(lock),
                "flags": int(flags),
                "source": int(source),
                "address": addresses.get(int(lock), int(lock)),
                "lock_class": lock_class,
                "mode": mode,
                "name": name,
                "owner_pid": owner_pid,
                "owner_comm": owner_comm,
            }
        )
    frame = pd.DataFrame(rows, columns=LOCK_COLUMNS)
    frame["lock"] = frame["lock"].astype("uint64")
    frame["address"] = frame["address"].astype("uint64")
    return frame


def top_callers(callers: pd.DataFrame, stacks: dict[int, list[str]]) -> dict[int, str]:
    """lock -> its caller (caller_of its stack) with the most contended wait
    time, summed over the stacks that share it. Only waits with a kernel
    stack can name a lock; the others (shorter than --stack-threshold, over
    --stack-rate, or not captured: stack_id < 0) are left out. They are not
    a rival caller: on a busy lock they hold most of the wait time, and
    picking the top row among them named no lock at all."""
    if callers.empty:
        return {}
    caller_of_stack = {
        int(stack_id): caller_of(stacks.get(int(stack_id), []))
        for stack_id in callers["stack_id"].unique()
    }
    named = callers.assign(caller=callers["stack_id"].map(caller_of_stack))
    named = named[named["caller"].notna()]
    if named.empty:
        return {}
    per_caller = named.groupby(["lock", "caller"], sort=False)["total_ns"].sum().reset_index()
    best = per_caller.sort_values("total_ns", ascending=False, kind="stable")
    best = best.drop_duplicates("lock")
    return {int(lock): str(name) for lock, name in zip(best["lock"], best["caller"], strict=True)}


# -- summary --------------------------------------------------------------------


_SUMMED = [*COUNTER_COLUMNS, "wait_count", "wait_total_ns", "hold_count", "hold_total_ns"]
_MAXED = ["wait_running_max_ns", "hold_running_max_ns"]


def _reduce(codes: np.ndarray, n: int, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sum (maximum for running maxima) each column's values over the rows
    sharing a code; 2-D columns (histogram slots) are summed row-wise."""
    if n == len(codes) and (codes == np.arange(n)).all():
        # One row per code, in order (a recording's collapsed totals, nearly
        # always): the sums are the rows themselves, not a copy of them.
        return {name: values.astype(np.uint64, copy=False) for name, values in columns.items()}
    out = {}
    for name, values in columns.items():
        acc = np.zeros((n, *values.shape[1:]), dtype=np.uint64)
        if name in _MAXED:
            np.maximum.at(acc, codes, values)
        else:
            np.add.at(acc, codes, values)
        out[name] = acc
    return out


def _slots_matrix(column: pd.Series) -> np.ndarray:
    """A *_slots column as one (rows, slots) uint64 array."""
    if column.empty:
        return np.zeros((0, schema.const("LP_HIST_SLOTS")), dtype=np.uint64)
    return _stacked(column.to_numpy().tolist())


def _stacked(histograms: list) -> np.ndarray:
    """Histograms (one or more; lists or arrays) as one (rows, slots) uint64
    array."""
    width = len(histograms[0])
    lengths = np.fromiter(map(len, histograms), dtype=np.int64, count=len(histograms))
    if not (lengths == width).all():
        raise ValueError("histograms of different lengths")
    # One concatenation of the rows (a C loop; np.stack reshaped each row
    # first, half of a 2-hour recording's summary time), shaped once.
    flat = np.concatenate(histograms).astype(np.uint64, copy=False)
    return flat.reshape(len(histograms), width)


def _scalar_columns(intervals: pd.DataFrame, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The summed and maximised columns of intervals at rows (positions), as
    uint64 arrays."""
    every_row = len(rows) == len(intervals) and (rows == np.arange(len(rows))).all()
    columns = {}
    for name in _SUMMED + _MAXED:
        values = intervals[name].to_numpy(dtype=np.uint64)
        columns[name] = values if every_row else values[rows]
    return columns


def _with_percentiles(
    totals: dict[str, np.ndarray], intervals: pd.DataFrame, rows: np.ndarray, codes: np.ndarray
) -> dict[str, np.ndarray]:
    """totals (one row per code) with each row's wait and hold p50 and p99,
    from the histograms of intervals at rows (positions) summed over the
    rows of each code (codes: one per row)."""
    for prefix in ("wait", "hold"):
        # The largest running maximum is the largest sample of the whole
        # collection (summaries cover whole recordings).
        largest = totals[f"{prefix}_running_max_ns"]
        column = intervals[f"{prefix}_slots"]
        percentiles = _percentiles_by_code(column, rows, codes, largest)
        totals[f"{prefix}_p50"], totals[f"{prefix}_p99"] = percentiles
    return totals


def _percentiles_by_code(
    column: pd.Series, rows: np.ndarray, codes: np.ndarray, largest: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The p50 and p99 of each code's histogram: the sum of column's at the
    rows of that code (every code from 0 up has rows). A chunk of codes at a
    time, their rows' histograms stacked only then: a 2-hour recording's
    two columns, stacked whole and then summed, were ~130 MB at once (its
    `show`'s peak), and the percentiles' arithmetic takes several float
    copies of what it is given."""
    order, starts = _runs(codes)
    cells = column.to_numpy()
    p50, p99 = np.empty(len(starts)), np.empty(len(starts))
    width = None
    for first, last, chunk, run_starts in _run_chunks(order, starts):
        stacked = _stacked(cells[rows[chunk]].tolist())
        if width not in (None, stacked.shape[1]):
            raise ValueError("histograms of different lengths")
        width = stacked.shape[1]
        sums = np.add.reduceat(stacked, run_starts, axis=0)
        p50[first:last] = hist.percentiles(sums, 0.50, largest[first:last])
        p99[first:last] = hist.percentiles(sums, 0.99, largest[first:last])
    return p50, p99


def _hist_at(totals: dict[str, np.ndarray], i: int, prefix: str) -> dict:
    return hist.summarize(
        int(totals[f"{prefix}_count"][i]),
        int(totals[f"{prefix}_total_ns"][i]),
        int(totals[f"{prefix}_running_max_ns"][i]),
        (),  # the percentiles are given
        p50=float(totals[f"{prefix}_p50"][i]),
        p99=float(totals[f"{prefix}_p99"][i]),
    )


# What _per_cpu_rows() reads.
_PER_CPU_COLUMNS = ("acquisitions", "contended", "wait_total_ns", "hold_total_ns")


def _per_cpu_rows(cpus: list[tuple[int, int]], totals: dict[str, np.ndarray], row: dict):
    """cpus: (cpu, row index in totals), sorted by cpu. A figure the lock's
    row does not know (None: a lock spec's contended waits, a sum row's
    holds, contended waits under --no-contention) is not known per CPU
    either: 0 there read as measured."""
    known = {
        "acquisitions": row["acquisitions"] is not None,
        "contended": row["contended"] is not None,
        "wait_total_ns": row["wait_ns"] is not None,
        "hold_total_ns": row["hold_ns"] is not None,
    }
    return [
        {"cpu": cpu}
        | {name: int(totals[name][i]) if known[name] else None for name in _PER_CPU_COLUMNS}
        for cpu, i in cpus
    ]


def summary_rows(intervals: pd.DataFrame, locks: pd.DataFrame, families: list[str]) -> list[dict]:
    """One summary dict per lock and mode (the `show --json` `locks` entries),
    busiest (by total wait) first: SummaryRows(...) built whole."""
    return list(SummaryRows(intervals, locks, families))


class SummaryRows:
    """The summary rows of intervals, built one at a time in their final
    order (iterate; len() is their number).

    Rows from the mmap_lock tracepoints (every acquisition) and from
    lock:contention_* (contended waits only) on the same lock and mode are
    merged: acquisitions, wait and hold come from the former, the contended
    wait distribution from the latter. Figures the attached probes cannot know
    are None.

    Vectorised: one pass sums every (lock, mode, family, cpu) group, a
    second sums those over CPUs (the live view does this every interval).
    The order and the reconciliation (still_held, the reader:writer ratio)
    come from those sums, so that no row need be built before it is used: a
    2-hour system-wide run has 78k rows (~175 MB as dicts), and the summary
    printed at its end shows 50, `show --json` writes one at a time.

    Until then it keeps arrays, one entry per row (a "pair": lock and mode),
    per family (lock, mode and whether its probes count every acquisition)
    or per CPU, and one identity per lock: dicts and tuples per pair and per
    CPU row were ~100 MB of a 2-hour recording's `show`, these ~27 MB.
    """

    def __init__(
        self,
        intervals: pd.DataFrame,
        locks: pd.DataFrame,
        families: list[str],
        sort: str = "wait_total",
    ):
        if sort not in SORT_KEYS:
            raise ValueError(f"sort key {sort!r} is not one of {', '.join(SORT_KEYS)}")
        self._families = families
        self._order = np.zeros(0, dtype=np.int64)  # pairs, largest sort key first
        if intervals.empty:
            return
        matched = _rows_with_mode(intervals, locks)
        if matched.empty:
            return
        self._identities = lock_identities(matched)
        rows = matched["row"].to_numpy()
        cpu_codes, cpu_keys = _cpu_keys(matched)
        del matched
        families_seen = self._set_totals(intervals, rows, cpu_codes, cpu_keys)
        self._set_pairs(families_seen)
        self._order = _largest_first(self._sort_key(sort))

    def _set_totals(
        self,
        intervals: pd.DataFrame,
        rows: np.ndarray,
        cpu_codes: np.ndarray,
        cpu_keys: pd.MultiIndex,
    ) -> pd.MultiIndex:
        """The sums of intervals at rows by CPU key (cpu_codes: each row's,
        into cpu_keys), and by family: those sums summed, with the
        percentiles of the histograms, which nothing else needs (the per-CPU
        rows need counts and sums only). Returns the families, in the order
        of cpu_keys."""
        per_cpu = _reduce(cpu_codes, len(cpu_keys), _scalar_columns(intervals, rows))
        family_of_cpu, families_seen = cpu_keys.droplevel(3).factorize()  # (lock, mode, mmap)
        assert isinstance(families_seen, pd.MultiIndex)
        totals = _reduce(family_of_cpu, len(families_seen), per_cpu)
        family_of_row = family_of_cpu[cpu_codes]
        self._totals = _with_percentiles(totals, intervals, rows, family_of_row)
        self._per_cpu = {name: per_cpu[name] for name in _PER_CPU_COLUMNS}
        self._cpus = cpu_keys.get_level_values(3).to_numpy(dtype=np.int64)
        self._cpu_rows, self._cpu_rows_start = _rows_by_family(
            self._cpus, family_of_cpu, len(families_seen)
        )
        return families_seen

    def _set_pairs(self, families_seen: pd.MultiIndex) -> None:
        """The (lock, mode) pairs of families_seen, in their order: each
        one's families, identity and figures."""
        pair_of_family, pairs = families_seen.droplevel(2).factorize()  # (lock, mode)
        assert isinstance(pairs, pd.MultiIndex)
        self._lock = pairs.get_level_values(0).to_numpy(dtype=np.uint64)
        mode_code, modes = pd.factorize(pairs.get_level_values(1))
        self._mode_code, self._modes = mode_code, list(modes)
        mmap = families_seen.get_level_values(2).to_numpy(dtype=bool)
        # Each pair's family of each kind (an index into _totals), or -1.
        self._m = _family_of_pair(pair_of_family, mmap, len(pairs))
        self._c = _family_of_pair(pair_of_family, ~mmap, len(pairs))
        self._read_pair, self._write_pair = (
            _pair_in_mode(self._lock, mode_code, self._modes, mode) for mode in ("read", "write")
        )
        self._identity = self._identities.positions(self._lock)  # of each pair
        mmap_class = self._identities.lock_class(self._identity) == "mmap_lock"
        summed = mode_code == (self._modes.index("sum") if "sum" in self._modes else -1)
        self._figures = _PairFigures.of(
            self._totals, self._m, self._c, mmap_class, summed, self._families
        )

    def _sort_key(self, sort: str) -> np.ndarray:
        """Each pair's figure that orders the rows (SORT_KEYS), as float64;
        -1 where the row does not know it (None in the row), which puts
        those rows last."""
        figures, totals = self._figures, self._totals
        if sort == "wait_total":
            return figures.wait_total.astype(np.float64)
        if sort == "contended":
            return np.where(figures.contended_known, figures.contended, -1.0)
        if sort == "acquisitions":
            return np.where(figures.counted, figures.acquisitions, -1.0)
        # The family a row's wait and hold figures come from (as _row has it).
        if sort.startswith("wait"):
            family = np.where(figures.counted, self._m, self._c)
        else:
            family = np.where(figures.released, self._m, -1)  # holds: not a sum's
        known = family >= 0
        at = np.where(known, family, 0)
        prefix = sort.split("_")[0]
        count = totals[f"{prefix}_count"][at].astype(np.float64)
        if not sort.endswith("_total"):
            # A row with no samples has a total (0) but no max or average
            # (null in the row), so it goes last for those keys only.
            known &= count > 0
        if sort.endswith("_max"):
            figure = totals[f"{prefix}_running_max_ns"][at].astype(np.float64)
        elif sort.endswith("_avg"):
            figure = totals[f"{prefix}_total_ns"][at] / np.maximum(count, 1.0)
        else:
            figure = totals[f"{prefix}_total_ns"][at].astype(np.float64)
        return np.where(known, figure, -1.0)

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[dict]:
        for pair in self._order.tolist():
            mode = self._modes[self._mode_code[pair]]
            row = self._row(int(self._lock[pair]), mode, pair)
            still_held, ratio = _reconciled(
                mode,
                self._figures.at(int(self._read_pair[pair])),
                self._figures.at(int(self._write_pair[pair])),
            )
            row["still_held"] = still_held
            row["reader_writer_ratio"] = ratio
            yield row

    def _row(self, lock: int, mode: str, pair: int) -> dict:
        """(lock, mode)'s summary dict, its counts from its figures."""
        m, c = _index_or_none(self._m[pair]), _index_or_none(self._c[pair])
        figures = self._figures.at(pair)
        assert figures is not None
        ident, totals = self._identities.at(int(self._identity[pair])), self._totals
        has_mmap = figures.acquisitions is not None  # as _PairFigures decided
        counted = has_mmap and mode != "sum"  # a sum function's "acquisitions" are calls
        row: dict = {
            "lock": ident.name,
            "lock_class": ident.lock_class,
            "mode": mode,
            "lock_addr": f"{ident.address:#x}",
            # Two processes' mmap_locks can share an address (one after the
            # other): the id tells them apart (profiler/lockids.py).
            "lock_id": f"{lock:#x}",
            "owner_pid": ident.owner_pid,
            "owner_comm": ident.owner_comm,
            "acquisitions": figures.acquisitions,
            "contended": figures.contended,
            "releases": figures.releases,
            "downgrades": figures.downgrades,
            "trylock_failures": (int(totals["failures"][m]) if m is not None else 0)
            if counted
            else None,
        }
        if has_mmap:
            row["wait_ns"] = _hist_at(totals, m, "wait") if m is not None else None
            row["hold_ns"] = _hist_at(totals, m, "hold") if m is not None and counted else None
        else:
            row["wait_ns"] = _hist_at(totals, c, "wait") if c is not None else None
            row["hold_ns"] = None
        row["contended_wait_ns"] = _hist_at(totals, c, "wait") if c is not None else None
        # Per CPU from the mmap_lock family's rows if it has any, else contention's.
        family = m if m is not None else c
        row["per_cpu"] = (
            _per_cpu_rows(self._cpus_of(family), self._per_cpu, row) if family is not None else []
        )
        return row

    def _cpus_of(self, family: int) -> list[tuple[int, int]]:
        """(cpu, index into _per_cpu) of the family's per-CPU rows, by cpu."""
        rows = self._cpu_rows[self._cpu_rows_start[family] : self._cpu_rows_start[family + 1]]
        return list(zip(self._cpus[rows].tolist(), rows.tolist(), strict=True))


def shadowed(frame: pd.DataFrame, by: tuple[str, ...] = (), contention: bool = True) -> np.ndarray:
    """Which of frame's rows (columns lock, mode, source and `by`) hold
    figures another probe family has for the same lock and mode (and by):

    * a lock spec's, where the mmap_lock tracepoints see the lock: a kernel
      spec's down_read runs inside mmap_read_lock, one acquisition seen by
      both (the tracepoints see downgrades and trylocks too);
    * with contention, lock:contention_*'s, where a family that counts every
      acquisition sees the lock: its contended waits are among those
      acquisitions' waits. The summary keeps them apart, as the contended
      wait distribution; the per-CPU totals, the report and compare's
      histograms leave them out.

    The one rule of the summary, the live view's per-CPU line, the report
    and compare: each adds up only the rows left."""
    mmap_source, spec_source = schema.every_acquisition_sources()
    source = frame["source"].to_numpy()
    if frame.empty:
        return np.zeros(0, dtype=bool)
    keys = ["lock", "mode", *by]
    seen = frame[keys].assign(_mmap=source == mmap_source, _spec=source == spec_source)
    has = seen.groupby(keys, sort=False, dropna=False)[["_mmap", "_spec"]].transform("any")
    has_mmap, has_spec = has["_mmap"].to_numpy(), has["_spec"].to_numpy()
    out = (source == spec_source) & has_mmap
    if contention:
        every = (source == mmap_source) | (source == spec_source)
        out |= ~every & (has_mmap | has_spec)
    return out


def _rows_with_mode(intervals: pd.DataFrame, locks: pd.DataFrame) -> pd.DataFrame:
    """Each row of intervals whose lock has a mode: its key and cpu, its
    position in intervals (`row`) and its locks row. Only those columns of
    intervals: merged whole, they were all copied. An inner join (in
    intervals' order): a left one gave the rows of locks with no locks row
    NaN addresses, which made the column float64 and rounded every kernel
    address in it (0xffff888100818138 -> 0xffff888100818000)."""
    keys = intervals[[*KEY_COLUMNS, "cpu"]].assign(row=np.arange(len(intervals)))
    merged = keys.merge(locks, on=KEY_COLUMNS, how="inner")
    merged = merged[merged["mode"].notna()]
    # A kernel lock spec's rows on an mmap_lock count its acquisitions again.
    return merged[~shadowed(merged, contention=False)]


def _cpu_keys(matched: pd.DataFrame) -> tuple[np.ndarray, pd.MultiIndex]:
    """Each of matched's rows' (lock, mode, mmap, cpu) key, as a code into
    the distinct keys (mmap: its family counts every acquisition)."""
    every_acquisition = list(schema.every_acquisition_sources())
    keys = pd.DataFrame(
        {
            "lock": matched["lock"].to_numpy(dtype=np.uint64),
            "mode": matched["mode"].to_numpy(),
            "mmap": matched["source"].isin(every_acquisition).to_numpy(),
            "cpu": matched["cpu"].to_numpy(dtype=np.int64),
        }
    )
    codes, distinct = pd.MultiIndex.from_frame(keys).factorize()
    assert isinstance(distinct, pd.MultiIndex)
    return codes, distinct


def _rows_by_family(
    cpus: np.ndarray, family_of_cpu: np.ndarray, families: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, starts): the per-CPU rows of family f are
    rows[starts[f]:starts[f + 1]], sorted by cpu (cpus: each row's)."""
    rows = np.lexsort((cpus, family_of_cpu))
    return rows, np.searchsorted(family_of_cpu[rows], np.arange(families + 1))


def _family_of_pair(pair_of_family: np.ndarray, chosen: np.ndarray, pairs: int) -> np.ndarray:
    """Each pair's chosen family (an index), or -1 if it has none."""
    out = np.full(pairs, -1, dtype=np.int64)
    out[pair_of_family[chosen]] = np.flatnonzero(chosen)
    return out


def _pair_in_mode(
    lock: np.ndarray, mode_code: np.ndarray, modes: list[str], mode: str
) -> np.ndarray:
    """For each pair, the pair of its lock in mode, or -1 if it has none."""
    if mode not in modes:
        return np.full(len(lock), -1, dtype=np.int64)
    in_mode = np.flatnonzero(mode_code == modes.index(mode))
    found = pd.Index(lock[in_mode]).get_indexer(lock)  # one pair per lock and mode
    return np.where(found >= 0, in_mode[found], -1)


def _index_or_none(index: np.integer) -> int | None:
    return int(index) if index >= 0 else None


def _largest_first(key: np.ndarray) -> np.ndarray:
    """Indexes by key, the largest first; ties in index order (as
    sorted(..., reverse=True) leaves them)."""
    backwards = np.argsort(key[::-1], kind="stable")[::-1]
    return len(key) - 1 - backwards


@dataclass(frozen=True)
class _RowFigures:
    acquisitions: int | None
    releases: int | None
    downgrades: int | None
    contended: int | None
    wait_total: int


@dataclass(frozen=True)
class _PairFigures:
    """The counts of every pair's row, which also order and reconcile the
    rows, as arrays (uint64), and where each is known: a figure the probes
    cannot know is None in the row."""

    acquisitions: np.ndarray
    releases: np.ndarray
    downgrades: np.ndarray
    contended: np.ndarray
    wait_total: np.ndarray
    counted: np.ndarray  # acquisitions known
    released: np.ndarray  # releases and downgrades known
    contended_known: np.ndarray

    @classmethod
    def of(
        cls,
        totals: dict[str, np.ndarray],
        m: np.ndarray,
        c: np.ndarray,
        mmap_class: np.ndarray,
        summed: np.ndarray,
        families: list[str],
    ) -> _PairFigures:
        """m, c: each pair's family of each kind (every acquisition, contended
        waits only), or -1; mmap_class: its lock is an mmap_lock; summed: its
        mode is a lock spec's sum."""

        def at(name: str, family: np.ndarray) -> np.ndarray:
            return np.where(family >= 0, totals[name][family], np.uint64(0))

        has_mmap = (m >= 0) | (mmap_class & ("mmap_lock" in families))
        wait = np.where(has_mmap, m, c)
        wait_total = at("wait_total_ns", wait)
        return cls(
            acquisitions=at("acquisitions", m),
            releases=at("releases", m),
            downgrades=at("downgrades", m),
            # An mmap_lock's contended waits are its mmap_lock rows' count.
            contended=np.where(has_mmap & mmap_class, at("contended", m), at("contended", c)),
            wait_total=np.where(at("wait_count", wait) > 0, wait_total, np.uint64(0)),
            counted=has_mmap,
            released=has_mmap & ~summed,
            contended_known=np.where(
                has_mmap, np.where(mmap_class, "contention" in families, c >= 0), True
            ),
        )

    def at(self, pair: int) -> _RowFigures | None:
        """The figures of a pair (-1: None)."""
        if pair < 0:
            return None

        def known(values: np.ndarray, known: np.ndarray) -> int | None:
            return int(values[pair]) if known[pair] else None

        return _RowFigures(
            known(self.acquisitions, self.counted),
            known(self.releases, self.released),
            known(self.downgrades, self.released),
            known(self.contended, self.contended_known),
            int(self.wait_total[pair]),
        )


def _reconciled(
    mode: str, read: _RowFigures | None, write: _RowFigures | None
) -> tuple[int | None, float | None]:
    """(still_held, reader:writer ratio) of a lock's row in mode, from the
    figures of its read and write rows. still_held: acquired, neither
    released nor downgraded by the end; the ratio is per lock (two
    processes' mmap_locks can share an address: the lock is their id)."""
    downgrades = (write.downgrades if write else None) or 0
    held: dict[str, int | None] = {}
    if write and write.acquisitions is not None:
        held["write"] = write.acquisitions - (write.releases or 0) - downgrades
    if read and read.acquisitions is not None:
        held["read"] = read.acquisitions + downgrades - (read.releases or 0)
    reads = read.acquisitions if read else None
    writes = write.acquisitions if write else None
    if reads is None or writes is None:
        reads = read.contended if read else None
        writes = write.contended if write else None
    ratio = (reads / writes) if reads is not None and writes else None
    # A lock spec's sum function has no readers or writers of its own.
    return held.get(mode), ratio if mode != "sum" else None


class _LockIdentity(NamedTuple):
    address: int
    lock_class: str
    name: str
    owner_pid: int | None
    owner_comm: str | None


class _LockIdentities:
    """Locks' identities (_LockIdentity), one column each: a tuple and a
    dict entry per lock, and a text of its own per row, took ~12 MB of a
    2-hour recording's `show`."""

    def __init__(self) -> None:
        self._locks: list[int] = []
        self._columns: tuple[list, ...] = tuple([] for _ in _LockIdentity._fields)
        self._texts: dict = {}  # one object per distinct text

    def add(self, lock: int, identity: _LockIdentity) -> None:
        self._locks.append(lock)
        for column, value in zip(self._columns, identity, strict=True):
            column.append(self._texts.setdefault(value, value) if isinstance(value, str) else value)

    def positions(self, locks: np.ndarray) -> np.ndarray:
        """Where each of locks (all added) is in the columns."""
        return pd.Index(np.array(self._locks, dtype=np.uint64)).get_indexer(pd.Index(locks))

    def lock_class(self, positions: np.ndarray) -> np.ndarray:
        column = self._columns[_LockIdentity._fields.index("lock_class")]
        return np.array(column, dtype=object)[positions]

    def at(self, position: int) -> _LockIdentity:
        return _LockIdentity(*(column[position] for column in self._columns))

    def items(self) -> Iterator[tuple[int, _LockIdentity]]:
        """(lock, identity) of every lock, in the order added."""
        for position, lock in enumerate(self._locks):
            yield lock, self.at(position)


def lock_identities(merged: pd.DataFrame) -> _LockIdentities:
    """The name, class and owner every row of each lock gets.

    A lock's rows differ by probe family and mode, and so may their locks
    rows: an mmap_lock whose owner was never learned is "mmap_lock" on its
    mmap_lock-tracepoint rows but a plain "rwsem" on its contention rows (as
    named by older lockprof versions). The identity must not depend on which
    row happens to come first (per-CPU map iteration order is arbitrary): the
    mmap_lock reading wins, then a row with a known owner.
    """
    ranked = merged.assign(
        _not_mmap=(merged["lock_class"] != "mmap_lock").astype(int),
        _no_owner=merged["owner_pid"].isna().astype(int),
    ).sort_values(["_not_mmap", "_no_owner"], kind="stable")
    identities = _LockIdentities()
    for row in ranked.drop_duplicates("lock").to_dict("records"):
        owner_pid, owner_comm = row["owner_pid"], row["owner_comm"]
        address = row.get("address")
        identity = _LockIdentity(
            address=int(row["lock"]) if address is None or pd.isna(address) else int(address),
            lock_class=row["lock_class"],
            name=row["name"],
            owner_pid=None if pd.isna(owner_pid) else int(owner_pid),
            owner_comm=None if pd.isna(owner_comm) else owner_comm,
        )
        identities.add(int(row["lock"]), identity)
    return identities
