"""A wait the kernel half-skipped is left out, not paired with a later one.

An interrupt that contends on a spinlock runs lockprof's contention programs
on the interrupted task's storage, and the kernel skips whichever of them is
already running on that CPU (recursion_misses). So an interrupt's begin inside
lp_contention_end has its end skipped, and an interrupt's end inside
lp_contention_begin had its begin skipped. Each program marks itself running
in the task's storage (in_begin, in_end); the other, seeing the mark, leaves
that wait out (irq_wait_skipped) instead of leaving a stale nest entry, or
popping one.

Interrupts cannot be made to land inside a program on purpose, so the marks
are set by hand in this test task's own storage (a task-storage map takes a
pidfd as key from user space), and the real programs are run on it with
BPF_PROG_TEST_RUN (raw tracepoint programs take their arguments as context,
and run as the calling task). Nothing is attached: no real contention of
this task interferes.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform

import pytest

from profiler import bpf as bpf_mod
from profiler import probes

SYS_BPF = 321  # x86_64
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_PROG_TEST_RUN = 1, 2, 10
LOCK_A, LOCK_B = 0xFFFF_8880_DEAD_0000, 0xFFFF_8880_BEEF_0000
SPIN = 1  # LCB_F_SPIN

libc = ctypes.CDLL(None, use_errno=True)

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the bpf syscall number here is x86_64's"
)


class MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class ProgRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def bpf_call(command: int, attr: ctypes.Structure) -> None:
    if libc.syscall(SYS_BPF, command, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({command}): {os.strerror(err)}")


class Harness:
    """lockprof's real contention programs, armed but not attached, run on
    this task by hand, with its task storage read and written by pidfd."""

    def __init__(self, session: bpf_mod.BpfSession):
        self.session = session
        bcc = session._bcc
        bpf_object = session._bpf
        self.store_fd = bcc.lib.bpf_table_fd(bpf_object.module, b"lp_task_store")
        assert self.store_fd >= 0
        self.task_type = _leaf_type(bcc, bpf_object, b"lp_task_store")
        self.progs = {
            name: bpf_object.load_func(name.encode(), bcc.BPF.RAW_TRACEPOINT).fd
            for name in ("lp_contention_begin", "lp_contention_end")
        }
        self.pidfd = os.pidfd_open(os.getpid())

    def run(self, program: str, lock: int, arg: int) -> None:
        args = (ctypes.c_uint64 * 2)(lock, arg)
        attr = ProgRunAttr(
            prog_fd=self.progs[program],
            ctx_in=ctypes.addressof(args),
            ctx_size_in=ctypes.sizeof(args),
        )
        bpf_call(BPF_PROG_TEST_RUN, attr)

    def _elem(self, command: int, task) -> None:
        key = ctypes.c_int(self.pidfd)
        attr = MapElemAttr(
            map_fd=self.store_fd,
            key=ctypes.addressof(key),
            value=ctypes.addressof(task),
        )
        bpf_call(command, attr)

    def task(self):
        task = self.task_type()
        self._elem(BPF_MAP_LOOKUP_ELEM, task)
        return task

    def set_marks(self, in_begin: int, in_end: int) -> None:
        task = self.task()
        task.in_begin, task.in_end = in_begin, in_end
        self._elem(BPF_MAP_UPDATE_ELEM, task)

    def skipped(self) -> int:
        return self.session.read_errors()["irq_wait_skipped"]

    def contended(self) -> int:
        snapshot = self.session.read_stats(0)
        column = snapshot.columns.index("contended")
        return sum(int(per_cpu[:, column].sum()) for per_cpu in snapshot.rows.values())


def _leaf_type(bcc, bpf_object, name: bytes) -> type:
    """The ctypes type BCC derives for a map's value, from its own description
    (BCC has no table class for task storage)."""
    description = bcc.lib.bpf_table_leaf_desc(bpf_object.module, name)
    return bpf_object._decode_table_type(json.loads(description.decode()))


@pytest.fixture
def harness():
    plans = probes.plan(("contention",), {"raw_tracepoint"})
    with bpf_mod.BpfSession(plans) as session:
        session._arm()  # counting, with no program attached
        h = Harness(session)
        h.run("lp_contention_begin", LOCK_A, SPIN)  # creates this task's storage
        yield h
        os.close(h.pidfd)


@pytest.fixture
def harness_keeping_marks(monkeypatch):
    """The programs compiled with the test hook that never clears a mark."""
    monkeypatch.setenv(bpf_mod.KEEP_MARKS_ENV, "1")
    plans = probes.plan(("contention",), {"raw_tracepoint"})
    with bpf_mod.BpfSession(plans) as session:
        session._arm()
        h = Harness(session)
        yield h
        os.close(h.pidfd)


def test_the_programs_pair_a_wait_run_by_hand(harness):
    """The harness itself: a begin and an end run by hand make one wait."""
    assert harness.task().depth == 1
    harness.run("lp_contention_end", LOCK_A, 0)
    assert harness.task().depth == 0
    assert harness.contended() == 1
    assert harness.skipped() == 0


def test_a_begin_inside_contention_end_leaves_its_wait_out(harness):
    harness.set_marks(in_begin=0, in_end=1)
    harness.run("lp_contention_begin", LOCK_B, SPIN)
    task = harness.task()
    assert task.depth == 1, "the interrupt's begin took a nest entry its end never pops"
    assert task.nest[0].lock == LOCK_A
    assert harness.skipped() == 1


def test_an_end_inside_contention_begin_pops_nothing(harness):
    harness.set_marks(in_begin=1, in_end=0)
    harness.run("lp_contention_end", LOCK_A, 0)
    assert harness.task().depth == 1, "an end whose begin was skipped popped the outer wait"
    assert harness.contended() == 0
    assert harness.skipped() == 1
    harness.set_marks(in_begin=0, in_end=0)
    harness.run("lp_contention_end", LOCK_A, 0)  # the outer wait's own end
    assert harness.task().depth == 0
    assert harness.contended() == 1


def test_the_programs_clear_their_own_marks(harness):
    harness.run("lp_contention_end", LOCK_A, 0)
    harness.run("lp_contention_begin", LOCK_B, SPIN)
    task = harness.task()
    assert (task.in_begin, task.in_end) == (0, 0)
    assert harness.skipped() == 0


def test_each_program_marks_itself_running(harness_keeping_marks):
    h = harness_keeping_marks
    h.run("lp_contention_begin", LOCK_A, SPIN)
    task = h.task()
    assert (task.in_begin, task.in_end) == (1, 0), "lp_contention_begin did not mark itself"
    h.set_marks(in_begin=0, in_end=0)
    h.run("lp_contention_end", LOCK_A, 0)
    task = h.task()
    assert (task.in_begin, task.in_end) == (0, 1), "lp_contention_end did not mark itself"
    assert task.depth == 0 and h.contended() == 1


@pytest.mark.parametrize(
    "program, marks",
    [("lp_contention_end", {"in_begin": 0, "in_end": 1}),
     ("lp_contention_begin", {"in_begin": 1, "in_end": 0})],
)  # fmt: skip
def test_a_run_nested_in_its_own_program_leaves_the_outer_mark(harness, program, marks):
    """Kernels without the recursion check run a program nested in itself:
    the nested run must neither time anything nor clear the outer run's mark
    (the other half of its wait counts it, once)."""
    harness.set_marks(**marks)
    if program.endswith("begin"):
        harness.run(program, LOCK_B, SPIN)
    else:
        harness.run(program, LOCK_A, 0)
    task = harness.task()
    assert (task.in_begin, task.in_end) == (marks["in_begin"], marks["in_end"])
    assert task.depth == 1 and task.nest[0].lock == LOCK_A
    assert harness.skipped() == 0 and harness.contended() == 0
