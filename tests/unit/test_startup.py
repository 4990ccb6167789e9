"""profiler/cli/startup.py and bpf.compile_early: about to collect, the
lockprof program compiles its probes before pandas and pyarrow load (the
start-up RSS peak ~270 -> ~200 MB), and the session uses that object."""

from __future__ import annotations

import pytest

from profiler import bpf, privileges
from profiler.cli import startup
from profiler.errors import LockprofError


@pytest.fixture
def privileged(monkeypatch):
    monkeypatch.setattr(privileges, "require", lambda uprobes=False: None)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["record", "-a", "-d", "5"], True),
        (["-q", "attach", "-p", "1"], True),  # an option before the subcommand
        (["attach", "-p", "1"], True),
        (["attach", "--pid=1", "-d", "5"], True),
        (["attach", "-p1"], True),
        # A pid that does not exist: the usual check answers without the compile.
        (["attach", "-p", "999999999"], False),
        (["attach", "--pid", "999999999"], False),
        (["attach", "--pid=0x1"], False),
        (["attach", "-p"], False),
        (["run", "--", "python3", "--help"], True),  # the command's own --help
        (["run", "--help"], False),
        (["record", "-h"], False),
        (["show", "r.lpr"], False),
        (["report", "r.lpr", "-o", "r.html"], False),
        (["doctor"], False),
        (["bench", "--runs", "3", "--", "true"], False),
        ([], False),
    ],
)
def test_which_command_lines_compile_early(privileged, argv, expected):
    assert startup.about_to_collect(argv) is expected


def test_no_early_compile_without_the_privileges(monkeypatch):
    def refuse(uprobes=False):
        raise LockprofError("lockprof needs CAP_BPF")

    monkeypatch.setattr(privileges, "require", refuse)
    assert startup.about_to_collect(["record", "-a"]) is False


class FalsyBpf(dict):
    """Like bcc.BPF, a mapping of tables: falsy before any table is read."""


@pytest.fixture
def compiles(monkeypatch):
    made: list[list[str]] = []
    flags = [["-DLP_MAX_LOCKS=256"]]

    def compile_probes(given):
        made.append(list(given))
        return FalsyBpf()

    monkeypatch.setattr(bpf, "probe_cflags", lambda: (list(flags[0]), 256))
    monkeypatch.setattr(bpf, "compile_probes", compile_probes)
    monkeypatch.setattr(bpf, "_early_compile", None)
    return made, flags


def session_compile():
    session = bpf.BpfSession.__new__(bpf.BpfSession)
    return session._compile()


def test_the_session_uses_the_early_object_once(compiles):
    made, _flags = compiles
    bpf.compile_early()
    early = bpf._early_compile[1]
    assert session_compile() is early  # even though it is falsy
    assert len(made) == 1
    assert session_compile() is not early  # a second session compiles its own
    assert len(made) == 2


def test_other_flags_compile_again(compiles):
    made, flags = compiles
    bpf.compile_early()
    flags[0] = ["-DLP_MAX_LOCKS=16", "-DLP_MAX_TASKS=16"]  # e.g. the test hook set since
    session_compile()
    assert made == [["-DLP_MAX_LOCKS=256"], ["-DLP_MAX_LOCKS=16", "-DLP_MAX_TASKS=16"]]


def test_an_early_compile_error_is_the_sessions_error(compiles, monkeypatch):
    def broken(given):
        raise LockprofError("BPF compile/load failed: error: no such header")

    monkeypatch.setattr(bpf, "compile_probes", broken)
    bpf.compile_early()  # says nothing: the usual checks speak first
    with pytest.raises(LockprofError, match="no such header"):
        session_compile()


PROGRAM = """
import json, sys
sys.argv = ["lockprof", "record", "-a"]
from profiler import bpf, privileges
privileges.require = lambda uprobes=False: None
seen = {}
bpf.compile_early = lambda: seen.update(loaded=sorted(m for m in ("pandas", "pyarrow")
                                                      if m in sys.modules))
from profiler.cli import startup
startup.prepare_program()
print(json.dumps(seen))
"""


def test_the_program_compiles_before_pandas_and_pyarrow_load():
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=repo, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {"loaded": []}
