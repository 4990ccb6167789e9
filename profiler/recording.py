"""The recording file: what a collection leaves behind, and all reports read.

Format (schema version 1): a ZIP archive (extension .lpr) holding

  meta.json          format, schema_version, kernel, cpus, mechanisms, command,
                     rusage, start/end times, threshold, lost events, errors
  intervals.parquet  per-interval, per-CPU aggregate deltas (aggregate.INTERVAL_COLUMNS)
  locks.parquet      lock identity: lock, flags, source -> lock_class, mode, name, owner
  events.parquet     the per-event stream (waits/holds over the threshold)
  tasks.parquet      per-task split: lock, tid, tgid, comm, waits, wait_ns, holds, hold_ns
  callers.parquet    contended waits by kernel stack: lock, stack_id, flags, count, total_ns
  stacks.parquet     stack_id -> frames (innermost first)

Load it with one call: ``profiler.load(path)`` returns a Recording whose
attributes are those DataFrames plus ``meta``.

Files are written to a temporary file and renamed into place, mode 0600
(they hold command lines).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from profiler.errors import LockprofError

FORMAT = "lockprof-recording"
SCHEMA_VERSION = 1
TABLES = ("intervals", "locks", "events", "tasks", "callers", "stacks")


@dataclass
class Recording:
    meta: dict
    intervals: pd.DataFrame
    locks: pd.DataFrame
    events: pd.DataFrame = field(default_factory=pd.DataFrame)
    tasks: pd.DataFrame = field(default_factory=pd.DataFrame)
    callers: pd.DataFrame = field(default_factory=pd.DataFrame)
    stacks: pd.DataFrame = field(default_factory=pd.DataFrame)

    def table(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def _to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    return buffer.getvalue()


def dumps(rec: Recording) -> bytes:
    meta = dict(rec.meta, format=FORMAT, schema_version=SCHEMA_VERSION)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=2, default=str))
        for name in TABLES:
            archive.writestr(f"{name}.parquet", _to_parquet_bytes(rec.table(name)))
    return buffer.getvalue()


def save(rec: Recording, path: str | Path) -> Path:
    """Write atomically (temp file + rename), mode 0600. On failure, keep the
    data in a temporary file and raise an error that names it."""
    path = Path(path)
    payload = dumps(rec)
    try:
        _write_atomically(payload, path)
    except OSError as exc:
        fd, rescue = tempfile.mkstemp(prefix="lockprof-", suffix=".lpr")
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        raise LockprofError(
            f"cannot write recording to {path} ({exc.strerror}); data kept in {rescue}"
        ) from None
    return path


def _write_atomically(payload: bytes, path: Path) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, *_rest) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


def check_writable(path: str | Path) -> None:
    """Fail before collection if the recording could not be written."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise LockprofError(f"output path {path} is a directory")
    if not directory.is_dir():
        raise LockprofError(f"output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise LockprofError(f"output directory {directory} is not writable")


def load(path: str | Path) -> Recording:
    """Read a recording. Any defect raises LockprofError with one clear line."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise LockprofError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise LockprofError(f"{path}: not a lockprof recording ({exc})") from None
    with archive:
        meta = _read_meta(archive, path)
        tables = {name: _read_table(archive, name, path) for name in TABLES}
    return Recording(meta=meta, **tables)


def _read_meta(archive: zipfile.ZipFile, path: Path) -> dict:
    try:
        meta = json.loads(archive.read("meta.json"))
    except KeyError:
        raise LockprofError(f"{path}: not a lockprof recording (no meta.json)") from None
    except (
        zipfile.BadZipFile,
        ValueError,
        OSError,
        NotImplementedError,
        RuntimeError,
        zlib.error,
    ) as exc:
        raise LockprofError(f"{path}: corrupt recording metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LockprofError(f"{path}: not a lockprof recording")
    version = meta.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise LockprofError(f"{path}: recording has no valid schema version")
    if version > SCHEMA_VERSION:
        raise LockprofError(
            f"{path}: recording schema version {version} is newer than this lockprof "
            f"reads ({SCHEMA_VERSION}); upgrade lockprof"
        )
    return meta


def _read_table(archive: zipfile.ZipFile, name: str, path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(archive.read(f"{name}.parquet")))
    except KeyError:
        raise LockprofError(f"{path}: corrupt recording (table {name} missing)") from None
    except Exception as exc:  # zlib, pyarrow and zipfile each raise their own
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LockprofError(f"{path}: corrupt recording (table {name}: {reason})") from None
