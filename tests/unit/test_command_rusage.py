"""A `run` command's rusage is its own, as /usr/bin/time gives it: real
commands, measured both ways."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler import targets
from profiler.errors import LockprofError
from profiler.targets import PRE_EXEC_COMM, CommandTarget, children_of

REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.1  # session.POLL_MS: how often the collection loop polls the target


def run_polled(argv: list[str], every_s: float = POLL_S) -> CommandTarget:
    """Run a command as the collection loop does: begin(), then poll() every
    every_s until it has exited."""
    target = CommandTarget(argv)
    target.begin()
    deadline = time.monotonic() + 30
    while target.poll() is None:
        assert time.monotonic() < deadline, "command did not exit"
        time.sleep(every_s)
    return target


# -- elapsed: from the gate to the exit -------------------------------------------------------


def test_elapsed_is_the_commands_life_not_rounded_to_the_poll():
    """`sleep 0.3` took 0.3 s, not the 0.4 s of the poll that found it gone
    (/bin/true gave 0.103 s, lpbizzy -S 0.5 0.602 s)."""
    target = run_polled(["sleep", "0.3"])
    assert target.exit_status == 0
    assert target.rusage()["elapsed_s"] == pytest.approx(0.3, abs=0.02)


def test_elapsed_of_a_command_that_exits_at_once_is_near_zero():
    target = run_polled(["true"])
    assert 0 <= target.rusage()["elapsed_s"] < 0.05  # ~1 ms; was 0.1 s, the poll


def test_elapsed_is_not_quantised_to_the_poll():
    """Exits at 0.15 and 0.25 s, polled every 0.1 s: 0.15 and 0.25, not 0.2
    and 0.3."""
    for seconds in (0.15, 0.25):
        elapsed = run_polled(["sleep", str(seconds)]).rusage()["elapsed_s"]
        assert elapsed == pytest.approx(seconds, abs=0.02), seconds


def test_a_command_that_exited_before_the_window_closed_keeps_its_life():
    """Collection stopped (close_window) after the command had exited but
    before a poll saw it: its figures are its whole life's, up to its exit,
    not a window up to the stop."""
    target = CommandTarget(["true"])
    target.begin()
    time.sleep(0.3)
    target.close_window()
    assert target.exit_status == 0
    assert target.rusage()["elapsed_s"] < 0.05
    assert target.poll() == "command exited with status 0"


def test_the_command_is_reaped_in_one_place():
    """The reaper thread waits for it; poll() and wait() read what it saw."""
    target = run_polled(["true"])
    with pytest.raises(ChildProcessError):
        os.waitpid(target.tgid, os.WNOHANG)  # reaped already, by the reaper
    target.wait()  # again: nothing left to wait for, the same figures
    assert target.exit_status == 0


# -- minor faults and max RSS: the command's, not the holder's ---------------------------------


def time_says(fmt: str, argv: list[str]) -> int:
    """/usr/bin/time's figure for a command (-f FMT, one number)."""
    done = subprocess.run(
        [TIME, "-f", fmt, *argv], capture_output=True, text=True, timeout=30, check=True
    )
    return int(done.stderr.splitlines()[-1])


def spawned_faults(argv: list[str]) -> int:
    """The minor faults of a command posix_spawn'd from here: its own, plus
    the few that glibc's vfork child takes on its own stack."""
    pid = os.posix_spawn(shutil.which(argv[0]) or argv[0], argv, os.environ)
    return os.wait4(pid, 0)[2].ru_minflt


TIME = "/usr/bin/time"
needs_time = pytest.mark.skipif(not os.access(TIME, os.X_OK), reason=f"no {TIME}")


@needs_time
def test_minor_faults_are_the_commands_own():
    """/bin/true counted 380 minor faults (/usr/bin/time: 68): those of
    lockprof's forked Python before the exec. Now its own (perf stat: 49),
    as a posix_spawn'd /bin/true counts them (51). /usr/bin/time counts
    some 20 of its own forked copy's before its exec (a static program
    that takes 2 faults gives 21 there): the figure is at most a few over
    time's, and never more than that 20 or so under it."""
    timed = time_says("%R", ["/bin/true"])
    spawned = spawned_faults(["/bin/true"])
    faults = run_polled(["/bin/true"]).rusage()["minor_faults"]
    assert abs(faults - spawned) <= 5, (faults, spawned, timed)
    assert timed - 30 <= faults <= timed + 5, (faults, spawned, timed)


def test_faults_taken_before_the_gate_do_not_count():
    """The holder waits at the gate, faulted in; that is not the command's."""
    target = CommandTarget(["true"])
    time.sleep(0.05)
    target.begin()
    target.wait()
    held_minor, _held_major = target._held_faults
    assert held_minor > 0  # the holder's fork and its wait at the gate
    assert target.rusage()["minor_faults"] == pytest.approx(spawned_faults(["true"]), abs=5)


