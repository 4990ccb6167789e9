"""lockprof bench's runs: a failed collection leaves no command running."""

from __future__ import annotations

import os
import sys
import time

import pytest

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
