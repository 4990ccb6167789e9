"""lockprof bench's runs: a failed collection leaves no command running."""

from __future__ import annotations

import os
import sys
import time

import pytest

from profiler import capture
from profiler.cli import bench
from profiler.options import CollectOptions


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("released", [True, False])
def test_a_collection_that_fails_stops_the_command(monkeypatch, released):
    """collect() raising after it released the command (or before): the
    command is stopped and reaped, and the error reaches the caller."""
    seen: list[int] = []

    def failing_collect(options, target, working):
        seen.append(target.tgid)
        if released:
            target.begin()
            time.sleep(0.1)  # the command is running now
        else:
            target.abandon()  # what collect() does when it fails before begin()
        raise RuntimeError("lost the ring buffer")

    monkeypatch.setattr(bench, "collect", failing_collect)
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(RuntimeError, match="lost the ring buffer"):
        bench.one_run(argv, CollectOptions(), set(), None, echo=False)
    (pid,) = seen
    assert _gone(pid)  # reaped too: a zombie would still answer kill(pid, 0)


@pytest.fixture
def reaper():
    """This process adopts its commands' orphans (as `lockprof bench` does)."""
    capture.adopt_orphans()
    yield
    capture.adopt_orphans(False)


def test_a_commands_background_child_is_stopped_with_its_run(reaper, tmp_path):
    """sh exits at once, leaving `sleep 60` holding the capture pipe: it
    is stopped at the run's end, and the capture ends without waiting its
    5 s for the pipe to close."""
    pid_file = tmp_path / "sleep.pid"
    out = capture.OutputCapture(None, 1 << 20)
    target = capture.CapturedCommand(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; echo '42 records/s'"], out.write_fd
    )
    out.start()
    target.begin()
    while target.poll() is None:
        time.sleep(0.01)
    sleeper = int(pid_file.read_text())
    assert not _gone(sleeper)
    target.end()
    started = time.monotonic()
    assert out.finish() == b"42 records/s\n"
    assert time.monotonic() - started < 1.0
    assert _gone(sleeper) and target.orphans_stopped == 1
    assert target.exit_status == 0  # the command itself ended as it did


def test_stopped_orphans_are_noted():
    from profiler import summary

    assert any("left 2 background processes" in n for n in summary.notes({"orphans_stopped": 2}))
    assert not any("background" in n for n in summary.notes({"orphans_stopped": 0}))
