"""The only module that touches bcc and ctypes.

It compiles probes/lockprof.bpf.c, attaches the planned probes, and hands the
rest of lockprof plain numpy arrays, dicts and dataclasses. Struct layouts are
never written here: BCC derives them from probes/lockprof.h.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import mmap
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from profiler import btf, ksyms, probecache, schema
from profiler.allocator import release_free_heap
from profiler.errors import LockprofError, MechanismUnavailable
from profiler.lockids import LockIds, dead_owners
from profiler.options import CollectOptions
from profiler.probes import OPTIONAL_FAMILIES, Plan
from profiler.spool import RecordSpool

_RING_CHECK_S = 0.010
_RING_BUSY_CHECK_S = 0.001
# How long attach waits for its reads of /proc/N/cmdline (the target's, and
# with --follow its descendants': a lock held for write longer than this only
# delays the learning).
LEARN_READ_WAIT_S = 0.5
# Each CPU's runqueue lock is learned from this bare tracepoint (lp_learn_rq),
# for at most this long from the start.
RQ_TRACEPOINT = b"sched_update_nr_running_tp"
RQ_LEARN_S = 5.0
# A retired per-task row (struct lp_task_key and lp_task_stats, packed).
_RETIRED_TASK = np.dtype(
    [
        ("lock", "<u8"), ("tid", "<u4"), ("tgid", "<u4"), ("flags", "<u4"), ("source", "<u4"),
        ("waits", "<u8"), ("wait_ns", "<u8"), ("holds", "<u8"), ("hold_ns", "<u8"),
        ("comm", "S16"),
    ]
)  # fmt: skip
# A retired caller row (struct lp_caller_key's lock as a lock id, and
# lp_caller_stats summed over CPUs).
_RETIRED_CALLER = np.dtype(
    [
        ("lock", "<u8"), ("stack_id", "<i4"), ("flags", "<u4"),
        ("count", "<u8"), ("total_ns", "<u8"), ("max_ns", "<u8"),
    ]
)  # fmt: skip
# A forgotten lock id (profiler/lockids.py): its exited owner's name.
_FORGOTTEN_OWNER = np.dtype([("lock", "<u8"), ("address", "<u8"), ("tgid", "<u4"), ("comm", "S16")])

# Cap the per-CPU aggregate map's memory: entries x value size x CPUs.
_STATS_MAP_BUDGET_BYTES = 64 << 20
# Tasks that can be inside one kretprobed lock function at once (the
# kernel's limit for a kprobe_events probe is 4096).
KRETPROBE_MAXACTIVE = 4096
# Test hook: cap every map's entries (see probe_cflags).
MAX_ENTRIES_ENV = "LOCKPROF_TEST_MAX_ENTRIES"
# Test hook: compile as on a kernel without x86's mm ids (see mm_id_offset).
NO_MM_ID_ENV = "LOCKPROF_TEST_NO_MM_ID"
# Test hook: keep N frames per kernel stack (LP_STACK_DEPTH), so that a test
# sees stacks that fill their bucket.
STACK_DEPTH_ENV = "LOCKPROF_TEST_STACK_DEPTH"
# Test hook: a stack map of N buckets, so that captures fail (-EEXIST).
MAX_STACKS_ENV = "LOCKPROF_TEST_MAX_STACKS"
# Test hook: the contention programs' running marks are set and never
# cleared, so that a test can see that they are set (LP_TEST_KEEP_MARKS).
KEEP_MARKS_ENV = "LOCKPROF_TEST_KEEP_MARKS"
# read_errors() key: probe runs the kernel skipped (not an lp_errors counter).
RECURSION_MISSES = "recursion_misses"


def import_bcc():  # -> module bcc
    try:
        import bcc  # Debian's python3-bpfcc; PyPI's "bcc" is another project
    except ImportError:
        raise LockprofError(
            "BCC's Python module is missing: install Debian's python3-bpfcc "
            "(run `make setup`; PyPI's 'bcc' is an unrelated package)"
        ) from None
    if not hasattr(bcc, "BPF"):
        raise LockprofError("the imported 'bcc' is not BCC (PyPI's bcc?): use python3-bpfcc")
    return bcc


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what clang/libbpf print on fd 2 (fallback-header warnings), so a
    working compile stays quiet and a failing one can quote it."""
    captured: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _first_error(compiler_output: str) -> str:
    for line in compiler_output.splitlines():
        if "error" in line.lower():
            return line.strip()
    lines = [line for line in compiler_output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no compiler output"


# The compiler's shared libraries (clang and LLVM, linked by libbcc): once the
# probes are loaded nothing runs their code again, yet the pages compiling
# touched (~85 MB here) stayed resident in lockprof for the whole run.
_COMPILER_LIBRARIES = ("libLLVM", "libclang-cpp", "libclang.so", "libz3")
_MADV_PAGEOUT = 21  # Linux 5.4+


def _mapped_files(prefixes: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """(start, end, path) of this process's mappings of files whose names
    start with one of prefixes; [] if /proc/self/maps cannot be read."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith(prefixes):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end, fields[5]))
    return found


def release_compiler_pages() -> int:
    """Ask the kernel to reclaim the compiler libraries' pages from this
    process (MADV_PAGEOUT). It never loses data: clean file pages are
    dropped and read back from the file if ever touched again; private
    written pages (relocations) are only reclaimed to swap, or stay. Returns
    the bytes advised; 0 where the kernel or libc does not support it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for start, end, _path in _mapped_files(_COMPILER_LIBRARIES):
        if libc.madvise(start, end - start, _MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


def possible_cpus() -> int:
    bcc = import_bcc()
    return len(bcc.utils.get_possible_cpus())


def online_cpus() -> list[int]:
    bcc = import_bcc()
    return list(bcc.utils.get_online_cpus())


def probe_cflags(families: Iterable[str]) -> tuple[list[str], int]:
    """The compiler flags of the probes for a run of these probe families
    (the opt-in ones are compiled only if named), and the size of the lock
    map."""
    offsets = btf.probe_offsets()
    offsets["LP_MM_ID_OFFSET"] = mm_id_offset(offsets)
    value_bytes = 8 * (5 + 2 * (3 + schema.const("LP_HIST_SLOTS")))
    max_locks = max(256, min(4096, _STATS_MAP_BUDGET_BYTES // (value_bytes * possible_cpus())))
    flags = [f"-D{name}={value}" for name, value in offsets.items()]
    # Numbered mm generations (no x86 ids): the low bits hold the CPU.
    flags.append(f"-DLP_GEN_CPU_BITS={max(1, (possible_cpus() - 1).bit_length())}")
    flags.append(f"-DLP_MAX_RQ_CPUS={max(import_bcc().utils.get_possible_cpus()) + 1}")
    # Test hook (tests/integration/test_reliability.py): every map (locks,
    # tasks, callers, stacks, owners) holds at most N entries, so that a
    # test can fill them and check that overflows are counted.
    cap = os.environ.get(MAX_ENTRIES_ENV)
    if cap:
        max_locks = int(cap)
        flags += [f"-DLP_MAX_{m}={max_locks}" for m in ("TASKS", "CALLERS", "STACKS", "OWNERS")]
    stacks = os.environ.get(MAX_STACKS_ENV)
    if stacks:
        flags.append(f"-DLP_MAX_STACKS={int(stacks)}")
    depth = os.environ.get(STACK_DEPTH_ENV)
    if depth:
        flags.append(f"-DLP_STACK_DEPTH={int(depth)}")
    if os.environ.get(KEEP_MARKS_ENV):
        flags.append("-DLP_TEST_KEEP_MARKS=1")
    wanted = set(families)
    flags += [f"-D{define}={int(f in wanted)}" for f, define in OPTIONAL_FAMILIES.items()]
    flags += [f"-DLP_MAX_LOCKS={max_locks}", f"-I{schema.probes_dir()}", "-w"]
    return flags, max_locks


def mm_id_offset(offsets: dict[str, int] | None = None) -> int:
    """Where x86 keeps each mm's id (mm_struct.context.ctx_id), or -1: the
    probes then number mms themselves (lockprof.bpf.c lp_learn_gen). The
    test hook NO_MM_ID_ENV takes the second way on x86 too, so that it is
    tested here. offsets: btf.probe_offsets(), if already read (it hashes
    the BTF blob: ~6 ms here)."""
    if os.environ.get(NO_MM_ID_ENV):
        return -1
    return (offsets if offsets is not None else btf.probe_offsets())["LP_MM_ID_OFFSET"]


# The maps-only compile a cached run makes (probes/lockprof.bpf.c LP_MAPS_ONLY).
MAPS_ONLY_FLAG = "-DLP_MAPS_ONLY=1"


@dataclass(frozen=True)
class CompileInfo:
    """How the probes of this process were built: from the compiled-probe
    cache (profiler/probecache.py) or by a full compile, and how long it took."""

    from_cache: bool
    seconds: float


def compile_probes(flags: list[str]):  # -> bcc.BPF
    """Compile and load probes/lockprof.bpf.c (maps created, no program
    attached), then give the compiler's memory back.

    With an entry in the compiled-probe cache (profiler/probecache.py) only
    the maps are compiled and the programs the entry names are loaded from
    it, here, so that an entry the kernel refuses falls back to a full
    compile. A full compile's programs are kept once attached
    (BpfSession.attach: keep_compiled)."""
    bcc = import_bcc()
    _hold_test_fds()
    source = schema.probes_dir() / "lockprof.bpf.c"
    started = time.monotonic()
    key = _probe_cache_key(source, flags)
    bpf = _from_cache(bcc, source, flags, key) if key is not None else None
    if bpf is None:
        src = str(source).encode()
        bpf = _built(lambda: _probes_class(bcc)(cache_key=key, src_file=src, cflags=flags))
    bpf.compile_info = CompileInfo(bpf.from_cache, round(time.monotonic() - started, 3))
    release_free_heap()
    release_compiler_pages()
    return bpf


# Test hook (tests/integration/test_probe_cache.py): open N fds before the
# compile, so that the maps get other fd numbers than in the run that wrote
# a cache entry (a relocation left undone then shows).
HOLD_FDS_ENV = "LOCKPROF_TEST_HOLD_FDS"
_held_test_fds: list[int] = []


def _hold_test_fds() -> None:
    wanted = int(os.environ.get(HOLD_FDS_ENV) or 0)
    while len(_held_test_fds) < wanted:
        _held_test_fds.append(os.open("/dev/null", os.O_RDONLY))


def _built(make):  # -> bcc.BPF
    """make()'s BPF object; a compile or map error as one LockprofError
    quoting the compiler's first error line."""
    failure: Exception | None = None
    with _captured_stderr() as output:
        try:
            bpf = make()
        except Exception as exc:  # bcc raises plain Exception on compile errors
            failure = exc
    if failure is not None:
        detail = _first_error(output[0]) if output else str(failure)
        raise LockprofError(f"BPF compile/load failed: {detail}")
    return bpf


def _probe_cache_key(source: Path, flags: list[str]) -> str | None:
    """The cache key of these probes on this kernel and BCC; None if caching
    is off (LOCKPROF_CACHE_DIR=off)."""
    if probecache.cache_dir() is None:
        return None
    header = source.with_name("lockprof.h").read_bytes()
    return probecache.cache_key(source.read_bytes(), header, flags, _toolchain())


# The environment variables BCC's compile reads (loader.cc, kbuild_helper.cc).
_BCC_ENVIRONMENT = (
    "BCC_KERNEL_SOURCE",
    "BCC_LINUX_VERSION_CODE",
    "BCC_KERNEL_MODULES_SUFFIX",
    "ARCH",
)


def _toolchain() -> str:
    """What else a compile depends on: BCC (its version and library file),
    the running kernel and the kernel headers BCC compiles against."""
    uname = os.uname()
    parts = [f"bcc {import_bcc().__version__}", uname.release, uname.version, uname.machine]
    # The compiler: libbcc and the LLVM and clang libraries it links.
    libraries = {path for _s, _e, path in _mapped_files(("libbcc.so", *_COMPILER_LIBRARIES))}
    for path in sorted(libraries):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            parts.append(f"{path} {st.st_size} {st.st_mtime_ns}")
    # The kernel headers: BCC takes source/ over build/ where both exist.
    for kind in ("build", "source"):
        headers = Path(f"/lib/modules/{uname.release}/{kind}")
        with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: a symlink loop
            parts.append(f"{kind} {headers.resolve()} {headers.resolve().stat().st_mtime_ns}")
    parts.append(f"kheaders {Path('/sys/kernel/kheaders.tar.xz').exists()}")
    for name in _BCC_ENVIRONMENT:
        parts.append(f"{name}={os.environ.get(name, '')}")
    return "\n".join(parts)


def _libbcc_tables():  # -> bcc.lib with the table-listing calls declared
    """bcc's Python binding leaves out the calls that list a module's maps."""
    lib = import_bcc().lib
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    for name, restype in (
        ("bpf_table_name", ctypes.c_char_p),
        ("bpf_table_fd_id", ctypes.c_int),
        ("bpf_table_type_id", ctypes.c_int),
        ("bpf_table_key_size_id", ctypes.c_size_t),
        ("bpf_table_leaf_size_id", ctypes.c_size_t),
    ):
        getattr(lib, name).restype = restype
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return lib


def _module_maps(module) -> dict[str, tuple[int, tuple[int, int, int]]]:
    """Each map of a compiled module: name -> (fd, (type, key size, value size))."""
    lib = _libbcc_tables()
    maps = {}
    for index in range(lib.bpf_num_tables(module)):
        shape = (
            lib.bpf_table_type_id(module, index),
            lib.bpf_table_key_size_id(module, index),
            lib.bpf_table_leaf_size_id(module, index),
        )
        name = lib.bpf_table_name(module, index).decode()
        maps[name] = (lib.bpf_table_fd_id(module, index), shape)
    return maps


def _from_cache(bcc, source: Path, flags: list[str], key: str):
    """The probes' maps from a maps-only compile and their programs from the
    cache entry, all loaded; None if there is no usable entry. An entry
    that fails in any way (its maps-only compile, maps unlike the entry's,
    a program the kernel refuses) gives way to a marker (probecache.mark_refused)
    and None is returned: the caller compiles as without a cache, in the
    same run."""
    cached = probecache.load(key)
    if cached is None:
        return None
    bpf = None
    try:
        # A refused program's verifier log (libbpf prints it) is not for the user.
        with _captured_stderr():
            bpf = _probes_class(bcc)(
                cached=cached, src_file=str(source).encode(), cflags=[*flags, MAPS_ONLY_FLAG]
            )
            bpf.load_cached()
    except Exception:  # bcc raises plain Exception; relocation ValueError
        probecache.mark_refused(key)  # not written back by this run's compile
        if bpf is not None:
            bpf.cleanup()  # its maps (tens of MB of per-CPU arrays) go now
        return None
    return bpf


def _program_types(bcc) -> dict[bytes, tuple[int, int]]:
    """name -> (program type, attach type), as bcc's attach calls load them."""
    text = (schema.probes_dir() / "lockprof.bpf.c").read_text()
    return {
        name.encode(): (getattr(bcc.BPF, probecache.CONTEXT_TYPES[context]), -1)
        for name, context in probecache.program_contexts(text).items()
        if context in probecache.CONTEXT_TYPES
    }


def keep_compiled(bpf) -> str | None:
    """Write a full compile's programs to the cache, each with the type it
    is loaded as (a later run loads them all as such before attaching).
    Never fails the run: a read-only /var, or a program that cannot be
    relocated, is not cached; the reason is returned (None: kept, or
    nothing to keep)."""
    if bpf.from_cache or bpf.cache_key is None:
        return None
    if probecache.refused(bpf.cache_key):
        return "the kernel refused this key's cached programs in the last day"
    bcc = import_bcc()
    lib = bcc.lib
    types = {**_program_types(bcc), **bpf.loaded_types}
    maps = _module_maps(bpf.module)
    names = {fd: name for name, (fd, _shape) in maps.items()}
    programs = {}
    for index in range(lib.bpf_num_functions(bpf.module)):
        name = lib.bpf_function_name(bpf.module, index)
        start = lib.bpf_function_start(bpf.module, name)
        insns = ctypes.string_at(start, lib.bpf_function_size(bpf.module, name))
        loads = probecache.map_loads(insns, names)
        if loads is None:
            return f"program {name.decode()} loads a map lockprof cannot name"
        programs[name.decode()] = probecache.CachedProgram(insns, loads, types.get(name))
    entry = probecache.CachedProbes(
        bpf.cache_key,
        lib.bpf_module_license(bpf.module).decode(),
        int(lib.bpf_module_kern_version(bpf.module)),
        programs,
        {name: shape for name, (_fd, shape) in maps.items()},
    )
    try:
        if probecache.store(entry) is None:
            return "the cache directory is off or cannot be trusted"
    except OSError as exc:
        return f"cannot write the entry: {exc.strerror or exc}"
    return None


@dataclass(frozen=True)
class Precompiled:
    """What precompile() did: the entry was there already, or compiled."""

    directory: Path
    already: bool
    seconds: float


def precompile(families: Iterable[str], directory: Path) -> Precompiled:
    """Put the probes a collection of these families loads into the
    compiled-probe cache, unless an entry is there: compile them, load
    every program (the kernel verifies each, nothing attaches) and keep
    them. `make setup` runs this (`lockprof precompile`), so that the first
    collection after setting up starts from the cache, as perf's lock
    contention starts from the skeleton compiled with perf. directory: the
    cache's, from probecache.usable_dir() (the cache is on and can hold
    entries). Raises LockprofError when the entry cannot be kept."""
    flags, key = _flags_and_key(families)
    assert key is not None  # the cache is on: usable_dir() said so
    if probecache.load(key) is not None:
        return Precompiled(directory, True, 0.0)
    if probecache.refused(key):
        raise LockprofError(
            "this kernel refused the cached probes for these flags in the last day: "
            f"collections compile them; remove {directory / (key + '.json')} to try again"
        )
    started = time.monotonic()
    bpf = compile_probes(flags)
    try:
        _load_every_program(bpf)
        not_kept = keep_compiled(bpf)
    finally:
        bpf.cleanup()
    if not_kept is not None or probecache.load(key) is None:
        why = not_kept or "the entry written cannot be read back"
        raise LockprofError(f"the compiled probes were not kept in {directory}: {why}")
    return Precompiled(directory, False, round(time.monotonic() - started, 3))


def precompiled(families: Iterable[str]) -> bool:
    """Has the cache an entry that a collection of these families would
    load (lockprof doctor)?"""
    _flags, key = _flags_and_key(families)
    return key is not None and probecache.load(key, touch=False) is not None


def _flags_and_key(families: Iterable[str]) -> tuple[list[str], str | None]:
    """A collection's compiler flags and their cache key (None: cache off)."""
    flags, _max_locks = probe_cflags(families)
    return flags, _probe_cache_key(schema.probes_dir() / "lockprof.bpf.c", flags)


def _load_every_program(bpf) -> None:
    """Load each program of a full compile as the type its context gives,
    as a collection's attach does: the entry kept holds only programs this
    kernel's verifier accepted."""
    bcc = import_bcc()
    lib = bcc.lib
    types = _program_types(bcc)
    for index in range(lib.bpf_num_functions(bpf.module)):
        name = lib.bpf_function_name(bpf.module, index)
        if name in types:
            prog_type, attach_type = types[name]
            _built(lambda n=name, t=prog_type, a=attach_type: bpf.load_func(n, t, attach_type=a))


_probes_type = None


def _probes_class(bcc):  # -> a subclass of bcc.BPF
    """bcc.BPF, remembering how each program was loaded (for the cache) and
    loading a cache entry's programs from it: every other call (maps,
    attaching, cleanup) is bcc's own."""
    global _probes_type
    if _probes_type is not None:
        return _probes_type

    class Probes(bcc.BPF):  # type: ignore[name-defined]
        def __init__(self, cache_key=None, cached=None, **kwargs):
            self.cache_key = cached.key if cached is not None else cache_key
            self.from_cache = cached is not None
            self._cached = cached
            # name -> (program type, attach type) of every program loaded
            self.loaded_types: dict[bytes, tuple[int, int]] = {}
            self._relocated: dict[bytes, bytes] = {}
            super().__init__(**kwargs)

        def load_cached(self) -> None:
            """Point the entry's programs at this object's maps and load
            them; raises ValueError if the maps are not the entry's, and
            bcc's Exception if the kernel refuses a program."""
            self._relocated = _relocate_entry(self._cached, _module_maps(self.module))
            for name, program in self._cached.programs.items():
                if program.loaded_as is not None:
                    prog_type, attach_type = program.loaded_as
                    self.load_func(name.encode(), prog_type, attach_type=attach_type)

        def load_func(self, func_name, prog_type, device=None, attach_type=-1):
            name = func_name if isinstance(func_name, bytes) else func_name.encode()
            insns = self._relocated.get(name)
            if insns is None or name in self.funcs:
                loaded = super().load_func(name, prog_type, device, attach_type)
            else:
                loaded = self._load_relocated(name, insns, prog_type, device, attach_type)
            self.loaded_types.setdefault(name, (prog_type, attach_type))
            return loaded

        def _load_relocated(self, name, insns, prog_type, device, attach_type):
            buffer = ctypes.create_string_buffer(insns, len(insns))
            fd = bcc.lib.bcc_func_load(
                self.module, prog_type, name, buffer, len(insns),
                self._cached.license.encode(), self._cached.kern_version,
                0, None, 0, device, attach_type,
            )  # fmt: skip
            if fd < 0:
                error = os.strerror(ctypes.get_errno())
                probecache.mark_refused(self._cached.key)  # the next run compiles
                raise Exception(
                    f"Failed to load BPF program {name.decode()} from the compiled-probe "
                    f"cache (the entry is set aside for a day): {error}"
                )
            self.funcs[name] = bcc.BPF.Function(self, name, fd)
            return self.funcs[name]

    _probes_type = Probes
    return Probes


def _relocate_entry(
    cached: probecache.CachedProbes, maps: dict[str, tuple[int, tuple[int, int, int]]]
) -> dict[bytes, bytes]:
    """The entry's programs pointed at these maps; ValueError if the maps
    are not the ones the entry was compiled with."""
    for name, shape in cached.maps.items():
        if name not in maps or maps[name][1] != shape:
            raise ValueError(f"map {name} is not the cache entry's")
    fds = {name: fd for name, (fd, _shape) in maps.items()}
    return {
        name.encode(): probecache.relocated(program, fds)
        for name, program in cached.programs.items()
    }


# compile_early()'s result: (flags, the BPF object or None, its error or None).
_early_compile: tuple[list[str], object, LockprofError | None] | None = None


def compile_early(families: Iterable[str]) -> None:
    """Compile the probes now, before pandas and pyarrow are imported: a
    collection calls this once its command line is checked (cli/common.py).

    Compiling needs ~100 MB of clang/LLVM heap and library pages, given back
    when it ends. After pandas and pyarrow (~90 MB) the two added up: RSS
    peaked at ~270 MB at start-up. Before them it peaks at ~180 MB (~164
    with only the run's families compiled), and pandas then reuses the
    freed heap. The object waits for the session
    (take_early_compile); so does a compile error, raised where the
    session would have raised it (after the target is set up)."""
    global _early_compile
    try:
        flags, _max_locks = probe_cflags(families)
    except LockprofError:
        return  # the session will say why
    try:
        _early_compile = (flags, compile_probes(flags), None)
    except LockprofError as exc:
        _early_compile = (flags, None, exc)


def take_early_compile(flags: list[str]):  # -> bcc.BPF | None
    """The early compile's object, if it was made with these flags (once)."""
    global _early_compile
    early, _early_compile = _early_compile, None
    if early is None or early[0] != flags:
        return None
    if early[2] is not None:
        raise early[2]
    return early[1]


@dataclass
class Attached:
    probe: str
    mechanism: str
    target: str


@dataclass
class StatsSnapshot:
    """Cumulative per-CPU aggregates at one instant.

    rows maps (lock, flags, source, index) to an array of shape
    (cpus, len(columns)) whose columns are the flattened fields of struct
    lp_stats. index is the row's place in the kernel's map: one key has two
    for a moment when its row was retired and the key came back
    (BpfSession.retire_locks); aggregate.delta_records sums them.
    """

    ts_ns: int
    columns: list[str]
    rows: dict[tuple[int, int, int, int], np.ndarray] = field(default_factory=dict)


def _flat_fields(ctype: type, prefix: str = "") -> list[str]:
    """Flatten a ctypes struct into one name per u64 (arrays become name[i])."""
    names: list[str] = []
    for fname, ftype in ctype._fields_:  # type: ignore[attr-defined]
        name = f"{prefix}{fname}"
        if hasattr(ftype, "_fields_"):
            names += _flat_fields(ftype, f"{name}.")
        elif hasattr(ftype, "_length_"):
            names += [f"{name}[{i}]" for i in range(ftype._length_)]
        else:
            names.append(name)
    return names


def _kept_caller(lock: int, stack_id: int, flags: int, per_cpu) -> list[tuple]:
    """A retired caller record, if its row counted anything."""
    count, total, longest = _caller_totals(per_cpu)
    return [(lock, stack_id, flags, count, total, longest)] if count else []


def _caller_totals(per_cpu) -> tuple[int, int, int]:
    """A per-CPU struct lp_caller_stats summed over CPUs: count, total, max."""
    count = sum(int(v.count) for v in per_cpu)
    total = sum(int(v.total_ns) for v in per_cpu)
    return count, total, max((int(v.max_ns) for v in per_cpu), default=0)


class BpfSession:
    """Compiled and attached lockprof probes. Use as a context manager: leaving
    it detaches every probe, whatever happened inside."""

    def __init__(
        self,
        plans: list[Plan],
        target_tgid: int = 0,
        threshold_ns: int = 0,
        stack_threshold_ns: int = 10_000,
        sample_hz: int = 99,
        stack_rate: int = 0,
        follow: bool = False,
        lock_types: tuple[str, ...] | None = None,
        extra_families: tuple[str, ...] = (),
    ):
        """extra_families: opt-in families to compile in without plans for
        them (doctor's compile check)."""
        self.plans = plans
        self.attached: list[Attached] = []
        self._bcc = import_bcc()
        # Under process churn tens of task rows retire a second: on disk,
        # as the events (72 bytes a row in memory still grew ~14 MB an hour).
        self._retired_tasks = RecordSpool(_RETIRED_TASK, "per-task rows")
        # Per process under churn (each mm's mmap_lock is its own lock):
        # ~1 MB an hour in the soak, so on disk as well.
        self._retired_callers = RecordSpool(_RETIRED_CALLER, "callers of retired locks")
        # Lock rows retired from the kernel's maps but not yet freed:
        # index -> (lock, flags, source). See retire_locks().
        self._retiring: dict[int, tuple[int, int, int]] = {}
        # Rows are (lock id, flags, source) to the rest of lockprof; the
        # kernel's keys are (address, flags, source, mm_gen). lock_ids turns
        # one into the other (an mm address serves process after process).
        self.lock_ids = LockIds()
        # index -> kernel key of every row read and not yet freed
        self._kernel_keys: dict[int, tuple[int, int, int, int]] = {}
        self._forgotten = RecordSpool(_FORGOTTEN_OWNER, "lock owners")
        # Owner entries of exited processes kept a round for their rows to
        # be read first (lockids.dead_owners).
        self._owners_unread: set[tuple[int, int]] = set()
        self.locks_retired = 0
        self.max_locks = 0
        self._ring: RingReader | None = None
        self.events_dropped_userspace = 0
        self.max_events = 1_000_000
        self.sample_hz = sample_hz
        self.families = frozenset(chosen.probe.family for chosen in plans) | set(extra_families)
        self._bpf = self._compile(self.families)
        self.compile_info: CompileInfo = self._bpf.compile_info  # cached or compiled, its time
        self._configure(target_tgid, threshold_ns, stack_threshold_ns, stack_rate, follow)
        if lock_types is not None:
            self._drop_lock_types(lock_types)
        self.followed_gone = 0  # followed processes that exited (forget_dead_followed)
        self._text_symbols: ksyms.TextSymbols | None = None  # stack_frames, read once
        self._rq_names: dict[int, str] = {}  # rq_lock_names
        self._rq_learning_until: float | None = None  # lp_learn_rq attached until then
        # --follow: the descendants alive at attach (learn_target_lock looks at them too)
        self._followed_at_start: list[int] = []
        if follow:
            self._follow_descendants(target_tgid)
        self._stats_columns = _flat_fields(self._bpf["lp_stats"].sLeaf)
        self._event_dtype = np.dtype(self._bpf["lp_event_layout"].Leaf)
        # Events wait on disk, not in memory, until the recording is built.
        self._events = RecordSpool(self._event_dtype, "events")

    @classmethod
    def for_collection(
        cls, plans: list[Plan], options: CollectOptions, target_tgid: int = 0
    ) -> BpfSession:
        """The probes as a collection with these options sets them up (its
        event threshold, stacks, sampling, --follow, --lock-types, event
        budget): a collection, doctor --overhead and bench/toggle.py alike."""
        session = cls(
            plans,
            target_tgid,
            options.threshold_ns,
            options.stack_threshold_ns,
            sample_hz=options.sample_hz,
            stack_rate=options.stack_rate,
            follow="follow" in options.families,
            lock_types=options.lock_types,
        )
        session.max_events = options.max_events
        return session

    # -- set-up -----------------------------------------------------------------

    def _compile(self, families: Iterable[str]):
        flags, self.max_locks = probe_cflags(families)
        early = take_early_compile(flags)
        # Not `or`: a BPF object is a mapping of its tables, falsy until one is read.
        return early if early is not None else compile_probes(flags)

    def _configure(
        self,
        target_tgid: int,
        threshold_ns: int,
        stack_threshold_ns: int,
        stack_rate: int,
        follow: bool,
    ) -> None:
        config = self._bpf["lp_config"]
        value = config.Leaf()
        value.target_tgid = target_tgid
        value.threshold_ns = threshold_ns
        value.target_lock = 0
        value.stack_threshold_ns = stack_threshold_ns
        # stack_rate stacks per CPU per second at most (0: no limit)
        value.stack_gap_ns = 1_000_000_000 // stack_rate if stack_rate > 0 else 0
        value.follow = 1 if follow else 0  # --follow: also the target's descendants
        # A targeted run leaves lockprof's own tasks out: its look at the
        # target (learn_target_lock) is not the target's lock use.
        value.self_tgid = os.getpid() if target_tgid else 0
        value.armed = 0  # the programs do nothing until attach() arms them
        config[ctypes.c_int(0)] = value

    def _drop_lock_types(self, lock_types: tuple[str, ...]) -> None:
        """--lock-types: the probes leave out contention of every other type."""
        drop = self._bpf["lp_type_drop"]
        for flags in schema.dropped_type_flags(lock_types):
            drop[ctypes.c_int(flags)] = ctypes.c_uint(1)

    def _follow_descendants(self, target_tgid: int) -> None:
        """--follow: follow the target's descendants that already exist
        (attach); later ones are added at fork in BPF."""
        from profiler.targets import descendants_of

        followed = self._bpf["lp_followed"]
        self._followed_at_start = list(descendants_of(target_tgid))
        for tgid in self._followed_at_start:
            followed[ctypes.c_uint(tgid)] = ctypes.c_uint(1)

    def forget_dead_followed(self, alive, owners: dict[int, tuple[int, str]]) -> None:
        """Drop followed processes that have exited (alive(tgid) is False),
        so that a reused pid is not followed, and the mmap_locks whose owner
        (owners: read_owners() of this round) has exited (a reused address is
        also caught in lp_learn_owner), so that a long build does not fill
        the follow maps."""
        followed = self._bpf["lp_followed"]
        for key in list(followed.keys()):
            if not alive(int(key.value)):
                with contextlib.suppress(KeyError):
                    del followed[key]
                self.followed_gone += 1
        locks = self._bpf["lp_followed_locks"]
        for key in list(locks.keys()):
            owner = owners.get(int(key.value))
            if owner is not None and not alive(owner[0]):
                with contextlib.suppress(KeyError):
                    del locks[key]

    def followed_count(self) -> int:
        """Descendants followed so far: those alive and those gone."""
        return self.followed_gone + len(self._bpf["lp_followed"])

    def _arm(self) -> None:
        """Let the programs count. Programs are attached one at a time, each
        verified as it is attached (tens of ms for the big ones), so until the
        last is in, an acquisition may be seen without its release: a stale
        held[] entry (held_overflow, downgrade_without_write, wrong hold
        times until later releases pop it). Arming after the last attach
        makes every program start at the same instant. The programs
        write nothing in lp_config before it is armed, so rewriting the value
        loses nothing."""
        self._set_armed(1)

    def disarm(self) -> None:
        """Stop every program counting, at one instant, before the last
        drain and read: the event stream and the aggregates then end
        together (lockprof's own lock use while it reads would otherwise
        count in one and not the other)."""
        self._set_armed(0)

    def _set_armed(self, armed: int) -> None:
        config = self._bpf["lp_config"]
        value = config[ctypes.c_int(0)]
        value.armed = armed
        config[ctypes.c_int(0)] = value

    def attach(self) -> list[Attached]:
        for chosen in self.plans:
            self._attach_one(chosen)
        keep_compiled(self._bpf)  # now that each program's type is known
        self._learn_rq_locks()
        self._arm()
        self._ring = RingReader(
            self._bpf["lp_events"].map_fd,
            schema.const("LP_RINGBUF_PAGES") * mmap.PAGESIZE,
            self._event_dtype,
        )
        return self.attached

    def _attach_one(self, chosen: Plan) -> None:
        point, fn = chosen.point, chosen.probe.fn.encode()
        try:
            if point.mechanism == "raw_tracepoint":
                event = point.target.split(":", 1)[1]
                self._bpf.attach_raw_tracepoint(tp=event.encode(), fn_name=fn)
            elif point.mechanism == "tracepoint":
                self._bpf.attach_tracepoint(tp=point.target.encode(), fn_name=fn)
            elif point.mechanism == "uprobe":
                # All processes mapping the binary; BPF filters by target.
                path, symbol = point.target.rsplit(":", 1)
                attach = self._bpf.attach_uretprobe if point.ret else self._bpf.attach_uprobe
                attach(name=path.encode(), sym=symbol.encode(), fn_name=fn)
            elif point.mechanism == "perf_event":
                self._bpf.attach_perf_event(
                    ev_type=self._bcc.PerfType.SOFTWARE,
                    ev_config=self._bcc.PerfSWConfig.CPU_CLOCK,
                    fn_name=fn,
                    sample_freq=self.sample_hz,
                )
            elif point.mechanism == "kprobe" and point.ret:
                self._attach_kretprobe(point.target.encode(), fn)
            elif point.mechanism == "kprobe":
                self._bpf.attach_kprobe(event=point.target.encode(), fn_name=fn)
            else:
                raise MechanismUnavailable(f"mechanism {point.mechanism} is not implemented")
        except MechanismUnavailable:
            raise
        except Exception as exc:
            raise MechanismUnavailable(
                f"attaching {chosen.probe.name} to {point.mechanism} {point.target} failed: {exc}"
            ) from None
        self.attached.append(Attached(chosen.probe.name, point.mechanism, point.target))

    def _attach_kretprobe(self, event: bytes, fn: bytes) -> None:
        """The kernel's default keeps max(10, 2 x CPUs) tasks inside a
        kretprobed function at once; the rest lose their return, and with it
        the acquisition, the longest waits first: under contention, exactly
        what is measured. BCC makes a probe with room for more through
        tracefs' kprobe_events only (a named event, removed at close, or by
        the next collection if lockprof is killed); where tracefs cannot be
        written (a read-only /sys), the kernel's default through
        perf_event_open, as before."""
        try:
            self._bpf.attach_kretprobe(event=event, fn_name=fn, maxactive=KRETPROBE_MAXACTIVE)
        except Exception:
            self._bpf.attach_kretprobe(event=event, fn_name=fn)

    def _learn_rq_locks(self) -> None:
        """Contention runs: attach lp_learn_rq, which notes each CPU's
        runqueue lock as the scheduler uses it (rq_lock_names). Without the
        BTF offsets or the bare tracepoint (older kernels), those locks keep
        their callers' names."""
        if "contention" not in self.families:
            return
        try:
            self._bpf["lp_rq_locks"]  # compiled only with the offsets
            self._bpf.attach_raw_tracepoint(tp=RQ_TRACEPOINT, fn_name=b"lp_learn_rq")
        except Exception:
            return
        self._rq_learning_until = time.monotonic() + RQ_LEARN_S

    def rq_learning_overdue(self) -> bool:
        """lp_learn_rq is still attached past RQ_LEARN_S: rq_lock_names()
        detaches it now, not at the next interval (-i 60: a minute of a
        program on every enqueue and dequeue)."""
        return self._rq_learning_until is not None and time.monotonic() > self._rq_learning_until

    def rq_lock_names(self) -> dict[int, str]:
        """Address -> name of the runqueue locks learned so far ("rq_lock
        cpu3"). The program is detached once every online CPU's is known,
        or after RQ_LEARN_S: it runs on every enqueue and dequeue."""
        if self._rq_learning_until is not None:
            table = self._bpf["lp_rq_locks"]
            online = online_cpus()
            for cpu in online:
                address = int(table[ctypes.c_int(cpu)].value)
                if address:
                    self._rq_names[address] = f"rq_lock cpu{cpu}"
            if len(self._rq_names) >= len(online) or time.monotonic() > self._rq_learning_until:
                self.stop_rq_learning()
        return self._rq_names

    def stop_rq_learning(self) -> None:
        """Detach lp_learn_rq now, if attached. bench/toggle.py does at once:
        its windows measure the programs a run keeps past its first seconds
        (the learner ran on every enqueue and dequeue in every window, bare
        ones included: ~200 ns a run, 5.4 ms per second on lpbizzy)."""
        if self._rq_learning_until is None:
            return
        try:
            self._bpf.detach_raw_tracepoint(tp=RQ_TRACEPOINT)
        except Exception:
            return  # still attached: rq_lock_names() tries again
        self._rq_learning_until = None

    def close(self) -> None:
        """Detach everything and release the maps. Safe to call twice."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> BpfSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------

    def read_stats(self, ts_ns: int) -> StatsSnapshot:
        # lp_slots names the rows; lp_stats (a per-CPU array) holds them.
        # Retired rows are read until they are freed: their last figures.
        table = self._bpf["lp_stats"]
        snapshot = StatsSnapshot(ts_ns, self._stats_columns)
        width = len(self._stats_columns)
        for (lock, flags, source), index in self._lock_rows():
            # A fresh ctypes buffer per lookup, ours: viewed in place, not
            # copied twice more (bytes(), then a copy); at 256 CPUs a row is
            # 186 KB.
            raw = table.getvalue(ctypes.c_int(index))
            values = np.frombuffer(raw, dtype=np.uint64)
            snapshot.rows[(lock, flags, source, index)] = values.reshape(-1, width)
        return snapshot

    def _lock_rows(self) -> list[tuple[tuple[int, int, int], int]]:
        """((lock id, flags, source), lp_stats index) of every row: those
        lp_slots publishes, and the retired ones not yet freed."""
        named = []
        self.lock_ids.read_begins()
        for key, slot in self._bpf["lp_slots"].items():
            kernel_key = (int(key.lock), int(key.flags), int(key.source), int(key.mm_gen))
            self._kernel_keys[slot.value] = kernel_key
            lock_id = self.lock_ids.id_of(kernel_key[0], kernel_key[3])
            named.append(((lock_id, *kernel_key[1:3]), slot.value))
        return named + [(key, index) for index, key in self._retiring.items()]

    def read_errors(self) -> dict[str, int]:
        table = self._bpf["lp_errors"]
        names = schema.error_names()
        totals = {}
        for index, name in names.items():
            if name == "nr_errors":
                continue
            totals[name] = int(sum(table.getvalue(ctypes.c_int(index))))
        totals[RECURSION_MISSES] = program_recursion_misses(self._bpf)
        return totals

    def _task_row(self, key, value) -> dict:
        return {
            "lock": self.lock_ids.id_of(int(key.lock), int(key.mm_gen)),
            "tid": int(key.tid),
            "tgid": int(key.tgid),
            "flags": int(key.flags),
            "source": int(key.source),
            "comm": bytes(value.comm).rstrip(b"\0").decode(errors="replace"),
            "waits": int(value.waits),
            "wait_ns": int(value.wait_ns),
            "holds": int(value.holds),
            "hold_ns": int(value.hold_ns),
        }

    def read_tasks(self) -> list[dict]:
        """Per-task rows: those retired from the map, then the live ones."""
        retired = [
            {
                "lock": lock,
                "tid": tid,
                "tgid": tgid,
                "flags": flags,
                "source": source,
                "comm": comm.rstrip(b"\0").decode(errors="replace"),
                "waits": waits,
                "wait_ns": wait_ns,
                "holds": holds,
                "hold_ns": hold_ns,
            }
            for lock, tid, tgid, flags, source, waits, wait_ns, holds, hold_ns, comm in (
                self._retired_tasks.read().tolist()
            )
        ]
        live = [self._task_row(key, row.stats) for key, _index, row in self._live_task_rows()]
        return retired + live

    def _live_task_rows(self) -> list:
        """(key, index, row) of each published per-task row: lp_task_slots
        maps a key to its lp_task_rows index (probes/lockprof.bpf.c)."""
        rows = self._bpf["lp_task_rows"]
        found = []
        for key, index in self._bpf["lp_task_slots"].items():
            row = rows[ctypes.c_int(index.value)]
            found.append((key, index.value, row))
        return found

    def retire_dead_tasks(self, alive) -> int:
        """Move the rows of tasks that have exited (alive(tgid, tid, lock
        id) is False; None for a lock never given an id) out of the kernel's
        task map, so that process churn does not
        fill it (a new task's row would be lost as task_map_full). Their
        figures are final: a dead task takes no more locks. The order keeps
        the BPF side consistent: the key is unpublished, the row read, then
        zeroed (a stale cached index no longer matches it), and only then is
        its index freed for another key."""
        slots = self._bpf["lp_task_slots"]
        rows = self._bpf["lp_task_rows"]
        claims = self._bpf["lp_task_slot_keys"]
        dead = [
            (key, index.value)
            for key, index in slots.items()
            if not alive(
                int(key.tgid), int(key.tid), self.lock_ids.find(int(key.lock), int(key.mm_gen))
            )
        ]
        final = []
        for key, index in dead:
            with contextlib.suppress(KeyError):
                del slots[key]
            value = rows[ctypes.c_int(index)].stats
            final.append((
                self.lock_ids.id_of(int(key.lock), int(key.mm_gen)),
                key.tid, key.tgid, key.flags, key.source,
                value.waits, value.wait_ns, value.holds, value.hold_ns, bytes(value.comm),
            ))  # fmt: skip
            rows[ctypes.c_int(index)] = rows.Leaf()
            with contextlib.suppress(KeyError):
                del claims[ctypes.c_uint(index)]
        self._retired_tasks.append(np.array(final, dtype=_RETIRED_TASK))
        return len(dead)

    # -- retiring lock rows -------------------------------------------------------

    def retire_locks(self, victims: list[tuple[tuple[int, int, int], int]]) -> int:
        """Take rows, given as ((lock, flags, source), index), out of the
        kernel's lock map, so that a long run under process churn does not
        fill it (new locks would be lost as stats_map_full). The protocol is
        in probes/lockprof.bpf.c at lp_epoch: each index is tombstoned and its
        key unpublished, then the epoch bumped so that tasks drop the indexes
        they cached. The rows stay in read_stats() until
        free_retired_locks(), at least one round later. Returns how many."""
        fresh = [(key, index) for key, index in victims if index not in self._retiring]
        if not fresh:
            return 0
        slots = self._bpf["lp_slots"]
        claims = self._bpf["lp_slot_keys"]
        tombstone = schema.const("LP_SRC_RETIRED")
        for key, index in fresh:
            address, flags, source, gen = self._kernel_keys[index]
            claims[ctypes.c_uint(index)] = claims.Leaf(address, flags, tombstone, gen)
            with contextlib.suppress(KeyError):
                del slots[slots.Key(address, flags, source, gen)]
            self._retiring[index] = key
        epoch = self._bpf["lp_epoch"]
        zero = ctypes.c_int(0)
        epoch[zero] = ctypes.c_uint(epoch[zero].value + 1)
        self.locks_retired += len(fresh)
        return len(fresh)

    def free_retired_locks(self) -> dict[int, tuple[int, int, int]]:
        """Free the rows retire_locks() took out in an earlier round: call it
        right after a read_stats(), which then held their last figures (no
        program has written them since the epoch bump, a round ago). Their
        callers move to lockprof's temporary file first (read_callers() keeps
        returning them); the rows are zeroed and their indexes freed for new
        keys. Returns the freed index -> key."""
        freed = dict(self._retiring)
        if not freed:
            return freed
        self._keep_retired_callers(freed)
        stats = self._bpf["lp_stats"]
        short = self._bpf["lp_short_callers"]
        named = self._bpf["lp_row_named"]
        claims = self._bpf["lp_slot_keys"]
        for index in freed:
            del stats[ctypes.c_int(index)]  # a per-CPU array: zeroes every CPU's copy
            del short[ctypes.c_int(index)]
            # The row's naming stacks went out with its callers: the same
            # lock back at this index takes them again (lp_wait_stack).
            del named[ctypes.c_int(index)]
            with contextlib.suppress(KeyError):
                del claims[ctypes.c_uint(index)]
            self._kernel_keys.pop(index, None)
        self._retiring.clear()
        return freed

    def _keep_retired_callers(self, freed: dict[int, tuple[int, int, int]]) -> None:
        """Move the caller rows of freed contention rows out of the kernel:
        the short-wait row at each index, and the stack rows of the same
        (lock, flags, mm generation). Stack rows are keyed by lock, not by
        index: when the key is in use again under a new index (an idle lock
        busy again), they stay, counting on for it (deleting them would lose
        the waits counted between the read and the delete). Should the key
        come back between the check and the delete, those few waits are lost
        from the callers only (the aggregates are exact)."""
        contention = schema.const("LP_SRC_CONTENTION")
        # (address, flags, mm_gen) of each freed contention row -> its lock id
        gone = {}
        kept: list[tuple] = []
        short = self._bpf["lp_short_callers"]
        for index, (lock_id, flags, source) in freed.items():
            kernel_key = self._kernel_keys.get(index)
            if source == contention and kernel_key is not None:
                gone[(kernel_key[0], flags, kernel_key[3])] = lock_id
                kept += _kept_caller(lock_id, -1, flags, short.getvalue(ctypes.c_int(index)))
        if not gone:
            return
        in_use = {(int(key.lock), int(key.flags), int(key.mm_gen)) for key in self._bpf["lp_slots"]
                  if int(key.source) == contention}  # fmt: skip
        table = self._bpf["lp_callers"]
        for key in list(table.keys()):
            ident = (int(key.lock), int(key.flags), int(key.mm_gen))
            if ident not in gone or ident in in_use:
                continue
            with contextlib.suppress(KeyError):
                kept += _kept_caller(gone[ident], int(key.stack_id), int(key.flags),
                                     table.getvalue(key))  # fmt: skip
                del table[key]
        self._retired_callers.append(np.array(kept, dtype=_RETIRED_CALLER))

    def read_callers(self, retired: bool = True) -> list[dict]:
        """Contended waits by lock and kernel stack, summed over CPUs (the
        maps are per-CPU). Waits too short for a stack (stack_id -1) are
        counted in lp_short_callers, at their contention lp_stats index;
        they rejoin the other rows here as (lock, -1, flags), as do, with
        retired, the callers of retired rows (free_retired_locks: the live
        view, which shows no retired row, leaves them on disk)."""
        merged: dict[tuple[int, int, int], list[int]] = {}

        def merge(key: tuple[int, int, int], count: int, total: int, longest: int) -> None:
            row = merged.setdefault(key, [0, 0, 0])
            row[0] += count
            row[1] += total
            row[2] = max(row[2], longest)

        def add(lock: int, stack_id: int, flags: int, per_cpu) -> None:
            count, total, longest = _caller_totals(per_cpu)
            if count:
                merge((lock, stack_id, flags), count, total, longest)

        if retired:
            for lock, stack_id, flags, *figures in self._retired_callers.read().tolist():
                merge((lock, stack_id, flags), *figures)
        table = self._bpf["lp_callers"]
        for key in table:
            try:
                per_cpu = table.getvalue(key)
            except KeyError:
                continue
            lock_id = self.lock_ids.id_of(int(key.lock), int(key.mm_gen))
            add(lock_id, int(key.stack_id), int(key.flags), per_cpu)
        short = self._bpf["lp_short_callers"]
        contention = schema.const("LP_SRC_CONTENTION")
        for (lock, flags, source), index in self._lock_rows():
            if source == contention:
                add(lock, -1, flags, short.getvalue(ctypes.c_int(index)))
        return [
            {
                "lock": lock,
                "stack_id": stack_id,
                "flags": flags,
                "count": count,
                "total_ns": total_ns,
                "max_ns": max_ns,
            }
            for (lock, stack_id, flags), (count, total_ns, max_ns) in merged.items()
        ]

    def read_offcpu(self) -> list[dict]:
        if "offcpu" not in self.families:
            return []  # not compiled in
        return [
            {
                "tgid": int(k.tgid),
                "stack_id": int(k.stack_id),
                "comm": bytes(v.comm).rstrip(b"\0").decode(errors="replace"),
                "count": int(v.count),
                "total_ns": int(v.total_ns),
                "max_ns": int(v.max_ns),
            }
            for k, v in self._bpf["lp_offcpu"].items()
        ]

    def read_samples(self) -> list[dict]:
        if "sample" not in self.families:
            return []  # not compiled in
        return [
            {"stack_id": int(k.stack_id), "cpu": int(k.cpu), "count": int(v.value)}
            for k, v in self._bpf["lp_samples"].items()
        ]

    def owner_entries(self) -> dict[tuple[int, int], tuple[int, str]]:
        """(mmap_lock address, mm generation) -> (tgid, comm) of the process
        seen on that mm as its own: the owner map, read once per round and
        handed to read_owners(), lock_owners() and forget_owners()."""
        return {
            (int(k.lock), int(k.mm_gen)): (
                int(v.tgid),
                bytes(v.comm).rstrip(b"\0").decode(errors="replace"),
            )
            for k, v in self._bpf["lp_owners"].items()
        }

    def read_owners(self, entries: dict | None = None) -> dict[int, tuple[int, str]]:
        """mmap_lock address -> (tgid, comm) of its latest mm's process
        (entries: owner_entries(), if already read)."""
        latest = {int(k.value): int(v.value) for k, v in self._bpf["lp_mm_gens"].items()}
        found: dict[int, tuple[int, tuple[int, str]]] = {}
        for (address, gen), owner in (self.owner_entries() if entries is None else entries).items():
            rank = 1 << 32 if latest.get(address) == gen else gen
            if address not in found or rank > found[address][0]:
                found[address] = (rank, owner)
        return {address: owner for address, (_rank, owner) in found.items()}

    def lock_owners(
        self, forgotten: bool = False, entries: dict | None = None
    ) -> dict[int, tuple[int, str | None]]:
        """Lock id -> (owner tgid, comm) of every mmap_lock id whose process
        is known; with forgotten, also those of exited processes that
        forget_owners() took out (the recording names their rows).
        entries: owner_entries(), if already read."""
        for (address, gen), (tgid, comm) in (
            self.owner_entries() if entries is None else entries
        ).items():
            lock_id = self.lock_ids.find(address, gen)
            if lock_id is not None:
                self.lock_ids.set_owner(lock_id, tgid, comm)
        owners: dict[int, tuple[int, str | None]] = {}
        if forgotten:
            for lock_id, _address, tgid, comm in self._forgotten.read().tolist():
                if tgid:  # 0: its process was never seen
                    owners[lock_id] = (tgid, comm.rstrip(b"\0").decode(errors="replace") or None)
        owners.update(self.lock_ids.owned())  # an address without generations: the latest
        return owners

    def lock_addresses(self, forgotten: bool = False) -> dict[int, int]:
        """Lock id -> address, for the ids that are not their own address
        (with forgotten, also those of exited processes)."""
        found = self.lock_ids.addresses()
        if forgotten:
            for lock_id, address, _tgid, _comm in self._forgotten.read().tolist():
                if lock_id != address:
                    found[lock_id] = address
        return found

    def target_lock_id(self) -> int:
        """The lock id of the target's mmap_lock (its address while no row
        of it has been seen)."""
        config = self._bpf["lp_config"][ctypes.c_int(0)]
        address, gen = int(config.target_lock), int(config.target_gen)
        found = self.lock_ids.find(address, gen)
        return address if found is None else found

    def forget_owners(self, alive, entries: dict | None = None) -> int:
        """Forget the processes that have exited (alive(tgid) is False):
        their entries in the kernel's owner maps (which would otherwise
        fill under process churn), and their lock ids once no kernel row
        uses them (kept on disk for the recording). Call it after the lock
        rows of exited owners were retired and freed (entries:
        owner_entries(), if already read). Returns how many ids were
        forgotten."""
        owners = self._bpf["lp_owners"]
        gens = self._bpf["lp_mm_gens"]
        entries = self.owner_entries() if entries is None else entries
        dead, self._owners_unread = dead_owners(
            entries, alive, self.lock_ids.find, self._owners_unread
        )
        for address, gen, lock_id in dead:
            if lock_id is not None:
                self.lock_ids.set_owner(lock_id, *entries[(address, gen)])
            with contextlib.suppress(KeyError):
                # The address's latest mm, unless a new one just took it (a
                # contended wait there by another process's task then counts
                # for the address's first mm: rare, and only until its own
                # tasks are seen). Before the owner: without x86's ids, a
                # latest generation with no owner is one being built, which
                # a new mm at the address would take (lp_learn_gen).
                if int(gens[gens.Key(address)].value) == gen:
                    del gens[gens.Key(address)]
            with contextlib.suppress(KeyError):
                del owners[owners.Key(address, gen)]
        # Ids of the rows read and not yet freed (each was handed out when
        # read), and of rows perhaps not read yet.
        in_use = {self.lock_ids.id_of(key[0], key[3]) for key in self._kernel_keys.values()}
        in_use |= self.lock_ids.since_read()
        gone = self.lock_ids.to_forget(in_use, alive)
        rows = [self.lock_ids.forget(lock_id) for lock_id in gone]
        self._forgotten.append(
            np.array(
                [
                    (lock_id, address, tgid or 0, (comm or "").encode()[:16])
                    for lock_id, (address, tgid, comm) in zip(gone, rows, strict=True)
                ],
                dtype=_FORGOTTEN_OWNER,
            )
        )
        return len(gone)

    def run_stats(self) -> dict[str, tuple[int, int]]:
        """BPF function -> (runs, run time ns), while run_stats_enabled()."""
        return program_run_stats(self._bpf)

    def target_lock(self) -> int:
        return int(self._bpf["lp_config"][ctypes.c_int(0)].target_lock)

    def learn_target_lock(self, tgid: int) -> None:
        """Make a running target's mmap_lock known now, not when the target
        next takes it: a target asleep for the whole run never does, and
        the other tasks taking its lock (/proc/N readers, khugepaged) would
        go uncounted. Reading /proc/N/cmdline takes the target's mmap_lock
        from lockprof's own task, where the armed probes recognise the mm
        by its owner (probes/lockprof.bpf.c lp_learn_idle_target; kernels
        with CONFIG_MEMCG; elsewhere it stays unknown until the target
        takes it). With --follow, the same for the descendants alive at
        attach.

        A read waits for the lock: a process holding it for write for
        seconds (what the user may be here to see) would hold up the start,
        with only SIGKILL to end it. The probes learn the lock as the read
        starts waiting, so a daemon thread reads and the start goes on."""

        def look() -> None:
            for pid in (tgid, *self._followed_at_start):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    cmdline.read(1)  # one page's copy takes the lock once

        reader = threading.Thread(target=look, name="lockprof-learn", daemon=True)
        reader.start()
        reader.join(LEARN_READ_WAIT_S)

    def stack_frames(self, stack_id: int) -> list[str]:
        """Kernel frames of a stack, innermost first, as function+0xoffset."""
        if stack_id < 0:
            return []
        stacks = self._bpf["lp_stacks"]
        try:
            # Not StackTrace.walk(): it reads up to 127 frames, these hold
            # LP_STACK_DEPTH (a full one would raise IndexError there).
            addresses = list(itertools.takewhile(bool, stacks[stacks.Key(stack_id)].ip))
        except KeyError:
            return []
        return strip_tracing_frames([self._frame_name(addr) for addr in addresses])

    def _frame_name(self, address: int) -> str:
        """function+0xoffset, from lockprof's own table of kallsyms (read
        once, when the first stack is named: lockprof's programs are loaded
        by then, and their frames are named too), or BCC's where kallsyms
        hides addresses."""
        text_symbols = self.read_text_symbols()
        if len(text_symbols):
            return text_symbols.frame(address)
        return self._bpf.ksym(address, show_offset=True).decode(errors="replace")

    def read_text_symbols(self) -> ksyms.TextSymbols:
        """lockprof's table of kallsyms' functions, read the first time."""
        if self._text_symbols is None:
            self._text_symbols = ksyms.TextSymbols()
        return self._text_symbols

    # -- event stream -----------------------------------------------------------

    def events_pending(self) -> int:
        """Events received and not yet taken."""
        return len(self._events)

    def poll_events(self, timeout_ms: int) -> None:
        """Wait timeout_ms, then drain the ring. The BPF side submits without
        waking us (one wakeup per event cost a context switch per event), so
        this sleeps rather than blocking in epoll."""
        deadline = time.monotonic() + timeout_ms / 1000
        pause = _RING_CHECK_S
        while self._ring is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Glance at the fill level every 10 ms (two loads from the
            # mapping) and drain at 1/8 full: a burst is drained before the
            # ring overflows. Right after a drain, glance again after 1 ms.
            # Draining at 1/8 rather than 1/4 leaves more of the ring's room
            # (40 ms of the 3M events/s two storms offer on two CPUs) for
            # the moments lockprof waits for a CPU.
            time.sleep(min(left, pause))
            pause = _RING_CHECK_S
            if self._ring.fill() > self._ring.size // 8:
                self.drain_events()
                pause = _RING_BUSY_CHECK_S
        self.drain_events()

    def drain_events(self) -> None:
        if self._ring is None:
            return
        batch = self._ring.read()
        room = max(self.max_events - len(self._events), 0)
        if len(batch) > room:
            self.events_dropped_userspace += len(batch) - room
            batch = batch[:room]
        self._events.append(self._with_lock_ids(batch))

    def _with_lock_ids(self, events: np.ndarray) -> np.ndarray:
        """Events with their lock turned into its lock id, as they arrive:
        the ids of exited processes are forgotten later (see lockids.py).
        Hash-based factorizing keeps this to a few ms per 100k events."""
        if len(events) == 0 or not events["mm_gen"].any():
            return events
        import pandas as pd  # loaded by now; not at start-up (compile_early)

        lock_codes, locks = pd.factorize(events["lock"])
        gen_codes, gens = pd.factorize(events["mm_gen"])
        width = len(gens)
        pair_codes, pairs = pd.factorize(lock_codes.astype(np.int64) * width + gen_codes)
        pair_locks = np.asarray(locks, dtype=np.uint64)[pairs // width]
        pair_gens = np.asarray(gens, dtype=np.uint64)[pairs % width]
        ids = np.array(
            [
                self.lock_ids.id_of(int(a), int(o))
                for a, o in zip(pair_locks, pair_gens, strict=True)
            ],
            dtype=np.uint64,
        )
        if (ids == pair_locks).all():
            return events
        events = events.copy()
        events["lock"] = ids[pair_codes]
        return events

    def take_events(self, chunk_rows: int) -> Iterator[np.ndarray]:
        """The events so far, as structured arrays (fields of struct
        lp_event) of at most chunk_rows each; the spool is emptied after."""
        yield from self._events.chunks(chunk_rows)
        self._events.clear()


class RingReader:
    """Bulk consumer of a BPF ring buffer of fixed-size records, by mmap.

    BCC's consumer calls a Python function per record (microseconds each);
    this reads every record between the consumer and producer positions as
    one numpy array. Layout (kernel/bpf/ringbuf.c): page 0 holds the
    consumer position (ours to write), page 1 the producer position, then
    the data pages, mapped twice in a row so that a record that wraps is
    contiguous. Each record is an 8-byte header (length with BUSY and
    DISCARD bits, page offset) and the data, rounded up to 8 bytes.

    Memory ordering: x86 keeps loads in order and stores in order, which is
    what the acquire/release pairs of libbpf's consumer need; Python issues
    no barriers, so other architectures would need them.
    """

    BUSY = 1 << 31
    DISCARD = 1 << 30

    def __init__(self, map_fd: int, size: int, event_dtype: np.dtype):
        page = mmap.PAGESIZE
        self._mask = size - 1
        self.size = size
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._data = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._page = page
        record = 8 + event_dtype.itemsize
        self._record_size = (record + 7) & ~7
        self._dtype = np.dtype(
            {
                "names": ["len", "pg_off", "event"],
                "formats": ["<u4", "<u4", event_dtype],
                "offsets": [0, 4, 8],
                "itemsize": self._record_size,
            }
        )
        self._event_len = event_dtype.itemsize
        # The two positions as aligned 8-byte words, read and written whole:
        # struct.pack_into("<Q") stores byte by byte, and the kernel could
        # read a half-written consumer position, up to 2^56 bytes behind:
        # the ring looked full and events were lost (~60 a second at 2.6M
        # events/s), as a torn read of the producer's could run ahead of it.
        self._consumer_pos = np.frombuffer(self._consumer, dtype=np.uint64, count=1)
        self._producer_pos = np.frombuffer(self._data, dtype=np.uint64, count=1)

    def fill(self) -> int:
        """Bytes written by the kernel and not yet consumed."""
        return int(self._producer_pos[0]) - int(self._consumer_pos[0])

    def read(self) -> np.ndarray:
        consumer = int(self._consumer_pos[0])
        producer = int(self._producer_pos[0])
        if producer <= consumer:
            return np.zeros(0, dtype=self._dtype["event"])
        count = (producer - consumer) // self._record_size
        offset = self._page + (consumer & self._mask)
        records = np.frombuffer(self._data, dtype=self._dtype, count=count, offset=offset)
        lengths = records["len"]
        # Stop at the first record still being written (or of another size:
        # lockprof never discards, and all its records are one struct).
        size_bits = lengths & np.uint32(~self.DISCARD & 0xFFFFFFFF)
        bad = np.flatnonzero(size_bits != self._event_len)  # BUSY is a size bit here
        if bad.size:
            records = records[: bad[0]]
        kept = (records["len"] & self.DISCARD) == 0
        # One copy out of the ring: boolean indexing copies already, and
        # lockprof never discards, so nearly always every record is kept.
        events = records["event"].copy() if kept.all() else records["event"][kept]
        consumed = consumer + len(records) * self._record_size
        self._consumer_pos[0] = consumed  # one 8-byte store
        return events

    def close(self) -> None:
        del self._consumer_pos, self._producer_pos  # views of the mappings
        self._consumer.close()
        self._data.close()


# Frames of the tracing machinery itself, above the code that hit the tracepoint.
_TRACING_FRAMES = (
    "bpf_prog_",
    "bpf_trace_run",
    "__bpf_trace_",
    "__traceiter_",
    "trace_contention",
    "bpf_get_stackid",
    "perf_trace_",
    "__trace_",
)


@contextlib.contextmanager
def run_stats_enabled() -> Iterator[None]:
    """Have the kernel count run time and runs of every BPF program while
    inside (BPF_ENABLE_STATS: ended by closing its fd, so a crash cannot
    leave it on, unlike the kernel.bpf_stats_enabled sysctl)."""
    import ctypes.util

    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        libbpf = ctypes.CDLL(name, use_errno=True)
        fd = libbpf.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
    except (OSError, AttributeError) as exc:
        raise LockprofError(f"cannot enable BPF run-time stats ({name}: {exc})") from None
    if fd < 0:
        raise LockprofError(f"cannot enable BPF run-time stats: {os.strerror(-fd)}")
    try:
        yield
    finally:
        os.close(fd)


def _program_fdinfo(bpf_object) -> dict[str, dict[str, str]]:
    """BPF function name -> the fields of its program's /proc/self/fdinfo,
    for every program a BCC object has loaded."""
    infos = {}
    for name, fn in bpf_object.funcs.items():
        fields = {}
        try:
            with open(f"/proc/self/fdinfo/{fn.fd}") as info:
                for line in info:
                    key, _, value = line.partition(":")
                    fields[key.strip()] = value.strip()
        except OSError:
            continue
        infos[name.decode() if isinstance(name, bytes) else str(name)] = fields
    return infos


def program_run_stats(bpf_object) -> dict[str, tuple[int, int]]:
    """BPF function name -> (runs, run time ns) of a loaded BCC object's
    programs, from /proc/self/fdinfo (kept only while stats are enabled)."""
    return {
        label: (int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0)))
        for label, fields in _program_fdinfo(bpf_object).items()
    }


def program_recursion_misses(bpf_object) -> int:
    """Runs of a BCC object's programs that the kernel skipped: a program
    does not re-enter itself on a CPU, so an event that fires while it runs
    there (an interrupt's contended spinlock during lp_contention_end) is not
    seen. In fdinfo since 5.12; raw tracepoint programs are skipped and
    counted on recent kernels (6.18 here), older ones nested them instead.
    0 where fdinfo does not say."""
    return sum(
        int(fields.get("recursion_misses", 0)) for fields in _program_fdinfo(bpf_object).values()
    )


def empty_programs(events: list[str]):
    """Empty raw-tracepoint programs on events ("category:event"): the
    floor any tracing of those events costs. Returns the BCC object; call
    .cleanup() when done."""
    bcc = import_bcc()
    text = "\n".join(
        f"int floor_{i}(struct bpf_raw_tracepoint_args *ctx) {{ return 0; }}"
        for i in range(len(events))
    )
    with _captured_stderr():
        prog = bcc.BPF(text=text.encode(), cflags=["-w"])
    try:
        for i, event in enumerate(events):
            prog.attach_raw_tracepoint(
                tp=event.split(":", 1)[1].encode(), fn_name=f"floor_{i}".encode()
            )
    except Exception as exc:
        prog.cleanup()
        raise LockprofError(f"cannot attach to {event}: {exc}") from None
    return prog


def user_symbols(path: str) -> set[str]:
    """Function symbols of an ELF binary or library (for lock spec checks)."""
    bcc = import_bcc()
    try:
        found = bcc.BPF.get_user_functions_and_addresses(path.encode(), b".*")
    except Exception as exc:
        raise LockprofError(f"cannot read symbols of {path}: {exc}") from None
    return {name.decode(errors="replace") for name, _addr in found}


def strip_tracing_frames(frames: list[str]) -> list[str]:
    """Drop the leading BPF/tracepoint frames of a stack taken in a probe."""
    start = 0
    while start < len(frames) and frames[start].startswith(_TRACING_FRAMES):
        start += 1
    return frames[start:]


def compile_check(text: str, attach: str | None = None, **attach_args) -> None:
    """Compile a tiny program and optionally attach one function (for doctor)."""
    bcc = import_bcc()
    with _captured_stderr() as output:
        try:
            prog = bcc.BPF(text=text.encode(), cflags=["-w"])
        except Exception as exc:
            failure: Exception | None = exc
            prog = None
        else:
            failure = None
    if failure is not None or prog is None:
        raise LockprofError(_first_error(output[0]) if output and output[0] else str(failure))
    try:
        if attach is not None:
            getattr(prog, attach)(**attach_args)
    finally:
        prog.cleanup()
