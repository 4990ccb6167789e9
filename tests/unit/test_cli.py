"""The lockprof command line, without root: errors are one line, help has examples.

Collecting subcommands are only run with arguments that fail before any BPF
is loaded (invalid pid, bad option, or no privileges as a normal user); the
pid is always one that does not exist, so that even a regression in option
checking cannot make a test attach to a real process as root.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import click
import pytest

from profiler import recording, render
from profiler.cli.common import TimeParam
from profiler.errors import LockprofError
from profiler.targets import check_pid

from .helpers import RECORDING as RECORDING_PATH
from .helpers import REPO, intervals_frame, run_main
from .helpers import one_error_line as assert_one_error_line

LOCKPROF = REPO / ".venv" / "bin" / "lockprof"
SUBCOMMANDS = ["attach", "run", "record", "show", "doctor", "precompile"]


def free_pid() -> int:
    """A pid no process has: above pid_max if possible."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    pid = min(pid_max, 4194303)
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


@pytest.fixture
def future_recording(recording_bytes, tmp_path) -> Path:
    with zipfile.ZipFile(io.BytesIO(recording_bytes)) as archive:
        contents = {n: archive.read(n) for n in archive.namelist()}
    meta = json.loads(contents["meta.json"])
    meta["schema_version"] = recording.SCHEMA_VERSION + 1
    contents["meta.json"] = json.dumps(meta).encode()
    path = tmp_path / "future.lpr"
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in contents.items():
            archive.writestr(name, payload)
    return path


# -- show -------------------------------------------------------------------------------


def test_show_missing_file(capsys, tmp_path):
    code, out, err = run_main(capsys, "show", str(tmp_path / "missing.lpr"))
    line = assert_one_error_line(code, err)
    assert line == f"lockprof: {tmp_path / 'missing.lpr'}: no such file"
    assert code == 1 and out == ""


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x05\x06" + b"\0" * 18])
def test_show_corrupt_file(capsys, tmp_path, content):
    path = tmp_path / "corrupt.lpr"
    path.write_bytes(content)
    code, out, err = run_main(capsys, "show", str(path))
    assert "not a lockprof recording" in assert_one_error_line(code, err)
    assert code == 1 and out == ""


def test_show_truncated_recording(capsys, tmp_path, recording_bytes):
    path = tmp_path / "cut.lpr"
    path.write_bytes(recording_bytes[: len(recording_bytes) // 2])
    code, _out, err = run_main(capsys, "show", str(path))
    assert_one_error_line(code, err)
    assert code == 1


def test_show_future_version(capsys, future_recording):
    code, out, err = run_main(capsys, "show", str(future_recording))
    line = assert_one_error_line(code, err)
    assert f"schema version {recording.SCHEMA_VERSION + 1}" in line
    assert "upgrade lockprof" in line
    assert code == 1 and out == ""


def test_show_json(capsys, recording_path):
    code, out, err = run_main(capsys, "show", "--json", str(recording_path))
    assert (code, err) == (0, "")
    doc = json.loads(out)
    write = next(r for r in doc["locks"] if r["owner_comm"] == "mmapcount" and r["mode"] == "write")
    assert write["acquisitions"] == 2030


def test_show_table(capsys, recording_path):
    code, out, err = run_main(capsys, "show", str(recording_path))
    assert (code, err) == (0, "")
    assert "mmap_lock pid 4560 (mmapcount)" in out
    assert "rusage  user 0.00s  sys 0.01s  elapsed 0.11s  minor faults 390" in out
    assert "still held" not in out  # every acquisition was released or downgraded
    assert "\x1b" not in out  # not a terminal: no styling at all


def test_show_top(capsys, recording_path):
    code, out, _err = run_main(capsys, "show", "--top", "1", str(recording_path))
    assert code == 0
    assert f"(5 more rows; `lockprof show {recording_path}` lists all)" in out


def test_show_json_top(capsys, recording_path):
    code, out, err = run_main(capsys, "show", "--json", "--top", "1", str(recording_path))
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert len(doc["locks"]) == 1 and doc["locks_total"] == 6


def test_show_prints_a_long_table_as_plain_text(capsys, recording_path, monkeypatch):
    """Past render.PLAIN_TABLE_ROWS rows, the same rows and footer, as plain
    aligned text (rich took 56 s for a 2-hour recording's 78k rows)."""
    _code, rich_out, _err = run_main(capsys, "show", str(recording_path))
    monkeypatch.setattr(render, "PLAIN_TABLE_ROWS", 2)
    code, out, err = run_main(capsys, "show", str(recording_path))
    assert (code, err) == (0, "")
    assert "┃" not in out and "│" not in out
    table = out.splitlines()[1:8]
    assert table[0].split()[:3] == ["lock", "mode", "acq"]
    rich_rows = [line for line in rich_out.splitlines() if line.startswith("│")]
    assert len(table[1:]) == len(rich_rows) == 6
    for plain, boxed in zip(table[1:], rich_rows, strict=True):
        assert re.split(r"\s{2,}", plain) == [c.strip() for c in boxed.strip("│").split("│")]
    rich_tail = rich_out.splitlines()[len(rich_out.splitlines()) - 2 :]
    assert out.splitlines()[-2:] == rich_tail  # per-CPU line, rusage
    code, out, _err = run_main(capsys, "show", "--top", "3", str(recording_path))
    assert f"(3 more rows; `lockprof show {recording_path}` lists all)" in out and "│" not in out


def test_show_escapes_hostile_text(capsys, rec, tmp_path):
    rec.locks["owner_comm"] = rec.locks["owner_comm"].where(
        rec.locks["owner_comm"].isna(), "\x1b]0;pwned\x07\x1b[31mevil[bold]x[/bold]"
    )
    rec.meta["target"] = "pid 1 (\x1b[2J)"
    path = recording.save(rec, tmp_path / "hostile.lpr")
    code, out, err = run_main(capsys, "show", str(path))
    assert (code, err) == (0, "")
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;pwned\\x07\\x1b[31mevil[bold]x[/bold]" in out
    assert "pid 1 (\\x1b[2J)" in out


def test_show_recording_with_a_broken_table(capsys, rec, tmp_path):
    rec.intervals = rec.intervals.drop(columns=["hold_count"])
    path = recording.save(rec, tmp_path / "broken.lpr")
    code, out, err = run_main(capsys, "show", str(path))
    line = assert_one_error_line(code, err)
    assert code == 1 and out == "" and "internal error" not in line
    assert line == f"lockprof: {path}: corrupt recording: table intervals lacks column hold_count"


@pytest.mark.parametrize("as_json", [False, True])
def test_show_recording_with_a_mistyped_column(capsys, rec, tmp_path, as_json):
    rec.locks["mode"] = 3  # numbers where text belongs
    path = recording.save(rec, tmp_path / "broken.lpr")
    code, out, err = run_main(capsys, "show", *(["--json"] if as_json else []), str(path))
    line = assert_one_error_line(code, err)
    assert code == 1 and out == ""
    assert line == (
        f"lockprof: {path}: corrupt recording: table locks column mode "
        "holds values that are not text"
    )


# -- attach and other collecting commands ----------------------------------------------------


@pytest.mark.parametrize("pid", ["0", "-3"])
def test_attach_pid_not_positive_is_a_usage_error(capsys, pid):
    """As click words every other bad value, before the privilege check."""
    code, out, err = run_main(capsys, "attach", "-p", pid)
    assert (code, out) == (2, "")
    assert err == (
        f"lockprof attach: -p/--pid: {pid} is not in the range x>=1 (see lockprof attach --help)\n"
    )


@pytest.mark.parametrize("pid", ["free"])
def test_attach_bad_pid(capsys, pid):
    pid = str(free_pid()) if pid == "free" else pid
    code, out, err = run_main(capsys, "attach", "-p", pid)
    line = assert_one_error_line(code, err)
    assert out == ""
    if os.geteuid() == 0:
        assert code == 2
        assert line == f"lockprof: no such process: {pid}"
    else:  # without privileges, attach refuses before looking at the pid
        assert "needs root" in line


def test_attach_bad_threshold_is_a_usage_error(capsys):
    code, out, err = run_main(capsys, "attach", "-p", str(free_pid()), "--threshold", "abc")
    assert code == 2 and out == ""
    assert err == (
        "lockprof attach: -t/--threshold: 'abc' is not a duration (examples: 500us, 2ms, 1s) "
        "(see lockprof attach --help)\n"
    )


@pytest.mark.parametrize("threshold", ["0", "0us"])
def test_attach_zero_threshold(capsys, threshold):
    code, _out, err = run_main(capsys, "attach", "-p", str(free_pid()), "--threshold", threshold)
    assert assert_one_error_line(code, err) == (
        f"lockprof attach: -t/--threshold: must be longer than 0, not {threshold!r} "
        "(examples: 1ns, 500us) (see lockprof attach --help)"
    )
    assert code == 2


def test_attach_without_any_probe_family(capsys):
    code, _out, err = run_main(
        capsys, "attach", "-p", str(free_pid()), "--no-mmap-lock", "--no-contention"
    )
    assert "leave nothing to trace" in assert_one_error_line(code, err)


def test_record_needs_all(capsys):
    code, _out, err = run_main(capsys, "record", "-d", "1")
    assert code == 2
    assert (
        err == "lockprof record: Missing option '-a' / '--all-cpus' (see lockprof record --help)\n"
    )


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["bogus"], "lockprof: No such command 'bogus'"),
        (["show"], "lockprof show: Missing argument 'PATH'"),
        (["run"], "lockprof run: Missing argument 'CMD...'"),
        (["bench", "-o", "x.lpset"], "lockprof bench: Missing argument 'CMD...'"),
        (["attach"], "lockprof attach: Missing option '-p' / '--pid'"),
        (["attach", "-p", "abc"], "lockprof attach: -p/--pid: 'abc' is not a process id"),
        (["show", "--top", "0", "x.lpr"], "lockprof show: --top: 0 is not in the range x>=1"),
        (["run", "-d", "0", "--", "true"], "lockprof run: -d/--duration: 0.0 is not in the range"),
        (["record", "-a", "-i", "-1"], "lockprof record: -i/--interval: -1.0 is not in the range"),
        (["attach", "--bogus"], "lockprof attach: No such option"),
        (["run", "--bogus", "--", "true"], "lockprof run: No such option '--bogus'"),
        (["bench", "-o", "x.lpset", "--bogus", "--", "true"], "lockprof bench: No such option"),
        (["compare", "a.lpr"], "lockprof compare: Missing argument 'AFTER'"),
    ],
)
def test_usage_errors_are_one_line(capsys, never_collect, argv, line):
    """One line on stderr, status 2, not click's four (Usage, Try, blank,
    Error); `run --bogus` was taken for a command named --bogus."""
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    command = line.split(":")[0]
    assert err.startswith(line) and err.endswith(f" (see {command} --help)\n"), err


