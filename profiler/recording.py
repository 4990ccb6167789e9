"""The recording file: what a collection leaves behind, and all reports read.

Format (schema version 3): a ZIP archive (extension .lpr) holding

  meta.json          format, schema_version, kernel, cpus, mechanisms, command,
                     rusage, start/end times, threshold, lost events, errors
  intervals.parquet  per-interval, per-CPU aggregate deltas (aggregate.INTERVAL_COLUMNS;
                     *_running_max_ns is the maximum since the start, *_max_ns the
                     interval's own maximum where known, else null)
  locks.parquet      lock identity: lock, flags, source -> address, lock_class, mode,
                     name, owner. `lock`, in every table, is a lock id: the lock's
                     address, except when an mm address served more than one
                     process in the run (profiler/lockids.py); `address` is the
                     address
  events.parquet     the per-event stream (waits/holds over the threshold)
  tasks.parquet      per-task split: lock, tid, tgid, comm, waits, wait_ns, holds, hold_ns
  callers.parquet    contended waits by kernel stack: lock, stack_id, flags, count, total_ns
  stacks.parquet     stack_id -> frames (innermost first)
  offcpu.parquet     off-CPU time by kernel stack (--offcpu): tgid, comm, stack_id,
                     count, total_ns, max_ns (optional: absent means empty)
  samples.parquet    CPU samples by kernel stack (--sample): stack_id, cpu, count
                     (optional: absent means empty)

TABLE_COLUMNS lists each table's columns and what kind of values they hold;
load() refuses a recording whose tables do not match it.

Schema versions: 1 had a single *_max_ns per interval row, the running
maximum since the start. 2 renamed it *_running_max_ns and added *_max_ns,
the interval's own maximum where known. 3 added the locks table's address
(before, a lock was its address, and the mmap_locks of processes that used
one mm address one after the other were one lock). load() reads all three.

Load it with one call: ``profiler.load(path)`` returns a Recording whose
attributes are those DataFrames plus ``meta``.

Files are written to a temporary file and renamed into place, mode 0600
(they hold command lines), by profiler.outputs.write_file().
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, BinaryIO, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api import types as ptypes

from profiler import aggregate, outputs
from profiler.errors import LockprofError
from profiler.options import MAX_CPUS

T = TypeVar("T")

FORMAT = "lockprof-recording"
SCHEMA_VERSION = 3
TABLES = ("intervals", "locks", "events", "tasks", "callers", "stacks", "offcpu", "samples")
# Tables added after schema 2 was first written: absent means empty.
OPTIONAL_TABLES = ("offcpu", "samples")
# Tables a recording cannot be read without: the aggregates. Any other table
# that is damaged (a bad CRC, a bad column) is left out, empty, and named in
# Recording.damaged, so that the rest of the recording stays usable.
ESSENTIAL_TABLES = ("intervals", "locks")
# What a damaged table leaves out (Recording.damaged, the warning, a note).
DAMAGE_CONSEQUENCES = {
    "events": "its waits and holds over the threshold (timelines, the events export) are "
    "left out; the aggregates are whole",
    "tasks": "the per-task rows (tasks of other processes on mmap_locks) are left out",
    "callers": "the contending callers (the report's callers, folded stacks) are left out",
    "stacks": "the kernel stacks' frames are left out",
    "offcpu": "the off-CPU figures (--offcpu) are left out",
    "samples": "the CPU samples (--sample: the writer's sum cost) are left out",
}


def damage_text(name: str, why: str) -> str:
    """What a damaged table leaves out, as every reader says it (the
    warning line, show --json's notes, the report's banner)."""
    consequence = DAMAGE_CONSEQUENCES.get(name, "it is left out")
    return f"table {name} is damaged ({why}): {consequence}"


EVENT_COLUMNS = [
    "t_s",
    "duration_ns",
    "lock",
    "tgid",
    "tid",
    "cpu",
    "stack_id",
    "flags",
    "source",
    "kind",
    "comm",
]
TASK_COLUMNS = [
    "lock",
    "tid",
    "tgid",
    "flags",
    "source",
    "comm",
    "waits",
    "wait_ns",
    "holds",
    "hold_ns",
]
CALLER_COLUMNS = ["lock", "stack_id", "flags", "count", "total_ns", "max_ns"]
STACK_COLUMNS = ["stack_id", "frames"]
# Off-CPU time by kernel stack (--offcpu): where tasks blocked, for how long.
OFFCPU_COLUMNS = ["tgid", "comm", "stack_id", "count", "total_ns", "max_ns"]
# CPU samples by kernel stack and CPU (--sample): on-CPU kernel time.
SAMPLE_COLUMNS = ["stack_id", "cpu", "count"]

# What each column of each table holds: int (>= 0), sint (any integer: a
# stack id is negative where no stack was taken), float (int or float,
# finite, >= 0), time (int or float, finite), str, list (of numbers or, for
# frames, of str); a trailing ? allows nulls. A negative count was printed
# as 18,446,744,073,709,551,576 (the summary adds them as uint64), an owner
# pid of inf was an internal error.
_KINDS_BY_NAME = {
    "stack_id": "sint",
    # Any finite time: an event of the moment between arming the probes and
    # the run's start_ns has a t_s of a few ms below 0 (87 of 353 recordings
    # on the dev machine had one).
    "t_s": "time",
    "kind": "str",
    "comm": "str",
    "lock_class": "str",
    "mode": "str",
    "name": "str",
    "owner_pid": "float?",  # float64 with NaN when no owner is known
    "owner_comm": "str?",
    "frames": "list",
    "wait_slots": "list",
    "hold_slots": "list",
    **{c: "int?" for c in aggregate.INTERVAL_MAX_COLUMNS},
}


def _kinds(columns: list[str]) -> dict[str, str]:
    return {c: _KINDS_BY_NAME.get(c, "int") for c in columns}


TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "intervals": _kinds(aggregate.INTERVAL_COLUMNS),
    "locks": _kinds(aggregate.LOCK_COLUMNS),
    "events": _kinds(EVENT_COLUMNS),
    "tasks": _kinds(TASK_COLUMNS),
    "callers": _kinds(CALLER_COLUMNS),
    "stacks": _kinds(STACK_COLUMNS),
    "offcpu": _kinds(OFFCPU_COLUMNS),
    "samples": _kinds(SAMPLE_COLUMNS),
}


def empty_table(name: str) -> pd.DataFrame:
    """A table with no rows and the columns (and dtypes) of table name."""
    if name == "intervals":
        return aggregate.empty_intervals()
    dtypes = {"int": "int64", "float": "float64", "float?": "float64", "int?": "Int64"}
    return pd.DataFrame(
        {c: pd.Series(dtype=dtypes.get(k, "object")) for c, k in TABLE_COLUMNS[name].items()}
    )


class SpilledTable:
    """A table written as Parquet, chunk by chunk, to an unlinked temporary
    file rather than held in memory: the event stream of a long run (up to
    --max-events rows, ~100 MB as a DataFrame) goes from the spool into the
    recording this way, a row group at a time (docs/reliability.md)."""

    def __init__(self, directory: str | None = None) -> None:
        # Unlinked at once: nothing is left behind whatever ends lockprof.
        self._file = tempfile.TemporaryFile(prefix="lockprof-", dir=directory)  # noqa: SIM115
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self.rows = 0

    def append(self, frame: pd.DataFrame) -> None:
        """Write frame as one row group; every frame has the first's dtypes."""
        self.append_table(pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False))

    def append_table(self, table: pa.Table) -> None:
        """Write an Arrow table as one row group (the first's schema)."""
        if self._writer is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self._file, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._file.flush()

    def copy_to(self, out: IO[bytes]) -> None:
        self.finish()
        self._file.seek(0)
        shutil.copyfileobj(self._file, out, _COPY_CHUNK_BYTES)

    def load(self, columns: list[str] | None = None) -> pd.DataFrame:
        self.finish()
        self._file.seek(0)
        return pd.read_parquet(self._file, columns=columns)

    def close(self) -> None:
        self._writer = None
        self._file.close()


