"""Run sets: the repeated trials `lockprof bench` writes and `lockprof compare` reads.

Format (schema version 1): one ZIP archive (extension .lpset) holding

  manifest.json      format "lockprof-runset", schema_version, label, created,
                     command, throughput_regex, and one entry per run:
                       {index, recording, stdout, stdout_truncated, exit_status,
                        rusage, throughput, duration_s, stop_reason}
  runs/NNN.lpr       each run's recording, byte for byte what `lockprof run -o`
                     writes (profiler.recording), so it can be extracted and
                     read with `lockprof show` or profiler.load()
  runs/NNN.stdout    what the command wrote to its stdout in that run (capped
                     at STDOUT_CAP bytes; stdout_truncated says when it was)

The manifest repeats each run's exit status and rusage (they are also in the
recording's meta) so that a script can read them without pandas.

Like recordings, a set is written to a temporary file and renamed into place,
mode 0600 (it holds command lines and the command's output), by
profiler.outputs.write_file().

load_side() reads either a set or a single recording (a set of one run), so
`lockprof compare` takes both. Every defect is a LockprofError with one line.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from profiler import outputs, recording
from profiler.errors import LockprofError
from profiler.recording import Recording
from profiler.targets import recorded_exit

FORMAT = "lockprof-runset"
SCHEMA_VERSION = 1
STDOUT_CAP = 16 * 1024 * 1024  # bytes of a run's stdout kept in the set


@dataclass
class Run:
    """One trial: its recording, and what the command did."""

    recording: Recording
    throughput: float | None = None
    stdout: bytes = b""
    stdout_truncated: bool = False

    @property
    def exit_status(self) -> int | None:
        return recorded_exit(self.recording.meta)[0]

    @property
    def ended_by_lockprof(self) -> bool:
        """bench -d: the command was still running, and lockprof stopped it."""
        return self.recording.meta.get("ended_by_lockprof") is True

    @property
    def failed(self) -> bool:
        """The command exited nonzero by itself (not stopped by lockprof)."""
        return self.exit_status not in (0, None) and not self.ended_by_lockprof

    @property
    def rusage(self) -> dict:
        return self.recording.meta.get("rusage") or {}


@dataclass
class RunSet:
    """N trials of one command under one label ("before", "after")."""

    label: str
    runs: list[Run] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    throughput_regex: str | None = None
    created: str | None = None
    source: str | None = None  # the file it was read from, for messages

    def meta(self, key: str) -> list:
        """meta[key] of every run, in order."""
        return [run.recording.meta.get(key) for run in self.runs]


def _entry_name(index: int, suffix: str) -> str:
    return f"runs/{index:03d}.{suffix}"


def manifest(runset: RunSet) -> dict:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "label": runset.label,
        "created": runset.created or dt.datetime.now(dt.UTC).isoformat(),
        "command": runset.command,
        "throughput_regex": runset.throughput_regex,
        "runs": [
            {
                "index": i,
                "recording": _entry_name(i, "lpr"),
                "stdout": _entry_name(i, "stdout"),
                "stdout_truncated": run.stdout_truncated,
                "exit_status": run.exit_status,
                "ended_by_lockprof": run.ended_by_lockprof,
                "rusage": run.rusage,
                "throughput": run.throughput,
                "duration_s": run.recording.meta.get("duration_s"),
                "stop_reason": run.recording.meta.get("stop_reason"),
            }
            for i, run in enumerate(runset.runs, start=1)
        ],
    }


def dumps(runset: RunSet) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest(runset), indent=2, default=str))
        for i, run in enumerate(runset.runs, start=1):
            archive.writestr(_entry_name(i, "lpr"), recording.dumps(run.recording))
            archive.writestr(_entry_name(i, "stdout"), run.stdout[:STDOUT_CAP])
    return buffer.getvalue()


def save(runset: RunSet, path: str | Path) -> Path:
    """Write with outputs.write_file() (temp file + rename, mode 0600, the
    invoking user's under sudo; through a symlink; into an existing device
    or FIFO). On failure the data is kept in a temporary file and the error
    names it."""
    path = Path(path)
    if not runset.runs:
        raise LockprofError("a run set needs at least one run")
    payload = dumps(runset)

    def write(out: BinaryIO) -> None:
        out.write(payload)

    outputs.write_or_rescue(path, write, "run set", ".lpset")
    return path


# -- reading ----------------------------------------------------------------------


def _corrupt(path: Path, reason: str) -> LockprofError:
    return LockprofError(f"{path}: corrupt run set: {reason}")


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise LockprofError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LockprofError(f"{path}: is a directory, not a run set or recording") from None
    except PermissionError:
        raise LockprofError(f"{path}: permission denied") from None
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise LockprofError(
            outputs.truncated_note(path, exc)
            or f"{path}: not a lockprof run set or recording ({exc or type(exc).__name__})"
        ) from None


def _read_member(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise _corrupt(path, f"{name} is missing") from None
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise _corrupt(path, f"{name}: {exc or type(exc).__name__}") from None
    except zlib.error as exc:
        raise _corrupt(path, f"{name}: {exc}") from None


def _read_manifest(archive: zipfile.ZipFile, path: Path) -> dict:
    raw = _read_member(archive, "manifest.json", path)
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"manifest.json is not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise LockprofError(f"{path}: not a lockprof run set")
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _corrupt(path, "manifest has no valid schema version")
    if version > SCHEMA_VERSION:
        raise LockprofError(
            f"{path}: run set schema version {version} is newer than this lockprof reads "
            f"({SCHEMA_VERSION}); upgrade lockprof"
        )
    runs = document.get("runs")
    if not isinstance(runs, list) or not runs:
        raise _corrupt(path, "manifest lists no runs")
    if not all(isinstance(r, dict) for r in runs):
        raise _corrupt(path, "manifest runs are not objects")
    label = document.get("label")
    if not isinstance(label, str):
        raise _corrupt(path, "manifest has no label")
    return document


def _number_or_none(value, what: str, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _corrupt(path, f"{what} is not a number")
    if not recording.finite(value):  # NaN and Infinity were dropped, 10**400 an internal error
        raise _corrupt(path, f"{what} is not a finite number")
    return float(value)


def _load_recording_bytes(payload: bytes, name: str, path: Path) -> Recording:
    """recording.load() reads files: go through a private temporary one, and
    name the member in any error."""
    with tempfile.TemporaryDirectory(prefix="lockprof-set-") as tmp:
        member = Path(tmp) / "run.lpr"
        member.write_bytes(payload)
        try:
            return recording.load(member)
        except LockprofError as exc:
            reason = str(exc).replace(f"{member}: ", "", 1)
            raise _corrupt(path, f"{name}: {reason}") from None


def load(path: str | Path) -> RunSet:
    """Read a run set (.lpset). Any defect raises LockprofError with one line."""
    path = Path(path)
    with _open(path) as archive:
        if (
            "manifest.json" not in archive.namelist()
            and outputs.first_member(path) == "manifest.json"
        ):
            raise _corrupt(path, "truncated or damaged (its directory does not list manifest.json)")
        document = _read_manifest(archive, path)
        runs = []
        for i, entry in enumerate(document["runs"], start=1):
            name = entry.get("recording")
            if not isinstance(name, str):
                raise _corrupt(path, f"run {i} names no recording")
            rec = _load_recording_bytes(_read_member(archive, name, path), name, path)
            stdout_name = entry.get("stdout")
            stdout = b""
            if isinstance(stdout_name, str) and stdout_name in archive.namelist():
                stdout = _read_member(archive, stdout_name, path)
            runs.append(
                Run(
                    recording=rec,
                    throughput=_number_or_none(
                        entry.get("throughput"), f"run {i} throughput", path
                    ),
                    stdout=stdout,
                    stdout_truncated=bool(entry.get("stdout_truncated")),
                )
            )
    command = document.get("command")
    regex = document.get("throughput_regex")
    return RunSet(
        label=document["label"],
        runs=runs,
        command=[str(c) for c in command] if isinstance(command, list) else [],
        throughput_regex=regex if isinstance(regex, str) else None,
        created=document.get("created") if isinstance(document.get("created"), str) else None,
        source=str(path),
    )


def from_recording(rec: Recording, label: str, source: str | None = None) -> RunSet:
    """A single recording as a set of one run (no throughput is known)."""
    return RunSet(
        label=label,
        runs=[Run(recording=rec)],
        command=list(rec.meta.get("command") or []),
        created=rec.meta.get("start_time"),
        source=source,
    )


def load_side(path: str | Path) -> RunSet:
    """A run set, or a single recording as a set of one run: whichever path is."""
    path = Path(path)
    with _open(path) as archive:
        names = set(archive.namelist())
    if outputs.first_member(path) == "manifest.json" and "manifest.json" not in names:
        # A set's runs are stored zips: when the set's own directory is cut
        # off, zipfile finds the last run's directory instead. Not a recording.
        raise _corrupt(path, "truncated or damaged (its directory does not list manifest.json)")
    if "manifest.json" in names:
        return load(path)
    if "meta.json" in names:
        return from_recording(recording.load(path), label=path.stem, source=str(path))
    raise LockprofError(f"{path}: not a lockprof run set or recording")
