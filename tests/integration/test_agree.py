"""lockprof's figures against an independent tracer's (root, BPF, bpftrace).

bench/agree.py runs one workload process under `lockprof attach -p` and a
bpftrace script (bench/agree.bt) computing the same figures from the same
tracepoints, both armed before the process starts work. Every count must
agree exactly, except where a tool's own programs were skipped by the
kernel (an interrupt's contended spinlock while one of its programs ran:
each tool counts its skipped runs), and the time totals within a few
percent (the two tools read the clock at different points of their
programs).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest
from conftest import REPO, lockprof_programs

pytestmark = pytest.mark.skipif(
    shutil.which("bpftrace") is None,
    reason="bpftrace is not installed (`make test` installs it: scripts/setup.sh --bpftrace)",
)


def _agree_module():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("agree", REPO / "bench" / "agree.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lockprof_agrees_with_bpftrace_on_a_contended_mmap_lock(tmp_path):
    agree = _agree_module()
    argv = agree.workloads(1.0)["rwcontend"]
    summary, maps, pid = agree.run_both(argv, tmp_path, lockprof_first=False)
    ours = agree.lockprof_figures(summary, tmp_path / f"agree-{pid}.lpr", pid)
    theirs = agree.bpftrace_figures(maps)

    # Every acquisition, release and downgrade of the process's mmap_lock:
    # no program of either tool runs in an interrupt here, so none is lost.
    for mode in ("read", "write"):
        for figure in ("acquisitions", "holds"):
            name = f"mmap_lock {mode} {figure}"
            assert ours[name] == theirs[name], name
        assert theirs[f"mmap_lock {mode} acquisitions"] > 1000
    # Another process's task on the lock (khugepaged) is subtracted from
    # lockprof's rows through its task rows, which do not count failed
    # trylocks and downgrades: with one, those may exceed bpftrace's.
    others = ours["other processes' tasks on the mmap_lock"]
    for name in (
        "mmap_lock downgrades",
        "mmap_lock read trylock failures",
        "mmap_lock write trylock failures",
    ):
        assert ours[name] == theirs[name] if not others else ours[name] >= theirs[name], name
    assert theirs["mmap_lock downgrades"] > 1000
    # Readers and writers of one rwsem wait for each other (sleeping waits,
    # never in an interrupt): both directions counted alike.
    for flags in ("0x2", "0x4"):
        name = f"contention flags {flags} waits"
        assert ours[name] == theirs[name] > 10, name
    # Spinlock waits can be an interrupt's, whose programs the kernel skips
    # while one of the same tool runs on that CPU: each tool may miss at
    # most its own skipped runs.
    errors = summary["errors"]
    ours_missed = sum(
        errors[k]
        for k in ("recursion_misses", "irq_wait_skipped", "end_without_begin", "nest_overflow")
    )
    theirs_missed = theirs["probe runs the kernel skipped (system-wide)"]
    spins = "contention flags 0x1 waits"
    if spins in theirs:
        assert theirs[spins] - ours_missed <= ours.get(spins, 0) <= theirs[spins] + theirs_missed
    # Time totals: each tool reads the clock in its own program, ~100 ns
    # apart, against waits and holds of microseconds.
    for mode in ("read", "write"):
        for figure in ("wait ns", "hold ns"):
            name = f"mmap_lock {mode} {figure}"
            assert ours[name] == pytest.approx(theirs[name], rel=0.10), name
    for flags in ("0x2", "0x4"):
        name = f"contention flags {flags} wait ns"
        assert ours[name] == pytest.approx(theirs[name], rel=0.05), name
    assert lockprof_programs() == []
