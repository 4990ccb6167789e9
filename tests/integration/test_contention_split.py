"""Every contended wait is counted once in each of the three places that
split it: the aggregates (lp_stats), the callers (lp_short_callers for waits
too short for a stack, lp_callers by stack for the others) and the per-task
rows (lp_task_rows, through each task's cached row index)."""

from __future__ import annotations

from conftest import BIN

import profiler


def test_contention_callers_and_tasks_add_up_to_the_aggregates(lockprof_factory, tmp_path):
    # rwcontend: writers and readers of one mmap_lock block each other; a
    # 20 us stack threshold gives both short (no stack) and long waits.
    lp = lockprof_factory(
        "run", "-q", "-o", "c.lpr", "--stack-threshold", "20us", "--",
        str(BIN / "rwcontend"), "-w", "2", "-r", "2", "-S", "2", "-m", "16",
    )  # fmt: skip
    code, _out, err = lp.wait(timeout=120)
    assert code == 0, err
    rec = profiler.load(tmp_path / "c.lpr")
    keys = ["lock", "flags"]
    aggregates = (
        rec.intervals[rec.intervals["source"] == 1]
        .groupby(keys)[["contended", "wait_count", "wait_total_ns"]]
        .sum()
    )
    callers = rec.callers.groupby(keys)[["count", "total_ns"]].sum()
    tasks = rec.tasks[rec.tasks["source"] == 1].groupby(keys)[["waits", "wait_ns"]].sum()
    assert aggregates["contended"].sum() > 0, aggregates
    assert sorted(aggregates.index) == sorted(callers.index) == sorted(tasks.index)
    for key, row in aggregates.iterrows():
        assert row["contended"] == row["wait_count"], key
        assert callers.loc[key, "count"] == row["contended"], key
        assert tasks.loc[key, "waits"] == row["contended"], key
        assert callers.loc[key, "total_ns"] == row["wait_total_ns"], key
        assert tasks.loc[key, "wait_ns"] == row["wait_total_ns"], key
    # One caller row per (lock, stack, flags), and both kinds of rows seen.
    assert not rec.callers.duplicated(["lock", "stack_id", "flags"]).any()
    assert (rec.callers["stack_id"] == -1).any(), rec.callers
    # Stacks of long waits, beyond the naming stacks (one per row and CPU).
    stacked = int(rec.callers.loc[rec.callers["stack_id"] >= 0, "count"].sum())
    assert stacked > len(aggregates) * rec.meta["cpus"], rec.callers
