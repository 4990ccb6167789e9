"""Constants shared with the BPF side, parsed from probes/lockprof.h.

The header is the single source of truth: enum values and #defines are read
from it here, and BCC derives the ctypes struct layouts from it in bpf.py.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

_DEFINE = re.compile(r"^\s*#define\s+(LP_\w+)\s+(-?\d+)\s*$", re.M)
_ENUM_ITEM = re.compile(r"^\s*(LP_\w+)\s*=\s*(-?\d+)\s*,", re.M)


def probes_dir() -> Path:
    """Directory holding the BPF sources (package data, works non-editable)."""
    return Path(str(resources.files("probes")))


@cache
def constants() -> dict[str, int]:
    text = (probes_dir() / "lockprof.h").read_text()
    found = {name: int(value) for name, value in _DEFINE.findall(text)}
    found.update({name: int(value) for name, value in _ENUM_ITEM.findall(text)})
    return found


def const(name: str) -> int:
    return constants()[name]


def error_names() -> dict[int, str]:
    """LP_ERR_* index -> short name (ringbuf_full, ...), excluding the count."""
    return {
        value: name.removeprefix("LP_ERR_").lower()
        for name, value in constants().items()
        if name.startswith("LP_ERR_")
    }


def failures(errors: dict[str, int]) -> dict[str, int]:
    """The nonzero kernel-side failure counters, without ringbuf_full (shown
    as lost events) and stack_rate (a limit working as asked, not a failure)."""
    return {
        name: count
        for name, count in errors.items()
        if count and name not in ("ringbuf_full", "stack_rate")
    }


def stack_rate_note(meta: dict) -> str | None:
    """How many long contended waits the --stack-rate limit left without a
    kernel stack, or None."""
    skipped = int((meta.get("errors") or {}).get("stack_rate") or 0)
    if not skipped:
        return None
    return (
        f"{skipped:,} contended waits over --stack-threshold got no kernel stack "
        f"(--stack-rate {meta.get('stack_rate')} per CPU per second): their callers "
        "count as (no stack); --stack-rate 0 takes every one"
    )


SOURCE_NAMES = {0: "mmap_lock", 1: "contention", 2: "lockspec"}


def every_acquisition_sources() -> tuple[int, int]:
    """The probe families that count every acquisition (the mmap_lock
    tracepoints, lock specs' functions); lock:contention_* sees contended
    waits only."""
    return const("LP_SRC_MMAP_LOCK"), const("LP_SRC_SPEC")


def classify(source: int, flags: int) -> tuple[str, str]:
    """(lock class, mode) of an aggregate row, from its probe family and flags.

    Mirrors the kernel's LCB_F_* meaning (include/trace/events/lock.h).
    mode is "read", "write" or "exclusive" (locks with no reader side).
    """
    c = constants()
    read, write = bool(flags & c["LP_LCB_READ"]), bool(flags & c["LP_LCB_WRITE"])
    rw_mode = "read" if read else "write"
    if source == c["LP_SRC_MMAP_LOCK"]:
        return "mmap_lock", rw_mode
    if source == c["LP_SRC_SPEC"]:
        # A lock spec's functions; the session renames the class after the spec.
        return "lockspec", "sum" if flags & c["LP_F_SUM"] else rw_mode
    if flags & c["LP_LCB_PERCPU"]:
        return "percpu-rwsem", rw_mode
    if flags & c["LP_LCB_MUTEX"]:
        return "mutex", "exclusive"
    if flags & c["LP_LCB_RT"]:
        return ("rwlock-rt", rw_mode) if (read or write) else ("rt-mutex", "exclusive")
    if flags & c["LP_LCB_SPIN"]:
        return ("rwlock", rw_mode) if (read or write) else ("spinlock", "exclusive")
    if read or write:
        return "rwsem", rw_mode
    return "semaphore", "exclusive"


# The lock types contention rows can have (classify() of the contention
# source): what --lock-types chooses from.
LOCK_TYPES = (
    "spinlock",
    "rwlock",
    "rwsem",
    "percpu-rwsem",
    "mutex",
    "rt-mutex",
    "rwlock-rt",
    "semaphore",
)


def dropped_type_flags(lock_types: tuple[str, ...]) -> list[int]:
    """The LP_LCB_* flag combinations (below LP_TYPE_SLOTS) whose contention
    --lock-types leaves out: those of every other type."""
    source = const("LP_SRC_CONTENTION")
    return [
        flags
        for flags in range(const("LP_TYPE_SLOTS"))
        if classify(source, flags)[0] not in lock_types
    ]
