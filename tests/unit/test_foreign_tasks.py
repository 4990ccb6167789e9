"""Tasks of other processes on a process's mmap_lock (profiler/foreign_tasks.py):
the summary's list, and its lines under the table."""

from __future__ import annotations

import pandas as pd

from profiler import render, schema
from profiler.foreign_tasks import foreign_task_rows

MMAP = schema.const("LP_SRC_MMAP_LOCK")
CONT = schema.const("LP_SRC_CONTENTION")
READ, WRITE = schema.const("LP_LCB_READ"), schema.const("LP_LCB_WRITE")
TARGET_LOCK, CHILD_LOCK = 0xFFFF888100000100, 0xFFFF888200000100
TARGET, CHILD = 4242, 4300


def _locks() -> pd.DataFrame:
    rows = []
    for lock, owner, comm in ((TARGET_LOCK, TARGET, "lpbizzy"), (CHILD_LOCK, CHILD, "worker")):
        for source in (MMAP, CONT):
            for flags, mode in ((READ, "read"), (WRITE, "write")):
                rows.append(
                    {"lock": lock, "flags": flags, "source": source, "address": lock,
                     "lock_class": "mmap_lock", "mode": mode, "name": "mmap_lock",
                     "owner_pid": owner, "owner_comm": comm}
                )  # fmt: skip
    rows.append(
        {"lock": 0xFFFFFFFF830F3100, "flags": 1, "source": CONT, "address": 0xFFFFFFFF830F3100,
         "lock_class": "spinlock", "mode": "exclusive", "name": "x", "owner_pid": None,
         "owner_comm": None}
    )  # fmt: skip
    return pd.DataFrame(rows)


def _task(lock, tid, tgid, flags, source, comm, waits, wait_ns, holds=0, hold_ns=0) -> dict:
    return {"lock": lock, "tid": tid, "tgid": tgid, "flags": flags, "source": source,
            "comm": comm, "waits": waits, "wait_ns": wait_ns, "holds": holds,
            "hold_ns": hold_ns}  # fmt: skip


def _tasks() -> pd.DataFrame:
    return pd.DataFrame(
        [
            # Two `cat /proc/4242/cmdline`, 3 read acquisitions each.
            _task(TARGET_LOCK, 501, 501, READ, MMAP, "cat", 3, 600, 3, 9_000),
            _task(TARGET_LOCK, 502, 502, READ, MMAP, "cat", 3, 500, 3, 8_000),
            # khugepaged: every write acquisition, one of them contended.
            _task(TARGET_LOCK, 60, 60, WRITE, MMAP, "khugepaged", 4, 90_000, 4, 400_000),
            _task(TARGET_LOCK, 60, 60, WRITE, CONT, "khugepaged", 1, 88_000),
            # A contention-only row: a debugger's contended read.
            _task(TARGET_LOCK, 77, 77, READ, CONT, "gdb", 2, 5_000),
            # The target's own thread, contended on its own lock: not foreign.
            _task(TARGET_LOCK, 4243, TARGET, WRITE, CONT, "lpbizzy", 9, 1_000_000),
            # The target forking its child (dup_mmap on the child's new mm):
            # a profiled process, left out.
            _task(CHILD_LOCK, TARGET, TARGET, WRITE, MMAP, "lpbizzy", 1, 100, 1, 2_000_000),
            # A spinlock row: not an mmap_lock.
            _task(0xFFFFFFFF830F3100, 501, 501, 1, CONT, "cat", 1, 7_000_000),
        ]
    )


TRACED = {"families": ["mmap_lock", "contention"]}


def test_foreign_tasks_are_grouped_by_comm_busiest_first():
    rows = foreign_task_rows(_tasks(), _locks(), TRACED)
    assert [(r["comm"], r["mode"]) for r in rows] == [
        ("khugepaged", "write"), ("cat", "read"), ("gdb", "read")
    ]  # fmt: skip
    khugepaged, cat, gdb = rows
    assert khugepaged == {
        "comm": "khugepaged", "pids": [60], "lock": "mmap_lock", "lock_id": f"{TARGET_LOCK:#x}",
        "owner_pid": TARGET, "owner_comm": "lpbizzy", "mode": "write", "acquisitions": 4,
        "contended": 1, "wait_ns": {"count": 4, "total": 90_000},
        "hold_ns": {"count": 4, "total": 400_000},
    }  # fmt: skip
    assert cat["pids"] == [501, 502] and cat["acquisitions"] == 6
    assert cat["wait_ns"] == {"count": 6, "total": 1_100} and cat["contended"] == 0
    # Only contention traced for it: its contended waits, no acquisitions or holds.
    assert gdb["acquisitions"] is None and gdb["contended"] == 2
    assert gdb["wait_ns"] == {"count": 2, "total": 5_000}
    assert gdb["hold_ns"] == {"count": None, "total": None}


def test_contended_is_null_where_contention_was_not_traced():
    """--no-contention: a task's contended waits are not known (null, as
    the lock rows have them), not 0."""
    rows = foreign_task_rows(_tasks(), _locks(), {"families": ["mmap_lock"]})
    cat = next(r for r in rows if r["comm"] == "cat")
    assert cat["contended"] is None and cat["acquisitions"] == 6


def test_no_foreign_tasks():
    assert foreign_task_rows(_tasks().iloc[5:], _locks(), TRACED) == []
    assert foreign_task_rows(_tasks().iloc[0:0], _locks(), TRACED) == []


def test_foreign_task_lines():
    rows = foreign_task_rows(_tasks(), _locks(), TRACED)
    lines = [line.plain for line in render.foreign_task_lines(rows, limit=2)]
    assert lines == [
        "tasks of other processes on mmap_locks (by wait + hold time):",
        "  khugepaged (pid 60) on mmap_lock pid 4242 (lpbizzy) write: 4 acq, 1 contended, "
        "wait 90us, hold 400us",
        "  cat (2 processes) on mmap_lock pid 4242 (lpbizzy) read: 6 acq, wait 1.1us, hold 17us",
        "  (1 more: `show --json` lists them)",
    ]
    assert render.foreign_task_lines([]) == []


def test_show_top_n_lists_n_foreign_tasks_and_counts_the_rest(capsys):
    """`show --top N` lists N of them under the table, as the README says
    (the list was cut to N, then to 10, with no hint of the rest)."""
    from profiler import recording
    from profiler.cli.common import print_summary

    rec = recording.Recording(
        meta={"families": ["mmap_lock", "contention"], "cpus": 2, "target": "pid 4242"},
        intervals=None,
        locks=_locks(),
        tasks=_tasks(),
    )
    print_summary(rec, False, top=2)
    out = capsys.readouterr().out
    assert "khugepaged (pid 60)" in out and "cat (2 processes)" in out
    assert "gdb" not in out and "(1 more: `show --json` lists them)" in out
    print_summary(rec, False, top=None)
    assert "gdb (pid 77)" in capsys.readouterr().out
