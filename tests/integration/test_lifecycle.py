"""Target exits, forks and execs, bad input, signals at every phase and
SIGKILL, as root with real probes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, LOCKPROF, Held, lockprof_programs, rows_for, show_json

import profiler
from profiler import doctor
from profiler.session import RETIRE_ENV


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(("lockprof:", "lockprof attach:", "lockprof run:")), lines[0]
    return lines[0]


def test_pid_that_exits_mid_run_still_saves_the_recording(lockprof_factory, tmp_path):
    """Told to exit once lockprof has attached (a `sleep 1.5` raced the
    compile, which now refuses a process already gone: see below)."""
    target = Held(10)
    try:
        lp = lockprof_factory("attach", "-p", str(target.pid), "-o", "rec.lpr", "-q")
        lp.wait_attached()
    finally:
        target.finish()
    code, _out, err = lp.wait(timeout=30)
    assert code == 0, err
    assert f"pid {target.pid} exited" in err
    rec = profiler.load(tmp_path / "rec.lpr")
    assert rec.meta["stop_reason"] == f"pid {target.pid} exited"
    assert lockprof_programs() == []


def test_pid_that_exits_before_collection_starts_is_an_error(tmp_path):
    """`sleep 0.8 & lockprof attach -p $!`: the process is gone once the
    probes are compiled: one line and status 1, no recording, no probes
    (it said "attached", wrote an empty recording and exited 0)."""
    sleeper = subprocess.Popen(["sleep", "0.3"])
    result = subprocess.run(
        [*LOCKPROF, "attach", "-p", str(sleeper.pid), "-o", str(tmp_path / "x.lpr")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    sleeper.wait()
    line = _one_line_error(result)
    assert result.returncode == 1
    assert line == (
        f"lockprof: pid {sleeper.pid} exited before collection started; nothing was recorded"
    )
    assert not (tmp_path / "x.lpr").exists()
    assert lockprof_programs() == []


def test_a_process_whose_main_thread_exited_is_profiled_while_its_threads_run(
    lockprof_factory, tmp_path
):
    """`lpbizzy -x`: the main thread returns by pthread_exit() and the two
    workers go on; /proc/PID/stat says Z. lockprof took that for an exited
    process: "exited before collection started" (status 1), or, when the
    main thread quit during the run, it stopped there. Given a worker's
    thread id, it says it profiles the whole process."""
    target = subprocess.Popen([str(BIN / "lpbizzy"), "-x", "-q", "-S", "6"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{target.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the main thread did not exit"
            time.sleep(0.05)
        worker = max(int(tid) for tid in os.listdir(f"/proc/{target.pid}/task"))
        lp = lockprof_factory("attach", "-p", str(worker), "-d", "1.5", "-o", "z.lpr", "-q")
        code, _out, err = lp.wait(timeout=60)
    finally:
        target.kill()
        target.wait()
    assert code == 0, err
    assert f"lockprof: {worker} is a thread of pid {target.pid}: profiling the whole process" in err
    rec = profiler.load(tmp_path / "z.lpr")
    assert rec.meta["stop_reason"] == "duration 1.5s reached"
    rows = rows_for(show_json(tmp_path / "z.lpr"), target.pid)
    assert rows["write"]["acquisitions"] > 1000  # the workers' mmaps and munmaps
    assert lockprof_programs() == []


def test_a_zombie_is_refused_at_once():
    """A process that exited and waits to be reaped has nothing to profile:
    one line, said before the probes are compiled (after their ~1.7 s, it
    said "exited before collection started")."""
    parent = subprocess.Popen(["sh", "-c", "sleep 0.1 & exec sleep 5"])
    try:
        deadline = time.monotonic() + 5
        while True:
            children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
            stat = Path(f"/proc/{children[0]}/stat").read_text() if children else ""
            if stat and stat.rsplit(")", 1)[1].split()[0] == "Z":
                break
            assert time.monotonic() < deadline, "no zombie"
            time.sleep(0.05)
        zombie = int(children[0])
        result = subprocess.run(
            [*LOCKPROF, "attach", "-p", str(zombie), "-d", "1"], capture_output=True, text=True
        )
    finally:
        parent.kill()
        parent.wait()
    assert result.returncode == 2
    line = _one_line_error(result)
    assert line == f"lockprof: pid {zombie} has exited (a zombie its parent has not reaped): " + (
        "nothing to profile"
    )


def _ignored_signals(shell_prefix: str, tmp_path) -> int:
    """The ignored-signal mask (SigIgn) of a command `lockprof run` starts
    from a shell that runs shell_prefix first."""
    lockprof = " ".join(shlex.quote(part) for part in LOCKPROF)
    out = tmp_path / "s.lpr"
    command = f"exec {lockprof} run -q -o {out} -- grep SigIgn /proc/self/status"
    result = subprocess.run(
        ["sh", "-c", f"{shell_prefix} {command}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = re.search(r"^SigIgn:\s*([0-9a-f]+)$", result.stdout, re.M)
    assert found, result.stdout
    return int(found.group(1), 16)


def test_run_leaves_the_signals_its_parent_ignored_ignored_for_the_command(tmp_path):
    """`nohup lockprof run -- CMD`: CMD must survive a hangup, as under
    `nohup CMD`; a background job of a script has SIGINT ignored, and keeps
    it under `time` and `strace`. lockprof reset both to the default."""
    hup, sig_int, term = (1 << (s - 1) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM))
    ignored = _ignored_signals("trap '' HUP INT;", tmp_path)
    assert ignored & (hup | sig_int) == hup | sig_int and not ignored & term
    assert not _ignored_signals("", tmp_path) & (hup | sig_int | term)


def test_no_such_pid():
    result = subprocess.run(
        [*LOCKPROF, "attach", "-p", "4194303", "-d", "1"], capture_output=True, text=True
    )
    assert "no such process" in _one_line_error(result)


def test_pid_zero_and_negative():
    for pid in ("0", "-5"):
        result = subprocess.run(
            [*LOCKPROF, "attach", "-p", pid, "-d", "1"], capture_output=True, text=True
        )
        assert result.returncode == 2
        assert f"-p/--pid: {pid} is not in the range x>=1" in _one_line_error(result)


def test_command_not_found(tmp_path):
    """Checked before anything is compiled: one line, no "attached ... Ctrl-C"."""
    result = subprocess.run(
        [*LOCKPROF, "run", "-o", str(tmp_path / "x.lpr"), "--", "/nonexistent/cmd"],
        capture_output=True,
        text=True,
    )
    assert _one_line_error(result) == "lockprof: command not found: /nonexistent/cmd"
    assert result.returncode == 127
    assert lockprof_programs() == []


@pytest.mark.parametrize(
    ("script", "status", "line"),
    [
        ("exit 3", 3, "command exited with status 3"),
        ("kill -TERM $$", 128 + signal.SIGTERM, "command killed by SIGTERM"),
    ],
)
def test_run_exits_as_its_command_did(tmp_path, script, status, line):
    """As time, perf stat and strace: the command's status, 128 + N for
    signal N; the recording is written and says the same."""
    result = subprocess.run(
        [*LOCKPROF, "run", "-q", "-o", str(tmp_path / "r.lpr"), "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == status, result.stderr
    assert f"lockprof: {line}; recording written to" in result.stderr
    summary = show_json(tmp_path / "r.lpr")
    assert (summary["exit_status"], summary["exit_signal"]) == (
        status,
        "SIGTERM" if status > 128 else None,
    )
    assert lockprof_programs() == []


def test_run_duration_stops_collection_and_does_not_wait_for_the_command(
    lockprof_factory, tmp_path
):
    """-d 1 on `sleep 40`: lockprof detached and ended about 1 s after
    attaching (it waited 5 s more, probes loaded, Ctrl-C ignored), the
    command left running; its rusage is the collection window's."""
    lp = lockprof_factory("run", "-d", "1", "-q", "-o", "d.lpr", "--", "sleep", "40")
    lp.wait_attached()
    attached = time.monotonic()
    lp.proc.wait(timeout=60)  # (its stderr stays open in the command, still running)
    after_attach_s = time.monotonic() - attached
    summary = show_json(tmp_path / "d.lpr")
    pid = summary["target_pid"]
    try:
        assert lp.proc.returncode == 0
        assert after_attach_s < 4  # 1 s, detaching, writing; not 1 + 5 s
        assert lockprof_programs() == []
        assert Path(f"/proc/{pid}").exists()  # left running, as attach leaves its target
        assert summary["exit_status"] is None and summary["exit_signal"] is None
        assert abs(summary["rusage"]["elapsed_s"] - summary["duration_s"]) < 0.2
        assert any("rusage covers the collection window only" in n for n in summary["notes"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _code, _out, err = lp.wait(timeout=30)
    assert f"duration 1s reached; command still running as pid {pid}, not waited for" in err


def test_a_recording_to_stdout_is_alone_there(tmp_path):
    """`run -o - -- CMD > rec.lpr`: CMD's output went into the same stream
    before the recording's bytes, and the summary table after them. They go
    to stderr, as with --json; --json with -o - is refused."""
    with open(tmp_path / "r.lpr", "wb") as recording:
        result = subprocess.run(
            [*LOCKPROF, "run", "-q", "-o", "-", "--", "sh", "-c", "echo from the command"],
            stdout=recording, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "from the command" in result.stderr and "rusage" in result.stderr
    data = (tmp_path / "r.lpr").read_bytes()
    assert data[:4] == b"PK\x03\x04"
    assert data.rindex(b"PK\x05\x06") + 22 == len(data)  # nothing after the zip's end
    assert profiler.load(tmp_path / "r.lpr").meta["exit_status"] == 0
    with open(tmp_path / "j.lpr", "wb") as recording:
        result = subprocess.run(
            [*LOCKPROF, "run", "-q", "--json", "-o", "-", "--", "true"],
            stdout=recording, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert _one_line_error(result) == (
        "lockprof: -o and --json would both write to stdout; send one to a file"
    )


@pytest.mark.parametrize("flags", [[], ["-d", "1"]])
def test_run_json_is_alone_on_stdout(tmp_path, flags):
    """`run -q --json -- lpbizzy ... | jq .` parses: lpbizzy's "N records in"
    goes to stderr. With -d 1 on a 3 s command, the rusage covers the same
    second as the lock figures (elapsed was 3.03 s)."""
    seconds = "3" if flags else "1"
    result = subprocess.run(
        [*LOCKPROF, "run", "-q", "--json", *flags, "-o", str(tmp_path / "j.lpr"), "--",
         str(BIN / "lpbizzy"), "-t", "1", "-S", seconds],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert "records in" in result.stderr
    if flags:
        assert summary["exit_status"] is None
        assert abs(summary["rusage"]["elapsed_s"] - summary["duration_s"]) < 0.2
    else:
        assert summary["exit_status"] == 0
    assert lockprof_programs() == []


def test_unwritable_output_is_refused_before_attaching():
    result = subprocess.run(
        [*LOCKPROF, "record", "-a", "-d", "1", "-o", "/nonexistent-dir/x.lpr"],
        capture_output=True,
        text=True,
    )
    assert "does not exist" in _one_line_error(result)


@pytest.mark.parametrize(
    "caps, missing",
    [("", "CAP_BPF and CAP_PERFMON are missing"), ("bpf", "CAP_PERFMON is missing")],
)
def test_not_root_is_one_line_naming_the_missing_capabilities(as_nobody, caps, missing):
    result = as_nobody(["record", "-a", "-d", "1", "-o", "/tmp/never-written.lpr"], caps=caps)
    line = _one_line_error(result)
    assert "needs root, or the capabilities CAP_BPF and CAP_PERFMON" in line
    assert missing in line


def test_sigterm_sighup_and_duration_end_collection_cleanly(lockprof_factory, tmp_path):
    """SIGINT is what the exact-count tests stop with (test_counts.py)."""
    target = Held(100)
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            name = signal.Signals(sig).name
            lp = lockprof_factory("attach", "-p", str(target.pid), "-o", f"{name}.lpr", "-q")
            lp.wait_attached()
            if sig == signal.SIGTERM:
                target.go_and_wait_done()
            code, _out, err = lp.stop(sig)
            assert code == 0, err
            assert f"{name} received" in err
            rec = profiler.load(tmp_path / f"{name}.lpr")
            assert rec.meta["stop_reason"] == f"{name} received"
        lp = lockprof_factory("record", "-a", "-d", "1", "-i", "0.5", "-o", "d.lpr", "-q")
        lp.wait_attached()
        # Activity in both halves of the second, however quiet the machine is.
        subprocess.run(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.1; done"])
        code, _out, err = lp.wait(timeout=60)
        assert code == 0, err
    finally:
        target.finish()
    rows = rows_for(show_json(tmp_path / "SIGTERM.lpr"), target.pid)
    assert rows["write"]["acquisitions"] == 200  # what was collected is all there
    system = profiler.load(tmp_path / "d.lpr")
    assert system.meta["target_pid"] is None
    assert system.meta["stop_reason"] == "duration 1s reached"
    assert system.intervals["interval"].max() >= 2
    assert lockprof_programs() == []


# -- signals at every phase -------------------------------------------------------------------


def _catches_signals(pid: int) -> bool:
    """Has the process installed its handlers for SIGINT, SIGTERM, SIGHUP?"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
    return all(caught & (1 << (sig - 1)) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


def _maps_bcc(pid: int) -> bool:
    """Has the process loaded libbcc (the probes are about to be compiled)?"""
    try:
        return "libbcc" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _wait_for(condition, pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition(pid):
        assert time.monotonic() < deadline, f"{condition.__name__} never true"
        time.sleep(0.002)


@pytest.mark.parametrize(
    "phase, sig",
    [
        ("start-up", signal.SIGTERM),
        ("start-up", signal.SIGHUP),
        ("compile", signal.SIGINT),
        ("compile", signal.SIGTERM),
    ],
)
def test_signal_before_collection_starts_exits_in_one_line(tmp_path, phase, sig):
    """A signal during start-up (imports: the handlers are installed first)
    or while the probes compile: the command is never started, nothing is
    attached or recorded, one line, status 128 + N."""
    marker = tmp_path / "command-ran"
    proc = subprocess.Popen(
        [*LOCKPROF, "run", "-o", str(tmp_path / "x.lpr"), "--", "touch", str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        _wait_for(_catches_signals if phase == "start-up" else _maps_bcc, proc.pid)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err
    assert err == f"lockprof: {name} received before collection started; nothing was recorded\n"
    assert out == ""
    assert not (tmp_path / "x.lpr").exists()
    assert not marker.exists()  # the held command never ran unprofiled
    assert list(tmp_path.iterdir()) == []  # no temporary file either
    assert lockprof_programs() == []


def test_signals_while_writing_are_ignored_with_a_message(lockprof_factory, tmp_path):
    """A large recording (every wait and hold of 20,000 mmap+munmap pairs
    streamed) is written while SIGINT, SIGTERM and SIGHUP arrive: each is
    ignored with a message, and the recording is whole. The test hook
    LOCKPROF_TEST_WRITE_DELAY_S holds the write open (profiler.recording)."""
    pairs = 20_000
    target = Held(pairs)
    try:
        lp = lockprof_factory(
            "attach",
            "-p",
            str(target.pid),
            "-t",
            "1ns",
            "-o",
            "w.lpr",
            "-q",
            env={"LOCKPROF_TEST_WRITE_DELAY_S": "2"},
        )
        lp.wait_attached()
        time.sleep(0.3)
        target.go_and_wait_done()
        lp.proc.send_signal(signal.SIGINT)
        assert lp.proc.stderr is not None
        while "pausing" not in (line := lp.proc.stderr.readline()):
            assert line, "lockprof ended without writing"
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            lp.proc.send_signal(sig)
            time.sleep(0.1)
        code, _out, err = lp.wait(timeout=60)
    finally:
        target.finish()
    assert code == 0, err
    assert err.count("already stopping; writing the recording, please wait") == 3
    assert "SIGINT received; recording written to w.lpr" in err
    rec = profiler.load(tmp_path / "w.lpr")
    assert rec.meta["stop_reason"] == "SIGINT received"
    assert len(rec.events) + rec.meta["lost_events"] >= 5 * pairs
    assert rows_for(show_json(tmp_path / "w.lpr"), target.pid)["write"]["acquisitions"] == 2 * pairs
    assert [p.name for p in tmp_path.iterdir()] == ["w.lpr"]  # no temporary file left
    assert lockprof_programs() == []


# -- SIGKILL: nothing stays attached ----------------------------------------------------------

TRACEFS = Path("/sys/kernel/tracing")


def _probe_events() -> set[str]:
    """Every kprobe/uprobe event defined in tracefs, and the event
    directories of the probe groups."""
    found = set()
    for kind in ("uprobe_events", "kprobe_events"):
        with contextlib.suppress(OSError):  # no kprobe_events without CONFIG_KPROBES
            found |= set((TRACEFS / kind).read_text().splitlines())
    for group in ("uprobes", "kprobes"):
        directory = TRACEFS / "events" / group
        if directory.is_dir():
            found |= {f"events/{group}/{e.name}" for e in directory.iterdir()}
    return found


@pytest.mark.skipif(
    not doctor.mechanism_works("uprobe"), reason="doctor: uprobe does not work here"
)
def test_sigkill_leaves_no_probe_attached(lockprof_factory, tmp_path):
    """Raw tracepoints and the pthread_rwlock uprobes: every one of them is
    an fd of the lockprof process (BPF links, perf events), so the kernel
    detaches them all when SIGKILL ends it; BCC creates no named tracefs
    event where perf_event_open makes the probe (checked here)."""
    before = _probe_events()
    lp = lockprof_factory("record", "-a", "--locks", "pthread_rwlock", "-o", "k.lpr", "-q")
    lp.wait_attached()
    assert lockprof_programs() != []
    during = _probe_events()
    mine = {e for e in during - before if f"_bcc_{lp.proc.pid}" in e}
    lp.proc.kill()
    lp.proc.wait()
    assert lockprof_programs() == []
    after = _probe_events()
    assert not {e for e in after if f"_bcc_{lp.proc.pid}" in e}, after - before
    assert after - before <= during - before - mine  # nothing new of ours stays
    assert not (tmp_path / "k.lpr").exists()
    assert not list(tmp_path.glob(".k.lpr.*"))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def stale_uprobe_event():
    """A uprobe event named as BCC names them, of a process that is gone,
    as a BCC tool killed by SIGKILL leaves one on kernels where BCC has to
    create probes through tracefs."""
    name = f"uprobes/p_lockprof_test_0x1000_bcc_{_dead_pid()}"
    events = TRACEFS / "uprobe_events"
    doctor.write_probe_event(events, f"p:{name} /usr/bin/true:0x1000")
    yield name
    if name in events.read_text():
        doctor.write_probe_event(events, f"-:{name}")


def removes_stale(name: str, run) -> subprocess.CompletedProcess:
    """run() (a lockprof command) must remove the stale event name. Any
    lockprof starting meanwhile removes it too (a collection's start-up
    does): when run() finds it already gone, it is made again and run()
    tried again, so the test neither fails on that race nor passes without
    run() having removed it."""
    events = TRACEFS / "uprobe_events"
    for _attempt in range(3):
        done = run()
        assert done.returncode == 0, done.stderr
        if name in done.stdout + done.stderr:
            assert name not in events.read_text()
            assert not (TRACEFS / "events" / name).exists()
            return done
        assert name not in events.read_text(), "left in place"
        doctor.write_probe_event(events, f"p:{name} /usr/bin/true:0x1000")  # removed by another
    pytest.fail(f"{name} was removed by another lockprof three times in a row")


def test_doctor_cleanup_removes_stale_probe_events(stale_uprobe_event):
    live = f"uprobes/p_lockprof_test_0x2000_bcc_{os.getpid()}"  # ours: alive, kept
    events = TRACEFS / "uprobe_events"
    doctor.write_probe_event(events, f"p:{live} /usr/bin/true:0x2000")
    try:
        assert (TRACEFS / "events" / stale_uprobe_event).is_dir()
        done = removes_stale(
            stale_uprobe_event,
            lambda: subprocess.run(
                [*LOCKPROF, "doctor", "--cleanup", "--json"], capture_output=True, text=True
            ),
        )
        assert stale_uprobe_event in json.loads(done.stdout)["removed_probe_events"]
        assert live in events.read_text()
    finally:
        doctor.write_probe_event(events, f"-:{live}")


def test_collection_start_removes_stale_probe_events(stale_uprobe_event, tmp_path):
    done = removes_stale(
        stale_uprobe_event,
        lambda: subprocess.run(
            [*LOCKPROF, "record", "-a", "-d", "0.5", "-q", "-o", str(tmp_path / "r.lpr")],
            capture_output=True,
            text=True,
            timeout=60,
        ),
    )
    line = next(x for x in done.stderr.splitlines() if "stale probe events" in x)
    assert re.fullmatch(
        r"lockprof: removed \d+ stale probe events left by killed BCC processes \(.*\)", line
    )
    assert stale_uprobe_event in line


# -- the target forks and execs ------------------------------------------------------------------

EXEC_AFTER_GO = """
import os, sys
print("ready", flush=True)
sys.stdin.read(1)
os.execv(sys.argv[1], [sys.argv[1], "-w", "-n", sys.argv[2]])
"""


def test_attach_follows_an_exec_of_the_target(lockprof_factory, tmp_path):
    """attach -p on a python process that execs mmapcount: the pid stays, so
    the new program is profiled (its new mm's mmap_lock, learned under the
    new comm, belongs to the pid), and the exec is stated."""
    pairs = 3000
    proc = subprocess.Popen(
        [sys.executable, "-c", EXEC_AFTER_GO, str(BIN / "mmapcount"), str(pairs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        lp = lockprof_factory("attach", "-p", str(proc.pid), "-o", "x.lpr", "-q")
        lp.wait_attached()
        time.sleep(0.3)
        proc.stdin.write(b"g")  # exec
        proc.stdin.flush()
        assert proc.stdout.readline().startswith(b"ready ")
        time.sleep(0.3)  # a poll of /proc sees the new program
        proc.stdin.write(b"g")  # mmapcount's pairs
        proc.stdin.flush()
        assert proc.stdout.readline() == b"done\n"
        proc.stdin.close()  # mmapcount exits: collection ends
        code, out, err = lp.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert code == 0, err
    assert f"pid {proc.pid} exited" in err
    summary = show_json(tmp_path / "x.lpr")
    after = rows_for(summary, proc.pid, comm="mmapcount")
    # 2 per pair, plus what exec, ld.so and exit take on the new mm.
    assert 2 * pairs <= after["write"]["acquisitions"] <= 2 * pairs + 100, after["write"]
    assert after["write"]["downgrades"] >= pairs
    assert rows_for(summary, proc.pid, comm="python3") or rows_for(summary, proc.pid, comm="python")
    rec = profiler.load(tmp_path / "x.lpr")
    execs = rec.meta["lineage"]["execs"]
    assert [e["comm"] for e in execs] == ["mmapcount"]
    assert execs[0]["exe"] == str(BIN / "mmapcount")
    assert any("exec'd mmapcount" in note for note in summary["notes"])
    assert f"note: pid {proc.pid} exec'd mmapcount" in out


def test_run_follow_profiles_the_commands_descendants(tmp_path):
    """--follow: a shell's two children and a grandchild, running together,
    each counted on its own mmap_lock: 2 write acquisitions per mmap+munmap
    pair, plus what exec, ld.so and exit take. Before them a `sleep` child
    exits, and rounds of retirement (every 0.2 s here) drop it and its lock
    from the follow maps (its mm address may be reused by one of the others,
    whose row then also holds sleep's few acquisitions)."""
    script = (
        f"sleep 0.6; {BIN / 'mmapcount'} -n 1000 & {BIN / 'mmapcount'} -n 2000 & "
        f"sh -c '{BIN / 'mmapcount'} -n 3000'; wait"
    )
    done = subprocess.run(
        [*LOCKPROF, "run", "-f", "-i", "0.2", "-o", str(tmp_path / "f.lpr"), "-q", "--",
         "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, RETIRE_ENV: "0.2"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = show_json(tmp_path / "f.lpr")
    writes = sorted(
        r["acquisitions"]
        for r in summary["locks"]
        if r["owner_comm"] == "mmapcount" and r["mode"] == "write"
    )
    assert len(writes) == 3, summary["locks"]
    for pairs, seen in zip((1000, 2000, 3000), writes, strict=True):
        assert 2 * pairs <= seen <= 2 * pairs + 200, writes
    rec = profiler.load(tmp_path / "f.lpr")
    pid = rec.meta["target_pid"]
    assert rec.meta["followed"] >= 4  # the three mmapcounts and sleep (and sh, unless it execs)
    assert (
        f"note: --follow: pid {pid} and its descendants ({rec.meta['followed']} processes) "
        "were profiled"
    ) in done.stdout


def _child_of(pid: int, timeout: float = 10.0) -> int:
    """The one child of pid, once it has forked it."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children.read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} forked no child")


def test_attach_follow_knows_an_idle_descendants_lock_from_the_start(lockprof_factory, tmp_path):
    """attach -f to a shell waiting on a sleeping child: neither takes its
    own mmap_lock during the run, yet readers of the child's
    /proc/N/cmdline are counted on the child's lock, which lockprof learned
    by looking at it (lp_learn_idle_target) as it did the target's."""
    from profiler import btf

    if btf.probe_offsets()["LP_MM_OWNER_OFFSET"] < 0:
        pytest.skip("no mm_struct.owner (CONFIG_MEMCG): learned when the child takes its lock")
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    try:
        child = _child_of(shell.pid)
        lp = lockprof_factory("attach", "-f", "-p", str(shell.pid), "-o", "f.lpr", "-q")
        lp.wait_attached()
        for _ in range(5):
            subprocess.run(["cat", f"/proc/{child}/cmdline"], capture_output=True, check=True)
        code, _out, err = lp.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        shell.kill()
        shell.wait()
    assert code == 0, err
    rec = profiler.load(tmp_path / "f.lpr")
    child_locks = set(rec.locks.loc[rec.locks["owner_pid"] == child, "lock"])
    assert len(child_locks) == 1, rec.locks
    cats = rec.tasks[(rec.tasks["comm"] == "cat") & rec.tasks["lock"].isin(child_locks)]
    assert cats["waits"].sum() >= 5, rec.tasks


def test_run_states_that_forked_children_are_not_followed(tmp_path):
    done = subprocess.run(
        [
            *LOCKPROF,
            "run",
            "-o",
            str(tmp_path / "f.lpr"),
            "-q",
            "--",
            "sh",
            "-c",
            "sleep 1.5 & sleep 1.5 & wait",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rec = profiler.load(tmp_path / "f.lpr")
    pid = rec.meta["target_pid"]
    assert rec.meta["lineage"] == {"children_seen": 2, "execs": []}
    assert (
        f"note: pid {pid} forked processes (at least 2 seen): they are not followed "
        f"(--follow profiles them); only pid {pid} and tasks taking its mmap_lock are profiled"
    ) in done.stdout
    owners = set(rec.locks["owner_pid"].dropna().astype(int))
    assert owners <= {pid}  # the children's own mms are not in the recording
