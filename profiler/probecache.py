"""The compiled-probe cache: each BPF program's instructions, kept on disk.

BCC has no way to save a compiled object: every run compiled
probes/lockprof.bpf.c again, 1.3-1.7 s of a ~3 s start-up on a slow guest.
So after a compile lockprof keeps each program's instructions here, with the
name of the map each of its map loads refers to. A later run with the same
source, flags, kernel and BCC compiles only the maps (LP_MAPS_ONLY, ~0.5 s),
points each map load at the new map's fd and loads the programs from here.

No bcc here: profiler/bpf.py reads the compiled module and loads the
programs; this module is the file format and the relocation, testable
without root.

Trust: a root process loads these instructions into the kernel, so a cache
directory or file that another user owns, or that group or others may write,
is never read.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from profiler.errors import LockprofError

FORMAT = 1
CACHE_DIR_ENV = "LOCKPROF_CACHE_DIR"  # a directory, or "off"
DEFAULT_DIR = Path("/var/cache/lockprof/probes")
KEEP_ENTRIES = 32  # the least recently used beyond this are removed
# A key whose cached path failed compiles without writing an entry for this
# long; then one entry is tried again (the failure may have been passing:
# memory short for the maps, say).
REFUSED_FOR_S = 86400.0

# struct bpf_insn: u8 code, u8 dst_reg:4 | src_reg:4, s16 off, s32 imm
_INSN = struct.Struct("<BBhi")
_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_PSEUDO_MAP_FD = 1  # its imm is a map's fd


# The BPF program type (bcc.BPF's constant) of each context a lockprof
# program takes: a cached run loads every program of its entry as this
# type before attaching, so that one the kernel refuses falls back to a
# compile.
CONTEXT_TYPES = {
    "bpf_raw_tracepoint_args": "RAW_TRACEPOINT",
    "pt_regs": "KPROBE",
    "bpf_perf_event_data": "PERF_EVENT",
}
_PROGRAM_LINE = re.compile(r"^LP_PROGRAM int (\w+)\(struct (\w+) \*ctx\)", re.MULTILINE)


def program_contexts(source_text: str) -> dict[str, str]:
    """Each program of probes/lockprof.bpf.c and the struct its ctx points to."""
    return dict(_PROGRAM_LINE.findall(source_text))


@dataclass(frozen=True)
class CachedProgram:
    insns: bytes
    # (instruction index, map name) of every ld_imm64 that loads a map's fd
    map_loads: tuple[tuple[int, str], ...]
    # (BPF program type, attach type) it was loaded as by the run that wrote
    # the entry; None if that run never loaded it (loaded when asked)
    loaded_as: tuple[int, int] | None = None


@dataclass(frozen=True)
class CachedProbes:
    key: str
    license: str
    kern_version: int
    programs: dict[str, CachedProgram]
    # map name -> (BCC map type, key size, value size): a maps-only compile
    # must have built the same maps for its fds to stand in for these
    maps: dict[str, tuple[int, int, int]]


def _wide_loads(insns: bytes) -> Iterator[tuple[int, int, int]]:
    """(instruction index, source register field, imm) of each ld_imm64."""
    index = 0
    count = len(insns) // _INSN.size
    while index < count:
        code, regs, _off, imm = _INSN.unpack_from(insns, index * _INSN.size)
        if code == _LD_IMM64:
            yield index, regs >> 4, imm
            index += 2
        else:
            index += 1


def map_loads(insns: bytes, map_names: Mapping[int, str]) -> tuple[tuple[int, str], ...] | None:
    """The map each map load of a compiled program refers to, by its fd at
    compile time (map_names: fd -> name). None if an ld_imm64 refers to
    anything else (a map value, a BTF id, an fd no map has): such a program
    cannot be relocated, so nothing is cached."""
    found: list[tuple[int, str]] = []
    for index, source, imm in _wide_loads(insns):
        if source == _PSEUDO_MAP_FD and imm in map_names:
            found.append((index, map_names[imm]))
        elif source != 0:  # 0: a plain 64-bit constant
            return None
    return tuple(found)


def relocated(program: CachedProgram, map_fds: Mapping[str, int]) -> bytes:
    """The program's instructions with each map load pointing at map_fds'
    fd of its map (KeyError if a map is missing)."""
    insns = bytearray(program.insns)
    for index, name in program.map_loads:
        code, regs, off, _old_fd = _INSN.unpack_from(insns, index * _INSN.size)
        if code != _LD_IMM64 or regs >> 4 != _PSEUDO_MAP_FD:
            raise ValueError(f"instruction {index} is not a map load")
        _INSN.pack_into(insns, index * _INSN.size, code, regs, off, map_fds[name])
    return bytes(insns)


def cache_key(source: bytes, header: bytes, flags: Iterable[str], toolchain: str) -> str:
    """What the compiled instructions depend on: the source and header, the
    -D flags (BTF offsets, map sizes, families), and the toolchain string
    (BCC's version and library, the running kernel)."""
    digest = hashlib.sha256()
    flag_text = "\0".join(flags).encode()
    for part in (f"format {FORMAT}".encode(), source, header, flag_text, toolchain.encode()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def cache_dir() -> Path | None:
    """Where entries live: $LOCKPROF_CACHE_DIR, else /var/cache/lockprof/probes;
    None if that variable is "off" or empty, or if lockprof does not run as
    root (every run compiles). Not for a user given CAP_BPF and CAP_PERFMON:
    the entries would be theirs, so any process of theirs without those
    capabilities could write instructions that lockprof, with them, loads."""
    given = os.environ.get(CACHE_DIR_ENV)
    if os.geteuid() != 0 or (given is not None and given.strip() in ("", "off")):
        return None
    return DEFAULT_DIR if given is None else Path(given)


def off_reason() -> str:
    """Why cache_dir() is None (lockprof doctor)."""
    if os.geteuid() != 0:
        return "not root: kept for root's runs only"
    return f"{CACHE_DIR_ENV}=off"


# An entry's file name: its key (sha256, hex) and .json. Nothing else in the
# directory is ever read, replaced or removed.
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.json")
# A writer's temporary file: renamed to its entry's name when whole; one a
# killed writer left is removed after an hour.
_TEMPORARY_PREFIX = ".entry-"
_STALE_TEMPORARY_S = 3600.0


def _owned_and_closed(st: os.stat_result) -> bool:
    """Owned by this user and writable by no one else."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _closed_ancestor(st: os.stat_result) -> bool:
    """A directory above the cache's that no one but root and this user can
    change: theirs, and writable by no one else unless sticky (as /tmp:
    others cannot rename what is not theirs)."""
    if st.st_uid not in (0, os.geteuid()):
        return False
    return not st.st_mode & 0o022 or bool(st.st_mode & stat.S_ISVTX)


def _safe_ancestors(dir_fd: int) -> bool:
    """Every directory above the opened one, walked up through ".." from it
    (not the path as written: a symlink or ".." in it leads elsewhere), is
    a closed ancestor, up to the root."""
    current = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        while True:
            st = os.fstat(current)
            if not _closed_ancestor(st):
                return False
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=current)
            above = os.fstat(parent)
            if (above.st_dev, above.st_ino) == (st.st_dev, st.st_ino):
                os.close(parent)
                return True  # "/": its ".." is itself
            os.close(current)
            current = parent
    finally:
        os.close(current)


@contextlib.contextmanager
def _opened_dir(directory: Path) -> Iterator[int | None]:
    """An fd of the directory if it can be trusted (not a symlink, owned by
    this user, written by no one else, safe ancestors), else None. Every
    entry is opened relative to it, so the directory checked is the one
    used."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        yield None
        return
    try:
        trusted = _owned_and_closed(os.fstat(fd)) and _safe_ancestors(fd)
    except OSError:
        trusted = False
    try:
        yield fd if trusted else None
    finally:
        os.close(fd)


def _nearest_existing(directory: Path) -> Path:
    for path in (directory, *directory.parents):
        if path.exists() or path.is_symlink():
            return path
    return Path("/")


def _may_make(directory: Path) -> bool:
    """The missing directory can be made where no one else can change it:
    its nearest existing ancestor is a closed ancestor, as are those above."""
    existing = _nearest_existing(Path(os.path.abspath(directory)))
    try:
        fd = os.open(existing, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return _closed_ancestor(os.fstat(fd)) and _safe_ancestors(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def _entry_name(key: str) -> str:
    return f"{key}.json"


def _read(key: str, directory: Path | None, touch: bool = False) -> object:
    """The parsed JSON of the key's file, or None: no cache, no such file,
    not trusted, or not JSON. touch: mark it the most recently used (kept
    longest)."""
    directory = directory if directory is not None else cache_dir()
    if directory is None:
        return None
    with _opened_dir(directory) as dir_fd:
        if dir_fd is None:
            return None
        try:
            fd = os.open(_entry_name(key), os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as entry:
                if not _owned_and_closed(os.fstat(entry.fileno())):
                    return None
                data = json.loads(entry.read())
        except Exception:  # whatever a damaged file makes the parser raise
            return None
        if touch:
            with contextlib.suppress(OSError):
                os.utime(_entry_name(key), dir_fd=dir_fd)
    return data


def load(key: str, directory: Path | None = None, touch: bool = True) -> CachedProbes | None:
    """The entry for this key, or None: none, unreadable, damaged in any way,
    made for another key, a refused key's marker, or not trusted. touch:
    mark it used (pruning keeps the most recently used); lockprof doctor
    only looks."""
    data = _read(key, directory, touch=touch)
    if data is None:
        return None
    try:
        probes = _decode(data)  # type: ignore[arg-type]
    except Exception:  # whatever a damaged entry makes the decoder raise
        return None
    return probes if probes.key == key else None


def refused(key: str, directory: Path | None = None) -> bool:
    """The cached path failed for this key (mark_refused): a run compiles
    and writes no entry for it, rather than writing one that fails again."""
    data = _read(key, directory)
    if not isinstance(data, dict) or data.get("refused") is not True or data.get("key") != key:
        return False
    try:
        return time.time() - float(data["refused_at"]) < REFUSED_FOR_S
    except (KeyError, TypeError, ValueError):
        return False


def mark_refused(key: str, directory: Path | None = None) -> None:
    """Put a marker in place of an entry whose cached path failed (its
    maps-only compile, its maps, a program the kernel refused): the same
    failure would otherwise be written back after each run's compile and
    paid again by the next run. Pruned as entries are."""
    with contextlib.suppress(OSError):
        marker = {"format": FORMAT, "key": key, "refused": True, "refused_at": time.time()}
        _write(json.dumps(marker), key, directory)


def _decode(data: dict) -> CachedProbes:
    if data["format"] != FORMAT:
        raise ValueError("another format")
    programs = {}
    for name, entry in data["programs"].items():
        program = CachedProgram(
            base64.b64decode(entry["insns"], validate=True),
            tuple((int(index), str(map_name)) for index, map_name in entry["map_loads"]),
            _loaded_as(entry.get("loaded_as")),
        )
        _check_map_loads(program)
        programs[str(name)] = program
    maps = {str(name): (int(t), int(k), int(v)) for name, (t, k, v) in data["maps"].items()}
    for program in programs.values():
        if any(map_name not in maps for _index, map_name in program.map_loads):
            raise ValueError("a map load names a map the entry does not have")
    key, license_, kern_version = str(data["key"]), str(data["license"]), int(data["kern_version"])
    return CachedProbes(key, license_, kern_version, programs, maps)


def _check_map_loads(program: CachedProgram) -> None:
    """The listed map loads are exactly the program's loads of an fd: one
    left out would keep the fd of the run that wrote the entry."""
    if not program.insns or len(program.insns) % _INSN.size:
        raise ValueError("not whole instructions")
    loads = [(index, source) for index, source, _imm in _wide_loads(program.insns) if source]
    if any(source != _PSEUDO_MAP_FD for _index, source in loads):
        raise ValueError("a load of something other than a map's fd")
    if [index for index, _source in loads] != [index for index, _name in program.map_loads]:
        raise ValueError("the map loads listed are not the program's")


def _loaded_as(value) -> tuple[int, int] | None:
    if value is None:
        return None
    prog_type, attach_type = value
    return int(prog_type), int(attach_type)


def store(probes: CachedProbes, directory: Path | None = None) -> Path | None:
    """Write the entry (atomically: a reader sees the old file or the new
    one) and drop the least recently used beyond KEEP_ENTRIES. None if
    caching is off or the directory cannot be trusted; raises OSError if it
    cannot be written."""
    data = {
        "format": FORMAT,
        "key": probes.key,
        "license": probes.license,
        "kern_version": probes.kern_version,
        "programs": {
            name: {
                "insns": base64.b64encode(p.insns).decode(),
                "map_loads": list(p.map_loads),
                "loaded_as": p.loaded_as,
            }
            for name, p in probes.programs.items()
        },
        "maps": probes.maps,
    }
    return _write(json.dumps(data), probes.key, directory)


def _write(text: str, key: str, directory: Path | None) -> Path | None:
    directory = directory if directory is not None else cache_dir()
    if directory is None:
        return None
    if not directory.exists():
        if not _may_make(directory):
            return None
        _make_dirs(directory)
    with _opened_dir(directory) as dir_fd:
        if dir_fd is None:
            return None
        temporary = f"{_TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(temporary, _entry_name(key), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise
        _prune(dir_fd)
    return directory / _entry_name(key)


def _make_dirs(directory: Path) -> None:
    """Create the directory (0700) and any missing parent (0755: not left
    to the umask, which may be 0): those below its nearest existing one."""
    directory = Path(os.path.abspath(directory))
    chain = [directory, *directory.parents]
    missing = chain[: chain.index(_nearest_existing(directory))]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700 if path == directory else 0o755)


def unusable(directory: Path) -> str | None:
    """Why entries cannot be kept in the directory (lockprof doctor), or
    None: usable, or absent and safe to make at the first write."""
    if not directory.exists() and not directory.is_symlink():
        if _may_make(directory):
            return None
        return "cannot be made where only root could change it: every run compiles"
    with _opened_dir(directory) as dir_fd:
        if dir_fd is None:
            return (
                "not a directory of this user's that only it may write, "
                "under directories others cannot replace: every run compiles"
            )
    return None


def usable_dir() -> Path:
    """The directory entries are kept in (lockprof precompile); a
    LockprofError saying why there is none: the cache is off, or its
    directory cannot hold entries."""
    directory = cache_dir()
    if directory is None:
        raise LockprofError(f"the compiled-probe cache is off ({off_reason()})")
    reason = unusable(directory)
    if reason is not None:
        raise LockprofError(f"the compiled-probe cache at {directory}: {reason}")
    return directory


def entries(directory: Path) -> int:
    """How many entries the directory holds (lockprof doctor)."""
    with _opened_dir(directory) as dir_fd:
        if dir_fd is None:
            return 0
        return sum(1 for name in os.listdir(dir_fd) if _ENTRY_NAME.fullmatch(name))


def _prune(dir_fd: int) -> None:
    dated = []
    now = time.time()
    for name in os.listdir(dir_fd):
        with contextlib.suppress(OSError):
            mtime = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime
            if _ENTRY_NAME.fullmatch(name):
                dated.append((mtime, name))
            elif name.startswith(_TEMPORARY_PREFIX) and now - mtime > _STALE_TEMPORARY_S:
                os.unlink(name, dir_fd=dir_fd)  # a writer killed mid-write
    dated.sort(reverse=True)
    for _mtime, name in dated[KEEP_ENTRIES:]:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