@needs_time
def test_max_rss_is_the_commands_not_pythons():
    """max_rss_kb of /bin/true was 19,064 KB, lockprof's forked Python's
    RSS (ru_maxrss keeps the largest RSS across the exec; a posix_spawn'd
    child shares the parent's, and gets the same)."""
    timed = time_says("%M", ["/bin/true"])
    ours = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
    max_rss = run_polled(["/bin/true"]).rusage()["max_rss_kb"]
    assert max_rss <= timed + 1024, (max_rss, timed)
    assert max_rss < ours / 4, (max_rss, ours)


# -- the holder -----------------------------------------------------------------------------


def subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(0)
    assert libc.prctl(targets.PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) == 0
    return bool(value.value)


@pytest.mark.parametrize("reaper_before", [False, True])
def test_the_held_child_is_ours_and_the_shell_is_gone(reaper_before):
    """The shell that forked the held child is killed and reaped; the child
    is lockprof's (so that wait4 gives its rusage), and lockprof is the
    reaper of orphans afterwards only if it was before (bench)."""
    targets.child_subreaper(reaper_before)
    try:
        children_before = children_of(os.getpid(), 256)
        target = CommandTarget(["true"])
        try:
            assert children_of(os.getpid(), 256) - children_before == {target.tgid}
            assert subreaper() == reaper_before
            assert Path(f"/proc/{target.tgid}/comm").read_text() == PRE_EXEC_COMM + "\n"
        finally:
            target.begin()
            target.wait()
        assert target.exit_status == 0
    finally:
        targets.child_subreaper(False)


@pytest.mark.parametrize("pwd", [None, "keep"])
def test_the_command_gets_lockprofs_environment(monkeypatch, tmp_path, pwd):
    """The holder shell adds PWD to its environment; the command gets
    lockprof's as it is, with or without PWD."""
    if pwd is None:
        monkeypatch.delenv("PWD", raising=False)
    else:
        monkeypatch.setenv("PWD", os.getcwd())
    monkeypatch.setenv("LOCKPROF_TEST_VAR", "a b\nc")
    out = tmp_path / "env"
    target = CommandTarget(["sh", "-c", f"cat /proc/$$/environ > {out}"])
    target.begin()
    target.wait()
    env = dict(item.split("=", 1) for item in out.read_text().split("\0") if item)
    assert env == dict(os.environ)


def test_the_command_gets_no_fd_of_the_holders():
    """Only what lockprof itself would pass on (stdin, stdout, stderr, and
    any fd it has that is not close-on-exec): not the gate, nor the pipe
    the held child said its pid on."""
    inheritable = set()
    for fd in map(int, os.listdir("/proc/self/fd")):
        with contextlib.suppress(OSError):  # the listing's own, closed by now
            if os.get_inheritable(fd):
                inheritable.add(fd)
    target = CommandTarget(["sleep", "5"])
    try:
        target.begin()
        # begin() lets the holder go: until it has exec'd, the fds listed
        # are the holder's own (the gate among them), not the command's.
        deadline = time.monotonic() + 5
        while Path(f"/proc/{target.tgid}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "the command never exec'd"
            time.sleep(0.005)
        assert {int(fd) for fd in os.listdir(f"/proc/{target.tgid}/fd")} <= {0, 1, 2} | inheritable
    finally:
        target.stop()


def test_the_command_never_runs_if_lockprof_dies_before_the_gate(tmp_path):
    """lockprof killed (SIGKILL) while its command is held: the holder sees
    the gate close without the go byte and exits 125; the command never
    runs unprofiled."""
    marker = tmp_path / "ran"
    script = (
        "import os\n"
        "from profiler.targets import CommandTarget\n"
        f"target = CommandTarget(['touch', {str(marker)!r}])\n"
        "print(target.tgid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == -9, done.stderr
    held = int(done.stdout)
    deadline = time.monotonic() + 5
    while (fields := targets._stat_fields(held)) is not None and fields[0] not in (b"Z", b"X"):
        assert time.monotonic() < deadline, "the held child outlived lockprof"
        time.sleep(0.01)
    time.sleep(0.1)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "mode", "status"),
    [
        (b"#!/nonexistent/interpreter\n", 0o755, 127),  # found, but its #! is not
        (b"\x7fELF not really\n", 0o755, 126),
    ],
)
def test_a_command_that_cannot_be_exec_d_is_an_error_and_never_runs(
    tmp_path, capfd, content, mode, status
):
    """check_command passed (the file is there and executable) but the exec
    fails: begin() raises, with the shell's status; the shell's line says
    why, on stderr."""
    command = tmp_path / "cmd"
    command.write_bytes(content)
    command.chmod(mode)
    target = CommandTarget([str(command)])
    with pytest.raises(LockprofError) as excinfo:
        target.begin()
    assert excinfo.value.exit_code == status
    assert str(excinfo.value) == (
        f"cannot run {command} (status {status}; the line above says why)"
    )
    assert str(command) in capfd.readouterr().err
    assert target.poll() is not None  # reaped
