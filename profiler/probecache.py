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
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

FORMAT = 1
CACHE_DIR_ENV = "LOCKPROF_CACHE_DIR"  # a directory, or "off"
DEFAULT_DIR = Path("/var/cache/lockprof/probes")
KEEP_ENTRIES = 32  # the least recently used beyond this are removed

# struct bpf_insn: u8 code, u8 dst_reg:4 | src_reg:4, s16 off, s32 imm
_INSN = struct.Struct("<BBhi")
_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_PSEUDO_MAP_FD = 1  # its imm is a map's fd


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


def map_loads(insns: bytes, map_names: Mapping[int, str]) -> tuple[tuple[int, str], ...] | None:
    """The map each map load of a compiled program refers to, by its fd at
    compile time (map_names: fd -> name). None if an ld_imm64 refers to
    anything else (a map value, a BTF id, an fd no map has): such a program
    cannot be relocated, so nothing is cached."""
    found: list[tuple[int, str]] = []
    index = 0
    count = len(insns) // _INSN.size
    while index < count:
        code, regs, _off, imm = _INSN.unpack_from(insns, index * _INSN.size)
        if code != _LD_IMM64:
            index += 1
            continue
        source = regs >> 4
        if source == _PSEUDO_MAP_FD and imm in map_names:
            found.append((index, map_names[imm]))
        elif source != 0:  # 0: a plain 64-bit constant
            return None
        index += 2
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
    None if that variable is "off" or empty (every run compiles)."""
    given = os.environ.get(CACHE_DIR_ENV)
    if given is None:
        return DEFAULT_DIR
    if given.strip() in ("", "off"):
        return None
    return Path(given)


def _trusted(path: Path) -> bool:
    """Owned by this user and writable by no one else."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _entry(directory: Path, key: str) -> Path:
    return directory / f"{key}.json"


def load(key: str, directory: Path | None = None) -> CachedProbes | None:
    """The entry for this key, or None: none, unreadable, corrupt, made for
    another key, or not trusted."""
    directory = directory if directory is not None else cache_dir()
    if directory is None or not _trusted(directory):
        return None
    path = _entry(directory, key)
    if not _trusted(path):
        return None
    try:
        probes = _decode(json.loads(path.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if probes.key != key:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used: kept longest
    return probes


def _decode(data: dict) -> CachedProbes:
    if data["format"] != FORMAT:
        raise ValueError("another format")
    programs = {
        name: CachedProgram(
            base64.b64decode(entry["insns"], validate=True),
            tuple((int(index), str(map_name)) for index, map_name in entry["map_loads"]),
            _loaded_as(entry.get("loaded_as")),
        )
        for name, entry in data["programs"].items()
    }
    maps = {name: (int(t), int(k), int(v)) for name, (t, k, v) in data["maps"].items()}
    key, license_, kern_version = str(data["key"]), str(data["license"]), int(data["kern_version"])
    return CachedProbes(key, license_, kern_version, programs, maps)


def _loaded_as(value) -> tuple[int, int] | None:
    if value is None:
        return None
    prog_type, attach_type = value
    return int(prog_type), int(attach_type)


def store(probes: CachedProbes, directory: Path | None = None) -> Path | None:
    """Write the entry (atomically: a reader sees the old file or the new
    one) and drop the least recently used beyond KEEP_ENTRIES. None if
    caching is off or the directory cannot be used; raises OSError if it
    cannot be written."""
    directory = directory if directory is not None else cache_dir()
    if directory is None:
        return None
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _trusted(directory):
        return None
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
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".entry-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        path = _entry(directory, probes.key)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _prune(directory)
    return path


def discard(key: str, directory: Path | None = None) -> None:
    """Remove an entry whose programs the kernel refused."""
    directory = directory if directory is not None else cache_dir()
    if directory is not None:
        with contextlib.suppress(OSError):
            _entry(directory, key).unlink()


def _prune(directory: Path) -> None:
    entries = []
    for path in directory.glob("*.json"):
        with contextlib.suppress(OSError):
            entries.append((path.stat().st_mtime, path))
    entries.sort(reverse=True)
    for _mtime, path in entries[KEEP_ENTRIES:]:
        with contextlib.suppress(OSError):
            path.unlink()
