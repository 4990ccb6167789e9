"""Where a recording will go: checked before collection starts (light: no
pandas, so that it runs before the probes are compiled, cli/common.py)."""

from __future__ import annotations

import os
import tempfile
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
