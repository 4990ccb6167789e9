"""Runqueue locks are named after their CPU (probes/lockprof.bpf.c
lp_learn_rq), as perf lock contention's rq_lock, not after the scheduler
function that waited longest on them; the program that learns them is
detached once every CPU's is known."""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import BIN, show_json

from profiler import bpf, btf, probes
from profiler.errors import LockprofError
from profiler.options import CollectOptions

RQ_EVENT = "sched:" + bpf.RQ_TRACEPOINT.decode()


def _rq_learning_possible() -> str | None:
    offsets = btf.probe_offsets()
    if offsets["LP_RQ_LOCK_OFFSET"] < 0 or offsets["LP_RQ_CPU_OFFSET"] < 0:
        return "no struct rq in BTF: runqueue locks keep their callers' names"
    try:
        bpf.empty_programs([RQ_EVENT]).cleanup()
    except LockprofError as exc:
        return f"no bare tracepoint {bpf.RQ_TRACEPOINT.decode()}: {exc}"
    return None


def _rq_links() -> int:
    """Attached programs on the runqueue tracepoint, system-wide."""
    links = subprocess.run(["bpftool", "link", "list"], capture_output=True, text=True).stdout
    return links.count(f"tp '{bpf.RQ_TRACEPOINT.decode()}'")


def test_runqueue_locks_are_named_by_cpu_and_learning_stops(lockprof_factory, tmp_path):
    reason = _rq_learning_possible()
    if reason:
        pytest.skip(reason)
    online = bpf.online_cpus()
    assert _rq_links() == 0
    # Threads that sleep on their mmap_lock and wake each other: wakeups take
    # the other CPU's rq lock while its own scheduler holds it (hundreds of
    # contended waits a second). stress-ng --switch's pipe ping-pong gave
    # none in 3 runs of 4 on the twenty-first session's AMD guest.
    switch = subprocess.Popen(
        [str(BIN / "lpbizzy"), "-t", str(2 * len(online)), "-S", "4", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lp = lockprof_factory("record", "-a", "-d", "3", "-i", "0.5", "-o", "rq.lpr", "-q")
        lp.wait_attached()
        deadline = time.monotonic() + 2.0
        while _rq_links() and time.monotonic() < deadline:
            time.sleep(0.05)
        detached_while_running = _rq_links() == 0 and lp.proc.poll() is None
        code, _out, err = lp.wait(timeout=60)
    finally:
        switch.wait(timeout=30)
    assert code == 0, err
    assert detached_while_running, "lp_learn_rq still attached 2 s into the run"
    summary = show_json(tmp_path / "rq.lpr")
    rq_rows = [r for r in summary["locks"] if r["lock"].startswith("rq_lock cpu")]
    assert sum(r["contended"] for r in rq_rows) > 0, [r["lock"] for r in summary["locks"]]
    for row in rq_rows:
        assert int(row["lock"].removeprefix("rq_lock cpu")) in online
        assert row["lock_class"] == "spinlock" and row["acquisitions"] is None


def test_stop_rq_learning_detaches_the_learner_at_once():
    """bench/toggle.py and doctor --overhead measure the programs a run
    keeps: the learner, left attached, ran in every window (bare too)."""
    reason = _rq_learning_possible()
    if reason:
        pytest.skip(reason)
    plans = probes.plan(probes.DEFAULT_FAMILIES, {"raw_tracepoint"})
    others = _rq_links()  # another tracer's, if any
    with bpf.BpfSession.for_collection(plans, CollectOptions()) as session:
        session.attach()
        assert _rq_links() == others + 1
        session.stop_rq_learning()
        assert _rq_links() == others
        session.stop_rq_learning()  # again: nothing to do, no error
