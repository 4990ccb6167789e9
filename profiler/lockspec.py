"""Lock specs: a user's own lock functions, probed with uprobes or kprobes.

`--locks SPEC` takes a built-in spec name, optionally retargeted at a binary
(`rw_mutex@./librw_mutex.so`), or a TOML file:

    name = "my_rwlock"          # lock class shown in the output
    target = "kernel"           # or a path to an executable or shared library
    [functions]
    read_lock = ["my_read_lock"]
    read_unlock = ["my_read_unlock"]
    write_lock = ["my_write_lock"]
    write_unlock = ["my_write_unlock"]
    unlock = []                 # unlocks shared by both modes (mode = holder's)
    sum = ["my_sum_readers"]    # optional: the writer's sum over readers
    status = ["my_write_lock"]  # lock functions returning 0 when acquired

Every function takes the lock as its first argument. A spec is checked
(functions present in the target, target readable) before anything is
attached. Nothing here imports bcc: symbol lookups are passed in.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from profiler.errors import LockprofError

ROLES = ("read_lock", "read_unlock", "write_lock", "write_unlock", "unlock", "sum")
KERNEL = "kernel"

# BPF function (probes/lockprof.bpf.c) at each role's entry.
ENTRY_FN = {
    "read_lock": "lp_spec_read_lock",
    "write_lock": "lp_spec_write_lock",
    "read_unlock": "lp_spec_read_unlock",
    "write_unlock": "lp_spec_write_unlock",
    "unlock": "lp_spec_unlock",
    "sum": "lp_spec_sum",
}


@dataclass(frozen=True)
class LockSpec:
    name: str
    target: str  # KERNEL or an absolute path
    functions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    status: frozenset[str] = frozenset()  # lock functions returning 0 on success

    def role(self, role: str) -> tuple[str, ...]:
        return self.functions.get(role, ())

    @property
    def in_kernel(self) -> bool:
        return self.target == KERNEL

    def symbols(self) -> list[str]:
        return [fn for role in ROLES for fn in self.role(role)]


def _libc_path() -> str:
    for candidate in (
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ):
        if os.path.exists(candidate):
            return candidate
    return "libc.so.6"


BUILTIN: dict[str, Callable[[], LockSpec]] = {
    # The seed thread's API (Peter Zijlstra, 2007). The writer's
    # percpu_counter_sum is the figure the thread argued about.
    "rw_mutex": lambda: LockSpec(
        "rw_mutex",
        KERNEL,
        {
            "read_lock": ("rw_mutex_read_lock",),
            "read_unlock": ("rw_mutex_read_unlock",),
            "write_lock": ("rw_mutex_write_lock",),
            "write_unlock": ("rw_mutex_write_unlock",),
            "sum": ("percpu_counter_sum",),
        },
    ),
    # The kernel's O(NR_CPUS) sum itself, timed per call, where kprobes work
    # (elsewhere `--sample` estimates its CPU time).
    "percpu_counter_sum": lambda: LockSpec(
        "percpu_counter_sum", KERNEL, {"sum": ("__percpu_counter_sum",)}
    ),
    # Hold times of every rwsem, where kprobes work.
    "rwsem": lambda: LockSpec(
        "rwsem",
        KERNEL,
        {
            "read_lock": ("down_read", "down_read_killable", "down_read_interruptible"),
            "read_unlock": ("up_read",),
            "write_lock": ("down_write", "down_write_killable"),
            "write_unlock": ("up_write",),
        },
        frozenset({"down_read_killable", "down_read_interruptible", "down_write_killable"}),
    ),
    # glibc: one unlock for both modes, paired with the holder's mode.
    "pthread_rwlock": lambda: LockSpec(
        "pthread_rwlock",
        _libc_path(),
        {
            "read_lock": ("pthread_rwlock_rdlock", "pthread_rwlock_tryrdlock"),
            "write_lock": ("pthread_rwlock_wrlock", "pthread_rwlock_trywrlock"),
            "unlock": ("pthread_rwlock_unlock",),
        },
        frozenset(
            {
                "pthread_rwlock_rdlock",
                "pthread_rwlock_tryrdlock",
                "pthread_rwlock_wrlock",
                "pthread_rwlock_trywrlock",
            }
        ),
    ),
}


class BadSpec(LockprofError):
    """A --locks SPEC that cannot be used: a bad argument, as an unknown
    --lock-types value is (exit 2)."""

    exit_code = 2


def _as_names(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v.strip() and v.isprintable() and " " not in v for v in value
    ):
        raise BadSpec(f"lock spec {where}: expected a list of function names")
    return tuple(value)


def parse_toml(text: str, origin: str) -> LockSpec:
    """A LockSpec from TOML text (validated, symbols not yet checked)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadSpec(f"lock spec {origin}: invalid TOML: {exc}") from None
    unknown = set(doc) - {"name", "target", "functions"}
    if unknown:
        raise BadSpec(f"lock spec {origin}: unknown key {sorted(unknown)[0]!r}")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip() or not name.isprintable() or len(name) > 64:
        raise BadSpec(f"lock spec {origin}: 'name' must be a short printable string")
    target = doc.get("target", KERNEL)
    if not isinstance(target, str) or not target:
        raise BadSpec(f"lock spec {origin}: 'target' must be 'kernel' or a path")
    table = doc.get("functions")
    if not isinstance(table, dict):
        raise BadSpec(f"lock spec {origin}: missing [functions] table")
    bad = set(table) - set(ROLES) - {"status"}
    if bad:
        raise BadSpec(f"lock spec {origin}: unknown function role {sorted(bad)[0]!r}")
    functions = {
        role: _as_names(table[role], f"{origin} functions.{role}")
        for role in ROLES
        if role in table
    }
    status = frozenset(_as_names(table.get("status", []), f"{origin} functions.status"))
    spec = LockSpec(name.strip(), target, functions, status)
    check_shape(spec, origin)
    return spec