_COPY_CHUNK_BYTES = 1 << 20


def spill_or_in_memory(build: Callable[[bool], T], what: str) -> T:
    """build(spill=True); if the temporary file cannot be written, build in
    memory instead, with a warning: data is never dropped for lack of disk."""
    try:
        return build(True)
    except OSError as exc:
        sys.stderr.write(
            f"lockprof: cannot write the {what} to a temporary file ({exc.strerror or exc}); "
            "building them in memory\n"
        )
        return build(False)


def gather_frames(
    frames: Iterable[pd.DataFrame], spill: bool
) -> tuple[pd.DataFrame | None, SpilledTable | None]:
    """One table from frames: in memory (the first of the pair) while there
    is one frame; from a second on, every frame goes to a SpilledTable (when
    spill), so memory holds one frame at a time."""
    kept: list[pd.DataFrame] = []
    spilled: SpilledTable | None = None
    try:
        for frame in frames:
            kept.append(frame)
            if spill and len(kept) > 1:
                if spilled is None:
                    spilled = SpilledTable()
                for frame_kept in kept:
                    spilled.append(frame_kept)
                kept = []
        if spilled is not None:
            for frame_kept in kept:
                spilled.append(frame_kept)
            spilled.finish()
    except BaseException:
        if spilled is not None:
            spilled.close()
        raise
    if spilled is not None or not kept:
        return None, spilled
    return (pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0]), None


