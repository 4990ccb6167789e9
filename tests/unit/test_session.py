"""profiler.session and profiler.targets without BPF: what `lockprof run` keeps.

`lockprof run -- CMD` forks a child that waits, in a copy of lockprof's own
address space, until the probes are attached, then execs CMD. The mmap_lock
of that pre-exec mm is not the command's and must not show up as a lock of
its own; the command's own mm_lock must.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import profiler
from profiler import aggregate, ksyms, recording, render, session, summary
from profiler.errors import LockprofError
from profiler.events import events_frame
from profiler.intervals import CHUNK_ROWS as INTERVAL_CHUNK_ROWS
from profiler.intervals import build_intervals
from profiler.options import CpuFigures
from profiler.signals import INHERITED_IGNORED
from profiler.targets import PRE_EXEC_COMM, CommandTarget, PidTarget, pre_exec_locks

from .helpers import EMPTY_CALLERS, interval_records, intervals_frame

READ, WRITE, SPIN = 2, 4, 1
SRC_MMAP, SRC_CONT = 0, 1
PRE_EXEC_LOCK = 0xFFFF888104F6A178  # lockprof's copied mm, as in tests/data
COMMAND_LOCK = 0xFFFF888100818138  # the command's own mm
SPINLOCK = 0xFFFFFFFF830F3100


# -- the child's name before exec -----------------------------------------------------------


def wait_for_exit(target: CommandTarget, timeout: float = 10.0) -> str:
    """Poll until the command has exited; its stop reason."""
    deadline = time.monotonic() + timeout
    while (reason := target.poll()) is None:
        assert time.monotonic() < deadline, "command did not exit"
        time.sleep(0.01)
    return reason


def test_run_child_is_named_until_it_execs(tmp_path):
    out = tmp_path / "comm"
    target = CommandTarget(["sh", "-c", f"cat /proc/$$/comm > {out}"])
    try:
        # Held before exec: the name the BPF owner map will learn its mm under.
        assert Path(f"/proc/{target.tgid}/comm").read_text() == PRE_EXEC_COMM + "\n"
    finally:
        target.begin()
    wait_for_exit(target)
    assert target.exit_status == 0
    assert out.read_text() == "sh\n"  # exec gave the command its own name


def test_pre_exec_comm_fits_in_a_task_comm():
    assert 0 < len(PRE_EXEC_COMM.encode()) <= 15  # TASK_COMM_LEN - 1


def test_pre_exec_locks():
    pid = 4560
    owners = {
        PRE_EXEC_LOCK: (pid, PRE_EXEC_COMM),
        COMMAND_LOCK: (pid, "mmapcount"),
        0xFFFF888200000000: (77, PRE_EXEC_COMM),  # another lockprof run's child
        0xFFFF888300000000: (pid + 1, "mmapcount"),
    }
    assert pre_exec_locks(owners, pid, COMMAND_LOCK) == {PRE_EXEC_LOCK}
    # The command's current mm is never left out, whatever it is called.
    owners[COMMAND_LOCK] = (pid, PRE_EXEC_COMM)
    assert pre_exec_locks(owners, pid, COMMAND_LOCK) == {PRE_EXEC_LOCK}
    assert pre_exec_locks({}, pid, 0) == set()


# -- a collection's end, with a fake BPF session ------------------------------------------


class FakeSession:
    """What _build_recording and _live_state read from a BpfSession."""

    def __init__(self, owners, target_lock, tasks=(), callers=(), stacks=None, rq_names=None):
        self.owners = owners
        self.rq_names = rq_names or {}
        self._target_lock = target_lock
        self.tasks = list(tasks)
        self.callers = list(callers)
        self.stacks = stacks or {}
        self.events_dropped_userspace = 0
        self.locks_retired = 0
        self.compile_info = None  # as if compiled outside bpf.compile_probes
        self._events_raw: list[bytes] = []

    def read_offcpu(self):
        return []  # --offcpu not compiled in, as the real session answers

    def read_samples(self):
        return []  # --sample not compiled in

    def events_pending(self):
        return len(self._events_raw)

    def read_owners(self):
        return dict(self.owners)

    # No mm address serves two processes here: every lock id is its address.
    def lock_owners(self, forgotten=False):
        return dict(self.owners)

    def lock_addresses(self, forgotten=False):
        return {}

    def rq_lock_names(self):
        return dict(self.rq_names)

    def target_lock_id(self):
        return self._target_lock

    def target_lock(self):
        return self._target_lock

    def read_tasks(self):
        return self.tasks

    def read_callers(self, retired=True):
        return self.callers

    def stack_frames(self, stack_id):
        frames = self.stacks.get(stack_id, [])
        if isinstance(frames, Exception):
            raise frames
        return frames

    def take_events(self, chunk_rows):
        return iter(())

    def read_errors(self):
        return {"ringbuf_full": 0}


def task(lock, comm, tgid, flags=WRITE, source=SRC_MMAP, waits=1):
    return {
        "lock": lock,
        "tid": tgid,
        "tgid": tgid,
        "flags": flags,
        "source": source,
        "comm": comm,
        "waits": waits,
        "wait_ns": 100 * waits,
        "holds": waits,
        "hold_ns": 1000 * waits,
    }


@pytest.fixture
def no_bpf(monkeypatch):
    monkeypatch.setattr(session, "session_cpus", lambda: [0, 1])
    monkeypatch.setattr(ksyms, "data_symbols", lambda *a: {})


@pytest.fixture
def finished_run():
    """A real `run` target (`true`) that has exited."""
    target = CommandTarget(["true"])
    target.begin()
    wait_for_exit(target)
    return target


def run_snapshot(snap, pid_lock_pairs=True):
    """Interval stats of a `run` of an mmap/munmap workload: the pre-exec mm
    saw 1 write + 2 reads (exec and exit_mmap), the command's mm the rest."""
    s = snap(cpus=2)
    for flags, n in ((WRITE, 1), (READ, 2)):
        for _ in range(n):
            s.bump((PRE_EXEC_LOCK, flags, SRC_MMAP), 1, "acquisitions")
            s.hist_add((PRE_EXEC_LOCK, flags, SRC_MMAP), 1, "wait", 400)
            s.bump((PRE_EXEC_LOCK, flags, SRC_MMAP), 1, "releases")
            s.hist_add((PRE_EXEC_LOCK, flags, SRC_MMAP), 1, "hold", 600_000)
    for _ in range(10):  # 5 mmap + 5 munmap
        for flags in (WRITE, WRITE):
            s.bump((COMMAND_LOCK, flags, SRC_MMAP), 0, "acquisitions")
            s.hist_add((COMMAND_LOCK, flags, SRC_MMAP), 0, "wait", 200)
        s.bump((COMMAND_LOCK, WRITE, SRC_MMAP), 0, "releases")
        s.hist_add((COMMAND_LOCK, WRITE, SRC_MMAP), 0, "hold", 1500)
        s.bump((COMMAND_LOCK, WRITE, SRC_MMAP), 0, "downgrades")
        s.hist_add((COMMAND_LOCK, WRITE, SRC_MMAP), 0, "hold", 700)
        s.bump((COMMAND_LOCK, READ, SRC_MMAP), 0, "releases")
        s.hist_add((COMMAND_LOCK, READ, SRC_MMAP), 0, "hold", 900)
    s.bump((SPINLOCK, SPIN, SRC_CONT), 1, "contended")
    s.hist_add((SPINLOCK, SPIN, SRC_CONT), 1, "wait", 691)
    return s


