"""Lock rows of exited processes leave the kernel's lock map during the run
(profiler/bpf.py retire_locks, free_retired_locks) and every figure is still
counted exactly once: system-wide, with every wait and hold also streamed
(threshold 1 ns), the aggregates match the event stream key by key, and the
callers match the aggregates, across retirements, frees and mm addresses
that later processes reuse (a retired key coming back at a new index)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from conftest import LOCKPROF, REPO, Held

import profiler
from profiler import schema
from profiler.bpf import MAX_ENTRIES_ENV
from profiler.session import RETIRE_ENV


def _exited_batches(batches: int, size: int) -> list[int]:
    """batches x size processes, each doing its mmap/munmap pairs on two
    threads, then exiting; a batch's processes are alive together. Batches
    are a few retirement rounds apart."""
    pids = []
    for _ in range(batches):
        time.sleep(0.3)
        held = [Held(300, threads=2) for _ in range(size)]
        for process in held:
            process.go_and_wait_done()
        for process in held:
            process.finish()
        pids += [process.pid for process in held]
    return pids


def test_exited_processes_lock_rows_retire_and_every_figure_stays(lockprof_factory, tmp_path):
    lp = lockprof_factory(
        "record", "-a", "-q", "-i", "0.2", "-t", "1ns", "-o", "r.lpr", "--stack-threshold", "20us",
        env={RETIRE_ENV: "0.2"},
    )  # fmt: skip
    lp.wait_attached()
    held_pids = _exited_batches(batches=8, size=3)
    time.sleep(1.0)  # the last batch's rows retired and freed too
    code, _out, err = lp.stop()
    assert code == 0, err
    rec = profiler.load(tmp_path / "r.lpr")
    errors = rec.meta["errors"]
    assert rec.meta["locks_retired"] > 0
    assert errors["stats_map_full"] == 0, errors
    # System-wide at 1 ns, another busy workload on the machine can overflow
    # the ring or pass --max-events: then each key's events fall short of its
    # aggregates by no more than the events lost, in all. Otherwise (a quiet
    # machine, as in CI) they are equal.
    lost = errors["ringbuf_full"] + rec.meta["events_dropped_userspace"]
    assert lost == rec.meta["lost_events"]

    keys = ["lock", "flags", "source"]
    sums = rec.intervals.groupby(keys)[
        ["acquisitions", "contended", "releases", "downgrades", "wait_count", "wait_total_ns"]
    ].sum()
    events = rec.events
    waits = events[events["kind"] == "wait"].groupby(keys)["duration_ns"].agg(["count", "sum"])
    holds = events[events["kind"] == "hold"].groupby(keys).size()
    assert len(sums) > 20  # many processes' locks were seen
    missing = 0
    for key, row in sums.iterrows():
        counted = row["acquisitions"] if key[2] == 0 else row["contended"]
        assert counted == row["wait_count"], key
        streamed = waits.loc[key] if key in waits.index else {"count": 0, "sum": 0}
        missing += counted - streamed["count"]
        assert 0 <= counted - streamed["count"] <= lost, key
        assert streamed["sum"] <= row["wait_total_ns"], key
        assert lost or streamed["sum"] == row["wait_total_ns"], key
        if key[2] == 0:
            ended = row["releases"] + row["downgrades"]
            missing += ended - holds.get(key, 0)
            assert 0 <= ended - holds.get(key, 0) <= lost, key
    assert missing <= lost, (missing, lost)

    # Callers and per-task rows (those of exited tasks retired to lockprof's
    # temporary file during the run) add up to the aggregates.
    contention = sums.xs(1, level="source")
    callers = rec.callers.groupby(["lock", "flags"])[["count", "total_ns"]].sum()
    tasks = rec.tasks[rec.tasks["source"] == 1].groupby(["lock", "flags"])[["waits", "wait_ns"]]
    tasks = tasks.sum()
    for key, row in contention.iterrows():
        assert key in callers.index and key in tasks.index, ("no callers/tasks", key, row.to_dict())
        assert callers.loc[key, "count"] == row["contended"], key
        assert callers.loc[key, "total_ns"] == row["wait_total_ns"], key
        assert tasks.loc[key, "waits"] == row["contended"], key
        assert tasks.loc[key, "wait_ns"] == row["wait_total_ns"], key
    assert set(held_pids) & set(rec.tasks["tgid"]), "no exited process's task rows"


def test_process_churn_does_not_fill_the_lock_map(tmp_path):
    """Every map capped at 512 entries; a command starts ~380 short
    processes over 12 s (32 a second, as a parallel build starts
    compilers), each with its own mm, so its own mmap_lock: more rows than
    the map holds. Once the map is an eighth full, a retirement round comes
    every interval (profiler/session.py _crowded), so the exited processes'
    rows are freed for the new ones in time: no lock is lost, and every
    process's lock is in the recording. With a round every 10 s, the map
    filled after ~2 s and every lock seen after that was lost
    (stats_map_full: 6.2% and 49.6% of the figures in two runs at this cap
    and rate, the nineteenth session's start, 1532a84).

    --follow keeps the map to the command's processes: system-wide (as this
    test was until the twenty-fourth session), a burst of other processes
    on the machine fills a map this small whatever the rounds (~4 rows per
    process: a hundred processes started by a shell in 0.14 s take ~400 of
    its 512; with three such bursts beside this churn, 9.5-15.0% of the
    figures were lost in four runs here) and once failed the test in CI
    (9.7%: the twenty-third session's last run). Under --follow this
    churn keeps the map under half full: when rounds start (an eighth) is
    tests/unit/test_retire.py's to check."""
    done = subprocess.run(
        [*LOCKPROF, "run", "-f", "-i", "0.5", "-q", "-o", str(tmp_path / "c.lpr"), "--",
         sys.executable, str(REPO / "bench" / "churn.py"), "32", "12"],
        capture_output=True, text=True, timeout=120, env={**os.environ, MAX_ENTRIES_ENV: "512"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = re.search(r"^spawned (\d+) in ", done.stdout, re.MULTILINE)
    assert said, done.stdout
    spawned = int(said.group(1))
    rec = profiler.load(tmp_path / "c.lpr")
    assert spawned >= 360
    errors = rec.meta["errors"]
    full = {name: count for name, count in errors.items() if name.endswith("_map_full")}
    assert len(full) >= 5 and not any(full.values()), errors
    assert rec.meta["followed"] == spawned  # its descendants
    assert len(rec.locks) > 512 and rec.meta["locks_retired"] > 512
    # Every process's own mmap_lock was counted and named (the spawner's
    # too), under the lock id its task rows carry. A process that started
    # after an interval's read and exited before the round lost its id with
    # its owner, and its rows came back under a new id, unnamed and apart
    # from its task rows (profiler/lockids.py LockIds.since_read and
    # dead_owners): in 8 of 11 runs with a shell's bursts beside them.
    owners = set(rec.locks["owner_pid"].dropna().astype(int))
    assert len(owners) == spawned + 1, (len(owners), spawned)
    mmap = schema.const("LP_SRC_MMAP_LOCK")
    counted = set(rec.intervals.loc[rec.intervals["source"] == mmap, "lock"])
    tasks = set(rec.tasks.loc[rec.tasks["source"] == mmap, "lock"])
    assert tasks <= counted, len(tasks - counted)
