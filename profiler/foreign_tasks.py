"""Tasks of other processes on a process's mmap_lock: who else takes it.

khugepaged, readers of /proc/N/cmdline or /proc/N/maps (ps, top, pgrep), a
debugger: they take the target's mmap_lock from outside, and their holds
delay the target's own writers. The recording's per-task table has their
rows (comm and pid); this turns them into the summary's list, one entry per
comm, lock and mode (a /proc reader is often a new process each time: `ps`
run every second), busiest first (wait plus hold time).

Only processes that are not themselves profiled count: a profiled process
that forks takes the child's new mm's lock for write (dup_mmap) before the
child runs, once per fork, which says nothing about either. So with a
target, they are the tasks from outside (readers, kernel threads); system-
wide, where every process is profiled, the kernel threads and processes
that never took their own lock.
"""

from __future__ import annotations

import pandas as pd

from profiler import schema

# Columns of the per-task table the list is built from.
_TASK_FIGURES = ["waits", "wait_ns", "holds", "hold_ns"]


def foreign_task_rows(tasks: pd.DataFrame, locks: pd.DataFrame, meta: dict) -> list[dict]:
    """One dict per (comm, mmap_lock, mode) of the tasks of processes that
    are not profiled, on a profiled process's mmap_lock: comm, pids (their
    processes), lock, lock_id, owner_pid, owner_comm, mode, acquisitions
    (null where only contention was traced), contended (null where
    contention was not traced: --no-contention), wait_ns and hold_ns
    ({count, total}). Busiest first. meta: the recording's."""
    contention_traced = "contention" in (meta.get("families") or ["contention"])
    if tasks.empty or locks.empty:
        return []
    named = tasks.merge(
        locks[["lock", "flags", "source", "lock_class", "mode", "owner_pid", "owner_comm"]],
        on=["lock", "flags", "source"],
        how="inner",
    )
    profiled = set(locks["owner_pid"].dropna().astype(int).tolist())
    foreign = named[
        (named["lock_class"] == "mmap_lock")
        & named["owner_pid"].notna()
        & ~named["tgid"].isin(profiled)
    ]
    if foreign.empty:
        return []
    keys = ["comm", "lock", "mode", "owner_pid", "owner_comm"]
    mmap_src = foreign["source"] == schema.const("LP_SRC_MMAP_LOCK")
    every = foreign[mmap_src].groupby(keys, dropna=False)[_TASK_FIGURES].sum()
    contended = foreign[~mmap_src].groupby(keys, dropna=False)[_TASK_FIGURES].sum()
    pids = foreign.groupby(keys, dropna=False)["tgid"].unique()
    rows = [
        _row(key, sorted(int(p) for p in pids.loc[key]), every, contended, contention_traced)
        for key in every.index.union(contended.index)
    ]
    return sorted(rows, key=lambda r: -(r["wait_ns"]["total"] + (r["hold_ns"]["total"] or 0)))


def _row(
    key: tuple, pids: list[int], every: pd.DataFrame, contended: pd.DataFrame, traced: bool
) -> dict:
    """Every acquisition's figures where the mmap_lock tracepoints saw them;
    a contention-only run has the contended waits alone (no holds)."""
    comm, lock, mode, owner_pid, owner_comm = key
    seen = every.loc[key] if key in every.index else None
    waited = contended.loc[key] if key in contended.index else None
    waits = seen if seen is not None else waited
    assert waits is not None  # the key came from one of the two
    return {
        "comm": comm,
        "pids": pids,
        "lock": "mmap_lock",
        "lock_id": f"{int(lock):#x}",
        "owner_pid": int(owner_pid),
        "owner_comm": owner_comm,
        "mode": mode,
        "acquisitions": int(seen["waits"]) if seen is not None else None,
        "contended": int(waited["waits"]) if waited is not None else (0 if traced else None),
        "wait_ns": {"count": int(waits["waits"]), "total": int(waits["wait_ns"])},
        "hold_ns": {
            "count": int(seen["holds"]) if seen is not None else None,
            "total": int(seen["hold_ns"]) if seen is not None else None,
        },
    }
