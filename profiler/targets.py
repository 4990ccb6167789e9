"""What is being profiled: a running pid, a command we start, or the system.

Each target knows whether it is still there and what its resource usage was
over the collection window (user/sys/elapsed seconds, minor faults), the
figures /usr/bin/time gave in the seed thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from profiler.errors import LockprofError
from profiler.signals import INHERITED_IGNORED, SIGNALS

if TYPE_CHECKING:
    from resource import struct_rusage

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The comm of a `lockprof run` child from fork until it execs the command
# (at most 15 bytes: TASK_COMM_LEN - 1). Until the exec the child runs in a
# copy of the holder shell's address space (CommandTarget._spawn_held); this
# name tells that mm (and its mmap_lock) apart from the command's own in the
# BPF owner map.
PRE_EXEC_COMM = "lockprof-exec"

# The held child is a subshell of /bin/sh, forked by the shell, not by
# lockprof: a process keeps the largest RSS it ever had across its execs
# (ru_maxrss) and counts the faults it took before them, so one forked or
# vforked from lockprof's Python (19-100 MB) gave /bin/true a max RSS of
# 19 MB and 380 minor faults (/usr/bin/time: 1 MB, 68). The subshell starts
# from the shell's few hundred KB; the faults it takes before the gate opens
# are not counted (CommandTarget.begin). The shell itself is killed once the
# subshell has said its pid, which makes the subshell lockprof's child.
# $0 is PRE_EXEC_COMM (the shell's messages name it), $1 is empty when
# lockprof's environment has no PWD (which the shell would add), $2 names the
# stop signals lockprof's parent left ignored ("HUP INT": the command gets
# them ignored), the command follows. The script's own variables are unset before the exec (one the
# environment had would reach the command changed). Fds 3 and 4: the gate
# (read end) and the ready pipe (write end).
HOLDER_SHELL = "/bin/sh"
_HOLDER_SCRIPT = """(
printf %s "$0" >/proc/self/comm || exit 125
read -r __lockprof_pid __lockprof_rest </proc/self/stat || exit 125
echo "$__lockprof_pid" >&4 || exit 125
exec 4>&-
IFS= read -r __lockprof_go <&3
[ "$__lockprof_go" = x ] || exit 125
exec 3<&-
unset __lockprof_pid __lockprof_rest __lockprof_go
[ -n "$1" ] || unset PWD
[ -z "$2" ] || trap '' $2
shift 2
exec "$@"
)
:
"""
_GATE_FD, _READY_FD = 3, 4

# prctl(2): orphaned descendants are reparented to this process, not init.
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _inherited_ignored_names() -> str:
    """The stop signals lockprof's parent left ignored, as the holder
    shell's `trap` names them ("HUP INT"), for the command to inherit."""
    return " ".join(signal.Signals(s).name[3:] for s in sorted(INHERITED_IGNORED))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal
        return f"signal {signum}"


def exit_status_of(waitstatus: int) -> tuple[int, str | None]:
    """A wait status as a shell's $? (and time, perf stat, strace) gives it:
    the exit code, or 128 + N when signal N killed the process; with the
    signal's name (None for an exit)."""
    if os.WIFSIGNALED(waitstatus):
        signum = os.WTERMSIG(waitstatus)
        return 128 + signum, signal_name(signum)
    return os.waitstatus_to_exitcode(waitstatus), None


def recorded_exit(meta: dict) -> tuple[int | None, str | None]:
    """A recording's exit status and signal. Recordings made before
    exit_signal existed stored -N for signal N: read the same way."""
    status, signame = meta.get("exit_status"), meta.get("exit_signal")
    if isinstance(status, int) and status < 0:
        return 128 - status, signal_name(-status)
    return status, signame


def exit_text(status: int | None, signame: str | None) -> str:
    """ "exited with status 3", "killed by SIGTERM"."""
    return f"killed by {signame}" if signame else f"exited with status {status}"


