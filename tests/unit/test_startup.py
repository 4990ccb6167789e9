"""bpf.compile_early and cli/common.py: a collection checks its command line,
then compiles its probes before pandas and pyarrow load (the start-up RSS
peak ~280 -> ~200 MB), and the session uses that object."""

from __future__ import annotations

import pytest

from profiler import bpf, doctor, privileges
from profiler.cli.main import main
from profiler.errors import LockprofError


class FalsyBpf(dict):
    """Like bcc.BPF, a mapping of tables: falsy before any table is read."""


@pytest.fixture
def compiles(monkeypatch):
    made: list[list[str]] = []
    flags = [["-DLP_MAX_LOCKS=256"]]

    def compile_probes(given):
        made.append(list(given))
        return FalsyBpf()

    monkeypatch.setattr(bpf, "probe_cflags", lambda families=(): (list(flags[0]), 256))
    monkeypatch.setattr(bpf, "compile_probes", compile_probes)
    monkeypatch.setattr(bpf, "_early_compile", None)
    return made, flags


FAMILIES = ("mmap_lock", "contention")


def session_compile():
    session = bpf.BpfSession.__new__(bpf.BpfSession)
    return session._compile(FAMILIES)


def test_the_session_uses_the_early_object_once(compiles):
    made, _flags = compiles
    bpf.compile_early(FAMILIES)
    early = bpf._early_compile[1]
    assert session_compile() is early  # even though it is falsy
    assert len(made) == 1
    assert session_compile() is not early  # a second session compiles its own
    assert len(made) == 2


def test_other_flags_compile_again(compiles):
    made, flags = compiles
    bpf.compile_early(FAMILIES)
    flags[0] = ["-DLP_MAX_LOCKS=16", "-DLP_MAX_TASKS=16"]  # e.g. the test hook set since
    session_compile()
    assert made == [["-DLP_MAX_LOCKS=256"], ["-DLP_MAX_LOCKS=16", "-DLP_MAX_TASKS=16"]]


def test_an_early_compile_error_is_the_sessions_error(compiles, monkeypatch):
    def broken(given):
        raise LockprofError("BPF compile/load failed: error: no such header")

    monkeypatch.setattr(bpf, "compile_probes", broken)
    bpf.compile_early(FAMILIES)  # says nothing: the usual checks speak first
    with pytest.raises(LockprofError, match="no such header"):
        session_compile()


PROGRAM = """
import json, sys
sys.argv = ["lockprof", "record", "-a", "-d", "1", "-o", sys.argv[1]]
from profiler import bpf, doctor, privileges
from profiler.errors import LockprofError
privileges.require = lambda uprobes=False: None
doctor.cleanup_stale_probes = lambda: []
def compile_early(families):
    loaded = sorted(m for m in ("pandas", "pyarrow", "plotly") if m in sys.modules)
    print(json.dumps(loaded), flush=True)
    raise LockprofError("stopped before compiling")
bpf.compile_early = compile_early
import runpy
runpy.run_module("profiler.cli.main", run_name="__main__")
"""


def test_the_program_compiles_before_pandas_and_pyarrow_load(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path / "r.lpr")],
        cwd=repo, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert out.stderr.strip() == "lockprof: stopped before compiling"
    assert json.loads(out.stdout) == []


@pytest.fixture
def compile_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(privileges, "require", lambda uprobes=False: None)
    monkeypatch.setattr(doctor, "cleanup_stale_probes", lambda: [])
    monkeypatch.setattr(bpf, "compile_early", lambda families: calls.append(1))
    return calls


@pytest.mark.parametrize(
    "argv, error",
    [
        (["attach", "-p", "999999999", "-d", "1"], "no such process: 999999999"),
        (["record", "-a", "-o", "/nonexistent/dir/r.lpr"], "does not exist"),
        (["run", "-o", "/nonexistent/dir/r.lpr", "--", "true"], "does not exist"),
        (["record", "-a", "--html", "/nonexistent/dir/r.html"], "report directory"),
    ],
)
def test_a_bad_command_line_is_answered_without_compiling(compile_calls, capsys, argv, error):
    """Compiling takes ~1.3 s: a missing pid or output directory is said at once."""
    code = main(argv)
    assert code != 0 and compile_calls == []
    assert error in capsys.readouterr().err
