"""From a Recording to the tidy frames the figure builders plot.

Everything here is a pure function of a Recording's DataFrames (no I/O).

Two rules shared by every panel:

* **Lock labels.** A lock is shown by its identity: ``mmap_lock pid N (comm)``
  for a process's mmap_lock, a kallsyms symbol for a static lock, otherwise
  ``caller+0xoff (address)`` as the recording names it. Labels are unique per
  lock address (the address is appended when two locks would share one).
* **No double counting.** A contended mmap_lock wait is seen twice: by the
  mmap_lock tracepoints (every acquisition) and by lock:contention_* (as an
  rwsem), and a kernel lock spec's (down_read) by the mmap_lock tracepoints
  too. Where a lock and mode has rows of a family that counts every
  acquisition, its contention rows are left out of totals, and a spec's rows
  where the mmap_lock tracepoints have it (aggregate.shadowed, as the
  summary and compare). A lock spec's "sum"
  rows (calls of its sum function, timed from entry to return) are left out
  of the interval, event and task frames too: the writer calls the sum
  while it waits for the lock, so that time is already in the write wait.
  The summary keeps them, and the writer's price panel shows them.

Labels here are plain (unescaped) text; the builders escape them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from profiler import aggregate, schema, summary, writer_cost
from profiler.lockids import distinct_labels
from profiler.recording import TABLE_COLUMNS, Recording

KEY = ["lock", "flags", "source"]
# The intervals table's columns but its histograms: what the per-interval
# figures (heatmap, CPU totals, timeline) read.
INTERVAL_SCALARS = [c for c in TABLE_COLUMNS["intervals"] if not c.endswith("_slots")]
# Frames of the probe itself at the top of a stack (bpf program, trampolines).
_PROBE_FRAMES = ("bpf_prog_", "bpf_trace_run", "__bpf_trace_", "bpf_trampoline_")
NO_STACK = "[no_stack]"


def lock_table(rec: Recording) -> pd.DataFrame:
    """One row per (lock, flags, source) seen anywhere in the recording:
    lock_class, mode and a unique label (keys absent from the locks table
    are classified from their flags)."""
    keys = [rec.locks[KEY]] if not rec.locks.empty else []
    for name in ("events", "tasks"):
        frame = rec.table(name)
        if not frame.empty and set(KEY) <= set(frame.columns):
            keys.append(frame[KEY])
    if not rec.callers.empty:
        keys.append(rec.callers[["lock", "flags"]].assign(source=schema.const("LP_SRC_CONTENTION")))
    columns = [*KEY, "lock_class", "mode", "name", "owner_pid", "owner_comm", "label"]
    if not keys:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    table = pd.concat(
        [k.astype({"lock": "uint64", "flags": "int64", "source": "int64"}) for k in keys],
        ignore_index=True,
    ).drop_duplicates(KEY)
    if not rec.locks.empty:
        known = rec.locks[[c for c in columns[3:-1] if c in rec.locks.columns] + KEY]
        known = known.astype({"lock": "uint64", "flags": "int64", "source": "int64"})
        table = table.merge(known, on=KEY, how="left")
    for column in columns[3:-1]:
        if column not in table.columns:
            table[column] = None
    table = table.astype({"lock_class": "object", "mode": "object", "name": "object"})
    missing = table["lock_class"].isna().to_numpy()
    if missing.any():
        classes = [
            schema.classify(int(source), int(flags))
            for flags, source in table.loc[missing, ["flags", "source"]].itertuples(index=False)
        ]
        table.loc[missing, "lock_class"] = [c for c, _ in classes]
        table.loc[missing, "mode"] = [m for _, m in classes]
    # A lock seen by both families is an mmap_lock if either says so.
    mmap_locks = table.loc[table["lock_class"] == "mmap_lock", "lock"].unique()
    table.loc[table["lock"].isin(mmap_locks), "lock_class"] = "mmap_lock"
    table["label"] = table["lock"].map(_labels(table, rec))
    return table[columns].reset_index(drop=True)


def _labels(table: pd.DataFrame, rec: Recording) -> dict[int, str]:
    """lock address -> unique label."""
    owned = table.dropna(subset=["owner_pid"]).drop_duplicates("lock")
    owners = {
        int(lock): (int(pid), comm if isinstance(comm, str) else "?")
        for lock, pid, comm in owned[["lock", "owner_pid", "owner_comm"]].itertuples(index=False)
    }
    firsts = table.drop_duplicates("lock")[["lock", "lock_class", "name"]]
    callers: dict[int, str] | None = None
    labels: dict[int, str] = {}
    # Lock ids that are not their own address (lockids.py): shown by address.
    address = {}
    if "address" in rec.locks.columns:
        address = {
            int(i): int(a) for i, a in zip(rec.locks["lock"], rec.locks["address"], strict=True)
        }
    for lock, lock_class, name in firsts.itertuples(index=False):
        lock = int(lock)
        if lock in owners:
            pid, comm = owners[lock]
            label = f"mmap_lock pid {pid} ({comm})"
        elif lock_class == "mmap_lock":
            label = f"mmap_lock (owner unknown) {address.get(lock, lock):#x}"  # as show
        elif isinstance(name, str) and name and not name.startswith(_PROBE_FRAMES):
            label = name
        else:
            # Unnamed, or named after the probe's own frame by an older lockprof.
            if callers is None:
                callers = _top_callers(rec)
            caller = callers.get(lock)
            label = f"{caller} ({lock:#x})" if caller else f"{lock_class} {lock:#x}"
        labels[lock] = label
    return distinct_labels(labels, address)


def _top_callers(rec: Recording) -> dict[int, str]:
    """lock address -> its top contending caller, from the cleaned stacks."""
    stacks = {stack_id: clean_frames(frames) for stack_id, frames in stack_frames(rec).items()}
    return aggregate.top_callers(rec.callers, stacks)


def _with_locks(frame: pd.DataFrame, locks: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        out = frame.copy()
        for column in ("lock_class", "mode", "label"):
            out[column] = pd.Series(dtype="object")
        return out
    left = frame.copy()
    left["lock"] = left["lock"].astype("uint64")
    left[["flags", "source"]] = left[["flags", "source"]].astype("int64")
    return left.merge(locks[[*KEY, "lock_class", "mode", "label"]], on=KEY, how="left")


def _drop_double_counted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Leave out the rows another family already counts for their (lock,
    mode, *by): contention rows where the mmap_lock tracepoints or a lock
    spec count every acquisition, a kernel spec's rows on an mmap_lock
    (aggregate.shadowed)."""
    if frame.empty:
        return frame
    keep = ~aggregate.shadowed(frame, tuple(by))
    return frame if keep.all() else frame.loc[keep].reset_index(drop=True)