class Recording:
    """A recording's tables (DataFrames) and meta. The intervals and events
    may wait in a file (intervals_file, events_file: a SpilledTable at the
    end of a collection, an ArchivedTable from load(summary_only=True)):
    they are read into memory only when used, and written to an archive
    straight from that file. interval_totals, the intervals collapsed to one
    row per lock, flags, source and CPU, is all a summary needs."""

    def __init__(
        self,
        meta: dict,
        intervals: pd.DataFrame | None,
        locks: pd.DataFrame,
        events: pd.DataFrame | None = None,
        tasks: pd.DataFrame | None = None,
        callers: pd.DataFrame | None = None,
        stacks: pd.DataFrame | None = None,
        offcpu: pd.DataFrame | None = None,
        samples: pd.DataFrame | None = None,
        *,
        events_file: SpilledTable | ArchivedTable | None = None,
        intervals_file: SpilledTable | ArchivedTable | None = None,
        interval_totals: pd.DataFrame | None = None,
    ) -> None:
        def table(frame: pd.DataFrame | None, name: str) -> pd.DataFrame:
            return empty_table(name) if frame is None else frame

        self.meta = meta
        self.locks = locks
        self.tasks = table(tasks, "tasks")
        self.callers = table(callers, "callers")
        self.stacks = table(stacks, "stacks")
        self.offcpu = table(offcpu, "offcpu")
        self.samples = table(samples, "samples")
        # name -> its frame, or None while it waits unread in its file
        self._lazy: dict[str, pd.DataFrame | None] = {}
        self._files: dict[str, SpilledTable | ArchivedTable | None] = {}
        for name, frame, file in (
            ("intervals", intervals, intervals_file),
            ("events", events, events_file),
        ):
            self._lazy[name] = empty_table(name) if frame is None and file is None else frame
            self._files[name] = file
        self._interval_totals = interval_totals
        # Tables found damaged (name -> why), left out empty (ESSENTIAL_TABLES
        # are never: their damage refuses the recording); on_damage(name,
        # why) hears of each as it is found (a table read later too).
        self.damaged: dict[str, str] = {}
        self.on_damage: Callable[[str, str], None] | None = None

    def close(self) -> None:
        """Let go of the file the tables left in it are read from (load
        summary_only): read after this, they raise. The CLI loads once per
        command; a script that loads many recordings closes each, or uses
        `with profiler.load(path, summary_only=True) as rec:`."""
        for file in self._files.values():
            if file is not None:
                file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def mark_damaged(self, name: str, why: str) -> None:
        if name in self.damaged:
            return
        self.damaged[name] = why
        if self.on_damage is not None:
            self.on_damage(name, why)

    def _read(self, name: str) -> pd.DataFrame:
        frame = self._lazy[name]
        if frame is None:
            file = self._files[name]
            assert file is not None
            try:
                frame = file.load()
            except TableDamaged as exc:
                frame = _left_out(name, exc, self.mark_damaged)
            self._lazy[name] = frame
        return frame

    def _set(self, name: str, frame: pd.DataFrame) -> None:
        self._lazy[name] = frame
        self._files[name] = None

    def unread_file(self, name: str) -> SpilledTable | ArchivedTable | None:
        """The file a table waits in, if it was never read into memory."""
        return self._files.get(name) if self._lazy.get(name) is None else None

    @property
    def intervals(self) -> pd.DataFrame:
        return self._read("intervals")

    @intervals.setter
    def intervals(self, frame: pd.DataFrame) -> None:
        self._set("intervals", frame)
        self._interval_totals = None

    def interval_columns(self, columns: list[str]) -> pd.DataFrame:
        """These columns of the intervals table, read alone from its file if
        it waits in one: the report's per-interval figures need no
        histograms, and a 2-hour recording's took its `report` to 0.96 GB
        (the histograms come from interval_totals)."""
        frame = self._lazy["intervals"]
        if frame is not None:
            return frame[columns]
        file = self._files["intervals"]
        assert file is not None
        return file.load(columns)

    @property
    def interval_totals(self) -> pd.DataFrame:
        if self._interval_totals is None:
            self._interval_totals = aggregate.collapse_intervals(self.intervals)
        return self._interval_totals

    @property
    def events(self) -> pd.DataFrame:
        return self._read("events")

    @events.setter
    def events(self, frame: pd.DataFrame) -> None:
        self._set("events", frame)

    @property
    def events_file(self) -> SpilledTable | ArchivedTable | None:
        return self._files["events"]

    @property
    def unread_events_file(self) -> SpilledTable | ArchivedTable | None:
        """The spilled events, if they were never read into memory."""
        return self.unread_file("events")

    @property
    def event_count(self) -> int | None:
        """Rows of the events table, without reading a spilled one (None:
        the table is damaged, its rows unknown)."""
        if "events" in self.damaged:
            return None
        spilled = self.unread_events_file
        if spilled is not None and spilled.rows is not None:
            return spilled.rows
        count = len(self.events)
        return None if "events" in self.damaged else count

    def table(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


# Rows per Parquet row group: a reader holds one row group's columns at a
# time (load(summary_only=True) reads a batch at a time), and pyarrow's
# default of a million rows held a 2-hour run's intervals whole.
ROW_GROUP_ROWS = 32_768


def _write_parquet(frame: pd.DataFrame, out: IO[bytes]) -> None:
    frame.reset_index(drop=True).to_parquet(out, index=False, row_group_size=ROW_GROUP_ROWS)


def write_archive(rec: Recording, out: BinaryIO) -> None:
    """The recording as a ZIP archive into out (a seekable binary file)."""
    meta = dict(rec.meta, format=FORMAT, schema_version=SCHEMA_VERSION)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("meta.json", json.dumps(meta, indent=2, default=str))
        for name in TABLES:
            spilled = rec.unread_file(name)
            if spilled is not None:
                with archive.open(f"{name}.parquet", "w", force_zip64=True) as member:
                    spilled.copy_to(member)
                continue
            # Straight into the archive: a table's Parquet bytes are not
            # also held whole in memory (twice: the buffer and its value).
            with archive.open(f"{name}.parquet", "w", force_zip64=True) as member:
                _write_parquet(rec.table(name), member)


def dumps(rec: Recording) -> bytes:
    buffer = io.BytesIO()
    write_archive(rec, buffer)
    return buffer.getvalue()


def save(rec: Recording, path: str | Path) -> Path:
    """Write with outputs.write_file(): atomically (temp file + rename), mode
    0600, the invoking user's under sudo; through a symlink; into an
    existing device or FIFO. On failure (a full disk, a directory removed
    or made read-only meanwhile), keep the data in a temporary file and
    raise an error that names it. Returns the file written (a name
    lockprof chose, outputs.ChosenName, may have become another)."""

    def write(out: BinaryIO) -> None:
        write_archive(rec, out)

    return outputs.write_or_rescue(
        path if isinstance(path, outputs.ChosenName) else Path(path),
        write,
        "recording",
        ".lpr",
        before_rename=_test_write_delay,
    )


# Test hook (tests/integration/test_lifecycle.py): seconds to pause after the
# recording's bytes are written and before the rename, announced on stderr,
# so that a test can send signals while the recording is being written.
WRITE_DELAY_ENV = "LOCKPROF_TEST_WRITE_DELAY_S"


def _test_write_delay() -> None:
    delay = os.environ.get(WRITE_DELAY_ENV)
    if not delay:
        return
    sys.stderr.write(f"lockprof: {WRITE_DELAY_ENV}: pausing {float(delay):g} s before the rename\n")
    sys.stderr.flush()
    time.sleep(float(delay))


def load(
    path: str | Path,
    *,
    summary_only: bool = False,
    on_damage: Callable[[str, str], None] | None = None,
) -> Recording:
    """Read a recording. A defect in its meta or its aggregates
    (ESSENTIAL_TABLES) raises LockprofError with one clear line; any other
    damaged table is left out, empty, and named in Recording.damaged (with
    why), and on_damage(name, why) is called for it, now or when a table
    left in the file is read.

    summary_only: what a summary needs, in memory bounded by the locks rather
    than the length of the run: the intervals table collapsed to one row per
    lock, flags, source and CPU (aggregate.collapse_intervals), read a batch
    at a time, and the events left in the file until .events is used. A
    2-hour recording's `show` took 1.3 GB reading them whole."""
    path = Path(path)
    check_regular_file(path)
    try:
        # One open file for the whole read, the tables left in it included:
        # reopened by name, a recording replaced meanwhile (a cron job
        # re-recording to one name) gave a report of two recordings.
        stream = path.open("rb")
    except FileNotFoundError:
        raise LockprofError(f"{path}: no such file") from None
    except OSError as exc:
        raise LockprofError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        rec, lazy = _load_from(stream, path, summary_only)
    except BaseException:
        stream.close()
        raise
    if not lazy:
        stream.close()  # else it stays open with the tables left in it
    rec.on_damage = on_damage
    if on_damage is not None:
        for name, why in rec.damaged.items():
            on_damage(name, why)
    return rec


def _load_from(stream: BinaryIO, path: Path, summary_only: bool) -> tuple[Recording, bool]:
    """load() of the open file: the recording, and whether tables were
    left in the file (summary_only)."""
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        note = outputs.truncated_note(path, exc)
        raise LockprofError(note or f"{path}: not a lockprof recording ({exc})") from None
    with archive:
        if (
            outputs.first_member(path) == "manifest.json"
            and "manifest.json" not in archive.namelist()
        ):
            # A run set cut short: zipfile finds its last run's directory
            # (a stored zip inside), and would read that run as the file.
            raise LockprofError(
                f"{path}: truncated or damaged lockprof run set: its ZIP directory is missing"
            )
        _check_expansion(archive, path)
        meta = _read_meta(archive, path)
        # Schema 1 intervals are upgraded in the order of the whole table.
        collapse = summary_only and meta["schema_version"] >= 2
        left = ("intervals", "events") if collapse else ()
        damaged: dict[str, str] = {}
        tables = {
            name: _read_or_leave_out(archive, name, path, damaged)
            for name in TABLES
            if name not in left
        }
        if collapse:
            totals, interval_rows = _interval_totals(archive, path)
            try:
                event_rows: int | None = _table_rows(archive, "events", path)
            except TableDamaged as exc:
                damaged["events"], event_rows = exc.why, None
            files = {
                "intervals": ArchivedTable(path, "intervals", interval_rows, stream),
                "events": ArchivedTable(path, "events", event_rows, stream),
            }
    version = meta["schema_version"]
    if version == 1:
        tables["intervals"] = _upgrade_intervals_v1(tables["intervals"], path)
    if version in (1, 2):
        tables["locks"] = _upgrade_locks_v2(tables["locks"])
        # The tables are the current schema's now: say so, and where they came from.
        meta.update(schema_version=SCHEMA_VERSION, upgraded_from_schema=version)
    check_meta(meta, path)
    for name, frame in list(tables.items()):
        if name in damaged:
            continue
        try:
            check_table(frame, name, path)
        except TableDamaged as exc:
            tables[name] = _left_out(name, exc, damaged.__setitem__)
    if collapse:
        rec = Recording(
            meta=meta,
            intervals=None,
            locks=tables.pop("locks"),
            intervals_file=files["intervals"],
            events_file=files["events"],
            interval_totals=totals,
        )
    else:
        rec = Recording(meta=meta, intervals=tables.pop("intervals"), locks=tables.pop("locks"))
    for name, frame in tables.items():
        setattr(rec, name, frame)
    for name, why in damaged.items():
        rec.damaged[name] = why
    return rec, collapse


def _read_or_leave_out(
    archive: zipfile.ZipFile, name: str, path: Path, damaged: dict[str, str]
) -> pd.DataFrame:
    """_read_table(), but a damaged table that is not essential is left
    out (empty), its defect kept in damaged."""
    try:
        return _read_table(archive, name, path)
    except TableDamaged as exc:
        return _left_out(name, exc, damaged.__setitem__)


def _left_out(name: str, exc: TableDamaged, record: Callable[[str, str], object]) -> pd.DataFrame:
    """A damaged table: raised again if the recording cannot do without it
    (ESSENTIAL_TABLES); else record(name, why) and an empty table in its
    place."""
    if name in ESSENTIAL_TABLES:
        raise exc
    record(name, exc.why)
    return empty_table(name)


# Rows read at a time by load(summary_only=True).
SUMMARY_BATCH_ROWS = ROW_GROUP_ROWS


def _interval_totals(archive: zipfile.ZipFile, path: Path) -> tuple[pd.DataFrame, int]:
    """The intervals table collapsed (Recording.interval_totals), read a
    batch at a time, each batch checked as load() checks the whole table;
    and its number of rows."""
    totals = aggregate.IntervalTotals()
    rows = 0
    error: LockprofError | None = None
    with contextlib.ExitStack() as readers:
        try:
            _verified(archive, "intervals.parquet")
            member = readers.enter_context(archive.open("intervals.parquet"))
            # Checked whole first (_verified); the reader and its batches
            # are closed before any error leaves, on one thread.
            parquet = readers.enter_context(pq.ParquetFile(member, pre_buffer=False))
            batches = parquet.iter_batches(batch_size=SUMMARY_BATCH_ROWS, use_threads=False)
            readers.callback(batches.close)
            for batch in batches:
                _add_batch(totals, batch, path)
                rows += batch.num_rows
        except KeyError:
            error = LockprofError(f"{path}: corrupt recording (table intervals missing)")
        except LockprofError as exc:
            error = exc
        except Exception as exc:  # zlib, pyarrow and zipfile each raise their own
            error = _table_error(path, "intervals", exc)
    parquet = batches = None  # closed: nothing of them outlives this frame
    if error is not None:
        raise error  # outside the handlers: no context holding the reader's frames
    # Batches each well formed may still not add up (histograms of one
    # length in one batch, another in the next).
    try:
        return totals.result(), rows
    except LockprofError:
        raise
    except Exception as exc:
        raise _table_error(path, "intervals", exc) from None


def _verified(archive: zipfile.ZipFile, name: str) -> None:
    """Read member name through once, in Python, so that a damaged one (a
    bad CRC, a cut deflate stream) raises here, before Arrow reads it as a
    file object. Arrow reads such a file from its own threads, which call
    back into Python: one still doing so when the process exits after the
    error is killed mid-call by Python's finalization, and the process
    aborts (SIGABRT, "terminate called without an active exception") after
    its one-line error (`show` of a recording whose intervals.parquet had a
    bad CRC: ~2 runs in 100). Costs one sequential read of the member."""
    with archive.open(name) as member:
        while member.read(_COPY_CHUNK_BYTES):
            pass


def _add_batch(totals: aggregate.IntervalTotals, batch: pa.RecordBatch, path: Path) -> None:
    """Check a batch of interval rows as load() checks a whole table, and add
    it to totals. Histograms that are what lockprof writes (lists of
    non-negative integers, one length, no nulls) go from Arrow to one
    (rows, slots) array each: as a frame, each cell became a numpy array,
    and the 2-hour soak's recording took show to 669 MB for this alone.
    Anything else takes the frame's way, which names what is wrong."""
    matrices = {name: _slot_matrix(batch, name) for name in aggregate.SLOT_COLUMNS}
    slots = {name: matrix for name, matrix in matrices.items() if matrix is not None}
    if len(slots) < len(aggregate.SLOT_COLUMNS):
        frame = batch.to_pandas()
        check_table(frame, "intervals", path)
        totals.add(frame)
        return
    frame = batch.drop_columns(list(aggregate.SLOT_COLUMNS)).to_pandas()
    kinds = {c: k for c, k in TABLE_COLUMNS["intervals"].items() if c not in aggregate.SLOT_COLUMNS}
    _check_columns(frame, "intervals", kinds, path)
    if len(frame):
        totals.add_arrays({**aggregate.scalar_arrays(frame), **slots})


def _slot_matrix(batch: pa.RecordBatch, name: str) -> np.ndarray | None:
    """Column name of batch as a (rows, slots) uint64 array, or None unless
    it is a list column of non-negative integers of one nonzero length with
    no nulls."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        return None
    column = batch.column(index)
    if not pa.types.is_list(column.type) or not pa.types.is_integer(column.type.value_type):
        return None
    values = column.flatten()
    if column.null_count or values.null_count:
        return None
    lengths = np.diff(column.offsets.to_numpy())
    width = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and (width == 0 or (lengths != width).any()):
        return None
    flat = values.to_numpy()
    if len(flat) != len(column) * width or (flat < 0).any():
        return None
    return flat.astype(np.uint64).reshape(len(column), width)


def _table_rows(archive: zipfile.ZipFile, name: str, path: Path) -> int:
    """Rows of a table, from its Parquet footer alone."""
    try:
        _verified(archive, f"{name}.parquet")
        with archive.open(f"{name}.parquet") as member:
            return pq.ParquetFile(member).metadata.num_rows
    except KeyError:
        raise _missing(path, name) from None
    except Exception as exc:  # zlib, pyarrow and zipfile each raise their own
        raise _table_error(path, name, exc) from None


class ArchivedTable:
    """A table left in its recording until used (load(summary_only=True)):
    what a SpilledTable offers, read from the archive."""

    def __init__(self, path: Path, name: str, rows: int | None, stream: BinaryIO) -> None:
        self.path, self.name, self.rows = path, name, rows  # rows None: footer unreadable
        self._stream = stream  # the recording, open since load(): path may name another now

    def load(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The table, or these columns of it (each checked as load() checks
        the whole table)."""
        with zipfile.ZipFile(self._stream) as archive:
            frame = _read_table(archive, self.name, self.path, columns)
        kinds = TABLE_COLUMNS[self.name]
        if columns is not None:
            kinds = {c: kinds[c] for c in columns if c in kinds}
        _check_columns(frame, self.name, kinds, Path(self.path))
        return frame

    def copy_to(self, out: IO[bytes]) -> None:
        with (
            zipfile.ZipFile(self._stream) as archive,
            archive.open(f"{self.name}.parquet") as member,
        ):
            shutil.copyfileobj(member, out, _COPY_CHUNK_BYTES)

    def close(self) -> None:
        self._stream.close()  # shared by the recording's tables: closing it twice is harmless


def check_regular_file(path: Path) -> None:
    """A FIFO would block and a device never end: refuse anything but a
    file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise LockprofError(f"{path}: no such file") from None
    except OSError as exc:
        raise LockprofError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise LockprofError(f"{path}: is a directory, not a recording")
    if not stat.S_ISREG(mode):
        raise LockprofError(f"{path}: not a lockprof recording (not a regular file)")


# lockprof stores members uncompressed; a compressed copy is read too, but
# not one whose members claim to expand beyond this (a zip bomb).
MAX_EXPANSION = 100
MAX_EXPANSION_SLACK = 64 << 20


def _check_expansion(archive: zipfile.ZipFile, path: Path) -> None:
    claimed = sum(info.file_size for info in archive.infolist())
    size = path.stat().st_size
    if claimed > MAX_EXPANSION * size + MAX_EXPANSION_SLACK:
        raise _corrupt(
            path, f"its members claim {claimed:,} bytes uncompressed from a {size:,}-byte file"
        )


def _corrupt(path: Path, reason: str) -> LockprofError:
    return LockprofError(f"{path}: corrupt recording: {reason}")


def _upgrade_intervals_v1(intervals: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Schema 1 -> 2: *_max_ns was the running maximum; it becomes
    *_running_max_ns and *_max_ns is derived from it (see aggregate)."""
    running = dict(zip(aggregate.INTERVAL_MAX_COLUMNS, aggregate.RUNNING_MAX_COLUMNS, strict=True))
    v1_kinds = {
        column: "int" if column in running else kind
        for column, kind in TABLE_COLUMNS["intervals"].items()
        if column not in aggregate.RUNNING_MAX_COLUMNS
    }
    _check_columns(intervals, "intervals", v1_kinds, path)
    return aggregate.interval_maxima_from_running(intervals.rename(columns=running))


def _upgrade_locks_v2(locks: pd.DataFrame) -> pd.DataFrame:
    """Schema 2 -> 3: a lock was its address (3 has lock ids, lockids.py)."""
    if "address" in locks.columns or "lock" not in locks.columns:
        return locks  # check_table() says what is wrong, if anything
    locks = locks.copy()
    at = aggregate.LOCK_COLUMNS.index("address")
    locks.insert(min(at, len(locks.columns)), "address", locks["lock"])
    return locks


def check_table(frame: pd.DataFrame, name: str, path: str | Path) -> None:
    """Raise a one-line LockprofError unless frame has the columns of table
    name (TABLE_COLUMNS), each holding the right kind of values."""
    _check_columns(frame, name, TABLE_COLUMNS[name], Path(path))


def _check_columns(frame: pd.DataFrame, name: str, kinds: dict[str, str], path: Path) -> None:
    for column, kind in kinds.items():
        if column not in frame.columns:
            raise _damaged_column(path, name, f"lacks column {column}")
        problem = _kind_problem(frame[column], kind)
        if problem:
            raise _damaged_column(path, name, f"column {column} {problem}")


def _damaged_column(path: Path, name: str, why: str) -> TableDamaged:
    return TableDamaged(path, name, why, str(_corrupt(path, f"table {name} {why}")))


def _kind_problem(series: pd.Series, kind: str) -> str | None:
    """Why series does not hold values of kind, or None if it does."""
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if series.empty:
        return None  # an empty table written without a schema has object columns
    if not nullable and series.isna().any():
        return "has nulls"
    dtype = series.dtype
    if kind in ("int", "sint"):
        if _all_null(series):
            return None
        if not ptypes.is_integer_dtype(dtype):
            return f"is {dtype}, not integer"
        return "has negative values" if kind == "int" and (series < 0).any() else None
    if kind in ("float", "time"):
        numeric = ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype)
        if _all_null(series):
            return None
        if not numeric:
            return f"is {dtype}, not numeric"
        numbers = series.dropna().to_numpy(dtype=np.float64)
        in_range = np.isfinite(numbers).all() and (kind == "time" or (numbers >= 0).all())
        return None if in_range else "has values out of range"
    if kind == "str":
        try:
            values = series.dropna().tolist()  # arrow-backed text is decoded here
        except Exception:  # pyarrow raises UnicodeDecodeError, ArrowException...
            return "holds text that cannot be decoded"
        return None if all(isinstance(v, str) for v in values) else "holds values that are not text"
    if kind == "list":
        return _list_problem(series)
    raise AssertionError(f"unknown column kind {kind}")


