"""SIGINT, SIGTERM and SIGHUP: requests to stop, at any moment, never a crash.

`lockprof attach/run/record` handle the three signals from the moment the
command line module is imported (profiler.cli.main installs the early flag
before its heavy imports) until the recording is written:

- before collection starts (imports, checks, compiling and attaching the
  probes, a `run` command still held before exec): the next checkpoint
  (check_before_start) undoes what was set up and exits with one line and
  status 128 + the signal number; nothing is recorded;
- during collection: collection ends, the probes are detached and the
  recording of what was collected is written. attach and record then exit
  0; run exits as its command did, after giving it a moment to finish
  exiting (session.SIGNAL_GRACE_S), or 128 + the signal number when it is
  still running (profiler.cli.common.command_status);
- during that moment: a further signal ends it, with a message;
- while draining and writing: a further signal is ignored with a message.

Other subcommands get Python's default handling back (main() releases the
early flag), so `show` and `report` stop at once on Ctrl-C.

Handlers only set attributes and print one line: they never raise into the
code they interrupt. The print is guarded, because after SIGHUP the terminal
may be gone.
"""

from __future__ import annotations

import contextlib
import os
import signal

from profiler.errors import LockprofError

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Of those, the ones lockprof's parent left ignored (`nohup` ignores SIGHUP; a
# non-interactive shell's background job, SIGINT), read before any handler
# goes in: Python leaves an ignored SIGINT ignored at start-up. A `run`
# command inherits them ignored, as under `time` or `strace`
# (profiler/targets.py). lockprof itself keeps SIGHUP ignored, but stops on
# SIGINT and SIGTERM whatever it inherited: a script's `kill -INT $!` stops
# a background lockprof as it stops `perf record`.
INHERITED_IGNORED = frozenset(s for s in SIGNALS if signal.getsignal(s) == signal.SIG_IGN)

# Phases, for the message a further signal prints. GRACE: a `run` command
# gets a moment to finish exiting after a signal (session._grace_for_command),
# which a further signal ends.
STARTING, COLLECTING, GRACE, WRITING = "starting", "collecting", "grace", "writing"
_AGAIN = {
    STARTING: "lockprof: already stopping; nothing has been collected yet, please wait\n",
    COLLECTING: "lockprof: already stopping; writing the recording, please wait\n",
    GRACE: "lockprof: already stopping; no longer waiting for the command, writing the recording\n",
    WRITING: "lockprof: already stopping; writing the recording, please wait\n",
}


class Interrupted(LockprofError):
    """A signal arrived before collection started: nothing was recorded."""


class StopFlag:
    """Turns the first SIGINT/SIGTERM/SIGHUP into a request to stop.

    Usable as a context manager (installs on enter, restores on exit) or
    with install()/uninstall(); both are idempotent."""

    def __init__(self, phase: str = COLLECTING) -> None:
        self.reason: str | None = None
        self.signum: int | None = None
        self.phase = phase
        self.repeats = 0  # signals after the first: "stop waiting"
        self._saved: dict[int, object] = {}

    # `draining` is the phase after collection (kept as an attribute for the
    # code that sets it).
    @property
    def draining(self) -> bool:
        return self.phase in (GRACE, WRITING)

    @draining.setter
    def draining(self, value: bool) -> None:
        if value:
            self.phase = WRITING

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    def install(self) -> StopFlag:
        if not self._saved:
            for signum in SIGNALS:
                if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                    continue  # nohup: a hangup must not stop us; keep it ignored
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._saved.clear()

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *_exc) -> None:
        self.uninstall()

    def _handle(self, signum: int, _frame) -> None:
        if self.reason is None and not self.draining:
            self.reason = f"{signal.Signals(signum).name} received"
            self.signum = signum
            return
        self.repeats += 1
        # os.write, not sys.stderr: the handler runs between two bytecodes of
        # the main thread, which may be inside sys.stderr.write itself, and a
        # buffered writer entered again raises RuntimeError (reentrant call).
        with contextlib.suppress(OSError):  # terminal gone (SIGHUP), stderr closed
            os.write(2, _AGAIN.get(self.phase, _AGAIN[WRITING]).encode())

    def request(self, reason: str) -> None:
        """Stop for another reason (duration reached, target exited)."""
        if self.reason is None:
            self.reason = reason

    def check_before_start(self) -> None:
        """A checkpoint before collection starts: raise Interrupted (one
        line, exit status 128 + signal) if a signal asked to stop."""
        if self.signum is not None:
            raise Interrupted(
                f"{self.reason} before collection started; nothing was recorded",
                exit_code=128 + self.signum,
            )


_early: StopFlag | None = None


def install_early() -> StopFlag:
    """Catch the three signals from the very start of the program."""
    global _early
    if _early is None:
        _early = StopFlag(phase=STARTING).install()
    return _early


def adopt() -> StopFlag:
    """The flag of a collecting command: the early one (which may already
    hold a signal that arrived during start-up), else a new one."""
    global _early
    flag, _early = _early, None
    if flag is None:
        flag = StopFlag(phase=STARTING)
    flag.phase = STARTING
    return flag.install()


def release_early(quiet: bool = False) -> None:
    """Back to default handling (commands that do not collect). A signal
    that arrived during start-up is acted on now: one line, 128 + N
    (unless quiet: at the very end of the program)."""
    global _early
    flag, _early = _early, None
    if flag is None:
        return
    flag.uninstall()
    if flag.signum is not None and not quiet:
        raise Interrupted(f"{flag.reason}; stopped", exit_code=128 + flag.signum)
