"""Where a recording will go: checked before collection starts (light: no
pandas, so that it runs before the probes are compiled, cli/common.py)."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from profiler.errors import LockprofError

# A recording with empty tables takes about 40 KiB: refuse to start with
# less free space than this where the recording goes.
MIN_FREE_BYTES = 1 << 20


def check_directory(path: str | Path, what: str = "output") -> Path:
    """Fail if a file could not be created at path: it is a directory, or
    its directory is missing or not writable (what: named in the error).
    Returns the directory. The report and comparison pages check this much;
    check_writable() adds a trial file and the free space."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        is_dir, directory_exists = path.is_dir(), directory.is_dir()
    except OSError as exc:  # a parent directory this user may not enter
        raise LockprofError(f"cannot use {what} path {path} ({exc.strerror})") from None
    if is_dir:
        raise LockprofError(f"{what} path {path} is a directory")
    if not directory_exists:
        raise LockprofError(f"{what} directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise LockprofError(f"{what} directory {directory} is not writable")
    return directory


def check_writable(path: str | Path) -> None:
    """Fail before collection if the recording could not be written: no
    such directory, not writable (permissions, a read-only mount), or a
    file system with less than MIN_FREE_BYTES free. (It can still fill up
    during collection: save() then keeps a temporary copy.)"""
    path = Path(path)
    directory = check_directory(path)
    try:  # what access() cannot see: ACLs, root on NFS, a full inode table
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", dir=directory):
            pass
        fs = os.statvfs(directory)
    except OSError as exc:
        raise LockprofError(
            f"output directory {directory} is not writable ({exc.strerror})"
        ) from None
    free = fs.f_bavail * fs.f_frsize
    if free < MIN_FREE_BYTES:
        raise LockprofError(
            f"output directory {directory} has {free // 1024} KiB free; a recording "
            f"needs at least {MIN_FREE_BYTES // 1024} KiB"
        )


# What a lockprof file holds, by the member only it has (runs/NNN.lpr inside
# a run set are not top-level members, so a set is never taken for a recording).
RECORDING, RUN_SET = "recording", "run set"
_KIND_MEMBER = {"meta.json": RECORDING, "manifest.json": RUN_SET}


def lockprof_kind(path: str | Path) -> str | None:
    """RECORDING or RUN_SET when path is an existing lockprof file, else None
    (zipfile only: this runs before the probes are compiled)."""
    try:
        if not Path(path).is_file():
            return None
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError, RuntimeError):
        return None
    return next((kind for member, kind in _KIND_MEMBER.items() if member in names), None)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Do a and b name one file: the same inode (hard links, symlinks), or,
    where one does not exist yet, the same resolved path?"""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_clobbering(
    output: str | Path,
    inputs: Iterable[str | Path],
    flag: str,
    writes: str,
    kind: str | None = None,
) -> None:
    """Refuse, before any work, an output that would destroy recorded data:
    one of the inputs (the same file, however named), or an existing
    recording or run set that what is written (writes; of kind RECORDING,
    RUN_SET or None) is not. A recording may replace a recording and a run
    set a run set: an explicit -o asks for it. flag: how the user named the
    output (-o, --html, ...). Exit 2: the command line is at fault."""
    if str(output) == "-":
        return
    for source in inputs:
        if Path(source).exists() and same_file(output, source):
            what = "the input" if str(source) == str(output) else f"the input {source}"
            raise LockprofError(
                f"{flag} {output} is {what}; writing {writes} there would destroy it",
                exit_code=2,
            )
    existing = lockprof_kind(output)
    if existing is not None and existing != kind:
        raise LockprofError(
            f"{flag} {output} is a lockprof {existing}; writing {writes} there would "
            "destroy it (choose another file)",
            exit_code=2,
        )
