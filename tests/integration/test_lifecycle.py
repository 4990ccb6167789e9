"""Target exits, bad input and signals, as root with real probes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
from conftest import LOCKPROF, REPO, Held, lockprof_programs

import profiler


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lockprof:")
    return lines[0]


def test_pid_that_exits_mid_run_still_saves_the_recording(lockprof_factory, tmp_path):
    sleeper = subprocess.Popen(["sleep", "1.5"])
    lp = lockprof_factory("attach", "-p", str(sleeper.pid), "-o", "rec.lpr", "-q")
    lp.wait_attached()
    code, _out, err = lp.wait(timeout=30)
    sleeper.wait()
    assert code == 0, err
    assert f"pid {sleeper.pid} exited" in err
    rec = profiler.load(tmp_path / "rec.lpr")
    assert rec.meta["stop_reason"] == f"pid {sleeper.pid} exited"
    assert lockprof_programs() == []


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
        assert "invalid pid" in _one_line_error(result)


def test_command_not_found(tmp_path):
    result = subprocess.run(
        [*LOCKPROF, "run", "-o", str(tmp_path / "x.lpr"), "--", "/nonexistent/cmd"],
        capture_output=True,
        text=True,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("lockprof:")]
    assert result.returncode == 127
    assert any("cannot run /nonexistent/cmd" in line for line in lines)
    assert "Traceback" not in result.stderr
    assert lockprof_programs() == []


def test_unwritable_output_is_refused_before_attaching():
    result = subprocess.run(
        [*LOCKPROF, "record", "-a", "-d", "1", "-o", "/nonexistent-dir/x.lpr"],
        capture_output=True,
        text=True,
    )
    assert "does not exist" in _one_line_error(result)


def test_not_root_is_one_line():
    # The checkout may be private (mktemp -d is 0700): give the unprivileged
    # user a world-readable copy of the package to import.
    public = tempfile.mkdtemp(prefix="lockprof-nonroot-")
    try:
        os.chmod(public, 0o777)
        for package in ("profiler", "probes"):
            shutil.copytree(REPO / package, f"{public}/{package}")
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from profiler.cli.main import main;"
            " sys.exit(main(['record', '-a', '-d', '1', '-o', sys.argv[1] + '/x.lpr']))"
        )
        setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run(
            [*setpriv, sys.executable, "-c", "import pandas, click, rich"],
            capture_output=True,
            cwd="/",
        )
        if probe.returncode != 0:
            pytest.skip("the venv is not readable by uid 65534 (private checkout)")
        result = subprocess.run(
            [*setpriv, sys.executable, "-c", code, public], capture_output=True, text=True, cwd="/"
        )
    finally:
        shutil.rmtree(public)
    assert "needs root" in _one_line_error(result)


def test_sigterm_and_duration_end_collection_cleanly(lockprof_factory, tmp_path):
    target = Held(100)
    try:
        lp = lockprof_factory("attach", "-p", str(target.pid), "-o", "t.lpr", "-q")
        lp.wait_attached()
        target.go_and_wait_done()
        code, _out, err = lp.stop(signal.SIGTERM)
        assert code == 0, err
        assert "SIGTERM received" in err
        lp = lockprof_factory("record", "-a", "-d", "1", "-i", "0.5", "-o", "d.lpr", "-q")
        code, _out, err = lp.wait(timeout=60)
        assert code == 0, err
    finally:
        target.finish()
    assert profiler.load(tmp_path / "t.lpr").meta["stop_reason"] == "SIGTERM received"
    system = profiler.load(tmp_path / "d.lpr")
    assert system.meta["target_pid"] is None
    assert system.meta["stop_reason"] == "duration 1s reached"
    assert system.intervals["interval"].max() >= 2
    assert lockprof_programs() == []