def build(target, fake, snap, stats_columns):
    state = session._Collected()
    state.keep(aggregate.delta_records({}, run_snapshot(snap).copy(), stats_columns, 1, 0.1))
    options = session.CollectOptions()
    now = time.monotonic_ns()
    return session._build_recording(
        options,
        target,
        fake,
        state,
        session._LockNamer(fake),
        [],
        "command exited with status 0",
        now - 100_000_000,
        now,
        dt.datetime.now(dt.UTC),
    )


def test_run_recording_leaves_out_the_pre_exec_mm(
    no_bpf, finished_run, snap, stats_columns, tmp_path
):
    pid = finished_run.tgid
    fake = FakeSession(
        owners={PRE_EXEC_LOCK: (pid, PRE_EXEC_COMM), COMMAND_LOCK: (pid, "mmapcount")},
        target_lock=COMMAND_LOCK,
        tasks=[
            task(PRE_EXEC_LOCK, PRE_EXEC_COMM, pid, READ, waits=2),
            task(COMMAND_LOCK, PRE_EXEC_COMM, pid, WRITE, waits=20),  # first seen in exec
            task(SPINLOCK, "mmapcount", pid, SPIN, SRC_CONT),
            task(COMMAND_LOCK, "khugepaged", 40, READ),
        ],
        callers=[
            {"lock": SPINLOCK, "stack_id": 3, "flags": SPIN, "count": 1, "total_ns": 691},
        ],
        stacks={3: ["_raw_spin_lock+0x1", "rcu_core+0xac"]},
    )
    fake.callers[0]["max_ns"] = 691
    rec = build(finished_run, fake, snap, stats_columns)
    for name in ("intervals", "locks", "tasks", "callers"):
        assert PRE_EXEC_LOCK not in set(rec.table(name)["lock"].astype("uint64").tolist()), name
    assert set(rec.intervals["lock"].tolist()) == {COMMAND_LOCK, SPINLOCK}
    assert rec.meta["pre_exec_mmap_lock"] == {
        "locks": [f"{PRE_EXEC_LOCK:#x}"],
        "comm": PRE_EXEC_COMM,
        "acquisitions": 3,
        "wait_total_ns": 1200,
        "hold_total_ns": 1_800_000,
        "events": 0,
    }
    # The command's main thread is called by the command's name everywhere.
    assert sorted(rec.tasks["comm"]) == ["khugepaged", "mmapcount", "mmapcount"]
    # What a user sees: only the command's own mmap_lock, and it reconciles.
    rows = summary.lock_rows(recording.load(recording.save(rec, tmp_path / "run.lpr")))
    mmap_rows = {r["mode"]: r for r in rows if r["lock_class"] == "mmap_lock"}
    assert set(mmap_rows) == {"read", "write"}
    for row in mmap_rows.values():
        assert (row["lock_addr"], row["owner_pid"], row["owner_comm"]) == (
            f"{COMMAND_LOCK:#x}",
            pid,
            "mmapcount",
        )
        assert row["still_held"] == 0
    assert mmap_rows["write"]["acquisitions"] == 20
    assert [r["lock"] for r in rows if r["lock_class"] == "spinlock"] == [
        f"rcu_core+0xac ({SPINLOCK:#x})"
    ]


def test_a_stack_that_cannot_be_read_leaves_the_recording_whole_and_is_counted(
    no_bpf, finished_run, snap, stats_columns, tmp_path
):
    pid = finished_run.tgid
    fake = FakeSession(
        owners={COMMAND_LOCK: (pid, "mmapcount")},
        target_lock=COMMAND_LOCK,
        callers=[
            {"lock": SPINLOCK, "stack_id": 3, "flags": SPIN, "count": 1, "total_ns": 691},
            {"lock": SPINLOCK, "stack_id": 4, "flags": SPIN, "count": 2, "total_ns": 900},
        ],
        stacks={3: IndexError("invalid index"), 4: ["_raw_spin_lock+0x1", "rcu_core+0xac"]},
    )
    for caller in fake.callers:
        caller["max_ns"] = caller["total_ns"]
    rec = recording.load(
        recording.save(build(finished_run, fake, snap, stats_columns), tmp_path / "r.lpr")
    )
    frames = dict(zip(rec.stacks["stack_id"], rec.stacks["frames"], strict=True))
    assert list(frames[3]) == [] and list(frames[4]) == ["_raw_spin_lock+0x1", "rcu_core+0xac"]
    assert rec.meta["errors"]["stack"] == 1
    assert any("kernel stacks not captured" in n for n in summary.notes(rec.meta))
    assert int(rec.callers["count"].sum()) == 3  # the waits themselves are all there


