"""A collection compiles its probes once, with only the families it uses.

The opt-in families (lock specs, off-CPU, CPU samples) are left out of the
compile unless asked for: compiling is most of the time to the first live
row (bpf.OPTIONAL_FAMILIES). The early compile (before pandas loads) must
name the same families as the session's plans; if it did not, the session
would compile a second time and start-up would double without any error.
"""

from __future__ import annotations

import pytest

import profiler
from profiler import bpf, doctor
from profiler.cli.main import main

DEFINES = bpf.OPTIONAL_FAMILIES


@pytest.fixture
def compiles(monkeypatch):
    """Every compile's flags, the real compile still done."""
    made: list[list[str]] = []
    real = bpf.compile_probes

    def counted(flags):
        made.append(list(flags))
        return real(flags)

    monkeypatch.setattr(bpf, "compile_probes", counted)
    monkeypatch.setattr(bpf, "_early_compile", None)
    return made


def compiled_in(flags: list[str]) -> set[str]:
    return {family for family, define in DEFINES.items() if f"-D{define}=1" in flags}


@pytest.mark.parametrize(
    "extra, families",
    [
        ([], set()),
        (["--offcpu"], {"offcpu"}),
        (["--sample"], {"sample"}),
        (["--locks", "pthread_rwlock", "--no-contention"], {"locks"}),
    ],
)
def test_one_compile_with_the_families_asked_for(compiles, tmp_path, extra, families):
    if "--sample" in extra and not doctor.mechanism_works("perf_event"):
        pytest.skip("doctor: perf_event sampling does not work here")
    if "--locks" in extra and not doctor.mechanism_works("uprobe"):
        pytest.skip("doctor: uprobe does not work here")
    out = tmp_path / "r.lpr"
    assert main(["record", "-a", "-d", "0.3", "-q", "-o", str(out), *extra]) == 0
    assert len(compiles) == 1, "the session compiled again: not the early compile's families"
    assert compiled_in(compiles[0]) == families
    profiler.load(out)  # and the run's recording is whole


def test_reading_a_family_not_compiled_in_gives_nothing(compiles):
    from profiler import probes

    with bpf.BpfSession(probes.plan(("contention",), {"raw_tracepoint"})) as session:
        for table in ("lp_offcpu", "lp_samples"):
            with pytest.raises(KeyError):
                session._bpf[table]  # not compiled in
        session._bpf["lp_stats"]  # compiled in: no KeyError
        assert session.read_offcpu() == [] and session.read_samples() == []