SUM_MODE = "sum"


def _without_sum(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of a lock spec's sum function left out (their time lies inside
    the write wait; see the module docstring)."""
    if frame.empty or "mode" not in frame.columns:
        return frame
    keep = (frame["mode"] != SUM_MODE).to_numpy()
    return frame if keep.all() else frame.loc[keep].reset_index(drop=True)


def label_map(locks: pd.DataFrame) -> dict[int, str]:
    """lock address -> label."""
    return {
        int(lock): str(label) for lock, label in locks[["lock", "label"]].itertuples(index=False)
    }


def lock_intervals(
    rec: Recording, locks: pd.DataFrame | None = None, histograms: bool = True
) -> pd.DataFrame:
    """The intervals table with lock_class, mode and label, double counting
    removed. histograms=False leaves the *_slots columns out (read alone:
    most of a long recording's intervals table; lock_totals has them)."""
    locks = lock_table(rec) if locks is None else locks
    frame = rec.intervals if histograms else rec.interval_columns(INTERVAL_SCALARS)
    return _without_sum(_drop_double_counted(_with_locks(frame, locks), []))


def lock_totals(rec: Recording, locks: pd.DataFrame | None = None) -> pd.DataFrame:
    """As lock_intervals, from the intervals summed over the run (one row per
    lock, flags, source and CPU): the distributions' histograms."""
    locks = lock_table(rec) if locks is None else locks
    return _without_sum(_drop_double_counted(_with_locks(rec.interval_totals, locks), []))


def lock_events(rec: Recording, locks: pd.DataFrame | None = None) -> pd.DataFrame:
    """The event stream (waits and holds over the threshold) with lock labels.
    A contended mmap_lock wait is streamed by both families; the mmap_lock
    tracepoints' event (which spans the whole wait) is kept; how many were
    left out is in attrs["double_counted"] (`show` counts every row of the
    recording's events table, and the timeline says why it has fewer)."""
    locks = lock_table(rec) if locks is None else locks
    labelled = _with_locks(rec.events, locks)
    once = _drop_double_counted(labelled, [])  # drops contention-source rows only, never sum rows
    kept = _without_sum(once)
    kept.attrs["double_counted"] = len(labelled) - len(once)
    return kept


def lock_tasks(rec: Recording, locks: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-task table with lock labels, double counting removed."""
    locks = lock_table(rec) if locks is None else locks
    return _without_sum(_drop_double_counted(_with_locks(rec.tasks, locks), ["tid"]))


def stack_frames(rec: Recording) -> dict[int, list[str]]:
    """stack_id -> frames, innermost first."""
    if rec.stacks.empty:
        return {}
    return {
        int(stack_id): [str(f) for f in frames]
        for stack_id, frames in rec.stacks[["stack_id", "frames"]].itertuples(index=False)
        if frames is not None
    }


def clean_frames(frames: list[str]) -> list[str]:
    """Innermost-first frames without the probe's own frames."""
    out = list(frames)
    while out and out[0].startswith(_PROBE_FRAMES):
        out.pop(0)
    return out


def lock_callers(rec: Recording, locks: pd.DataFrame | None = None) -> pd.DataFrame:
    """Contended waits by kernel stack, with the lock label and the caller
    (the first frame outside the locking primitives)."""
    locks = lock_table(rec) if locks is None else locks
    columns = ["lock", "stack_id", "flags", "count", "total_ns", "max_ns", "label", "caller"]
    if rec.callers.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    stacks = stack_frames(rec)
    callers = rec.callers.copy()
    callers["lock"] = callers["lock"].astype("uint64")
    labels = label_map(locks)
    callers["label"] = [labels.get(int(v), f"{int(v):#x}") for v in callers["lock"]]
    callers["caller"] = [
        aggregate.caller_of(clean_frames(stacks.get(int(s), []))) or NO_STACK
        for s in callers["stack_id"]
    ]
    return callers[columns]


def _function(frame: str) -> str:
    """A frame without its offset, made safe for the folded format."""
    name = frame.split("+", 1)[0] or frame
    return "".join(ch if ch.isprintable() and ch not in "; " else "_" for ch in name)


def folded_stacks(callers: pd.DataFrame, stacks: dict[int, list[str]]) -> dict[str, int]:
    """Wait nanoseconds by stack, root first, frames joined by ';' (offsets
    dropped so that call sites merge, as perf script | stackcollapse does).
    Waits recorded without a stack are one frame, NO_STACK."""
    folded: dict[str, int] = {}
    if callers.empty:
        return folded
    for stack_id, total in callers[["stack_id", "total_ns"]].itertuples(index=False):
        frames = clean_frames(stacks.get(int(stack_id), []))
        path = ";".join(_function(f) for f in reversed(frames)) if frames else NO_STACK
        folded[path] = folded.get(path, 0) + int(total)
    return dict(sorted(folded.items(), key=lambda kv: (-kv[1], kv[0])))


def summary_frame(
    rec: Recording, locks: pd.DataFrame | None = None, max_locks: int | None = None
) -> pd.DataFrame:
    """One row per lock and mode (the `show` table), flattened, with labels.
    Figures the probes cannot know are NaN.

    With max_locks, only the max_locks lock addresses with the most wait time
    are summarised (the summary costs about a millisecond per lock, and a
    system-wide recording can hold thousands of page-table locks);
    ``frame.attrs["total_rows"]`` is the number of rows there would be."""
    locks = lock_table(rec) if locks is None else locks
    intervals, known = rec.interval_totals, rec.locks  # what `show` sums
    total_rows = None
    if max_locks is not None and not intervals.empty:
        ranked = lock_totals(rec, locks)
        waits = ranked.groupby("lock")["wait_total_ns"].sum()
        if len(waits) > max_locks:
            # Every row show has: a lock spec's sum rows too (ranked has none).
            # Only the keys: interval_totals merged whole was copied for a count.
            keys = intervals[KEY].drop_duplicates()
            every_row = _with_locks(keys, locks)[["lock", "mode"]].dropna()
            total_rows = len(every_row.drop_duplicates())
            keep = waits.nlargest(max_locks).index
            intervals = intervals[intervals["lock"].isin(keep)]
            known = known[known["lock"].isin(keep)]
    rows = aggregate.summary_rows(intervals, known, rec.meta.get("families", []))
    labels = label_map(locks)
    records = []
    for row in rows:
        wait = row.get("wait_ns") or {}
        hold = row.get("hold_ns") or {}
        records.append(
            {
                "label": labels.get(int(row["lock_id"], 16), row["lock"]),
                "lock_class": row["lock_class"],
                "mode": row["mode"],
                "lock_addr": row["lock_addr"],
                "acquisitions": row.get("acquisitions"),
                "contended": row.get("contended"),
                "wait_total": wait.get("total"),
                "wait_avg": wait.get("avg"),
                "wait_p50": wait.get("p50"),
                "wait_p99": wait.get("p99"),
                "wait_max": wait.get("max"),
                "hold_total": hold.get("total"),
                "hold_avg": hold.get("avg"),
                "hold_p99": hold.get("p99"),
                "hold_max": hold.get("max"),
                "downgrades": row.get("downgrades"),
                "trylock_failures": row.get("trylock_failures"),
                "still_held": row.get("still_held"),
                "reader_writer_ratio": row.get("reader_writer_ratio"),
            }
        )
    frame = pd.DataFrame(records, columns=SUMMARY_COLUMNS)
    numeric = [c for c in SUMMARY_COLUMNS if c not in ("label", "lock_class", "mode", "lock_addr")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce").astype("float64")
    frame.attrs["total_rows"] = len(frame) if total_rows is None else total_rows
    return frame


SUMMARY_COLUMNS = [
    "label",
    "lock_class",
    "mode",
    "lock_addr",
    "acquisitions",
    "contended",
    "wait_total",
    "wait_avg",
    "wait_p50",
    "wait_p99",
    "wait_max",
    "hold_total",
    "hold_avg",
    "hold_p99",
    "hold_max",
    "downgrades",
    "trylock_failures",
    "still_held",
    "reader_writer_ratio",
]


def slot_sums(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    """Element-wise sum of a *_slots column (None when there are no rows)."""
    if frame.empty:
        return None
    return np.sum(np.array(frame[column].tolist(), dtype=np.uint64), axis=0)


# -- the writer's price (--offcpu, --sample) ------------------------------------------

OFFCPU_COLUMNS = [
    "label",
    "lock_class",
    "mode",
    "caller",
    "component",
    "component_ns",
    "blocked",
    "total_ns",
    "max_ns",
    "tasks",
]


def offcpu_frame(rec: Recording) -> pd.DataFrame:
    """Off-CPU time in lock functions (the `show --json` rows with source
    "offcpu"), one row per lock row and component (grace_period,
    reader_drain, writer_wait, blocked_by_writer, wait). label is
    "function <- caller"; tasks is the list of comms that blocked there.
    Rows come in the summary's order (most blocked time first)."""
    records = []
    for row in writer_cost.offcpu_rows(rec.offcpu, rec.stacks):
        wait = row["wait_ns"]
        for component, ns in (row.get("offcpu_components_ns") or {}).items():
            records.append(
                {
                    "label": row["lock"],
                    "lock_class": row["lock_class"],
                    "mode": row["mode"],
                    "caller": row["caller"],
                    "component": component,
                    "component_ns": int(ns),
                    "blocked": int(wait["count"]),
                    "total_ns": int(wait["total"]),
                    "max_ns": int(wait["max"]),
                    "tasks": list(row.get("tasks") or []),
                }
            )
    return pd.DataFrame(records, columns=OFFCPU_COLUMNS)


def sum_cost(rec: Recording) -> dict | None:
    """The __percpu_counter_sum estimate from CPU samples (`show --json`'s
    writer_cost), or None when the recording has no samples."""
    return summary.writer_cost_json(rec)


def spec_sum_frame(summary_rows: pd.DataFrame) -> pd.DataFrame:
    """A lock spec's sum rows of the summary frame, with the lock's write
    wait beside them (the writer sums while it waits for the lock)."""
    sums = summary_rows[summary_rows["mode"] == SUM_MODE]
    writes = summary_rows[summary_rows["mode"] == "write"].set_index("lock_addr")["wait_total"]
    columns = ["label", "lock_class", "lock_addr", "acquisitions", "wait_total", "wait_avg"]
    out = sums[[*columns, "wait_p99", "wait_max"]].copy()
    out["write_wait_total"] = [writes.get(a, np.nan) for a in out["lock_addr"]]
    return out.reset_index(drop=True)
