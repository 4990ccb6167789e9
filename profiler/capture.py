"""A command target whose stdout is captured (for `lockprof bench`).

CapturedCommand is a targets.CommandTarget whose child gets a pipe as its
stdout; OutputCapture reads that pipe on a thread, keeps the bytes (up to a
cap) and echoes them live to a stream of lockprof's, so the command's output
is both shown and saved. Throughput is then parsed from the captured text.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import threading
from typing import BinaryIO

from profiler.errors import LockprofError
from profiler.targets import CommandTarget, Lineage, child_subreaper, children_of, term_then_kill

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


class OutputCapture:
    """The read end of a pipe, drained on a thread into memory (and echo)."""

    def __init__(self, echo: BinaryIO | None, cap: int):
        self.read_fd, self.write_fd = os.pipe()  # both close-on-exec
        self._echo = echo
        self._cap = cap
        self._chunks: list[bytes] = []
        self._kept = 0
        self.truncated = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="lockprof-stdout", daemon=True)

    def start(self) -> None:
        """Call once the child holds the write end: the parent's copy is
        closed, so the pipe reaches EOF when the command (and any child of
        it that inherited stdout) is gone."""
        os.close(self.write_fd)
        self.write_fd = -1
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            ready, _w, _x = select.select([self.read_fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._keep(chunk)
            if self._echo is not None:
                try:
                    self._echo.write(chunk)
                    self._echo.flush()
                except (OSError, ValueError):
                    self._echo = None  # a closed terminal must not stop the capture

    def _keep(self, chunk: bytes) -> None:
        room = self._cap - self._kept
        if room <= 0:
            self.truncated = True
            return
        if len(chunk) > room:
            chunk, self.truncated = chunk[:room], True
        self._chunks.append(chunk)
        self._kept += len(chunk)

    def finish(self, timeout: float = 5.0) -> bytes:
        """Wait up to timeout for EOF (a background child of the command may
        keep stdout open), then stop reading; the bytes kept."""
        if self.write_fd >= 0:  # start() never ran: nothing will be written
            os.close(self.write_fd)
            self.write_fd = -1
        if self._thread.is_alive():
            self._thread.join(timeout)
            self._stop.set()
            self._thread.join()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1
        return b"".join(self._chunks)


def adopt_orphans(on: bool = True) -> None:
    """Become the reaper of the commands' orphans (bench): a background
    child that a command leaves behind when it exits is then lockprof's, and
    is stopped with its run (CapturedCommand.end), not left running into the
    next run, holding the capture pipe open (finish() then waited 5 s)."""
    child_subreaper(on)


def own_children() -> set[int]:
    """This process's children (those of every thread)."""
    return children_of(os.getpid(), Lineage.MAX_THREADS)


def stop_processes(pids: set[int], grace_s: float) -> None:
    """SIGTERM these children of ours, SIGKILL those left after grace_s,
    and reap them all."""
    left = set(pids)  # not reaped yet: a reaped pid may be another process's by now

    def signal_left(signum: int) -> None:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def all_reaped() -> bool:
        left.difference_update([pid for pid in left if _reaped(pid)])
        return not left

    if not term_then_kill(signal_left, all_reaped, grace_s):
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _reaped(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


class CapturedCommand(CommandTarget):
    """CommandTarget with the child's stdout on the given fd (the capture
    pipe), stopped when collection stops (stop_at_end: a bench run's command
    must not run on into the next run, nor hold the capture pipe open)."""

    def __init__(self, argv: list[str], stdout_fd: int):
        self._children_before = own_children()
        self.orphans_stopped = 0  # its background processes stopped at its end
        super().__init__(argv, stdout_fd=stdout_fd, stop_at_end=True)

    def end(self) -> None:
        """Collection stopped: the command is stopped if still running
        (stop_at_end), and so are the orphans it left (adopt_orphans): the
        processes that became ours during the run."""
        super().end()
        orphans = own_children() - self._children_before - {self.tgid}
        if orphans:
            self.orphans_stopped = len(orphans)
            stop_processes(orphans, self.STOP_GRACE_S)


def compile_throughput(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise LockprofError(f"--throughput-regex {pattern!r}: {exc}", exit_code=2) from None


def parse_throughput(regex: re.Pattern[str], text: str) -> float | None:
    """The number in the last match of regex in text: its first group if it
    has groups, else the first number inside the match. None without one."""
    matches = list(regex.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    raw = last.group(1) if regex.groups else last.group(0)
    if raw is None:
        return None
    number = _NUMBER.search(raw)
    if number is None:
        return None
    try:
        value = float(number.group(0).replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None  # "1e999": no throughput