def check_command(argv0: str) -> None:
    """Fail before anything is compiled or loaded if the command cannot be
    started (as a shell says it: 127 not found, 126 not executable)."""
    if "/" in argv0:
        path = Path(argv0)
        if not path.exists():
            raise LockprofError(f"command not found: {argv0}", exit_code=127)
        if path.is_dir() or not os.access(path, os.X_OK):
            raise LockprofError(f"command is not executable: {argv0}", exit_code=126)
    else:
        found = shutil.which(argv0)
        if found is None:
            raise LockprofError(f"command not found: {argv0}", exit_code=127)
        path = Path(found)
    _check_interpreter(argv0, path)


def _check_interpreter(argv0: str, path: Path) -> None:
    """A script's #! interpreter, checked as the command is: the shell that
    execs the command would otherwise print its own line before lockprof's."""
    try:
        with open(path, "rb") as script:
            first = script.readline(4096)
    except OSError:
        return  # executable but not readable: the kernel may still run it
    if not first.startswith(b"#!"):
        return
    # As the kernel reads it (fs/binfmt_script.c): the name ends at a space,
    # a tab or the newline; a carriage return is part of it.
    name = re.split(rb"[ \t\n]", first[2:].lstrip(b" \t"), maxsplit=1)[0]
    if not name:
        return
    if first.endswith(b"\r\n") and not name.endswith(b"\r"):
        # `#!/bin/bash -e\r`: the carriage return ends the argument instead.
        raise LockprofError(
            f"command {argv0}: its #! line ends in a carriage return "
            "(the script has DOS line endings)",
            exit_code=126,
        )
    interpreter = os.fsdecode(name)
    if not os.path.exists(interpreter):
        if interpreter.endswith("\r"):  # as `sh` says it: /bin/sh^M
            interpreter = interpreter[:-1] + "^M (the script has DOS line endings)"
        raise LockprofError(
            f"command {argv0}: its interpreter {interpreter} is not found", exit_code=127
        )
    if os.path.isdir(interpreter) or not os.access(interpreter, os.X_OK):
        raise LockprofError(
            f"command {argv0}: its interpreter {interpreter} is not executable", exit_code=126
        )


def check_pid(pid: int) -> int:
    """Validate a user-given pid and return its thread-group id."""
    if pid <= 0:
        raise LockprofError(f"invalid pid {pid}: must be a positive integer", exit_code=2)
    status = Path(f"/proc/{pid}/status")
    try:
        text = status.read_bytes().decode(errors="replace")  # Name: is the raw comm
    except FileNotFoundError:
        raise LockprofError(f"no such process: {pid}", exit_code=2) from None
    except OSError as exc:
        raise LockprofError(f"cannot read {status}: {exc.strerror}", exit_code=2) from None
    for line in text.splitlines():
        if line.startswith("Tgid:"):
            return int(line.split()[1])
    return pid


# task->flags bit of a kernel thread (include/linux/sched.h), in /proc/PID/stat
PF_KTHREAD = 0x00200000


def is_kernel_thread(pid: int) -> bool:
    """Is pid a kernel thread (no mm, no mmap_lock)? False if it is gone."""
    fields = _stat_fields(pid)
    return fields is not None and bool(int(fields[6]) & PF_KTHREAD)


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after "pid (comm)", or None if there is
    no such process. Field N of proc(5) is at index N - 3: state 0, minflt
    7, cminflt 8, utime 11, stime 12, cutime 13, cstime 14, starttime 19."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()  # the comm may not be UTF-8
    except OSError:
        return None
    return _after_comm(stat)


def _after_comm(stat: bytes) -> list[bytes]:
    """The fields of a /proc stat file after "pid (comm)" (a comm may hold
    spaces and parentheses: the last ")" ends it)."""
    return stat.rsplit(b")", 1)[1].split()