def test_a_runqueue_lock_is_named_after_its_cpu_not_its_caller(
    no_bpf, finished_run, snap, stats_columns
):
    """The probes learned SPINLOCK as CPU 1's runqueue lock (lp_learn_rq):
    that names it, before the caller that waited longest on it."""
    caller = {"lock": SPINLOCK, "stack_id": 4, "flags": SPIN, "count": 1, "total_ns": 691}
    caller["max_ns"] = 691
    stacks = {4: ["_raw_spin_lock+0x3b", "sched_tick+0x43"]}
    named = {}
    for rq_names in ({}, {SPINLOCK: "rq_lock cpu1"}):
        fake = FakeSession(
            owners={COMMAND_LOCK: (finished_run.tgid, "mmapcount")},
            target_lock=COMMAND_LOCK,
            callers=[dict(caller)],
            stacks=stacks,
            rq_names=rq_names,
        )
        locks = build(finished_run, fake, snap, stats_columns).locks
        (named[bool(rq_names)],) = locks.loc[locks["lock"] == SPINLOCK, "name"]
    assert named == {False: f"sched_tick+0x43 ({SPINLOCK:#x})", True: "rq_lock cpu1"}


def test_run_keeps_the_pre_exec_mm_while_it_is_the_commands_only_mm(
    no_bpf, finished_run, snap, stats_columns
):
    # Collection ended before the exec: the copied mm is all the pid has.
    pid = finished_run.tgid
    fake = FakeSession(owners={PRE_EXEC_LOCK: (pid, PRE_EXEC_COMM)}, target_lock=PRE_EXEC_LOCK)
    rec = build(finished_run, fake, snap, stats_columns)
    assert PRE_EXEC_LOCK in set(rec.intervals["lock"].tolist())
    assert rec.meta["pre_exec_mmap_lock"] is None


def test_attach_keeps_every_lock(no_bpf, snap, stats_columns):
    # Only `run` has a pre-exec mm: an attached process named like one keeps its lock.
    target = PidTarget(os.getpid())
    fake = FakeSession(
        owners={PRE_EXEC_LOCK: (os.getpid(), PRE_EXEC_COMM), COMMAND_LOCK: (os.getpid(), "x")},
        target_lock=COMMAND_LOCK,
    )
    target.begin()
    rec = build(target, fake, snap, stats_columns)
    assert {PRE_EXEC_LOCK, COMMAND_LOCK} <= set(rec.intervals["lock"].tolist())
    assert rec.meta["pre_exec_mmap_lock"] is None


def test_live_view_leaves_out_the_pre_exec_mm(no_bpf, finished_run, snap, stats_columns):
    pid = finished_run.tgid
    fake = FakeSession(
        owners={PRE_EXEC_LOCK: (pid, PRE_EXEC_COMM), COMMAND_LOCK: (pid, "mmapcount")},
        target_lock=COMMAND_LOCK,
    )
    snapshot = SimpleNamespace(rows=run_snapshot(snap).copy(), columns=stats_columns)
    state = session._live_state(
        snapshot,
        fake,
        session._LockNamer(fake),
        finished_run,
        session.CollectOptions(),
        1_000_000_000,
        session._Collected(),
    )
    assert {r["lock_addr"] for r in state.rows} == {f"{COMMAND_LOCK:#x}", f"{SPINLOCK:#x}"}
    assert {r["owner_comm"] for r in state.rows if r["lock_class"] == "mmap_lock"} == {"mmapcount"}


def test_without_locks_compares_kernel_addresses_exactly():
    frame = pd.DataFrame({"lock": pd.Series([2**64 - 1, 2**63, 5], dtype="uint64"), "x": [1, 2, 3]})
    assert session.without_locks(frame, {2**63})["x"].tolist() == [1, 3]
    assert session.without_locks(frame, set()) is frame


def _snapshot_rows(columns, per_lock):
    """{(lock, flags, source): (cpus x columns) array} with wait/hold totals."""
    rows = {}
    for (lock, source), (wait, hold, acq) in per_lock.items():
        values = np.zeros((2, len(columns)), dtype=np.uint64)
        values[0, columns.index("wait.total_ns")] = wait
        values[1, columns.index("hold.total_ns")] = hold
        values[1, columns.index("acquisitions")] = acq
        values[0, columns.index("contended")] = 1
        rows[(lock, 2, source)] = values
    return rows


def test_live_view_summarises_the_busiest_locks_and_counts_the_rest(stats_columns):
    rows = _snapshot_rows(
        stats_columns,
        {(0x10, 0): (5, 5, 1), (0x20, 0): (100, 0, 1), (0x30, 1): (0, 50, 0), (0x40, 0): (1, 0, 1)},
    )
    kept, more = session.busiest_rows(rows, stats_columns, 2)
    assert {key[0] for key in kept} == {0x20, 0x30} and more == 2
    assert session.busiest_rows(rows, stats_columns, 10) == (rows, 0)


def test_cpu_totals_cover_every_lock(stats_columns):
    rows = _snapshot_rows(stats_columns, {(0x10, 0): (5, 5, 3), (0x20, 0): (100, 0, 4)})
    # A contention-only lock: contended waits and their time, no acquisitions.
    rows[(0x30, 2, SRC_CONT)] = np.ones((2, len(stats_columns)), dtype=np.uint64)
    # lock:contention_* on an mmap_lock's mode: its contended acquisitions again.
    rows[(0x10, READ, SRC_CONT)] = np.full((2, len(stats_columns)), 50, dtype=np.uint64)
    assert session.cpu_totals(rows, stats_columns) == {
        0: CpuFigures(acquisitions=0, contended=3, wait_ns=106),
        1: CpuFigures(acquisitions=7, contended=1, wait_ns=1),
    }
    assert session.cpu_totals(rows, stats_columns, hidden={0x20}) == {
        0: CpuFigures(acquisitions=0, contended=2, wait_ns=6),
        1: CpuFigures(acquisitions=3, contended=1, wait_ns=1),
    }


