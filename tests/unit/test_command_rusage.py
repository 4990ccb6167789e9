"""A `run` command's rusage is its own, as /usr/bin/time gives it: real
commands, measured both ways."""

from __future__ import annotations

import os
import time

import pytest

from profiler.targets import CommandTarget

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
    assert 0 <= target.rusage()["elapsed_s"] < 0.02


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
    assert target.rusage()["elapsed_s"] < 0.02
    assert target.poll() == "command exited with status 0"


def test_the_command_is_reaped_in_one_place():
    """The reaper thread waits for it; poll() and wait() read what it saw."""
    target = run_polled(["true"])
    with pytest.raises(ChildProcessError):
        os.waitpid(target.tgid, os.WNOHANG)  # reaped already, by the reaper
    target.wait()  # again: nothing left to wait for, the same figures
    assert target.exit_status == 0