def _all_null(series: pd.Series) -> bool:
    return bool(series.isna().all())


def _list_problem(series: pd.Series) -> str | None:
    lengths = set()
    for value in series:
        if not isinstance(value, list | tuple | np.ndarray):
            return "holds values that are not lists"
        lengths.add(len(value))
    if series.name in aggregate.SLOT_COLUMNS:
        if len(lengths) != 1 or 0 in lengths:
            return "holds histograms of different or zero lengths"
        try:
            slots = np.asarray(series.tolist(), dtype=np.float64)
        except (TypeError, ValueError):
            return "holds histogram slots that are not numbers"
        if not np.isfinite(slots).all() or (slots < 0).any():
            return "holds histogram slots that are not counts"
    return None


def _not_a_recording(archive: zipfile.ZipFile) -> str:
    """Why a zip without meta.json is refused; a run set (`lockprof bench -o`)
    is the likely mistake, so it says what reads one instead."""
    if "manifest.json" in archive.namelist():
        return (
            "a run set (lockprof bench), not a recording: lockprof compare reads it, "
            "and its runs/NNN.lpr members are recordings"
        )
    return "not a lockprof recording (no meta.json)"


def _read_meta(archive: zipfile.ZipFile, path: Path) -> dict:
    try:
        meta = json.loads(archive.read("meta.json"))
    except KeyError:
        raise LockprofError(f"{path}: {_not_a_recording(archive)}") from None
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


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return _int(value) or isinstance(value, float)