def test_the_live_per_cpu_totals_are_the_final_summarys(snap, stats_columns):
    """The live view's per-CPU line (from the kernel's rows) and the final
    summary's (from the summary rows' per_cpu, as in `show --json`) count the
    same: the live one counted acquisitions, the final one added
    contention-only locks' waits into them."""
    s = snap(cpus=2)
    write, cont = (COMMAND_LOCK, WRITE, SRC_MMAP), (COMMAND_LOCK, WRITE, SRC_CONT)
    spin = (SPINLOCK, SPIN, SRC_CONT)
    for cpu, n in ((0, 3), (1, 5)):
        s.bump(write, cpu, "acquisitions", n)
        s.bump(write, cpu, "contended")
        s.hist_add(write, cpu, "wait", 2000)
        s.bump(cont, cpu, "contended")  # that contended acquisition, in lock:contention_*
        s.hist_add(cont, cpu, "wait", 1500)
        s.bump(spin, cpu, "contended", 4 * n)
        s.hist_add(spin, cpu, "wait", 300)
    snapshot = s.copy()
    frame = aggregate.records_frame(aggregate.delta_records({}, snapshot, stats_columns, 1, 1))
    locks = aggregate.name_locks(frame, {COMMAND_LOCK: (4242, "x")}, EMPTY_CALLERS, {})
    rows = aggregate.summary_rows(frame, locks, ["mmap_lock", "contention"])
    live = session.cpu_totals(snapshot, stats_columns)
    assert live == render.cpu_totals_of(rows)
    assert live == {
        0: CpuFigures(acquisitions=3, contended=13, wait_ns=2300),
        1: CpuFigures(acquisitions=5, contended=21, wait_ns=2300),
    }
    assert sum(cpu.acquisitions for cpu in live.values()) == sum(
        row["acquisitions"] or 0 for row in rows
    )


# -- the held child, signals, and what the target does meanwhile ------------------------------


def test_held_child_never_runs_the_command_if_lockprof_goes_away(tmp_path):
    """The gate closes without the go byte (lockprof stopped or was killed
    before collection started): the child exits 125, the command never ran."""
    marker = tmp_path / "ran"
    target = CommandTarget(["touch", str(marker)])
    os.close(target._gate_w)
    target.wait()
    assert target.exit_status == 125
    assert not marker.exists()


