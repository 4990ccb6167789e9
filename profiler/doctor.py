"""What this kernel offers lockprof, checked by loading and attaching for real.

`lockprof doctor` prints these checks; the integration tests use the same
checks to decide what to skip, so a skip reason is what doctor would say.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from profiler import btf
from profiler.errors import LockprofError

TRACEPOINTS = (
    "lock:contention_begin",
    "lock:contention_end",
    "mmap_lock:mmap_lock_start_locking",
    "mmap_lock:mmap_lock_acquire_returned",
    "mmap_lock:mmap_lock_released",
    "sched:sched_switch",
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False


def _fn_name(event: str) -> str:
    return "doc_" + event.replace(":", "__")


def _tracepoint_program(raw: bool) -> str:
    ctx = "struct bpf_raw_tracepoint_args *ctx" if raw else "void *ctx"
    return "\n".join(f"int {_fn_name(e)}({ctx}) {{ return 0; }}" for e in TRACEPOINTS)


def _attach_each(raw: bool) -> list[Check]:
    from profiler import bpf

    kind = "raw_tracepoint" if raw else "tracepoint"
    bcc = bpf.import_bcc()
    checks = []
    try:
        prog = bcc.BPF(text=_tracepoint_program(raw).encode(), cflags=["-w"])
    except Exception as exc:
        return [Check(f"{kind} {e}", False, f"compile failed: {exc}") for e in TRACEPOINTS]
    try:
        for event in TRACEPOINTS:
            required = raw and not event.startswith("sched:")
            try:
                if raw:
                    prog.attach_raw_tracepoint(
                        tp=event.split(":")[1].encode(), fn_name=_fn_name(event).encode()
                    )
                else:
                    prog.attach_tracepoint(tp=event.encode(), fn_name=_fn_name(event).encode())
                checks.append(Check(f"{kind} {event}", True, "attached", required))
            except Exception as exc:
                checks.append(Check(f"{kind} {event}", False, _short(exc), required))
    finally:
        prog.cleanup()
    return checks


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _try(name: str, required: bool, action) -> Check:
    from profiler import bpf

    try:
        with bpf._captured_stderr():
            detail = action()
        return Check(name, True, detail or "works", required)
    except Exception as exc:
        return Check(name, False, _short(exc), required)


def _kprobe() -> str:
    from profiler import bpf

    if (
        not Path("/sys/kernel/tracing/kprobe_events").exists()
        and not Path("/sys/kernel/debug/tracing/kprobe_events").exists()
    ):
        raise LockprofError("absent: no kprobe_events in tracefs (CONFIG_KPROBES off?)")
    bpf.compile_check(
        "int doc_k(struct pt_regs *ctx) { return 0; }",
        "attach_kprobe",
        event=b"vfs_read",
        fn_name=b"doc_k",
    )
    return "attached to vfs_read"


def _fentry() -> str:
    from profiler import bpf

    bcc = bpf.import_bcc()
    if not bcc.BPF.support_kfunc():
        raise LockprofError("absent: BCC reports no kfunc (fentry) support")
    bpf.compile_check("KFUNC_PROBE(vfs_read) { return 0; }")
    return "loaded on vfs_read"


def _uprobe() -> str:
    from profiler import bpf

    bpf.compile_check(
        "int doc_u(struct pt_regs *ctx) { return 0; }",
        "attach_uprobe",
        name=b"c",
        sym=b"getpid",
        fn_name=b"doc_u",
    )
    return "attached to libc getpid"


def _perf_event() -> str:
    from profiler import bpf

    bcc = bpf.import_bcc()
    bpf.compile_check(
        "int doc_p(struct bpf_perf_event_data *ctx) { return 0; }",
        "attach_perf_event",
        ev_type=bcc.PerfType.SOFTWARE,
        ev_config=bcc.PerfSWConfig.CPU_CLOCK,
        fn_name=b"doc_p",
        sample_freq=49,
    )
    return "cpu-clock sampling attached"


def _probes_compile() -> str:
    from profiler import bpf
    from profiler.probes import plan

    # Every opt-in family compiled in too, so that this check covers their
    # code and headers, not only the default families'.
    plans = plan(("mmap_lock", "contention"), {"raw_tracepoint"})
    with bpf.BpfSession(plans, extra_families=tuple(bpf.OPTIONAL_FAMILIES)) as session:
        session.attach()
        names = ", ".join(sorted({a.mechanism for a in session.attached}))
        info = session.compile_info
    how = "maps compiled, programs from the cache" if info and info.from_cache else "compiled"
    return f"lockprof's probes compile, load and attach ({names}; task storage, ring buffer; {how})"


def _probe_cache() -> str:
    from profiler import bpf, probecache
    from profiler.probes import DEFAULT_FAMILIES

    directory = probecache.cache_dir()
    if directory is None:
        return f"off ({probecache.off_reason()}): every run compiles its probes"
    reason = probecache.unusable(directory)
    if reason:
        raise LockprofError(f"{directory}: {reason}")
    entries = probecache.entries(directory)
    try:
        default = (
            "a default collection's among them"
            if bpf.precompiled(DEFAULT_FAMILIES)
            else "none for a default collection yet: `lockprof precompile` makes it"
        )
    except LockprofError as exc:  # no BTF, no BCC: the checks above say so
        default = f"whether a default collection's is among them is unknown ({exc})"
    return (
        f"{directory}: {entries} compiled-probe entries, {default} "
        f"({probecache.CACHE_DIR_ENV}=off: none)"
    )


def _btf() -> str:
    offsets = btf.probe_offsets()
    return "offsets " + ", ".join(f"{k}={v}" for k, v in offsets.items())


def _mm_ids() -> str:
    """How the processes one mm address serves in turn are told apart."""
    from profiler.bpf import mm_id_offset

    offset = mm_id_offset()  # reads the BTF blob (offsets cached per blob)
    if offset < 0:
        return (
            "no per-mm id in BTF (x86's mm_struct.context.ctx_id): lockprof numbers each "
            "mm as its process is first seen on it, so each keeps its own mmap_lock rows"
        )
    return f"mm_struct.context.ctx_id at {offset}: each mm's mmap_lock has its own rows"


def _headers() -> Check:
    from profiler.session import headers_in_use

    info = headers_in_use()
    if info["kind"] == "missing":
        return Check("kernel headers", False, f"missing at {info['path']} (run `make setup`)", True)
    note = (
        "exact match"
        if info["kind"] == "exact"
        else f"FALLBACK {info['version']} for {platform.release()}: struct layouts come from BTF"
    )
    return Check("kernel headers", True, f"{note} ({info['path']})", True)


def _privileges() -> Check:
    from profiler.session import require_privileges

    try:
        require_privileges()
        return Check("privileges", True, "root" if os.geteuid() == 0 else "capabilities", True)
    except LockprofError as exc:
        return Check("privileges", False, str(exc), True)


def run_checks() -> list[Check]:
    checks = [_privileges()]
    if not checks[0].ok:
        return checks
    checks.append(_try("bcc", True, lambda: "python3-bpfcc " + _bcc_version()))
    checks.append(_try("BTF", True, _btf))
    checks.append(_try("mm ids", False, _mm_ids))
    checks.append(_headers())
    checks.append(
        Check(
            "tracefs",
            Path("/sys/kernel/tracing/events").is_dir(),
            "/sys/kernel/tracing"
            if Path("/sys/kernel/tracing/events").is_dir()
            else "not mounted: mount -t tracefs nodev /sys/kernel/tracing",
        )
    )
    checks += _attach_each(raw=True)
    checks += _attach_each(raw=False)
    checks.append(_try("kprobe", False, _kprobe))
    checks.append(_try("fentry", False, _fentry))
    checks.append(_try("uprobe", False, _uprobe))
    checks.append(_try("perf_event sampling", False, _perf_event))
    checks.append(_try("lockprof probes", True, _probes_compile))
    checks.append(_try("probe cache", False, _probe_cache))
    return checks


def _bcc_version() -> str:
    from profiler import bpf

    return getattr(bpf.import_bcc(), "__version__", "?")


@functools.cache
def cached_checks() -> tuple[Check, ...]:
    return tuple(run_checks())


def working_mechanisms(checks: tuple[Check, ...] | list[Check]) -> set[str]:
    """Mechanisms with at least one successful check."""
    working = set()
    for check in checks:
        mechanism = check.name.split(" ", 1)[0]
        if check.ok and mechanism in ("raw_tracepoint", "tracepoint", "kprobe", "fentry", "uprobe"):
            working.add(mechanism)
        if check.ok and check.name == "perf_event sampling":
            working.add("perf_event")
    return working


_SINGLE_CHECKS = {
    "kprobe": _kprobe,
    "fentry": _fentry,
    "uprobe": _uprobe,
    "perf_event": _perf_event,
}


@functools.cache
def mechanism_works(mechanism: str) -> bool:
    """Run doctor's one check for kprobe, fentry, uprobe or perf_event (lock
    specs and sampling need them; tracepoint collection does not pay for
    these checks)."""
    return _try(mechanism, False, _SINGLE_CHECKS[mechanism]).ok


def cheap_mechanisms() -> set[str]:
    """What collection may plan with, without doctor's compile-and-attach
    round: tracepoints are assumed and attach errors are reported as such."""
    return {"raw_tracepoint", "tracepoint"}


def as_dicts(checks) -> list[dict]:
    return [asdict(c) for c in checks]


# -- stale probe events (lockprof doctor --cleanup, and every collection start) --

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# BCC names the tracefs events it creates "<group>/<name>_bcc_<pid>" (libbcc:
# "%c:%ss/%s %s" with the alias "%s_bcc_%d"), group uprobes or kprobes. It
# creates them where perf_event_open cannot make the probe itself (before
# 4.17, or without the kprobe/uprobe PMU), and for every kretprobe of a kernel
# lock spec (maxactive, bpf.KRETPROBE_MAXACTIVE: "r4096:"); it removes them
# when it detaches: a BCC process killed with SIGKILL leaves them behind.
_BCC_EVENT = re.compile(r"^[pr]\d*:(?P<group>[^/\s]+)/(?P<event>\S*_bcc_(?P<pid>\d+))(\s|$)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_probe_events(tracefs_dirs=TRACEFS_DIRS) -> list[tuple[Path, str]]:
    """(events file, "group/event") of BCC-named kprobe/uprobe events whose
    creating process is gone."""
    stale = []
    for tracefs in tracefs_dirs:
        for kind in ("uprobe_events", "kprobe_events"):
            events = tracefs / kind
            try:
                text = events.read_text()
            except OSError:  # absent (no CONFIG_KPROBES), not mounted, not root
                continue
            for line in text.splitlines():
                match = _BCC_EVENT.match(line)
                if match and not _pid_alive(int(match["pid"])):
                    stale.append((events, f"{match['group']}/{match['event']}"))
        if stale:
            break  # one tracefs mount is enough: the other is the same instance
    return stale


def cleanup_stale_probes(tracefs_dirs=TRACEFS_DIRS) -> list[str]:
    """Remove stale BCC probe events (see stale_probe_events); the names
    removed. An event still in use (EBUSY: a process in another pid
    namespace may hold it) or one this process may not remove is left."""
    removed = []
    for events, name in stale_probe_events(tracefs_dirs):
        try:
            write_probe_event(events, f"-:{name}")
        except OSError:
            continue
        removed.append(name)
    return removed


def write_probe_event(events: Path, command: str) -> None:
    """One command to a tracefs *_events file (os.write: Python's append
    mode seeks to the end, which tracefs refuses with EINVAL)."""
    fd = os.open(events, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{command}\n".encode())
    finally:
        os.close(fd)