def test_help_is_still_clicks(capsys):
    code, out, err = run_main(capsys, "run", "--help")
    assert (code, err) == (0, "")
    assert out.startswith("Usage: lockprof run [OPTIONS] CMD...\n")  # as its text calls it


# -- help --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *[[c] for c in SUBCOMMANDS]])
def test_help_has_examples(capsys, command):
    code, out, err = run_main(capsys, *command, "--help")
    assert (code, err) == (0, "")
    assert "Examples" in out
    assert out.startswith(f"Usage: lockprof {' '.join(command)}".rstrip())


@pytest.mark.parametrize(
    ("command", "default_name", "has_target"),
    [
        ("attach", "lockprof-attach-PID-TIME.lpr", True),
        ("run", "lockprof-run-PID-TIME.lpr", True),
        ("record", "lockprof-system-all-TIME.lpr", False),
    ],
)
def test_collecting_help_speaks_of_its_own_command(capsys, command, default_name, has_target):
    """record has no target to exit or leave running, and each command names
    the default recording it writes (default_output's names)."""
    code, out, _err = run_main(capsys, command, "--help")
    # click wraps the option help, also after a name's hyphens
    text = re.sub(r"-\s+", "-", " ".join(out.split()))
    assert code == 0
    assert f"default: {default_name} here" in text
    assert ("left running" in text) == has_target
    assert ("stdout goes to stderr" in text) == (command == "run")


def test_version(capsys):
    from profiler import __version__

    code, out, _err = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"lockprof, version {__version__}"


# -- the installed entry point, in a fresh process ----------------------------------------


def lockprof(*argv: str) -> subprocess.CompletedProcess:
    command = _lockprof_command()
    env = {k: v for k, v in os.environ.items() if k != "LOCKPROF_DEBUG"}
    return subprocess.run(
        [*command, *argv], capture_output=True, text=True, timeout=60, env=env, cwd="/"
    )


def test_entry_point_show_errors(tmp_path, future_recording):
    for path in (tmp_path / "missing.lpr", future_recording):
        result = lockprof("show", str(path))
        assert result.returncode == 1
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith(f"lockprof: {path}: ")


def test_entry_point_show_json(recording_path):
    result = lockprof("show", "--json", str(recording_path))
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout)["cpus"] == 2


def test_entry_point_attach_pid_zero():
    result = lockprof("attach", "-p", "0")
    assert result.returncode != 0 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("lockprof attach: -p/--pid: 0 is not in the range")


def _lockprof_command() -> list[str]:
    return [str(LOCKPROF)] if LOCKPROF.exists() else [sys.executable, "-m", "profiler.cli.main"]


