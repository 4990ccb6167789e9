"""Processes that run one after another often get the same mm address (the
kernel hands a freed mm to the next process at once). System-wide, each must
keep its own mmap_lock rows, under its own pid, with its own exact counts
(before lock ids, profiler/lockids.py, they merged under the latest owner)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import LOCKPROF, Held, rows_for, show_json

import profiler
from profiler.bpf import NO_MM_ID_ENV, mm_id_offset
from profiler.session import RETIRE_ENV


@pytest.mark.parametrize("mm_ids", ["x86-ids", "numbered"])
@pytest.mark.parametrize("retire_s", [None, "0.2"], ids=["end", "retired-during-run"])
def test_processes_on_a_reused_mm_address_keep_their_own_exact_counts(
    lockprof_factory, tmp_path, retire_s, mm_ids
):
    """With retire_s, the exited processes' rows retire every 0.2 s and their
    lock ids and names are forgotten during the run (bpf.py forget_owners):
    the recording still names each from what was kept on disk. "numbered":
    as on a kernel without x86's mm ids, where the probes number each mm
    as its process is first seen on it (the test hook NO_MM_ID_ENV)."""
    if mm_ids == "x86-ids" and mm_id_offset() < 0:
        pytest.skip("doctor: no per-mm id in BTF (mm ids): the numbered case covers this kernel")
    env = {RETIRE_ENV: retire_s} if retire_s else {}
    if mm_ids == "numbered":
        env[NO_MM_ID_ENV] = "1"
    lp = lockprof_factory("record", "-a", "-q", "-o", "r.lpr", env=env)
    lp.wait_attached()
    pairs = [200 + 100 * i for i in range(10)]
    pids = []
    for n in pairs:  # one at a time: each exits before the next starts
        process = Held(n)
        process.go_and_wait_done()
        process.finish()
        pids.append(process.pid)
    if retire_s:
        time.sleep(1.0)  # the last process's rows retired and its id forgotten too
    code, _out, err = lp.stop()
    assert code == 0, err
    summary = show_json(tmp_path / "r.lpr")
    if retire_s:
        assert profiler.load(tmp_path / "r.lpr").meta["locks_retired"] > 0
    rows = {pid: rows_for(summary, pid, "mmapcount") for pid in pids}
    assert all(set(r) == {"read", "write"} for r in rows.values()), rows

    addresses = [rows[pid]["write"]["lock_addr"] for pid in pids]
    assert len(set(addresses)) < len(addresses), f"no mm address was reused: {addresses}"
    ids = {rows[pid][mode]["lock_id"] for pid in pids for mode in ("read", "write")}
    assert len(ids) == len(pids)  # read and write share each process's id

    # Every process does the same start-up (exec, the dynamic loader) and
    # exit, then its own pairs: the write side left after its pairs is the
    # same for each (merged rows would differ). Read acquisitions are not:
    # page faults fall back to mmap_lock now and then.
    extra = {
        (rows[pid]["write"]["acquisitions"] - 2 * n, rows[pid]["write"]["downgrades"] - n)
        for pid, n in zip(pids, pairs, strict=True)
    }
    assert len(extra) == 1, extra
    acquisitions, downgrades = extra.pop()
    assert 0 <= acquisitions < 100 and 0 <= downgrades < 50
    for pid in pids:
        assert rows[pid]["write"]["still_held"] == 0 and rows[pid]["read"]["still_held"] == 0


VFORK_AND_BACK = """
import mmap, os, sys
before = int(sys.argv[1])
print("ready", flush=True)
sys.stdin.read(1)
for _ in range(before):
    mmap.mmap(-1, 1 << 16).close()
# posix_spawn: a vfork-like clone (CLONE_VM|CLONE_VFORK), on this mm until it execs
pid = os.posix_spawn("/bin/true", ["true"], {})
os.waitpid(pid, 0)
for _ in range(300):
    mmap.mmap(-1, 1 << 16).close()
print("done", flush=True)
sys.stdin.read(1)
"""


@pytest.mark.parametrize("before", [300, 0], ids=["parent-seen-first", "child-seen-first"])
@pytest.mark.parametrize("mm_ids", ["x86-ids", "numbered"])
def test_a_vfork_child_counts_on_its_parents_mm(lockprof_factory, tmp_path, mm_ids, before):
    """A child spawned with CLONE_VM|CLONE_VFORK runs on its parent's mm
    until it execs: the mm keeps one row per mode, named after the parent,
    with the parent's pairs before and after the spawn in it. Also when the
    child is the first seen on the mm (the parent took no mmap_lock since
    attach): it is learned as its parent."""
    if mm_ids == "x86-ids" and mm_id_offset() < 0:
        pytest.skip("doctor: no per-mm id in BTF (mm ids): the numbered case covers this kernel")
    env = {NO_MM_ID_ENV: "1"} if mm_ids == "numbered" else {}
    parent = subprocess.Popen(
        [sys.executable, "-c", VFORK_AND_BACK, str(before)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None and parent.stdin is not None
        assert parent.stdout.readline() == b"ready\n"
        lp = lockprof_factory("record", "-a", "-q", "-o", "r.lpr", env=env)
        lp.wait_attached()
        parent.stdin.write(b"g")
        parent.stdin.flush()
        assert parent.stdout.readline() == b"done\n"
        code, _out, err = lp.stop()
    finally:
        parent.stdin.close()
        parent.wait(timeout=10)
    assert code == 0, err
    locks = show_json(tmp_path / "r.lpr")["locks"]
    mine = [r for r in locks if r["owner_pid"] == parent.pid and r["lock_class"] == "mmap_lock"]
    address = {r["lock_addr"] for r in mine}
    assert len(address) == 1, mine  # one mm
    at_address = [r for r in locks if r["lock_addr"] in address and r["lock_class"] == "mmap_lock"]
    assert {r["owner_pid"] for r in at_address} == {parent.pid}, at_address
    writes = [r for r in at_address if r["mode"] == "write"]
    assert len(writes) == 1 and writes[0]["acquisitions"] >= 2 * (before + 300)  # one row


@pytest.mark.parametrize("mm_ids", ["x86-ids", "numbered"])
def test_a_new_mm_at_the_targets_freed_address_is_not_counted(tmp_path, mm_ids):
    """A command that exits leaves its mm's address to the next mm the kernel
    builds, often at once, and building it (a fork's copy, an exec) takes the
    new mm's lock from another process's task, which the probes counted as a
    task on the target's lock: an "owner unknown" mmap_lock row in 7 `run --
    true` of 10 beside a fork loop. The lock is now followed with its mm's
    generation (probes: lp_same_mm). "numbered": as on a kernel without
    x86's mm ids (the probes number the mms themselves)."""
    if mm_ids == "x86-ids" and mm_id_offset() < 0:
        pytest.skip("doctor: no per-mm id in BTF (mm ids): the numbered case covers this kernel")
    env = dict(os.environ, **({NO_MM_ID_ENV: "1"} if mm_ids == "numbered" else {}))
    forker = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    try:
        strangers = []
        for run in range(6):
            out = tmp_path / f"true-{run}.lpr"
            subprocess.run(
                [*LOCKPROF, "run", "-q", "-o", str(out), "--", "true"],
                check=True,
                capture_output=True,
                env=env,
            )
            summary = show_json(out)
            strangers += [
                (run, row["mode"], row["owner_pid"], row["owner_comm"])
                for row in summary["locks"]
                if row["lock"] == "mmap_lock" and row["owner_pid"] != summary["target_pid"]
            ]
    finally:
        forker.kill()
        forker.wait()
    assert strangers == []