def check_shape(spec: LockSpec, origin: str) -> None:
    locks = spec.role("read_lock") + spec.role("write_lock")
    unlocks = spec.role("read_unlock") + spec.role("write_unlock") + spec.role("unlock")
    # A spec times a lock (lock and unlock functions), or only a sum function
    # (the kernel's __percpu_counter_sum, per call, where kprobes work).
    if (not locks or not unlocks) and not (spec.role("sum") and not locks and not unlocks):
        raise BadSpec(
            f"lock spec {origin}: needs at least one lock and one unlock function, "
            "or only a sum function"
        )
    stray = spec.status - set(locks)
    if stray:
        raise BadSpec(
            f"lock spec {origin}: status names {sorted(stray)[0]!r}, which is not a lock function"
        )
    roles_of: dict[str, str] = {}
    for role in ROLES:
        for fn in spec.role(role):
            if fn in roles_of:
                raise BadSpec(f"lock spec {origin}: {fn!r} is both {roles_of[fn]} and {role}")
            roles_of[fn] = role


def resolve(argument: str) -> LockSpec:
    """`--locks` value -> LockSpec: NAME, NAME@TARGET, or a TOML file path."""
    if not argument or "\0" in argument:
        raise BadSpec(f"invalid lock spec {argument!r}")
    name, _, target = argument.partition("@")
    if name in BUILTIN:
        spec = BUILTIN[name]()
        if target:
            spec = replace(spec, target=KERNEL if target == KERNEL else _abs_target(target))
        return spec
    path = Path(argument)
    if argument.endswith(".toml") or path.exists():
        text = _read_spec_file(path, argument)
        spec = parse_toml(text, argument)
        if not spec.in_kernel:
            base = path.resolve().parent
            target_path = Path(spec.target)
            spec = replace(
                spec, target=str(target_path if target_path.is_absolute() else base / target_path)
            )
        return spec
    known = ", ".join(sorted(BUILTIN))
    raise BadSpec(f"unknown lock spec {argument!r} (built-in: {known}; or a .toml file)")


MAX_SPEC_BYTES = 1 << 20


def _read_spec_file(path: Path, argument: str) -> str:
    """The text of a spec file: a regular file of at most MAX_SPEC_BYTES
    (never a FIFO or device, which would block or never end)."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as spec_file:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadSpec(f"lock spec {argument} is not a regular file")
            if info.st_size > MAX_SPEC_BYTES:
                raise BadSpec(
                    f"lock spec {argument} is {info.st_size:,} bytes; "
                    f"at most {MAX_SPEC_BYTES:,} are read"
                )
            return spec_file.read(MAX_SPEC_BYTES).decode()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise BadSpec(f"cannot read lock spec {argument}: {reason}") from None


def _abs_target(target: str) -> str:
    return str(Path(target).resolve())


def check_target(
    spec: LockSpec,
    user_symbols: Callable[[str], set[str]],
    kernel_symbols: Callable[[], set[str]],
) -> None:
    """Refuse a spec whose binary or functions are missing, before attaching."""
    if spec.in_kernel:
        available = kernel_symbols()
        where = "the kernel (/proc/kallsyms)"
    else:
        path = Path(spec.target)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise BadSpec(f"lock spec {spec.name}: no readable binary {spec.target}")
        available = user_symbols(str(path))
        where = spec.target
    missing = [fn for fn in spec.symbols() if fn not in available]
    if missing:
        raise BadSpec(
            f"lock spec {spec.name}: {where} has no function {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )


def kernel_symbols() -> set[str]:
    names = set()
    try:
        with open("/proc/kallsyms") as kallsyms:
            for line in kallsyms:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW":
                    names.add(parts[2])
    except OSError as exc:
        raise LockprofError(f"cannot read /proc/kallsyms: {exc.strerror}") from None
    return names