def _times(fields: list[bytes]) -> tuple[float, float, int]:
    """(user s, sys s, minor faults) of a process, from its _stat_fields."""
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS, int(fields[7])


def _proc_times(pid: int) -> tuple[float, float, int] | None:
    """(user s, sys s, minor faults) of a live process, or None if gone."""
    fields = _stat_fields(pid)
    return None if fields is None else _times(fields)


def _system_times() -> tuple[float, float, int]:
    """(user s, sys s, minor faults) summed over the whole system."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user = (int(cpu[0]) + int(cpu[1])) / CLOCK_TICKS
    system = (int(cpu[2]) + int(cpu[5]) + int(cpu[6])) / CLOCK_TICKS
    faults = 0
    for line in Path("/proc/vmstat").read_text().splitlines():
        name, value = line.split()
        if name == "pgfault":
            faults += int(value)
        elif name == "pgmajfault":
            faults -= int(value)
    return user, system, faults


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_bytes().decode(errors="replace").rstrip("\n")
    except OSError:
        return "?"


def cmdline_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def printable_arg(arg: str) -> str:
    """An argv string as valid text: bytes that are not UTF-8 (which Python
    keeps as lone surrogates) become U+FFFD, so that JSON, Parquet, CSV and
    HTML can always encode it."""
    return os.fsencode(arg).decode("utf-8", errors="replace")


def _stat_comm(pid: int) -> str | None:
    """The comm of a process, from /proc/PID/stat (None if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode(errors="replace")


def _exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:  # gone, a zombie, or not ours to look at (no privilege)
        return None


class Lineage:
    """What collection does not follow, seen by polling /proc: processes the
    target forks (children are other processes: not profiled) and programs
    it execs (the pid stays, so the new program is still profiled, on a new
    mm and mmap_lock).

    Children are read from /proc/PID/task/TID/children about once a second,
    so one that lives shorter than that may be missed: the count is a lower
    bound. An exec is a change of /proc/PID/exe (of the comm where exe cannot
    be read)."""

    CHILD_POLLS = 10  # read children every 10th poll (about 1 s)
    MAX_THREADS = 256  # threads whose children are read

    def __init__(self, pid: int, skip_comm: str | None = None):
        self.pid = pid
        self.skip_comm = skip_comm  # `run`: the pre-exec child is not the program
        self.children: set[int] = set()
        self.execs: list[dict] = []
        self._program: tuple[str, str | None] | None = None
        self._polls = 0

    def observe(self, t_s: float) -> None:
        comm = _stat_comm(self.pid)
        if comm is None or comm == self.skip_comm:
            return
        program = (comm, _exe_of(self.pid))
        if self._program is None:
            self._program = program
        elif self._execed(self._program, program):
            self.execs.append({"t_s": round(t_s, 3), "comm": comm, "exe": program[1]})
            self._program = program
        if self._polls % self.CHILD_POLLS == 0:
            self.children |= children_of(self.pid, self.MAX_THREADS)
        self._polls += 1

    @staticmethod
    def _execed(before: tuple[str, str | None], after: tuple[str, str | None]) -> bool:
        if before[1] is not None and after[1] is not None:
            return before[1] != after[1]
        return before[0] != after[0]

    def meta(self) -> dict:
        return {"children_seen": len(self.children), "execs": self.execs}


def children_of(pid: int, max_threads: int) -> set[int]:
    """The children of pid's threads (the first max_threads of them)."""
    found: set[int] = set()
    for text in _thread_files(pid, "children", max_threads):
        found.update(int(child) for child in text.split())
    return found


def _thread_files(pid: int, name: str, max_threads: int | None = None) -> Iterator[bytes]:
    """/proc/PID/task/TID/name of each of pid's threads (the first
    max_threads), but those that exit meanwhile; none if pid is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")[:max_threads]
    except OSError:
        return
    for tid in tids:
        with contextlib.suppress(OSError):
            yield Path(f"/proc/{pid}/task/{tid}/{name}").read_bytes()


def descendants_of(pid: int, limit: int = 4096) -> set[int]:
    """Every process below pid in the process tree, as /proc shows it now
    (at most limit of them)."""
    found: set[int] = set()
    frontier = [pid] if pid > 0 else []
    while frontier and len(found) < limit:
        children = children_of(frontier.pop(), Lineage.MAX_THREADS) - found
        found |= children
        frontier += sorted(children)
    return found


class Target:
    """Base: the whole system."""

    tgid = 0
    mode = "system"

    def __init__(self) -> None:
        self._start_wall = 0.0
        self._end_wall = 0.0
        self._first: tuple[float, float, int] | None = None
        self._last: tuple[float, float, int] | None = None
        self.exit_status: int | None = None  # as a shell's $?: 128 + N for signal N
        self.exit_signal: str | None = None  # the signal that killed the command
        self.lineage: Lineage | None = None  # processes: forks and execs seen

    def describe(self) -> str:
        return "the whole system"

    def command(self) -> list[str]:
        return []

    def writes_to(self, fd: int) -> bool:
        """Does the target write to the terminal that lockprof's fd is?
        Only a command lockprof starts shares lockprof's terminal."""
        return False

    def _sample(self) -> tuple[float, float, int] | None:
        return _system_times()

    def check_present(self) -> None:
        """The probes are attached: raise if the target is already gone."""

    def begin(self) -> None:
        """Collection has started: release the target / take baselines."""
        self._start_wall = time.monotonic()
        self._first = self._last = self._sample()

    def poll(self) -> str | None:
        """None while the target runs, else why collection should stop."""
        sample = self._sample()
        if sample is not None:
            self._last = sample
        return None

    def end(self) -> None:
        self._end_wall = time.monotonic()
        self.poll()

    def rusage(self) -> dict:
        elapsed = (self._end_wall or time.monotonic()) - self._start_wall
        if self._first is None or self._last is None:
            return {
                "user_s": None,
                "sys_s": None,
                "elapsed_s": round(elapsed, 6),
                "minor_faults": None,
            }
        return {
            "user_s": round(self._last[0] - self._first[0], 6),
            "sys_s": round(self._last[1] - self._first[1], 6),
            "elapsed_s": round(elapsed, 6),
            "minor_faults": self._last[2] - self._first[2],
        }


class PidTarget(Target):
    """A process that is already running (`lockprof attach --pid N`)."""

    mode = "attach"

    def __init__(self, pid: int):
        super().__init__()
        self.tgid = check_pid(pid)
        fields = _stat_fields(self.tgid)
        # Its start time tells it from a process given its pid later.
        self._started = int(fields[19]) if fields else None
        if fields is None:  # gone since check_pid
            raise LockprofError(f"no such process: {pid}", exit_code=2)
        if _ended(fields, self._started, self.tgid):
            # Said now, not after the probes' compile: nothing will run there.
            raise LockprofError(
                f"pid {self.tgid} has exited (a zombie its parent has not reaped): "
                "nothing to profile",
                exit_code=2,
            )
        self.given_tid = pid if pid != self.tgid else None
        self._comm = comm_of(self.tgid)
        self._cmdline = cmdline_of(self.tgid)
        self.lineage = Lineage(self.tgid)

    def describe(self) -> str:
        return f"pid {self.tgid} ({self._comm})"

    def command(self) -> list[str]:
        return self._cmdline

    def _sample(self) -> tuple[float, float, int] | None:
        return _proc_times(self.tgid)

    def check_present(self) -> None:
        """A process that exited while the probes compiled and attached gave
        nothing to record: one line and a nonzero exit, not an empty
        recording that looks like success. (One that exits from here on
        ends a collection that has started: its recording is written.)"""
        if _ended(_stat_fields(self.tgid), self._started, self.tgid):
            raise LockprofError(
                f"pid {self.tgid} exited before collection started; nothing was recorded"
            )

    def poll(self) -> str | None:
        fields = _stat_fields(self.tgid)  # read once: whether it runs, and its times
        if fields is None or _ended(fields, self._started, self.tgid):
            return f"pid {self.tgid} exited"
        self._last = _times(fields)
        if self.lineage is not None:
            self.lineage.observe(time.monotonic() - self._start_wall)
        return None


def _ended(fields: list[bytes] | None, started: int | None, tgid: int) -> bool:
    """Has the process tgid that started at `started` (clock ticks after
    boot) exited: reaped (fields None), a zombie with no thread left, or
    its pid taken by a process that started later?"""
    if fields is None:
        return True
    if started is not None and int(fields[19]) != started:
        return True
    return fields[0] in _GONE and not _threads_run(tgid)


# /proc states of a task that has exited (zombie, dead).
_GONE = (b"Z", b"X")


def _threads_run(tgid: int) -> bool:
    """Does some thread of tgid still run? A main thread that returned by
    pthread_exit() is a zombie while the others go on: /proc/PID/stat then
    says Z for a process that is still at work."""
    return any(_after_comm(stat)[0] not in _GONE for stat in _thread_files(tgid, "stat"))


def pre_exec_locks(owners: dict[int, tuple[int, str]], tgid: int, command_lock: int) -> set[int]:
    """The mmap_lock addresses of a `run` child's pre-exec mm.

    owners maps an mmap_lock address to the (tgid, comm) of the process seen
    on it as its own mm. The child's pre-exec mm is owned by the command's pid
    under PRE_EXEC_COMM. command_lock, the mmap_lock the BPF side learned last
    for the pid (after the exec: the command's own), is never one of them,
    even if the kernel ran the child on its new mm before renaming it.
    """
    return {
        lock
        for lock, (pid, comm) in owners.items()
        if pid == tgid and comm == PRE_EXEC_COMM and lock != command_lock
    }


def term_then_kill(
    signal_all: Callable[[int], None], gone: Callable[[], bool], grace_s: float
) -> bool:
    """Stop processes: SIGTERM through signal_all, grace_s for gone() to
    hold; then SIGKILL and grace_s again. False: not all are gone. The
    callers say what is signalled (pids, pidfds) and what gone means
    (reaped, exited)."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        signal_all(signum)
        if _holds_within(gone, grace_s):
            return True
    return False


def _holds_within(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether condition() holds within seconds (polled every 10 ms)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def child_subreaper(on: bool) -> bool:
    """Make this process the reaper of its orphaned descendants, or not
    (prctl PR_SET_CHILD_SUBREAPER); whether it was."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    return bool(was.value)


def _pipe_above(low: int) -> tuple[int, int]:
    """A pipe (close-on-exec) whose two fds are at least low, so that
    posix_spawn's dup2s onto lower fds never overwrite one of them."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low))
        os.close(fd)
    return ends[0], ends[1]


def _read_line(fd: int) -> bytes:
    """Bytes from fd up to a newline or end of file."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        line += chunk
    return line


def _parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


class CommandTarget(Target):
    """A command lockprof starts (`lockprof run -- CMD`). The child is held
    before exec until the probes are attached, so nothing is missed. Until
    the exec it is called PRE_EXEC_COMM (see pre_exec_locks). Its rusage is
    the command's own, as /usr/bin/time gives it: elapsed from the gate to
    the exit, minor faults and max RSS without the holder's (_HOLDER_SCRIPT)."""

    mode = "run"

    # stop_at_end: SIGTERM, then SIGKILL after this long (see stop()).
    STOP_GRACE_S = 1.0

    def __init__(self, argv: list[str], stdout_fd: int | None = None, stop_at_end: bool = False):
        super().__init__()
        if not argv:
            raise LockprofError("no command given: lockprof run -- CMD [ARGS...]", exit_code=2)
        self.argv = argv
        # The command's stdout, if not lockprof's: run --json's stderr (stdout
        # holds the JSON alone, as /usr/bin/time keeps its report apart from
        # the command's output), bench's capture pipe.
        self._stdout_fd = stdout_fd
        # bench: a command still running when collection stops is stopped
        # (run leaves it running, as attach leaves its target).
        self.stop_at_end = stop_at_end
        self.ended_by_lockprof = False  # stop() ended it
        self._rusage: dict | None = None
        self._window_closed = False  # close_window() was called
        # What the reaper saw: (wait status, rusage, monotonic exit time,
        # whether it had exec'd the command).
        self._exit: tuple[int, struct_rusage, float, bool] | None = None
        self._exited = threading.Event()
        self._held_faults = (0, 0)  # (minor, major) the holder took before the gate
        self.tgid = self._spawn_held()
        self._pidfd = os.pidfd_open(self.tgid)  # signals reach the command, never a reused pid
        self._reaper = threading.Thread(target=self._reap, name="lockprof-reaper", daemon=True)
        self._reaper.start()
        self.lineage = Lineage(self.tgid, skip_comm=PRE_EXEC_COMM)

    def _spawn_held(self) -> int:
        """Start the held child (see _HOLDER_SCRIPT) and return its pid once
        it is lockprof's child and renamed: the probes are attached after
        this returns, so none sees it under another name. posix_spawn
        starts the shell without copying lockprof; the holder resets
        lockprof's signal handlers, and SIGPIPE and SIGXFSZ (which Python
        ignores), to the default (a Ctrl-C before the exec ends it). A stop
        signal lockprof's parent left ignored stays ignored for the command
        (`nohup lockprof run -- CMD`: CMD survives a hangup, as under
        `nohup CMD`): the holder ignores it (`trap ''`), lockprof's own
        handler notwithstanding, and exec keeps it ignored."""
        gate_r, gate_w = _pipe_above(10)
        ready_r, ready_w = _pipe_above(10)
        # stdout first: a pipe's fd may be _GATE_FD or _READY_FD, which the
        # next two overwrite (gate and ready are above 10).
        actions = [(os.POSIX_SPAWN_DUP2, self._stdout_fd, 1)] if self._stdout_fd is not None else []
        actions += [
            (os.POSIX_SPAWN_DUP2, gate_r, _GATE_FD),
            (os.POSIX_SPAWN_DUP2, ready_w, _READY_FD),
        ]
        pwd = "keep" if "PWD" in os.environ else ""
        ignored = _inherited_ignored_names()
        argv = ["sh", "-c", _HOLDER_SCRIPT, PRE_EXEC_COMM, pwd, ignored, *self.argv]
        was_reaper = child_subreaper(True)  # so that the shell's child becomes ours
        try:
            try:
                shell = os.posix_spawn(
                    HOLDER_SHELL,
                    argv,
                    os.environ,
                    file_actions=actions,
                    setsigdef=(*SIGNALS, signal.SIGPIPE, signal.SIGXFSZ),
                )
            except OSError as exc:
                os.close(gate_w)
                os.close(ready_r)
                raise LockprofError(
                    f"cannot run {self.argv[0]}: cannot start {HOLDER_SHELL}: {exc.strerror}",
                    exit_code=127,
                ) from None
            finally:
                os.close(gate_r)
                os.close(ready_w)
            try:
                line = _read_line(ready_r)  # the subshell's pid, once renamed
            finally:
                os.close(ready_r)
                os.kill(shell, signal.SIGKILL)
                os.waitpid(shell, 0)  # the subshell is reparented to us as it dies
        finally:
            if not was_reaper:
                child_subreaper(False)
        pid = int(line) if line.strip().isdigit() else 0
        if not pid or _parent_of(pid) != os.getpid():
            os.close(gate_w)  # a holder still there exits 125
            raise LockprofError(f"cannot run {self.argv[0]}: {HOLDER_SHELL} did not hold it")
        self._gate_w = gate_w
        return pid

    def writes_to(self, fd: int) -> bool:
        """Do the command's stdout or stderr (lockprof's own fds 1 and 2, or
        stdout_fd) go to the terminal that lockprof's fd is? A live table
        redrawn in place there would draw over the command's output."""
        try:
            terminal = os.fstat(fd).st_rdev if os.isatty(fd) else None
            outputs = (1 if self._stdout_fd is None else self._stdout_fd, 2)
            return terminal is not None and any(
                os.isatty(out) and os.fstat(out).st_rdev == terminal for out in outputs
            )
        except OSError:
            return False

    def describe(self) -> str:
        return f"pid {self.tgid} ({' '.join(self.command())})"

    def command(self) -> list[str]:
        return [printable_arg(arg) for arg in self.argv]

    def begin(self) -> None:
        # The holder's faults so far (its fork from the shell, up to its
        # wait at the gate) are not the command's: /bin/true counts 80
        # with them, 51 without, as perf stat (49) and a posix_spawn'd
        # /bin/true (51) count its own. Its user and sys time (a fraction of
        # a millisecond) stay in: /proc counts them in 10 ms ticks.
        fields = _stat_fields(self.tgid)
        if fields is not None:
            self._held_faults = (int(fields[7]), int(fields[9]))  # minflt, majflt
        super().begin()
        # BrokenPipeError: the held child died (a signal) before the exec.
        with contextlib.suppress(BrokenPipeError):
            os.write(self._gate_w, b"x")
        os.close(self._gate_w)
        self._await_exec()

    def _await_exec(self) -> None:
        """Wait for the held child to exec the command (its comm changes)
        or to exit. One that exits 126 or 127 without having exec'd could
        not run it (the shell said why, on stderr): raise, as before any
        collection."""
        pause = 0.0001
        while not self._exited.is_set():
            comm = _stat_comm(self.tgid)
            if comm is not None and comm != PRE_EXEC_COMM:
                return
            self._exited.wait(pause)
            pause = min(pause * 2, 0.01)
        if self._exit is None:
            return
        status, _usage, _exited, execed = self._exit
        code = os.waitstatus_to_exitcode(status)
        if not execed and code in (126, 127):
            self._collect()
            raise LockprofError(
                f"cannot run {self.argv[0]} (status {code}; the line above says why)",
                exit_code=code,
            )

    def abandon(self) -> None:
        """Collection failed before begin(): do not leave the held child behind."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        self.wait()

    def _reap(self) -> None:
        """The reaper thread: the one place the command is waited for. It
        blocks until the command exits and stamps that moment, so that the
        elapsed time is the command's own, not rounded up to the collection
        loop's next poll (POLL_MS: /bin/true took 0.103 s). poll(), wait()
        and the rest read what it saw (_collect), in the caller's thread."""
        try:
            os.waitid(os.P_PID, self.tgid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
            exited = time.monotonic()
            execed = _stat_comm(self.tgid) != PRE_EXEC_COMM  # a zombie keeps its comm
            _pid, status, usage = os.wait4(self.tgid, 0)
            self._exit = (status, usage, exited, execed)
        except ChildProcessError:  # not ours to wait for (see _finish)
            pass
        finally:
            self._exited.set()

    def _collect(self) -> bool:
        """Whether the command has exited (and its figures are taken)."""
        if self._rusage is None and self._exited.is_set():
            self._finish()
        return self._rusage is not None

    def poll(self) -> str | None:
        if not self._collect():
            if self.lineage is not None and self._start_wall:
                self.lineage.observe(time.monotonic() - self._start_wall)
            return None
        return f"command {exit_text(self.exit_status, self.exit_signal)}"

    def wait(self) -> None:
        """Reap the command (after Ctrl-C it may still be running)."""
        self._exited.wait()
        self._collect()

    def _finish(self) -> None:
        os.close(self._pidfd)
        if self._exit is None:  # the reaper could not wait for it: status unknown
            self._end_wall = time.monotonic()
            self._rusage = super().rusage()
            return
        status, usage, exited, _execed = self._exit
        self._end_wall = max(exited, self._start_wall)
        self.exit_status, self.exit_signal = exit_status_of(status)
        minor, major = self._held_faults
        self._rusage = {
            "user_s": round(usage.ru_utime, 6),
            "sys_s": round(usage.ru_stime, 6),
            "elapsed_s": round(self._end_wall - self._start_wall, 6),
            "minor_faults": max(0, int(usage.ru_minflt) - minor),
            "major_faults": max(0, int(usage.ru_majflt) - major),
            "max_rss_kb": int(usage.ru_maxrss),
        }

    def _sample(self) -> tuple[float, float, int] | None:
        """(user s, sys s, minor faults) of the command and of the children
        it has reaped, as wait4 gives them once it exits (`run -f -- make`:
        the compilers' time is make's children's): /proc/PID/stat's utime +
        cutime, stime + cstime, minflt + cminflt. None once gone."""
        fields = _stat_fields(self.tgid)
        if fields is None:
            return None
        f = [int(x) for x in fields[7:15]]  # minflt, cminflt, ..., utime 11 to cstime 14
        return (f[4] + f[6]) / CLOCK_TICKS, (f[5] + f[7]) / CLOCK_TICKS, f[0] + f[1]

    def end(self) -> None:
        """Collection stopped. A command still running is left running (not
        waited for): its rusage is then its own over the collection window,
        from /proc as for `attach`, and its exit status unknown. With
        stop_at_end (bench) it is stopped instead (stop())."""
        if self.poll() is None:
            if self.stop_at_end:
                self.stop()
                return
            self.close_window()

    def close_window(self) -> None:
        """The window over which a command still running is measured ends
        now (once: a later call keeps the first end). One that exits
        afterwards is reaped with its whole life's rusage (_finish)."""
        if not self._collect() and not self._window_closed:
            self._window_closed = True
            self._end_wall = time.monotonic()
            self._last = self._sample() or self._last

    def stop(self) -> None:
        """End a command that is still running, and the processes below it
        (so that no load is left behind, and none keeps a pipe of the
        command's open): SIGTERM, STOP_GRACE_S for them to exit, SIGKILL
        for those left; the command is then reaped. Its exit status is what
        it is (143 when SIGTERM ended it), and ended_by_lockprof says that
        lockprof ended it."""
        if self.poll() is not None:
            return
        self.ended_by_lockprof = True
        below = self._pidfds_below(self.tgid)
        try:
            term_then_kill(
                lambda signum: self._signal_all(below, signum),
                lambda: self._all_gone(below),
                self.STOP_GRACE_S,
            )
            self.wait()
        finally:
            for fd in below:
                os.close(fd)

    def _signal_all(self, pidfds: list[int], signum: int) -> None:
        if not self._collect():  # not exited: its pidfd is still open
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)
        for fd in pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signum)

    def _all_gone(self, pidfds: list[int]) -> bool:
        # A pidfd becomes readable once its process has exited.
        exited = select.select(pidfds, [], [], 0)[0]
        return self.poll() is not None and len(exited) == len(pidfds)

    @staticmethod
    def _pidfds_below(pid: int) -> list[int]:
        """pidfds of the processes below pid (descendants_of), so that no
        signal reaches another process that got a pid: those seen below pid
        both before and after their pidfd was opened."""
        fds = {}
        for child in descendants_of(pid):
            with contextlib.suppress(OSError):  # gone already
                fds[child] = os.pidfd_open(child)
        still = descendants_of(pid)
        for child in [c for c in fds if c not in still]:
            os.close(fds.pop(child))
        return list(fds.values())

    def rusage(self) -> dict:
        if self._rusage is not None:
            return self._rusage
        return super().rusage()
