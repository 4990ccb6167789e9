"""Which capabilities collection needs, checked before anything is loaded.

Measured on kernel 6.18 with BCC 0.26 (docs/reliability.md has the runs):

- CAP_BPF and CAP_PERFMON: load the tracing programs, create their maps
  (task storage, ring buffer, stack traces), attach raw tracepoints and
  perf events, read kernel memory (bpf_probe_read_kernel). CAP_SYS_ADMIN
  stands in for both, and is the only way on kernels older than 5.8, which
  have neither.
- CAP_DAC_OVERRIDE, for a user other than root, for lock specs on a user
  binary (uprobes): without it perf_event_open of the uprobe PMU fails
  with EACCES, and BCC reads the root-only tracefs when it detaches.
- CAP_SYSLOG, where /proc/kallsyms hides addresses (kptr_restrict, or
  perf_event_paranoid above 1): without it collection works but kernel
  stacks and lock symbols are [unknown]. A warning, not a refusal.

Nothing else: tracefs is not needed for raw tracepoints, RLIMIT_MEMLOCK is
not used for BPF memory since 5.11 (CAP_SYS_RESOURCE), and reading other
users' /proc/PID/stat needs no privilege.
"""

from __future__ import annotations

import os
from pathlib import Path

from profiler.errors import LockprofError

CAPS = {
    "CAP_DAC_OVERRIDE": 1,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYSLOG": 34,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


def effective_caps(status: str | None = None) -> int:
    """The CapEff mask of this process (0 if it cannot be read)."""
    try:
        text = status if status is not None else Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def last_cap() -> int:
    """The highest capability this kernel knows (40 on 6.x: CAP_CHECKPOINT_RESTORE)."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return CAPS["CAP_BPF"]


def missing_caps(caps: int, kernel_last_cap: int, euid: int, uprobes: bool = False) -> list[str]:
    """The capabilities collection lacks, by name (empty: it may start)."""

    def has(name: str) -> bool:
        return bool(caps & (1 << CAPS[name]))

    admin = has("CAP_SYS_ADMIN")
    if kernel_last_cap < CAPS["CAP_BPF"]:  # before 5.8: CAP_SYS_ADMIN or nothing
        return [] if admin else ["CAP_SYS_ADMIN"]
    missing = [name for name in ("CAP_BPF", "CAP_PERFMON") if not (has(name) or admin)]
    if uprobes and euid != 0 and not has("CAP_DAC_OVERRIDE"):
        missing.append("CAP_DAC_OVERRIDE")
    return missing


def require(uprobes: bool = False) -> None:
    """Refuse to collect without the capabilities, naming the missing ones."""
    missing = missing_caps(effective_caps(), last_cap(), os.geteuid(), uprobes)
    if not missing:
        return
    needed = (
        "CAP_SYS_ADMIN"
        if missing == ["CAP_SYS_ADMIN"]
        else "CAP_BPF and CAP_PERFMON"
        + (" (and CAP_DAC_OVERRIDE for uprobes)" if "CAP_DAC_OVERRIDE" in missing else "")
    )
    what = " and ".join(missing)
    raise LockprofError(
        f"needs root, or the capabilities {needed}, to load BPF tracing programs: "
        f"{what} {'is' if len(missing) == 1 else 'are'} missing; try: sudo lockprof ...",
        exit_code=1,
    )


def kernel_symbols_hidden(kallsyms: str = "/proc/kallsyms") -> bool:
    """Does /proc/kallsyms show this process zeros instead of addresses?"""
    try:
        with open(kallsyms) as symbols:
            first = symbols.readline().split()
    except OSError:
        return True
    return not first or int(first[0], 16) == 0


def symbols_warning() -> str | None:
    """One line when kernel stacks and symbols will be [unknown], else None."""
    if not kernel_symbols_hidden():
        return None
    return (
        "lockprof: /proc/kallsyms hides kernel addresses from this process "
        "(CAP_SYSLOG is missing): kernel stacks and lock symbols will be [unknown]"
    )