def _count(value) -> bool:
    """An integer >= 0 that a u64 holds, as the kernel's counters (a
    hand-edited -5 printed as "lost events: -5")."""
    return _int(value) and 0 <= value < 1 << 64


def _measure(value) -> bool:
    """A finite number >= 0 (seconds, rusage figures) that a float holds:
    10**400 (math.isfinite raises OverflowError for it) was an internal
    error where the summary printed it."""
    return _number(value) and finite(value) and value >= 0


def finite(value: int | float) -> bool:
    """Does value make a finite float?"""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _cpu_count(value) -> bool:
    return _int(value) and 1 <= value <= MAX_CPUS


def _text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _number_dict(value) -> bool:
    return isinstance(value, dict) and all(v is None or _measure(v) for v in value.values())


def _lineage(value) -> bool:
    return (
        isinstance(value, dict)
        and _count(value.get("children_seen", 0))
        and isinstance(value.get("execs", []), list)
        and all(
            isinstance(e, dict)
            and _measure(e.get("t_s", 0))
            and isinstance(e.get("comm", ""), str)
            and isinstance(e.get("exe"), str | None)
            for e in value.get("execs", [])
        )
    )


# What the summary, show and the reports read from meta, and what each must
# hold where present (None is allowed where the value may be unknown).
COUNT, MEASURE = "an integer >= 0", "a number >= 0"
META_KINDS = {
    "kernel": ("text", lambda v: isinstance(v, str)),
    "target": ("text", lambda v: v is None or isinstance(v, str)),
    "stop_reason": ("text", lambda v: v is None or isinstance(v, str)),
    "cpus": (f"a CPU count (1 to {MAX_CPUS:,})", lambda v: v is None or _cpu_count(v)),
    "target_pid": (COUNT, lambda v: v is None or _count(v)),
    # -N: killed by signal N, as recordings before the eleventh session say
    # it (targets.recorded_exit reads it as 128 + N).
    "exit_status": (
        "an exit status (-255 to 255)",
        lambda v: v is None or (_int(v) and -255 <= v <= 255),
    ),
    "exit_signal": ("text", lambda v: v is None or isinstance(v, str)),
    "ended_by_lockprof": ("true or false", lambda v: v is None or isinstance(v, bool)),
    "orphans_stopped": (COUNT, lambda v: v is None or _count(v)),
    "threshold_ns": (COUNT, lambda v: v is None or _count(v)),
    "lost_events": (COUNT, _count),
    "sample_hz": (COUNT, lambda v: v is None or _count(v)),
    "what_if_cpus": (f"a CPU count (1 to {MAX_CPUS:,})", lambda v: v is None or _cpu_count(v)),
    "followed": (COUNT, lambda v: v is None or _count(v)),
    "locks_retired": (COUNT, lambda v: v is None or _count(v)),
    "duration_s": (MEASURE, _measure),
    "interval_s": (MEASURE, _measure),
    "command": ("a list of text", _text_list),
    "families": ("a list of text", _text_list),
    "lock_types": ("a list of text", lambda v: v is None or _text_list(v)),
    "errors": ("counts by name", lambda v: isinstance(v, dict) and all(map(_count, v.values()))),
    "rusage": ("figures by name (numbers >= 0)", lambda v: v is None or _number_dict(v)),
    "mechanisms": (
        "a list of objects",
        lambda v: isinstance(v, list) and all(isinstance(m, dict) for m in v),
    ),
    "lineage": ("children and execs", lambda v: v is None or _lineage(v)),
}