@pytest.mark.parametrize("closed", [">&-", "2>&-", ">&- 2>&- <&-"])
def test_closed_standard_streams_are_dev_null(recording_path, closed):
    """Started with a standard stream closed, Python sets sys.stdout (etc.)
    to None: flush_outputs() and every direct write then raised
    AttributeError (exit 1 with a traceback, `run --json` an internal
    error). They become /dev/null instead: the status is the command's."""
    script = f'exec "$@" {closed}'
    result = subprocess.run(
        ["sh", "-c", script, "sh", *_lockprof_command(), "show", "--json", str(recording_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert (result.returncode, result.stderr) == (0, "")
    if ">&-" not in closed:
        assert json.loads(result.stdout)["cpus"] == 2


@pytest.mark.parametrize(("stdout_gone", "expected"), [(True, 141), (False, 1)])
def test_a_broken_pipe_is_141_only_when_it_is_stdouts(
    capsys, monkeypatch, recording_path, stdout_gone, expected
):
    """An EPIPE inside a subcommand: stdout's reader gone is 141 (a shell's
    status for SIGPIPE); stderr's (stdout still read) is a failure, 1, and
    stdout keeps its output."""
    from profiler.cli import main as main_module
    from profiler.cli import show

    def broken(*_args, **_kwargs):
        print("the first line")
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(show, "print_summary", broken)
    monkeypatch.setattr(main_module, "_stdout_is_gone", lambda: stdout_gone)
    from profiler.cli import common

    monkeypatch.setattr(common, "silence_stream", lambda stream: None)
    code, out, _err = run_main(capsys, "show", recording_path)
    assert code == expected
    assert out == "the first line\n"


@pytest.mark.parametrize("argv", [["show"], ["show", "--json"]])
def test_a_reader_gone_before_show_writes_gets_141(recording_path, argv):
    """click turns an EPIPE inside a command into exit 1 by itself; main()
    gives 141 for it, as for a collection's summary (a shell's status for a
    writer killed by SIGPIPE), whatever the output's size."""
    process = subprocess.Popen(
        [*_lockprof_command(), *argv, str(recording_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before lockprof has written anything
    err = process.stderr.read()
    assert (process.wait(timeout=60), err) == (141, b"")


@pytest.mark.parametrize("argv", [["show"], ["show", "--json"]])
def test_a_full_stdout_is_one_line_not_an_internal_error(recording_path, argv):
    """`lockprof show rec.lpr > /dev/full` (or a full disk under `> file`):
    "internal error: OSError: [Errno 28]", status 70, read as a bug."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*_lockprof_command(), *argv, str(recording_path)],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd="/", timeout=60,
        )  # fmt: skip
    assert (done.returncode, done.stderr) == (
        1,
        "lockprof: cannot write to stdout: No space left on device\n",
    )


# -- check_pid and TimeParam ---------------------------------------------------------------


@pytest.mark.parametrize("pid", [0, -1])
def test_check_pid_rejects_non_positive(pid):
    with pytest.raises(LockprofError, match="must be a positive integer") as excinfo:
        check_pid(pid)
    assert excinfo.value.exit_code == 2


def test_check_pid_no_such_process():
    pid = free_pid()
    with pytest.raises(LockprofError, match=f"no such process: {pid}") as excinfo:
        check_pid(pid)
    assert excinfo.value.exit_code == 2


def test_check_pid_maps_a_thread_to_its_process():
    assert check_pid(os.getpid()) == os.getpid()
    seen: list[int] = []
    ready, done = threading.Event(), threading.Event()

    def worker():
        seen.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        ready.wait(10)
        assert seen[0] != os.getpid()
        assert check_pid(seen[0]) == os.getpid()
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize(
    ("text", "unit", "ns"),
    [
        ("100us", "us", 100_000),
        ("2ms", "us", 2_000_000),
        ("1.5s", "us", 1_500_000_000),
        ("250", "us", 250_000),
        ("250", "ms", 250_000_000),
        ("7ns", "s", 7),
        (" 3 ms ", "us", 3_000_000),
        ("0", "us", 0),
        (5, "ms", 5_000_000),
        (0.5, "s", 500_000_000),
    ],
)
def test_time_param(text, unit, ns):
    assert TimeParam(unit).convert(text, None, None) == ns


@pytest.mark.parametrize("text", ["abc", "-1", "1h", "1e3us", "", "1.2.3ms", "ms"])
def test_time_param_rejects(text):
    with pytest.raises(click.BadParameter, match="is not a duration"):
        TimeParam("us").convert(text, None, None)


# -- absurd values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("-d", "nan", "'nan' is not a finite number"),
        ("-d", "inf", "inf is not in the range"),
        ("-d", "0", "0.0 is not in the range"),
        ("-d", "-5", "-5.0 is not in the range"),
        ("-d", "1e12", "is not in the range"),
        ("-i", "NaN", "'NaN' is not a finite number"),
        ("-i", "0.01", "is not in the range"),
        ("-i", "86400", "is not in the range"),
        ("-t", "99999999999999999999s", "is longer than 3600 s"),
        ("-t", "-1us", "is not a duration"),
        ("--stack-threshold", "2h", "is not a duration"),
        ("--stack-threshold", "3601s", "is longer than 3600 s"),
        ("--sample-hz", "0", "is not in the range"),
        ("--sample-hz", "1000000", "is not in the range"),
        ("--max-events", "-1", "is not in the range"),
        ("--top", "0", "is not in the range"),
        ("--cpus", "0", "is not in the range"),
    ],
)
def test_absurd_collection_values_are_usage_errors(capsys, option, value, message):
    """Refused by the option parser: before privileges, pids or BPF."""
    for command in (["attach", "-p", str(free_pid())], ["record", "-a"]):
        code, out, err = run_main(capsys, *command, option, value)
        assert code == 2 and out == ""
        assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("pid", ["99999999999999999999", str(2**32 + 1)])
def test_attach_pid_beyond_any_pid(capsys, pid):
    code, out, err = run_main(capsys, "attach", "-p", pid)
    line = assert_one_error_line(code, err)
    assert out == ""
    if os.geteuid() == 0:
        assert line == f"lockprof: no such process: {pid}" and code == 2
    else:
        assert "needs root" in line


@pytest.mark.parametrize("pid", ["0x10", "1.5", "", "12abc"])
def test_attach_pid_that_is_not_a_number(capsys, pid):
    code, out, err = run_main(capsys, "attach", "-p", pid)
    assert code == 2 and out == ""
    assert "Traceback" not in err and f"{pid!r} is not a process id" in err


def test_show_a_directory(capsys, tmp_path):
    code, out, err = run_main(capsys, "show", str(tmp_path))
    line = assert_one_error_line(code, err)
    assert line == f"lockprof: {tmp_path}: is a directory, not a recording"  # not [Errno 21]
    assert code == 1 and out == ""


@pytest.mark.parametrize(
    ("command", "status", "line"),
    [
        ("/nonexistent/cmd", 127, "command not found: /nonexistent/cmd"),
        ("no-such-command-anywhere", 127, "command not found: no-such-command-anywhere"),
        ("{tmp}/not-executable", 126, "command is not executable: {tmp}/not-executable"),
    ],
)
def test_run_checks_its_command_before_anything_else(
    capsys, tmp_path, never_collect, command, status, line
):
    """As bench does: no probes compiled, no "attached ... Ctrl-C to stop"
    before "cannot run"."""
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    (tmp_path / "not-executable").chmod(0o644)
    command, line = command.format(tmp=tmp_path), line.format(tmp=tmp_path)
    code, out, err = run_main(capsys, "run", "--", command)
    assert assert_one_error_line(code, err) == f"lockprof: {line}"
    assert code == status and out == ""


def test_the_root_refusal_says_lockprof_once(capsys, monkeypatch):
    from profiler import privileges

    monkeypatch.setattr(privileges, "effective_caps", lambda: 0)
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 1000)
    code, _out, err = run_main(capsys, "record", "-a", "-d", "1")
    line = assert_one_error_line(code, err)
    assert line.startswith("lockprof: needs root, or the capabilities CAP_BPF and CAP_PERFMON")


def test_error_lines_never_carry_raw_escapes(capsys, tmp_path):
    """Errors quote paths and names the user or a traced process chose."""
    path = tmp_path / "\x1b]2;PWN\x07\x1b[31m.lpr"
    code, _out, err = run_main(capsys, "show", str(path))
    line = assert_one_error_line(code, err)
    assert "\x1b" not in err and "\x07" not in err
    assert line.endswith("\\x1b]2;PWN\\x07\\x1b[31m.lpr: no such file")


# -- the live view when the terminal goes away ------------------------------------------


class _GoneTerminal(io.StringIO):
    """A terminal whose other end closed: every write fails with EIO."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(5, "Input/output error")


def _live_state():
    from profiler.options import LiveState

    return LiveState(elapsed_s=1.0, target="pid 1", rows=[], errors={}, events=0, cpus=2)


def test_live_view_turns_itself_off_when_its_terminal_is_gone():
    from rich.console import Console

    from profiler.cli.common import LiveView

    view = LiveView(top=5, quiet=False)
    terminal = _GoneTerminal()
    view.err = Console(file=terminal)
    assert view.update(_live_state()) is False  # the progress line: EIO, swallowed
    assert isinstance(view.gone, OSError) and view.quiet and terminal.writes == 1
    assert view.update(_live_state()) is False and terminal.writes == 1  # not tried again
    view.stop()


def test_the_live_progress_line_says_what_the_per_cpu_line_counts():
    """Off a terminal, the live view prints a line an interval. It said
    "16,518 acquisitions, 23,656 contended": contended waits on
    contention-only locks, which have no acquisitions, read as more
    contended acquisitions than acquisitions."""
    from rich.console import Console

    from profiler.cli.common import LiveView
    from profiler.options import CpuFigures

    from .test_render import bizzy_rows

    rows = bizzy_rows()
    totals = render.cpu_totals_of(rows)
    out = io.StringIO()
    view = LiveView(top=5, quiet=False)
    view.err = Console(file=out, width=200)
    state = _live_state()
    state.rows, state.cpu_totals = rows, totals
    state.events, state.threshold_ns = 93, 100_000
    assert view.update(state) is True
    # The table's acquisitions (35,336 + 2,805) and every contended wait;
    # the events kept so far, as the terminal's header says them.
    assert out.getvalue() == (
        "[    1.0s] since start: 5 lock rows, 38,141 acq, 653 contended waits, wait 294ms, "
        "93 events over 100us, lost 0\n"
    )
    assert render.all_cpus(totals) == CpuFigures(38_141, 653, 293_551_634)
    # Without the kernel's per-CPU totals (no live view state yet), the rows'.
    state.cpu_totals = None
    assert view.update(state) is True
    assert out.getvalue().splitlines()[1] == out.getvalue().splitlines()[0]


def test_the_live_view_on_a_short_terminal_keeps_its_footer():
    """At 80x24 the table's 15 rows pushed the per-CPU and problems lines
    below the terminal's bottom, where rich's Live cut them off."""
    from rich.console import Console

    from profiler.cli.common import LiveView

    from .test_render import many_rows

    view = LiveView(top=15, quiet=False)
    view.console = Console(file=io.StringIO(), force_terminal=True, width=80, height=24)
    view.err = Console(file=io.StringIO(), width=80)
    view._attached(_FakeTarget(), [])
    state = _live_state()
    state.rows, state.errors = many_rows(20), {"ringbuf_full": 3}
    try:
        assert view.update(state) is True
        live = view._live
        assert live is not None
        lines = view.console.render_lines(live.renderable, view.console.options, pad=False)
        shown = view._frame.shown if view._frame is not None else None
        assert view.update(state) is True  # the next frame starts from this one's rows
        assert view._frame is not None and view._frame.guess == shown is not None
    finally:
        view.stop()
    text = ["".join(segment.text for segment in line) for line in lines]
    assert len(text) <= 24 and "! lost events: 3" in text
    assert "more rows" in " ".join(text)


def test_the_live_view_shows_blocked_time_in_a_table_of_its_own():
    """--offcpu: the live table listed `rwsem_down_read_slowpath <-
    exc_page_fault` as a lock, its blocked time under `wait total`, its
    blocked count nowhere; the summary has them in a table of their own."""
    from rich.console import Console

    from profiler.cli.common import LiveView

    from .test_render import bizzy_rows

    blocked = {
        "lock": "rwsem_down_read_slowpath <- exc_page_fault",
        "mode": "read",
        "source": "offcpu",
        "wait_ns": {"count": 66_715, "total": 1_450_000_000, "max": 2_790_000},
        "offcpu_components_ns": {"writer_wait": 1_450_000_000},
        "tasks": ["lpbizzy"],
    }
    view = LiveView(top=15, quiet=False)
    view.console = Console(file=io.StringIO(), force_terminal=True, width=160, height=60)
    view.err = Console(file=io.StringIO(), width=160)
    view._attached(_FakeTarget(), [])
    state = _live_state()
    state.rows = [*bizzy_rows(), blocked]
    try:
        assert view.update(state) is True
        live = view._live
        assert live is not None
        lines = view.console.render_lines(live.renderable, view.console.options, pad=False)
    finally:
        view.stop()
    text = ["".join(segment.text for segment in line) for line in lines]
    start = [line.strip() for line in text].index(
        "blocked in lock functions (off-CPU, sched_switch)"
    )
    assert not any("rwsem_down_read_slowpath" in line for line in text[:start])
    assert any(
        "rwsem_down_read_slowpath <- exc_page_fault" in line and "66,715" in line
        for line in text[start:]
    )


class _FakeTarget:
    def describe(self) -> str:
        return "pid 1 (x)"

    def writes_to(self, fd: int) -> bool:
        return False  # attached to: its output is not lockprof's terminal


def test_the_live_progress_line_counts_the_quieter_locks():
    """The live state holds the rows of the busiest locks only
    (session.LIVE_LOCKS): `record -a` with 148 locks said "55 lock rows"."""
    from rich.console import Console

    from profiler.cli.common import LiveView

    from .test_render import bizzy_rows

    out = io.StringIO()
    view = LiveView(top=5, quiet=False)
    view.err = Console(file=out, width=200)
    state = _live_state()
    state.rows, state.more_rows = bizzy_rows(), 1_108
    assert view.update(state) is True
    assert out.getvalue().startswith(
        "[    1.0s] since start: 5 lock rows and 1,108 quieter locks, 38,141 acq, "
    )


def test_the_live_header_says_its_figures_are_totals_and_what_events_are():
    """It said "lockprof  pid 1 (x)     2.0s  events 196": per interval or
    since the start? events of what? The final summary says "196 events
    over 100us"."""
    from profiler.cli.common import live_header

    state = _live_state()
    state.target, state.elapsed_s, state.events = "pid 1 (x)", 2.04, 1_196
    state.threshold_ns = 100_000
    assert live_header(state) == (
        "lockprof  pid 1 (x)  totals since start, 2.0s  1,196 events over 100us"
    )


def test_live_view_on_a_closed_pipe_turns_itself_off_and_leaves_stdout_alone():
    """rich's own answer to a closed pipe (stdout pointed at /dev/null, then
    SystemExit(1)) escaped every guard and ended the collection unsaved."""
    from profiler import render
    from profiler.cli.common import LiveView

    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout_before = os.readlink("/proc/self/fd/1")
    view = LiveView(top=5, quiet=False)
    pipe = open(write_end, "w")  # noqa: SIM115
    try:
        view.err = render.console(stderr=True)
        view.err.file = pipe
        assert view.update(_live_state()) is False
    finally:
        with contextlib.suppress(BrokenPipeError):
            pipe.close()  # its buffer still holds the line
    assert isinstance(view.gone, BrokenPipeError)
    assert os.readlink("/proc/self/fd/1") == stdout_before


def test_a_failing_live_view_is_dropped_and_collection_goes_on(capsys):
    from profiler import session

    def broken_view(_state):
        raise KeyError("\x1b[31mcomm")

    def broken_state():
        raise ValueError("no rows")

    assert session._shown(broken_view, _live_state) is False
    assert session._shown(lambda _state: None, broken_state) is False  # building it, too
    assert session._shown(lambda _state: None, _live_state) is True
    assert session._shown(lambda _state: False, _live_state) is False  # the view is done
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "\x1b" not in "".join(err)
    assert err[0].startswith("lockprof: live view stopped (KeyError: ")
    assert err[1] == "lockprof: live view stopped (ValueError: no rows); collection goes on"


# -- --lock-types ------------------------------------------------------------------------


def test_lock_types_are_checked_and_kept_once_each_in_order():
    from profiler.cli.common import parse_lock_types

    assert parse_lock_types(None, False) is None
    assert parse_lock_types("rwsem, spinlock,rwsem", False) == ("rwsem", "spinlock")
    # perf lock contention -Y's names.
    assert parse_lock_types("pcpu-sem,rtmutex,percpu-rwsem", False) == ("percpu-rwsem", "rt-mutex")
    for text, message in (
        ("rwsem:W", r"rwsem:W: the types are traced in both modes.*\(give rwsem\)"),
        ("pcpu-sem:R", r"\(give percpu-rwsem\)"),
        ("spinlok", "unknown lock type 'spinlok'"),
        (" , ", "no lock type given"),
        ("rwsem", "which --no-contention leaves out"),
    ):
        with pytest.raises(LockprofError, match=message) as excinfo:
            parse_lock_types(text, text == "rwsem")
        assert excinfo.value.exit_code == 2


def test_record_says_it_runs_no_command(capsys):
    code, _, err = run_main(capsys, "record", "-a", "--", "sleep", "1")
    assert code == 2
    assert "record -a runs no command (sleep 1): -d SECONDS" in assert_one_error_line(code, err)


def test_an_unknown_lock_type_is_one_line_and_exit_2():
    result = lockprof("record", "-a", "-d", "1", "--lock-types", "futex")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown lock type 'futex'" in result.stderr


# -- outputs that would destroy recorded data -------------------------------------------


@pytest.fixture
def recordings(tmp_path, recording_bytes) -> tuple[Path, Path]:
    """Two recordings, a.lpr and b.lpr, to read and (wrongly) write over."""
    paths = (tmp_path / "a.lpr", tmp_path / "b.lpr")
    for path in paths:
        path.write_bytes(recording_bytes)
    return paths


@pytest.fixture
def never_collect(monkeypatch):
    """A collecting command that gets as far as its privilege check stops
    there (as without root): a regression must fail the test, not start a
    real collection as root."""
    from profiler import privileges

    def refuse(*_args, **_kwargs):
        raise LockprofError("test: reached the privilege check")

    monkeypatch.setattr(privileges, "require", refuse)


def _refused(capsys, argv, kept: list[Path], expected: str) -> None:
    before = {path: path.read_bytes() for path in kept}
    code, out, err = run_main(capsys, *argv)
    line = assert_one_error_line(code, err)
    assert code == 2 and out == "", err
    assert expected in line, line
    for path, payload in before.items():
        assert path.read_bytes() == payload  # recorded data is never lost
        recording.load(path)


def test_report_over_its_own_recording_is_refused(capsys, recordings):
    a, _b = recordings
    _refused(capsys, ["report", str(a), "-o", str(a)], [a], f"-o {a} is the input; writing")


def test_report_over_a_hard_link_of_its_recording_is_refused(capsys, recordings, tmp_path):
    a, _b = recordings
    alias = tmp_path / "alias.html"
    os.link(a, alias)
    _refused(capsys, ["report", str(a), "-o", str(alias)], [a], f"is the input {a}")


def test_report_over_another_recording_is_refused(capsys, recordings):
    a, b = recordings
    _refused(capsys, ["report", str(a), "-o", str(b)], [a, b], "is a lockprof recording")


def test_report_whose_default_output_is_its_recording_is_refused(capsys, recordings, tmp_path):
    named_html = tmp_path / "r.html"
    recordings[0].rename(named_html)
    _refused(capsys, ["report", str(named_html)], [named_html], "report path")


def test_export_over_its_recording_is_refused(capsys, recordings):
    a, b = recordings
    _refused(capsys, ["export", str(a), "--folded", str(a)], [a], "--folded")
    _refused(capsys, ["export", str(a), "--folded", str(b)], [a, b], "is a lockprof recording")
    summary_csv = a.parent / "summary.csv"
    os.link(a, summary_csv)
    _refused(capsys, ["export", str(a), "--csv", str(a.parent)], [a], "--csv")


def test_compare_over_a_side_is_refused(capsys, recordings):
    a, b = recordings
    _refused(capsys, ["compare", str(a), str(b), "-o", str(a)], [a, b], "-o")
    _refused(capsys, ["compare", str(a), str(a), "-o", str(b)], [a, b], "is a lockprof recording")


def test_bench_over_a_recording_is_refused_before_running(
    capsys, recordings, tmp_path, never_collect
):
    a, _b = recordings
    marker = tmp_path / "ran"
    argv = ["bench", "--runs", "1", "-o", str(a), "--", "touch", str(marker)]
    _refused(capsys, argv, [a], f"-o {a} is a lockprof recording; writing a run set there")
    assert not marker.exists()


@pytest.mark.parametrize("command", [["run"], ["attach", "-p", "free"], ["record", "-a"]])
def test_collection_outputs_over_recorded_data_are_refused_before_starting(
    capsys, recordings, tmp_path, command, never_collect
):
    """Refused before privileges, pids or BPF (and so testable without root)."""
    command = [str(free_pid()) if arg == "free" else arg for arg in command]
    a, _b = recordings
    tail = ["--", "true"] if command == ["run"] else []
    spec = tmp_path / "spec.toml"
    spec.write_text("not read: refused first")
    fresh = tmp_path / "new.lpr"
    for options, expected, kept in (
        (["--html", str(a)], f"--html {a} is a lockprof recording", [a]),
        (["-o", str(fresh), "--html", str(fresh)], "is the recording's path (-o)", []),
        (["-o", str(spec), "--locks", str(spec)], "is the input", [a]),
        (["--html", str(spec), "--locks", str(spec)], "is the input", [a]),
    ):
        _refused(capsys, [*command, *options, *tail], kept, expected)
        assert spec.read_text() == "not read: refused first"
    runset_bytes = _a_run_set(a)
    lpset = tmp_path / "set.lpset"
    lpset.write_bytes(runset_bytes)
    code, _out, err = run_main(capsys, *command, "-o", str(lpset), *tail)
    assert code == 2 and "is a lockprof run set; writing the recording there" in err
    assert lpset.read_bytes() == runset_bytes


def test_the_binary_a_toml_spec_names_is_an_input_too(capsys, tmp_path, never_collect):
    """-o, --html or bench -o over the binary a TOML spec's `target` names
    (relative to the spec) would overwrite the program being profiled."""
    binary = tmp_path / "libvictim.so"
    binary.write_bytes(b"\x7fELF not really")
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "victim"\ntarget = "libvictim.so"\n'
        '[functions]\nwrite_lock = ["v_lock"]\nunlock = ["v_unlock"]\n'
    )
    for argv in (
        ["run", "-o", str(binary), "--locks", str(spec), "--", "true"],
        ["run", "--html", str(binary), "--locks", str(spec), "--", "true"],
        ["bench", "-o", str(binary), "--locks", str(spec), "--", "true"],
    ):
        code, out, err = run_main(capsys, *argv)
        line = assert_one_error_line(code, err)
        assert code == 2 and out == "" and f"{binary} is the input" in line, line
        assert binary.read_bytes() == b"\x7fELF not really"


def _a_run_set(rec_path: Path) -> bytes:
    from profiler import runset

    result = runset.from_recording(recording.load(rec_path), label="x", source=str(rec_path))
    return runset.dumps(result)


def test_a_recording_may_replace_a_recording():
    """`lockprof run -o old.lpr` (make demo, again): same kind, allowed."""
    from profiler import outputs

    outputs.refuse_clobbering(RECORDING_PATH, [], "-o", "the recording", kind=outputs.RECORDING)
    with pytest.raises(LockprofError, match="is a lockprof recording"):
        outputs.refuse_clobbering(RECORDING_PATH, [], "-o", "a run set", kind=outputs.RUN_SET)


# -- the final summary of a collection ------------------------------------------------------


def _recording_with_many_locks(count: int) -> recording.Recording:
    """A run's recording with `count` contended spinlocks (synthetic)."""
    from profiler import aggregate, schema
    from profiler.hist import slot_of

    from .helpers import EMPTY_CALLERS, interval_row

    nslots = schema.const("LP_HIST_SLOTS")
    rows = []
    for i in range(count):
        wait_ns = 1000 * (i + 1)
        slots = [0] * nslots
        slots[slot_of(wait_ns, nslots)] = 1
        rows.append(
            interval_row(
                0xFFFF888000200000 + 0x40 * i,
                schema.const("LP_LCB_SPIN"),
                schema.const("LP_SRC_CONTENTION"),
                contended=1,
                wait_count=1,
                wait_total_ns=wait_ns,
                wait_max_ns=wait_ns,
                wait_running_max_ns=wait_ns,
                wait_slots=slots,
            )
        )
    intervals = intervals_frame(rows)
    locks = aggregate.name_locks(intervals, {}, EMPTY_CALLERS, {})
    meta = {
        "kernel": "6.18.44",
        "cpus": 2,
        "mode": "run",
        "target_pid": 4242,
        "target": "pid 4242 (work)",
        "command": ["work"],
        "exit_status": 0,
        "families": ["mmap_lock", "contention"],
        "threshold_ns": 100_000,
        "duration_s": 1.0,
        "stop_reason": "command exited with status 0",
        "lost_events": 0,
        "errors": {},
        "rusage": {"user_s": 0.1, "sys_s": 0.1, "elapsed_s": 1.0, "minor_faults": 10},
    }
    return recording.Recording(meta=meta, intervals=intervals, locks=locks)


@pytest.mark.parametrize("as_json", [True, False])
def test_a_collections_json_summary_has_every_row(capsys, monkeypatch, tmp_path, as_json):
    """run/attach/record --json print every row (README: "--json prints the
    final summary as JSON, every row"); the table keeps the 50 busiest. It
    printed FINAL_SUMMARY_TOP rows of JSON too."""
    from types import SimpleNamespace

    from profiler import session
    from profiler.cli import common
    from profiler.options import CollectOptions

    count = common.FINAL_SUMMARY_TOP + 10
    rec = _recording_with_many_locks(count)
    monkeypatch.setattr(session, "collect", lambda *_args, **_kwargs: rec)
    target = SimpleNamespace(mode="run", tgid=4242)
    options = CollectOptions(families=("contention",), interval_s=1.0)
    code = common.run_collection(target, options, tmp_path / "r.lpr", 15, True, as_json, set())
    out, err = capsys.readouterr()
    assert code == 0 and "recording written to" in err
    if as_json:
        doc = json.loads(out)
        assert doc["locks_total"] == count
        assert len(doc["locks"]) == count
    else:
        assert f"(10 more rows; `lockprof show {tmp_path / 'r.lpr'}` lists all)" in out


def test_bare_lockprof_shows_the_whole_help(capsys):
    """`lockprof` alone: click's help for a group called without a command
    (click >= 8.2: on stderr, status 2), line by line. The one-line usage
    error path printed it as "lockprof: Usage: ...\\x0a\\x0a  Live lock ..."."""
    code, out, err = run_main(capsys)
    _code, help_text, _err = run_main(capsys, "--help")
    assert code == 2 and out == ""
    assert err == help_text
    assert err.startswith("Usage: lockprof [OPTIONS] COMMAND [ARGS]...\n")
    assert "\\x0a" not in err and "Examples:\n" in err


@pytest.mark.parametrize(
    ("mode", "signum", "code"),
    [
        ("run", signal.SIGINT, 130),  # the command outlived the grace: not a success
        ("run", signal.SIGTERM, 143),
        ("run", None, 0),  # -d reached, command left running: its status unknown
        ("attach", signal.SIGINT, 0),  # Ctrl-C is how attach and record end
        ("record", signal.SIGINT, 0),
    ],
)
def test_a_run_stopped_by_a_signal_exits_128_plus_n_when_its_status_is_unknown(
    capsys, monkeypatch, tmp_path, mode, signum, code
):
    """Ctrl-C on `lockprof run -- make && deploy` where make takes longer
    than SIGNAL_GRACE_S to exit: lockprof exited 0, and deploy ran."""
    from types import SimpleNamespace

    from profiler import session
    from profiler.cli import common
    from profiler.options import CollectOptions
    from profiler.signals import StopFlag

    rec = _recording_with_many_locks(1)
    reason = f"{signal.Signals(signum).name} received" if signum else "duration 1s reached"
    rec.meta.update(mode=mode, exit_status=None, stop_reason=reason)
    monkeypatch.setattr(session, "collect", lambda *_args, **_kwargs: rec)
    stop = StopFlag()
    stop.reason, stop.signum = reason, signum
    target = SimpleNamespace(mode=mode, tgid=4242)
    options = CollectOptions(families=("contention",), interval_s=1.0)
    out_path = tmp_path / "r.lpr"
    status = common.run_collection(target, options, out_path, 15, True, False, set(), stop=stop)
    assert status == code
    recording.load(out_path)  # written either way
    err = capsys.readouterr().err
    if mode == "run":
        assert f"{reason}; command still running as pid 4242, not waited for" in err


@pytest.mark.parametrize("option", [["--cpus", "64"], ["--sample-hz", "999"]])
def test_sampling_options_without_sample_are_refused(capsys, never_collect, option):
    """--cpus and --sample-hz shape --sample's estimate only: without it they
    were accepted and did nothing (no what-if, no warning)."""
    for argv in (["record", "-a", *option], ["run", *option, "--", "true"]):
        code, out, err = run_main(capsys, *argv)
        line = assert_one_error_line(code, err)
        assert code == 2 and out == ""
        purpose = {
            "--cpus": "it scales the sampled cost of the writer's sum",
            "--sample-hz": "it is the sampling frequency",
        }[option[0]]
        command = f"lockprof {argv[0]}"
        assert line == f"{command}: {option[0]} needs --sample: {purpose} (see {command} --help)"


def test_sampling_options_with_sample_pass(capsys, never_collect):
    argv = ["record", "-a", "--sample", "--cpus", "64", "--sample-hz", "9"]
    code, _out, err = run_main(capsys, *argv)
    assert "reached the privilege check" in err and code != 2


@pytest.mark.parametrize("subcommand", ["run", "bench"])
def test_options_after_the_command_are_the_commands(capsys, monkeypatch, subcommand):
    """`lockprof run -q ./lpbizzy -t 1 -S 1` (no --): -t 1 is lpbizzy's
    thread count, as `time ./lpbizzy -t 1` would pass it. lockprof took it
    for its own --threshold, and lpbizzy ran with its default threads."""
    from profiler.cli import bench, run

    seen = {}

    def stop_here(argv):
        seen["argv"] = list(argv)
        raise LockprofError("test: stopped before collecting", exit_code=9)

    module = run if subcommand == "run" else bench
    monkeypatch.setattr(module, "refuse_unknown_option", stop_here)
    extra = ["-o", "x.lpset"] if subcommand == "bench" else []
    code, _out, err = run_main(capsys, subcommand, "-q", *extra, "true", "-t", "1", "-d", "2")
    assert code == 9, err
    assert seen["argv"] == ["true", "-t", "1", "-d", "2"]


def test_the_summary_is_printed_when_the_recording_cannot_be_written(capsys, monkeypatch, tmp_path):
    """The output directory removed during the run: the error names the
    rescue file, and the summary is still printed (it was lost: stdout held
    only the command's own output), with exit status 1 and no report."""
    from types import SimpleNamespace

    from profiler import recording, session
    from profiler.cli import common
    from profiler.options import CollectOptions

    rec = _recording_with_many_locks(3)
    monkeypatch.setattr(session, "collect", lambda *_args, **_kwargs: rec)

    def fail(_rec, path):
        raise LockprofError(f"cannot write recording to {path} (gone); data kept in /tmp/x.lpr")

    monkeypatch.setattr(recording, "save", fail)
    target = SimpleNamespace(mode="run", tgid=4242)
    options = CollectOptions(families=("contention",), interval_s=1.0)
    html = tmp_path / "r.html"
    code = common.run_collection(
        target, options, tmp_path / "r.lpr", 15, True, False, set(), html=html
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "spinlock 0xffff888000200080" in out and "rusage  user 0.10s" in out, out
    lines = err.splitlines()
    assert any(line.endswith("data kept in /tmp/x.lpr") for line in lines), err
    assert "recording written" not in err
    assert lines[-1].startswith("lockprof: report not written") and not html.exists()


IGNORED_CPUS = (
    "lockprof: --cpus scales the sampled cost of the writer's sum, and {} "
    "has no samples (record with --sample): ignored"
)


def test_show_cpus_without_samples_says_it_is_ignored(capsys, recording_path):
    """--cpus scales the writer's sampled sum; a recording without --sample
    has none, and the option did nothing without a word."""
    code, out, err = run_main(capsys, "show", "--cpus", "64", str(recording_path))
    assert code == 0 and "mmap_lock pid 4560 (mmapcount)" in out
    assert err == IGNORED_CPUS.format(recording_path) + "\n"


def test_report_cpus_without_samples_says_it_is_ignored(capsys, recording_path, tmp_path):
    html = tmp_path / "r.html"
    code, _out, err = run_main(capsys, "report", "--cpus", "64", str(recording_path), "-o", html)
    assert code == 0 and html.exists()
    assert err.splitlines() == [
        IGNORED_CPUS.format(recording_path),
        f"lockprof: report written to {html}",
    ]


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([9783.0, 11783.0, 13783.0], "11,783 ± 2,000"),
        ([11000.0, 11783.4, 13700.0], "12,161 ± 1,389"),
        ([0.51, 0.52], "0.51500 ± 0.00707"),
        ([1234.5], "1,234"),
    ],
)
def test_bench_throughput_is_shown_to_the_precision_of_its_spread(values, shown):
    """`bench`'s table printed "11,783 ± 2,381.92": the sd to 3 significant
    digits, the mean to the same place."""
    from profiler.cli import bench

    assert bench._stat(values, "{:,.6g}", by_spread=True) == shown


def test_kernel_threads_are_told_from_processes():
    """kthreadd (pid 2) has PF_KTHREAD in /proc/2/stat; this process has not;
    a pid that is gone is not one (attach says a kernel thread has no
    mmap_lock: its table came out empty without a word why)."""
    from profiler.targets import is_kernel_thread

    assert is_kernel_thread(2)
    assert not is_kernel_thread(os.getpid())
    assert not is_kernel_thread(free_pid())


@pytest.mark.parametrize(("interpreter_mode", "status"), [(None, 127), (0o644, 126)])
def test_a_script_whose_interpreter_cannot_run_is_one_line(
    capsys, tmp_path, never_collect, interpreter_mode, status
):
    """The command is exec'd by a shell, which would print its own line
    ("exec: ...: not found") before lockprof's: the #! line is checked with
    the command, before anything starts."""
    interpreter = tmp_path / "interp"
    if interpreter_mode is not None:
        interpreter.write_text("")
        interpreter.chmod(interpreter_mode)
    script = tmp_path / "script"
    script.write_text(f"#!{interpreter} -x\necho hi\n")
    script.chmod(0o755)
    code, out, err = run_main(capsys, "run", "-q", "--", str(script))
    what = "is not found" if status == 127 else "is not executable"
    assert (code, out) == (status, "")
    assert err == f"lockprof: command {script}: its interpreter {interpreter} {what}\n"


def test_a_script_with_dos_line_endings_is_one_line_that_says_so(capsys, tmp_path, never_collect):
    """`#!/bin/sh\\r`: the kernel looks for an interpreter named "/bin/sh\\r"
    (fs/binfmt_script.c ends the name at a space, a tab or the newline
    only). The check split the line as Python does, found /bin/sh, and the
    command failed after the probes were attached, in two lines, one of
    them the holder shell's ("lockprof-exec: 12: exec: ...: not found").
    A space or a tab still ends the name."""
    script = tmp_path / "crlf.sh"
    script.write_bytes(b"#!/bin/sh\r\necho hi\r\n")
    script.chmod(0o755)
    code, out, err = run_main(capsys, "run", "-q", "--", str(script))
    assert (code, out) == (127, "")
    assert err == (
        f"lockprof: command {script}: its interpreter /bin/sh^M (the script has DOS line "
        "endings) is not found\n"
    )
    from profiler.targets import check_command

    script.write_bytes(b"#!/bin/sh -e\r\necho hi\r\n")  # the \r ends the argument
    code, out, err = run_main(capsys, "run", "-q", "--", str(script))
    assert (code, out) == (126, "")
    assert err == (
        f"lockprof: command {script}: its #! line ends in a carriage return (the script has "
        "DOS line endings)\n"
    )
    for line in (b"#! /bin/sh -e\n", b"#!/bin/sh\t-e\n", b"#!/bin/sh\n"):
        script.write_bytes(line + b"echo hi\n")
        check_command(str(script))  # no error


def test_bench_table_shows_each_runs_throughput_and_their_mean_by_spread():
    """Each run's row keeps its own figure (the mean row's "by spread" rule
    printed the words "by spread" in every run's throughput cell)."""
    import profiler
    from profiler.cli import bench
    from profiler.runset import Run, RunSet

    rec = profiler.load(RECORDING_PATH)
    runs = [Run(rec, throughput=t) for t in (9783.0, 11783.0, 13783.0)]
    table = bench.summary_table(RunSet(label="before", command=["work"], runs=runs))
    throughput = [str(cell) for cell in table.columns[-1].cells]
    assert throughput == ["9,783", "11,783", "13,783", "11,783 ± 2,000"]


class _GoneStream:
    """A stream whose reader went away: flush fails as a closed pipe does."""

    def __init__(self, error: OSError | None):
        self.error = error
        self.flushed = 0

    def flush(self):
        self.flushed += 1
        if self.error is not None:
            raise self.error

    def fileno(self):
        raise OSError("not a real file")  # silence_stream gives up quietly


@pytest.mark.parametrize(
    ("stdout_error", "stderr_error", "code", "expected"),
    [
        (None, None, 0, 0),
        (BrokenPipeError(32, "Broken pipe"), None, 0, 141),  # `| head` gone before the end
        (BrokenPipeError(32, "Broken pipe"), None, 3, 3),  # lockprof's own failure first
        (None, BrokenPipeError(32, "Broken pipe"), 0, 0),  # stderr gone: the status stands
        (OSError(5, "Input/output error"), None, 0, 0),  # a hung-up terminal
    ],
)
def test_outputs_are_flushed_before_exit(monkeypatch, stdout_error, stderr_error, code, expected):
    """A reader gone mid-run left output in Python's buffers; its flush at
    exit then failed and turned the status into 120 (a fresh chroot's
    test_pipes_that_close_mid_run_lose_no_data). main() flushes both first."""
    from profiler.cli import main as main_module

    out, err = _GoneStream(stdout_error), _GoneStream(stderr_error)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert main_module.flush_outputs(code) == expected
    assert out.flushed == 1 and err.flushed == 1


@pytest.mark.parametrize(
    "command", [["run"], ["attach", "-p", "1"], ["record", "-a"], ["bench", "-o", "x.lpset"]]
)
def test_a_second_lock_spec_is_refused_not_dropped(capsys, command):
    """`--locks A --locks B` probed B alone, A's locks silently unprobed."""
    code, _out, err = run_main(
        capsys, *command, "--locks", "rw_mutex", "--locks", "pthread_rwlock", "--", "true"
    )
    line = assert_one_error_line(code, err)
    assert code == 2
    assert "--locks: one lock spec a run, not 2: rw_mutex, pthread_rwlock" in line


def test_a_report_to_stdout_appended_to_a_file_keeps_what_it_had(recording_path, tmp_path):
    """`report rec.lpr -o - >> app.txt`: /dev/stdout named the file itself,
    which a temporary file's rename then replaced: HEADER was gone, the mode
    0600. lockprof's own fd 1 is written into, where it stands."""
    target = tmp_path / "app.txt"
    target.write_text("HEADER\n")
    target.chmod(0o644)
    inode = target.stat().st_ino
    with open(target, "a") as appended:
        done = subprocess.run(
            [*_lockprof_command(), "report", str(recording_path), "-o", "-"],
            stdout=appended, stderr=subprocess.PIPE, text=True, cwd="/", timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = target.read_text()
    assert text.startswith("HEADER\n<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert (target.stat().st_ino, target.stat().st_mode & 0o777) == (inode, 0o644)


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        ("1,2", "-p/--pid: '1,2': one process id (-f also profiles the processes it forks"),
        ("x", "-p/--pid: 'x' is not a process id"),
        ("0", "-p/--pid: 0 is not in the range x>=1"),
    ],
)
def test_attach_pid_says_what_it_takes(capsys, pid, expected):
    code, _, err = run_main(capsys, "attach", "-p", pid)
    assert code == 2 and expected in assert_one_error_line(code, err)