def test_the_command_gets_default_signal_dispositions(tmp_path):
    """lockprof's handlers and Python's ignored SIGPIPE are not inherited;
    what lockprof's own parent left ignored is (signals.INHERITED_IGNORED:
    SIGHUP when the suite runs under nohup, where this test failed when it
    expected SIGHUP's default whatever the suite inherited)."""
    out = tmp_path / "sig"
    target = CommandTarget(["sh", "-c", f"grep -E '^Sig(Ign|Cgt)' /proc/$$/status > {out}"])
    target.begin()
    wait_for_exit(target)
    masks = dict(line.split(":\t") for line in out.read_text().splitlines())
    ignored = int(masks["SigIgn"], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        expected = sig in INHERITED_IGNORED
        assert bool(ignored & (1 << (sig - 1))) == expected, (sig, expected)


def test_a_ctrl_c_to_the_held_child_before_exec_is_not_an_error(tmp_path):
    """SIGINT from the terminal reaches the held child too: it dies, and
    begin() neither raises nor hangs."""
    target = CommandTarget(["true"])
    os.kill(target.tgid, signal.SIGINT)
    time.sleep(0.2)
    target.begin()
    assert wait_for_exit(target) == "command killed by SIGINT"
    assert (target.exit_status, target.exit_signal) == (128 + signal.SIGINT, "SIGINT")


@pytest.mark.parametrize(
    ("script", "status", "signame", "reason"),
    [
        ("exit 3", 3, None, "command exited with status 3"),
        ("kill -TERM $$", 128 + signal.SIGTERM, "SIGTERM", "command killed by SIGTERM"),
        ("kill -KILL $$", 128 + signal.SIGKILL, "SIGKILL", "command killed by SIGKILL"),
        ("exit 0", 0, None, "command exited with status 0"),
    ],
)
def test_the_commands_status_is_kept_as_a_shell_gives_it(script, status, signame, reason):
    """128 + N for signal N, as $? and time give it (was -N, and exit 0)."""
    target = CommandTarget(["sh", "-c", script])
    target.begin()
    assert wait_for_exit(target) == reason
    assert (target.exit_status, target.exit_signal) == (status, signame)


def test_run_json_sends_the_commands_stdout_to_stderr(capfd):
    """run --json: lockprof's stdout holds the JSON alone (the command's
    "40144 records in 3.000 s" came before the `{`)."""
    target = CommandTarget(["sh", "-c", "echo to-stdout; echo to-stderr >&2"], stdout_fd=2)
    target.begin()
    wait_for_exit(target)
    out, err = capfd.readouterr()
    assert out == "" and err == "to-stdout\nto-stderr\n"
    target = CommandTarget(["sh", "-c", "echo to-stdout"])  # without --json: unchanged
    target.begin()
    wait_for_exit(target)
    assert capfd.readouterr().out == "to-stdout\n"


# -- run -d: collection stops, the command is not waited for ----------------------------------


def test_a_command_still_running_at_the_end_has_its_own_rusage_over_the_window(monkeypatch):
    """-d reached while the command runs: it is left running, its exit status
    unknown, its rusage its own (from /proc) over the collection window; it
    was the whole system's (CommandTarget sampled /proc/stat)."""
    from profiler import targets

    def system_wide():
        raise AssertionError("a command's rusage from the whole system's figures")

    monkeypatch.setattr(targets, "_system_times", system_wide)
    target = CommandTarget(["sh", "-c", "while :; do :; done"])
    try:
        target.begin()
        time.sleep(0.5)
        target.end()
        rusage = target.rusage()
        assert target.exit_status is None and target.poll() is None  # still running
        assert 0.45 <= rusage["elapsed_s"] < 1.5
        assert 0 < rusage["user_s"] + rusage["sys_s"] <= rusage["elapsed_s"] + 0.05
        assert rusage["minor_faults"] >= 0
    finally:
        os.kill(target.tgid, signal.SIGKILL)
        target.wait()


def test_the_rusage_of_a_command_still_running_counts_its_reaped_children(tmp_path):
    """`run -d -- make`: the figures of a command still running are, as
    wait4's for one that exited, its own and its reaped children's
    (/proc/PID/stat cutime, cstime, cminflt); utime and stime alone gave a
    make near 0 s whose compilers did the work."""
    ready = tmp_path / "ready"
    burn = "import time\nwhile time.process_time() < 0.3: pass"
    script = f'"{sys.executable}" -c "{burn}"; echo > {ready}; sleep 30'
    target = CommandTarget(["sh", "-c", script])
    try:
        target.begin()
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        target.end()
        assert target.poll() is None  # still running
        rusage = target.rusage()
        assert rusage["user_s"] + rusage["sys_s"] >= 0.25
        assert rusage["minor_faults"] > 100  # the child's faults (Python's start-up)
    finally:
        os.kill(target.tgid, signal.SIGKILL)
        target.wait()


def test_lockprof_does_not_wait_for_a_command_still_running():
    """-d reached (no signal): not a moment's wait. After a signal: at most
    SIGNAL_GRACE_S, for a command the terminal's Ctrl-C is also ending, and
    a further signal ends even that."""
    from profiler.signals import StopFlag

    target = CommandTarget(["sleep", "30"])
    try:
        target.begin()
        stop = StopFlag()
        stop.request("duration 1s reached")
        started = time.monotonic()
        session._grace_for_command(target, stop)
        assert time.monotonic() - started < 0.05
        stop.signum = signal.SIGTERM
        started = time.monotonic()
        session._grace_for_command(target, stop)
        assert session.SIGNAL_GRACE_S <= time.monotonic() - started < session.SIGNAL_GRACE_S + 0.5
        stop.install()
        try:
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            started = time.monotonic()
            session._grace_for_command(target, stop)  # no grace after SIGINT: honoured
            assert time.monotonic() - started < session.SIGNAL_GRACE_S
        finally:
            stop.uninstall()
        assert target.poll() is None
    finally:
        os.kill(target.tgid, signal.SIGKILL)
        target.wait()


def test_a_command_outliving_the_grace_is_measured_up_to_the_stop():
    """A signal to lockprof alone ends collection; the command gets
    SIGNAL_GRACE_S to exit, outlives it and is left running. Its rusage
    covers the collection window, as the note says and as the lock figures
    do: its elapsed time was the window plus the grace (1.51 s for 1.20)."""
    from profiler.signals import StopFlag

    target = CommandTarget(["sleep", "30"])
    try:
        target.begin()
        time.sleep(0.2)
        stop = StopFlag()
        stop.reason, stop.signum = "SIGTERM received", signal.SIGTERM
        session._end_target(target, stop)
        assert target.poll() is None  # still running: left running
        assert 0.2 <= target.rusage()["elapsed_s"] < 0.2 + session.SIGNAL_GRACE_S / 2
    finally:
        os.kill(target.tgid, signal.SIGKILL)
        target.wait()


def test_a_further_signal_during_the_grace_says_it_ends_the_wait(capfd):
    """A second Ctrl-C while the command gets its moment to exit ends that
    wait, and says so (it said "writing the recording, please wait")."""
    from profiler.signals import WRITING, StopFlag

    target = CommandTarget(["sleep", "30"])
    try:
        target.begin()
        stop = StopFlag().install()
        try:
            stop.reason, stop.signum = "SIGINT received", signal.SIGINT
            stop.draining = True  # as collect() sets it before the wait
            capfd.readouterr()
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            session._grace_for_command(target, stop)
            assert stop.repeats == 1 and stop.phase == WRITING
            err = capfd.readouterr().err
            assert (
                err == "lockprof: already stopping; no longer waiting for the command, "
                "writing the recording\n"
            )
            os.kill(os.getpid(), signal.SIGINT)  # while writing: as before
            assert capfd.readouterr().err.endswith("writing the recording, please wait\n")
        finally:
            stop.uninstall()
    finally:
        os.kill(target.tgid, signal.SIGKILL)
        target.wait()


def test_a_command_that_ends_with_the_signal_passes_its_status_on():
    from profiler.signals import StopFlag

    target = CommandTarget(["sleep", "30"])
    target.begin()
    stop = StopFlag()
    stop.signum = signal.SIGINT
    threading.Timer(0.05, os.kill, (target.tgid, signal.SIGINT)).start()
    session._grace_for_command(target, stop)
    target.end()
    assert (target.exit_status, target.exit_signal) == (130, "SIGINT")


def test_a_command_left_running_is_noted():
    note = summary.notes({"mode": "run", "target_pid": 42, "exit_status": None})
    assert note == [summary.command_running_note(42)]
    assert "rusage covers the collection window only" in note[0]
    assert summary.notes({"mode": "run", "target_pid": 42, "exit_status": 0}) == []
    assert summary.notes({"mode": "attach", "target_pid": 42, "exit_status": None}) == []
    stopped = {"mode": "run", "target_pid": 42, "exit_status": 143, "ended_by_lockprof": True}
    assert summary.notes(stopped) == [summary.command_stopped_note(42)]
    assert "lockprof stopped it (SIGTERM, then SIGKILL)" in summary.notes(stopped)[0]


def test_recordings_from_before_exit_signal_read_the_same():
    from profiler.targets import recorded_exit

    assert recorded_exit({"exit_status": -15}) == (143, "SIGTERM")
    assert recorded_exit({"exit_status": 3}) == (3, None)
    assert recorded_exit({"exit_status": 143, "exit_signal": "SIGTERM"}) == (143, "SIGTERM")
    assert recorded_exit({}) == (None, None)


def test_printable_arg():
    from profiler.targets import printable_arg

    assert printable_arg("plain \x1b[31m") == "plain \x1b[31m"
    assert printable_arg("x\udcffy") == "x\ufffdy"  # a byte that was not UTF-8
    target = CommandTarget(["true", "x\udcffy"])
    try:
        assert target.command() == ["true", "x\ufffdy"]
        assert target.describe().endswith("(true x\ufffdy)")
    finally:
        target.abandon()


def test_lineage_sees_children_and_execs_of_a_process(tmp_path):
    from profiler.targets import Lineage

    proc = subprocess.Popen(
        ["sh", "-c", "sleep 5 & sleep 5 & read x; exec sleep 5"], stdin=subprocess.PIPE
    )
    try:
        time.sleep(0.3)
        lineage = Lineage(proc.pid)
        lineage.observe(0.0)
        assert lineage.meta() == {"children_seen": 2, "execs": []}
        assert proc.stdin is not None
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        time.sleep(0.3)
        lineage.observe(1.5)
        assert lineage.meta()["execs"] == [{"t_s": 1.5, "comm": "sleep", "exe": "/usr/bin/sleep"}]
        lineage.observe(2.0)  # the same program: no new exec
        assert len(lineage.meta()["execs"]) == 1
    finally:
        proc.kill()
        proc.wait()


def test_lineage_of_a_run_ignores_the_pre_exec_child():
    from profiler.targets import Lineage

    target = CommandTarget(["sleep", "5"])
    try:
        assert isinstance(target.lineage, Lineage)
        target.lineage.observe(0.0)  # still lockprof-exec: not a program yet
        target.begin()
        time.sleep(0.2)
        assert target.poll() is None
        assert target.lineage.meta() == {"children_seen": 0, "execs": []}
    finally:
        os.kill(target.tgid, signal.SIGKILL)
        target.wait()


@pytest.mark.parametrize("when", ["compile", "attach"])
def test_a_signal_before_collection_starts_undoes_everything(monkeypatch, tmp_path, when):
    """A signal while the probes compile (or attach): the session is
    closed, the held command is killed and never runs, Interrupted (one
    line, 128 + N) is raised, and the caller's flag stays installed."""
    from profiler import signals

    events = []
    stop = signals.StopFlag(phase=signals.STARTING).install()

    class FakeBpfSession:
        def __init__(self, *_args, **_kwargs):
            events.append("compiled")
            if when == "compile":
                os.kill(os.getpid(), signal.SIGTERM)

        @classmethod
        def for_collection(cls, *args, **kwargs):
            return cls(*args, **kwargs)

        def attach(self):
            events.append("attached")
            if when == "attach":
                os.kill(os.getpid(), signal.SIGTERM)
            return []

        def close(self):
            events.append("closed")

    fake = SimpleNamespace(BpfSession=FakeBpfSession)
    monkeypatch.setitem(sys.modules, "profiler.bpf", fake)
    monkeypatch.setattr(profiler, "bpf", fake, raising=False)  # if imported already
    marker = tmp_path / "ran"
    target = CommandTarget(["touch", str(marker)])
    try:
        with pytest.raises(signals.Interrupted) as excinfo:
            session.collect(session.CollectOptions(), target, {"raw_tracepoint"}, stop=stop)
        assert excinfo.value.exit_code == 128 + signal.SIGTERM
        assert events == (["compiled", "closed"] if when == "compile" else
                          ["compiled", "attached", "closed"])  # fmt: skip
        assert stop.installed
    finally:
        stop.uninstall()
    with pytest.raises(ChildProcessError):
        os.waitpid(target.tgid, 0)  # killed and reaped by abandon()
    assert not marker.exists()


@pytest.mark.parametrize("reaped", [False, True])
def test_attach_to_a_pid_that_exits_before_collection_starts_is_an_error(monkeypatch, reaped):
    """`sleep 0.8 & lockprof attach -p $!`: the process exited while the
    probes compiled. One line and a nonzero exit, the probes detached; not
    "attached ..." and an empty recording with status 0."""
    events = []

    class FakeBpfSession:
        def __init__(self, *_args, **_kwargs):
            events.append("compiled")

        @classmethod
        def for_collection(cls, *args, **kwargs):
            return cls(*args, **kwargs)

        def attach(self):
            events.append("attached")
            return []

        def learn_target_lock(self, _tgid):
            pass  # the pid has gone: there is no lock to learn

        def close(self):
            events.append("closed")

        def __enter__(self):
            return self

        def __exit__(self, *_exc):
            self.close()

    def said_attached(_probes):
        pytest.fail("said attached to a process that had exited")

    fake = SimpleNamespace(BpfSession=FakeBpfSession)
    monkeypatch.setitem(sys.modules, "profiler.bpf", fake)
    monkeypatch.setattr(profiler, "bpf", fake, raising=False)
    child = subprocess.Popen(["sleep", "30"])
    target = PidTarget(child.pid)
    child.kill()
    if reaped:
        child.wait()
    else:  # a zombie: exited, not yet reaped by its parent
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            time.sleep(0.01)
    try:
        with pytest.raises(LockprofError) as excinfo:
            session.collect(
                session.CollectOptions(),
                target,
                {"raw_tracepoint"},
                on_attached=said_attached,
            )
    finally:
        child.wait()
    assert str(excinfo.value) == (
        f"pid {child.pid} exited before collection started; nothing was recorded"
    )
    assert excinfo.value.exit_code != 0
    assert events == ["compiled", "attached", "closed"]


def test_a_pid_taken_by_another_process_is_not_the_target(monkeypatch):
    """The target exited and a new process got its pid (while the probes
    compiled, or during the run): its start time tells them apart."""
    from profiler import targets

    child = subprocess.Popen(["sleep", "30"])
    try:
        target = PidTarget(child.pid)
        target.check_present()  # the same process: collection may start
        real_fields = targets._stat_fields

        def started_later(pid):  # a new process on the pid: a later start time
            fields = real_fields(pid)
            return [*fields[:19], str(int(fields[19]) + 1).encode(), *fields[20:]]

        monkeypatch.setattr(targets, "_stat_fields", started_later)
        with pytest.raises(LockprofError, match="exited before collection started"):
            target.check_present()
        assert target.poll() == f"pid {child.pid} exited"
    finally:
        child.kill()
        child.wait()


def test_interval_rows_spilled_as_records_read_back_the_same(make_row, tmp_path):
    """Collection spills each interval's rows to disk as fixed-size records;
    the frame they give is the one a saved and reloaded recording has, with
    unknown interval maxima still null."""
    rows = [
        [make_row(0xFFFF888100000100 + lock, WRITE, SRC_MMAP, cpu=cpu, acquisitions=i + 1)
         for lock in range(3) for cpu in range(2)]
        for i in range(5)
    ]  # fmt: skip
    for row_list, interval in zip(rows, range(1, 6), strict=True):
        for row in row_list:
            row["interval"] = interval
    rows[2][0]["wait_max_ns"] = None
    rows[3][1]["hold_max_ns"] = 12345
    spilled = session._Collected()
    for row_list in rows:
        spilled.keep(interval_records(row_list))
    assert spilled.spool.records == 30 and spilled.spool._file is not None  # on disk
    whole = intervals_frame([row for row_list in rows for row in row_list])
    rec = recording.Recording(meta={}, intervals=whole, locks=recording.empty_table("locks"))
    reloaded = recording.load(recording.save(rec, tmp_path / "r.lpr")).intervals
    got = kept_intervals(spilled)
    pd.testing.assert_frame_equal(
        got.drop(columns=["wait_slots", "hold_slots"]),
        reloaded.drop(columns=["wait_slots", "hold_slots"]),
    )
    for column in ("wait_slots", "hold_slots"):
        assert [list(v) for v in got[column]] == [list(v) for v in reloaded[column]]
    assert got["wait_max_ns"].isna().sum() == 1 and 12345 in got["hold_max_ns"].tolist()
    assert len(kept_intervals(session._Collected())) == 0


def kept_intervals(state: session._Collected) -> pd.DataFrame:
    """The intervals table a recording gets from the spooled rows, as the
    end of a collection builds it (profiler/intervals.py)."""
    built = build_intervals(lambda: state.spool.chunks(INTERVAL_CHUNK_ROWS), set())
    rec = recording.Recording(
        meta={},
        intervals=built.frame,
        intervals_file=built.spilled,
        locks=recording.empty_table("locks"),
    )
    return rec.intervals


def test_a_counter_that_went_backwards_does_not_lose_the_recording(snap, stats_columns):
    """A uint64 counter that decreased between two snapshots gives a
    negative delta (not one >= 2**63, which no int64 field holds): it is kept
    as the negative number it is instead of failing the recording."""
    key = (0xFFFF888100000100, WRITE, SRC_MMAP)
    s = snap()
    s.set(key, 0, {"acquisitions": 5, "wait.count": 1, "wait.slots[0]": 1})
    before = s.copy()
    s.set(key, 0, {"acquisitions": 2, "wait.count": 2, "wait.slots[0]": 0, "wait.slots[3]": 2})
    kept = session._Collected()
    kept.keep(aggregate.delta_records(before, s.copy(), stats_columns, 2, 2.0))
    frame = kept_intervals(kept)
    assert frame["acquisitions"].tolist() == [-3]
    assert frame["wait_slots"][0][0] == -1


def test_a_wait_of_about_2_to_the_64_ns_does_not_lose_the_recording(snap, stats_columns):
    """The corrupt sample a negative duration once made (lp_contention_end
    read a start later than its end): the interval maximum is unknown, the
    running maximum capped, and the interval is kept."""
    key = (0xFFFF888100000100, 1, SRC_CONT)
    s = snap()
    s.set(key, 1, {"contended": 1, "wait.count": 1, "wait.max_ns": 2**64 - 40})
    kept = session._Collected()
    kept.keep(aggregate.delta_records({}, s.copy(), stats_columns, 1, 1.0))
    frame = kept_intervals(kept)
    assert frame["contended"].tolist() == [1]
    assert frame["wait_max_ns"].isna().all()
    assert frame["wait_running_max_ns"].tolist() == [2**63 - 1]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # gone since it was listed
        return "?"


def test_descendants_are_every_process_below_in_the_tree():
    """attach --follow starts from the target's descendants as /proc shows
    them: children and grandchildren, not the target itself."""
    from profiler.targets import descendants_of

    tree = subprocess.Popen(
        ["sh", "-c", "sleep 30 & sh -c 'sleep 30 & wait' & wait"], stdout=subprocess.DEVNULL
    )
    try:
        # Until every child has exec'd: between its fork and exec, a sleep
        # is still an "sh" (seen once on a loaded machine).
        deadline = time.monotonic() + 10
        comms: list[str] = []
        while time.monotonic() < deadline and comms != ["sh", "sleep", "sleep"]:
            time.sleep(0.05)
            found = descendants_of(tree.pid)
            comms = sorted(_comm(pid) for pid in found)
        assert comms == ["sh", "sleep", "sleep"], comms
        assert tree.pid not in found
        assert descendants_of(0) == set()
    finally:
        for pid in descendants_of(tree.pid):
            os.kill(pid, signal.SIGKILL)
        tree.kill()
        tree.wait()


# -- the event stream as the recording holds it --------------------------------------


@pytest.mark.parametrize("comm_dtype", [("S1", (16,)), "S16"], ids=["bcc-char-array", "bytes"])
def test_events_frame_decodes_comms_once_each(comm_dtype):
    """BCC hands struct lp_event's char comm[16] over as 16 one-byte strings a
    row; the frame must hold whole, decoded comms (hostile bytes replaced),
    and kinds, whatever the layout."""
    dtype = np.dtype(
        [("ts_ns", "<u8"), ("duration_ns", "<u8"), ("lock", "<u8"), ("tgid", "<u4"),
         ("tid", "<u4"), ("mm_gen", "<u4"), ("stack_id", "<i4"), ("cpu", "<u2"),
         ("flags", "<u2"), ("source", "<u2"), ("kind", "<u2"), ("comm", comm_dtype)]
    )  # fmt: skip
    comms = [b"mmapcount", b"sh", b"bad\xfe\x1b[31m", b"bad\xff\x1b[31m", b"fifteen-bytes!!"]
    events = np.zeros(len(comms), dtype=dtype)
    for i, comm in enumerate(comms):
        events[i]["comm"] = (
            np.frombuffer(comm.ljust(16, b"\0"), dtype="S1") if comm_dtype != "S16" else comm
        )
    events["kind"] = [0, 1, 1, 0, 0]
    events["ts_ns"] = [1_000_000_000 + i for i in range(len(comms))]
    frame = events_frame(events, 1_000_000_000)
    bad = "bad\ufffd\x1b[31m"  # two comms whose invalid bytes differ decode alike
    assert frame["comm"].tolist() == ["mmapcount", "sh", bad, bad, "fifteen-bytes!!"]
    assert frame["kind"].tolist() == ["wait", "hold", "hold", "wait", "wait"]
    assert frame["t_s"].tolist() == pytest.approx([0, 1e-9, 2e-9, 3e-9, 4e-9])


def test_the_namer_gives_the_frames_of_the_stacks_asked_for_only():
    """The recording's stacks table is namer.frames(the ids its tables hold,
    >= 0); naming locks first looked up every caller's id, a failed
    capture's -17 too, and the table got a stack -17 with no frames."""
    fake = SimpleNamespace(stack_frames=lambda stack_id: [] if stack_id < 0 else [f"f{stack_id}"])
    namer = session._LockNamer(fake)
    assert namer.frames([3, -17, -1]) == {3: ["f3"], -17: [], -1: []}
    assert namer.frames([3, 5]) == {3: ["f3"], 5: ["f5"]}


def test_rq_learning_is_detached_on_time_whatever_the_interval():
    """lp_learn_rq runs on every enqueue and dequeue: past RQ_LEARN_S the
    loop detaches it between snapshots, not at the next one (-i 3600: an
    hour later)."""
    calls = []

    class Session:
        overdue = True

        def poll_events(self, _ms):
            time.sleep(0.01)

        def rq_learning_overdue(self):
            return self.overdue

        def rq_lock_names(self):
            calls.append("rq")
            self.overdue = False  # detached
            return {}

    from profiler.signals import StopFlag

    options = session.CollectOptions()
    options.interval_s, options.duration_s = 3600.0, 0.2
    target = SimpleNamespace(poll=lambda: None)
    start = time.monotonic_ns()
    session._collect_loop(options, target, Session(), StopFlag(), None, None, start, None)
    assert calls == ["rq"]


def test_the_live_view_goes_as_soon_as_collection_stops(monkeypatch):
    """The live frame stayed on screen, frozen, while the probes were
    detached and the recording built (seconds, for a long one); a further
    Ctrl-C's "already stopping" line was written into it, then erased with
    it, and the frame's first lines were left above the summary."""
    events = []

    class Detaching(Exception):
        pass

    class FakeBpfSession:
        def __init__(self, *_args, **_kwargs):
            pass

        @classmethod
        def for_collection(cls, *args, **kwargs):
            return cls(*args, **kwargs)

        def attach(self):
            return []

        def learn_target_lock(self, _tgid):
            pass

        def disarm(self):
            events.append("disarm")
            raise Detaching  # what follows needs a real session

        def close(self):
            events.append("close")

        def __enter__(self):
            return self

        def __exit__(self, *_exc):
            self.close()

    def loop(_options, _target, _session, stop, *_args):
        events.append("loop")
        stop.request("duration 1s reached")

    fake = SimpleNamespace(BpfSession=FakeBpfSession)
    monkeypatch.setitem(sys.modules, "profiler.bpf", fake)
    monkeypatch.setattr(profiler, "bpf", fake, raising=False)
    monkeypatch.setattr(session, "_collect_loop", loop)
    monkeypatch.setattr(session, "_LockNamer", lambda *_args: None)
    with pytest.raises(Detaching):
        session.collect(
            session.CollectOptions(),
            PidTarget(os.getpid()),
            {"raw_tracepoint"},
            on_stopped=lambda: events.append("view stopped"),
        )
    assert events == ["loop", "view stopped", "disarm", "close"]


def test_the_idle_tasks_rows_go_with_their_locks_row():
    """pid 0 (each CPU's idle task, contending in interrupts) has no /proc
    entry and never exits: its per-task row must not be retired every round
    (waits counted between the row's read and its reset were lost), nor
    kept for good (one per lock an interrupt ever contended on would fill
    the task map): it goes when its lock's row has left the kernel's map."""
    from profiler.session import _task_alive

    live = {0xFFFF888100001000}
    assert _task_alive(0, 0, 0xFFFF888100001000, live_locks=live)
    assert not _task_alive(0, 0, 0xFFFF888100002000, live_locks=live)
    assert not _task_alive(0, 0, None, live_locks=live)  # a lock never given an id
    assert _task_alive(os.getpid(), os.getpid(), 0xFFFF888100002000, live_locks=live)
    assert not _task_alive(os.getpid(), 2**22 + 1)  # above pid_max: no such thread


def test_the_namer_reads_the_symbol_tables_ahead_and_names_with_them(monkeypatch):
    """start_warming reads kallsyms' data and text symbols in a thread
    while the first snapshot is awaited; the first naming waits for it and
    reads neither again. A failure there is left for the naming to meet."""
    reads = []
    release = threading.Event()

    def data_symbols():
        release.wait(5)
        reads.append("data")
        return {0x1000: "some_lock"}

    monkeypatch.setattr(session.ksyms, "data_symbols", data_symbols)
    fake = SimpleNamespace(
        read_text_symbols=lambda: reads.append("text"),
        rq_lock_names=dict,
        stack_frames=lambda stack_id: [f"f{stack_id}"],
    )
    namer = session._LockNamer(fake)
    namer.start_warming()
    assert reads == []  # the thread waits: the caller went on
    release.set()
    assert namer._symbols() == {0x1000: "some_lock"}
    assert reads == ["data", "text"]
    assert namer.frames([7]) == {7: ["f7"]} and reads == ["data", "text"]

    def broken():
        raise OSError("no kallsyms")

    monkeypatch.setattr(session.ksyms, "data_symbols", broken)
    failing = session._LockNamer(fake)
    failing.start_warming()
    with pytest.raises(OSError):
        failing._symbols()  # read again where it is used, and said there