def check_meta(meta: dict, path: str | Path) -> None:
    """Raise a one-line LockprofError if a meta field lockprof reads holds
    the wrong kind of value."""
    for name, (kind, ok) in META_KINDS.items():
        if name in meta and not ok(meta[name]):
            raise _corrupt(Path(path), f"meta field {name} is not {kind}")


def _read_table(
    archive: zipfile.ZipFile, name: str, path: Path, columns: list[str] | None = None
) -> pd.DataFrame:
    try:
        # A buffer Arrow reads itself, not a Python file object (which
        # Arrow's threads call back into: see _verified).
        return pd.read_parquet(pa.BufferReader(archive.read(f"{name}.parquet")), columns=columns)
    except KeyError:
        if name in OPTIONAL_TABLES:
            return empty_table(name)
        raise _missing(path, name) from None
    except Exception as exc:  # zlib, pyarrow and zipfile each raise their own
        raise _table_error(path, name, exc) from None


class TableDamaged(LockprofError):
    """A table that cannot be read or holds what it must not: the message
    names the recording; why, the defect alone (Recording.damaged)."""

    def __init__(self, path: Path, name: str, why: str, message: str | None = None):
        super().__init__(message or f"{path}: corrupt recording (table {name}: {why})")
        self.name, self.why = name, why


def _missing(path: Path, name: str) -> TableDamaged:
    return TableDamaged(path, name, "missing", f"{path}: corrupt recording (table {name} missing)")


def _table_error(path: Path, name: str, exc: Exception) -> TableDamaged:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return TableDamaged(path, name, reason)
