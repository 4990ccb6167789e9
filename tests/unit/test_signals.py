"""profiler.signals: SIGINT, SIGTERM and SIGHUP as requests to stop, at every phase."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest

from profiler import signals
from profiler.cli.main import main

from .helpers import REPO


@pytest.fixture
def flag():
    stop = signals.StopFlag(phase=signals.STARTING).install()
    yield stop
    stop.uninstall()


@pytest.fixture(autouse=True)
def catchable_signals():
    """Each test starts with the three signals at their defaults, whatever
    the runner inherited (nohup ignores SIGHUP, and lockprof then leaves it
    ignored)."""
    defaults = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: signal.SIG_DFL,
        signal.SIGHUP: signal.SIG_DFL,
    }
    inherited = {signum: signal.signal(signum, handler) for signum, handler in defaults.items()}
    yield
    for signum, handler in inherited.items():
        signal.signal(signum, handler)


def send(sig: int) -> None:
    os.kill(os.getpid(), sig)  # the handler runs before kill() returns to Python code


def test_first_signal_is_a_request_to_stop(flag):
    send(signal.SIGHUP)
    assert flag.reason == "SIGHUP received" and flag.signum == signal.SIGHUP
    flag.request("duration 1s reached")  # a later reason does not replace it
    assert flag.reason == "SIGHUP received"


@pytest.mark.parametrize(
    "phase, message",
    [
        (signals.STARTING, "lockprof: already stopping; nothing has been collected yet"),
        (signals.COLLECTING, "lockprof: already stopping; writing the recording, please wait"),
    ],
)
def test_further_signals_are_ignored_with_a_message(flag, capfd, phase, message):
    flag.phase = phase
    send(signal.SIGINT)
    send(signal.SIGTERM)
    send(signal.SIGINT)
    assert flag.reason == "SIGINT received" and flag.signum == signal.SIGINT
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith(message) for line in lines)


def test_while_draining_even_the_first_signal_only_prints(flag, capfd):
    flag.request("command exited with status 0")
    flag.draining = True
    send(signal.SIGTERM)
    assert flag.reason == "command exited with status 0" and flag.signum is None
    assert "already stopping" in capfd.readouterr().err


def test_a_gone_terminal_does_not_break_the_handler(flag, monkeypatch):
    """After SIGHUP the terminal may be gone: the message cannot be written,
    and that must not raise into the code the signal interrupted."""

    class Gone(io.StringIO):
        def write(self, _text):
            raise OSError(5, "Input/output error")

    send(signal.SIGHUP)
    monkeypatch.setattr(sys, "stderr", Gone())
    send(signal.SIGHUP)  # would raise here if the handler let OSError through
    assert flag.reason == "SIGHUP received"


def test_check_before_start(flag):
    flag.check_before_start()  # nothing received: carry on
    flag.request("duration reached")
    flag.check_before_start()  # not a signal: carry on
    flag.reason = None
    send(signal.SIGTERM)
    with pytest.raises(signals.Interrupted) as excinfo:
        flag.check_before_start()
    assert str(excinfo.value) == (
        "SIGTERM received before collection started; nothing was recorded"
    )
    assert excinfo.value.exit_code == 128 + signal.SIGTERM


def test_install_and_uninstall_restore_the_previous_handlers():
    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    stop = signals.StopFlag()
    with stop:
        stop.install()  # idempotent
        assert all(signal.getsignal(s) == stop._handle for s in signals.SIGNALS)
    assert {s: signal.getsignal(s) for s in signals.SIGNALS} == before


def test_early_flag_is_adopted_by_a_collecting_command():
    early = signals.install_early()
    try:
        send(signal.SIGINT)  # during start-up
        adopted = signals.adopt()
        assert adopted is early and adopted.phase == signals.STARTING
        with pytest.raises(signals.Interrupted, match="SIGINT received before collection"):
            adopted.check_before_start()
        assert signals.adopt() is not early  # taken: a later command gets a new one
    finally:
        early.uninstall()
        signals.release_early(quiet=True)


def test_other_commands_get_default_handling_back_and_act_on_a_pending_signal():
    before = signal.getsignal(signal.SIGTERM)
    signals.install_early()
    send(signal.SIGTERM)
    with pytest.raises(signals.Interrupted, match="SIGTERM received; stopped") as excinfo:
        signals.release_early()
    assert excinfo.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
    signals.release_early()  # nothing left to release


def test_main_releases_the_early_flag_for_show(capsys, tmp_path):
    # Default handling to start from, whatever the test runner inherited
    # (under nohup SIGHUP is ignored, and lockprof then leaves it ignored).
    inherited = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        signals.install_early()
        send(signal.SIGHUP)
        code = main(["show", str(tmp_path / "x.lpr")])
        assert code == 128 + signal.SIGHUP
        assert capsys.readouterr().err == "lockprof: SIGHUP received; stopped\n"
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, inherited)


def test_the_program_installs_its_handlers_before_the_heavy_imports(tmp_path):
    """Run as the program, a collection catches the three signals before
    pandas (0.3 s of imports) is imported: here `record`, stopped at that
    import (privileges, stale probes and the compile stubbed out)."""
    code = (
        "import runpy, signal, sys\n"
        f"sys.argv = ['lockprof', 'record', '-a', '-d', '1', '-o', {str(tmp_path / 'r.lpr')!r}]\n"
        "from profiler import bpf, doctor, privileges\n"
        "privileges.require = lambda uprobes=False: None\n"
        "doctor.cleanup_stale_probes = lambda: []\n"
        "bpf.compile_early = lambda families: None\n"
        "import builtins; real = builtins.__import__\n"
        "def spy(name, *a, **k):\n"
        "    if name == 'pandas':\n"
        "        print(all(callable(signal.getsignal(s)) and signal.getsignal(s)"
        " not in (signal.SIG_DFL, signal.default_int_handler)"
        " for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)), flush=True)\n"
        "        raise SystemExit(0)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = spy\n"
        "runpy.run_module('profiler.cli.main', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.stdout.splitlines()[0] == "True", done.stderr


def test_a_hangup_ignored_by_the_parent_stays_ignored():
    """nohup lockprof ...: SIGHUP is ignored on entry and must stay so; the
    stop signals SIGINT and SIGTERM are caught even if ignored on entry (a
    background job of a non-interactive shell ignores SIGINT)."""
    saved = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        flag = signals.StopFlag(phase=signals.STARTING).install()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == flag._handle
        assert signal.getsignal(signal.SIGTERM) == flag._handle
        flag.uninstall()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, saved)
