"""What collection needs and leaves behind, without root: capabilities
(profiler.privileges) and stale BCC probe events (profiler.doctor)."""

from __future__ import annotations

import os
import subprocess

import pytest

from profiler import doctor, privileges
from profiler.errors import LockprofError

CAP = privileges.CAPS


def mask(*names: str) -> int:
    return sum(1 << CAP[name] for name in names)


@pytest.mark.parametrize(
    "caps, euid, uprobes, missing",
    [
        ((), 1000, False, ["CAP_BPF", "CAP_PERFMON"]),
        (("CAP_BPF",), 1000, False, ["CAP_PERFMON"]),
        (("CAP_PERFMON",), 1000, False, ["CAP_BPF"]),
        (("CAP_BPF", "CAP_PERFMON"), 1000, False, []),
        (("CAP_SYS_ADMIN",), 1000, False, []),  # stands in for both
        (("CAP_BPF", "CAP_PERFMON"), 1000, True, ["CAP_DAC_OVERRIDE"]),
        (("CAP_BPF", "CAP_PERFMON", "CAP_DAC_OVERRIDE"), 1000, True, []),
        (("CAP_BPF", "CAP_PERFMON"), 0, True, []),  # root's uid owns tracefs
        ((), 0, False, ["CAP_BPF", "CAP_PERFMON"]),  # root with its caps dropped
    ],
)
def test_missing_caps(caps, euid, uprobes, missing):
    assert privileges.missing_caps(mask(*caps), 40, euid, uprobes) == missing


def test_kernels_before_cap_bpf_need_cap_sys_admin():
    assert privileges.missing_caps(mask("CAP_BPF", "CAP_PERFMON"), 37, 1000) == ["CAP_SYS_ADMIN"]
    assert privileges.missing_caps(mask("CAP_SYS_ADMIN"), 37, 1000) == []


def test_effective_caps_from_status():
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000200000\n"
    assert privileges.effective_caps(status) == mask("CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF")
    assert privileges.effective_caps("Name:\tx\n") == 0


def test_refusal_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(privileges, "effective_caps", lambda: mask("CAP_BPF"))
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 1000)
    with pytest.raises(LockprofError) as excinfo:
        privileges.require()
    assert str(excinfo.value) == (
        "needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load BPF "
        "tracing programs: CAP_PERFMON is missing; try: sudo lockprof ..."
    )
    monkeypatch.setattr(privileges, "effective_caps", lambda: mask("CAP_BPF", "CAP_PERFMON"))
    privileges.require()
    with pytest.raises(LockprofError, match="CAP_DAC_OVERRIDE is missing"):
        privileges.require(uprobes=True)


def test_kernel_symbols_hidden(tmp_path):
    hidden, shown = tmp_path / "hidden", tmp_path / "shown"
    hidden.write_text("0000000000000000 T _stext\n")
    shown.write_text("ffffffff81000000 T _stext\n")
    assert privileges.kernel_symbols_hidden(str(hidden))
    assert not privileges.kernel_symbols_hidden(str(shown))
    assert privileges.kernel_symbols_hidden(str(tmp_path / "absent"))


# -- stale probe events --------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def fake_tracefs(tmp_path):
    """A directory laid out like tracefs: uprobe_events, kprobe_events."""
    gone = dead_pid()
    (tmp_path / "uprobe_events").write_text(
        f"p:uprobes/p__lib_libc_so_6_0x9a0e0_bcc_{gone} /lib/libc.so.6:0x000000000009a0e0\n"
        f"r:uprobes/r__lib_libc_so_6_0x9a0e0_bcc_{os.getpid()} /lib/libc.so.6:0x9a0e0\n"
        "p:uprobes/someone_elses /bin/true:0x1000\n"
    )
    (tmp_path / "kprobe_events").write_text(
        f"p:kprobes/p_down_write_bcc_{gone} down_write\n"
        f"r16:kprobes/r_up_write_bcc_{gone} up_write\n"
    )
    return tmp_path, gone


def test_stale_probe_events_are_bcc_named_events_of_dead_processes(fake_tracefs):
    tracefs, gone = fake_tracefs
    stale = doctor.stale_probe_events((tracefs,))
    assert sorted(name for _events, name in stale) == [
        f"kprobes/p_down_write_bcc_{gone}",
        f"kprobes/r_up_write_bcc_{gone}",
        f"uprobes/p__lib_libc_so_6_0x9a0e0_bcc_{gone}",
    ]  # not ours (alive) and not someone else's naming


def test_cleanup_writes_a_removal_per_stale_event(fake_tracefs):
    tracefs, gone = fake_tracefs
    removed = doctor.cleanup_stale_probes((tracefs,))
    assert len(removed) == 3
    assert (
        (tracefs / "uprobe_events")
        .read_text()
        .endswith(f"-:uprobes/p__lib_libc_so_6_0x9a0e0_bcc_{gone}\n")
    )
    assert (tracefs / "kprobe_events").read_text().count("\n-:kprobes/") == 2


def test_cleanup_without_tracefs_or_permission_does_nothing(tmp_path):
    assert doctor.cleanup_stale_probes((tmp_path / "absent",)) == []
    (tmp_path / "uprobe_events").write_text(f"p:uprobes/x_bcc_{dead_pid()} /bin/true:0x1\n")
    (tmp_path / "uprobe_events").chmod(0o444)
    if os.geteuid() != 0:  # root writes anyway
        assert doctor.cleanup_stale_probes((tmp_path,)) == []
