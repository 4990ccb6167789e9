"""profiler/events.py: the event stream goes into the recording a chunk at
a time, spilled to Parquet beyond one chunk, with the same table as if it
had been built at once."""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import pandas as pd
import pytest

from profiler import events, recording
from profiler.errors import LockprofError
from profiler.recording import Recording, SpilledTable, empty_table

EVENT_DTYPE = np.dtype(
    [("ts_ns", "<u8"), ("duration_ns", "<u8"), ("lock", "<u8"), ("tgid", "<u4"),
     ("tid", "<u4"), ("mm_gen", "<u4"), ("stack_id", "<i4"), ("cpu", "<u2"),
     ("flags", "<u2"), ("source", "<u2"), ("kind", "<u2"), ("comm", "S1", (16,))]
)  # fmt: skip
LOCKS = [0xFFFF888100818138, 0xFFFF888104F6A178, 0xFFFFFFFF830F3100]
COMMS = [b"mmapcount", b"sh", b"bad\xfe\x1b[31m", b"khugepaged"]


def raw_events(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = np.zeros(n, dtype=EVENT_DTYPE)
    raw["ts_ns"] = 1_000_000_000 + np.arange(n) * 1000
    raw["duration_ns"] = rng.integers(20_000, 10**6, n)
    raw["lock"] = np.array(LOCKS, dtype=np.uint64)[rng.integers(0, len(LOCKS), n)]
    raw["tgid"] = rng.integers(100, 110, n)
    raw["tid"] = raw["tgid"]
    raw["stack_id"] = rng.integers(-1, 5, n)
    raw["cpu"] = rng.integers(0, 4, n)
    raw["kind"] = rng.integers(0, 2, n)
    names = np.array([np.frombuffer(c.ljust(16, b"\0"), dtype="S1") for c in COMMS])
    raw["comm"] = names[rng.integers(0, len(COMMS), n)]
    return raw


def chunked(raw: np.ndarray, rows: int):
    return lambda: (raw[i : i + rows] for i in range(0, len(raw), rows))


def saved_events(built: events.BuiltEvents, tmp_path, name: str) -> pd.DataFrame:
    rec = Recording(
        meta={"kernel": "test"},
        intervals=empty_table("intervals"),
        locks=empty_table("locks"),
        events=built.frame,
        events_file=built.spilled,
    )
    path = recording.save(rec, tmp_path / f"{name}.lpr")
    return recording.load(path).events


@pytest.mark.parametrize("hidden", [set(), {LOCKS[1]}], ids=["all", "one-lock-hidden"])
def test_spilled_chunks_make_the_same_table_as_one_frame(tmp_path, hidden):
    raw = raw_events(1000)
    whole = events.without_locks(events.events_frame(raw, 1_000_000_000), hidden)
    at_once = events.build_events(chunked(raw, 1000), 1_000_000_000, hidden)
    spilled = events.build_events(chunked(raw, 64), 1_000_000_000, hidden)
    assert at_once.spilled is None and at_once.frame is not None  # one chunk: in memory
    assert spilled.frame is None and spilled.spilled is not None
    assert spilled.spilled.rows == len(whole)
    pd.testing.assert_frame_equal(at_once.frame, whole)
    pd.testing.assert_frame_equal(spilled.spilled.load(), whole)
    # What the recording holds is the same table either way.
    pd.testing.assert_frame_equal(saved_events(spilled, tmp_path, "spilled"), whole)
    pd.testing.assert_frame_equal(saved_events(at_once, tmp_path, "at-once"), whole)
    on_hidden = int(np.isin(raw["lock"], list(hidden)).sum()) if hidden else 0
    assert spilled.hidden == at_once.hidden == on_hidden
    assert on_hidden == 0 or len(whole) == 1000 - on_hidden
    assert spilled.stack_ids == at_once.stack_ids == set(whole["stack_id"].tolist())


def test_no_events_make_an_empty_table():
    built = events.build_events(lambda: iter(()), 0, set())
    assert built.frame is None and built.spilled is None and built.stack_ids == set()
    rec = Recording(
        meta={}, intervals=empty_table("intervals"), locks=empty_table("locks"),
        events=built.frame, events_file=built.spilled,
    )  # fmt: skip
    assert rec.event_count == 0 and list(rec.events.columns) == recording.EVENT_COLUMNS


def test_a_full_disk_builds_the_events_in_memory_with_one_warning(monkeypatch, capsys):
    raw = raw_events(500)
    appended = []

    def full_disk(self, frame):
        appended.append(len(frame))
        if len(appended) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.rows += len(frame)

    monkeypatch.setattr(SpilledTable, "append", full_disk)
    built = events.build_events(chunked(raw, 100), 1_000_000_000, set())
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "No space left" in warning
    assert built.spilled is None
    pd.testing.assert_frame_equal(built.frame, events.events_frame(raw, 1_000_000_000))


def test_a_spilled_table_is_read_only_when_used(tmp_path, monkeypatch):
    """The summary counts events without reading them; saving copies the
    file; .events reads it once, and setting .events replaces it."""
    built = events.build_events(chunked(raw_events(300), 100), 0, set())
    rec = Recording(
        meta={}, intervals=empty_table("intervals"), locks=empty_table("locks"),
        events_file=built.spilled,
    )  # fmt: skip
    loads = []
    real_load = SpilledTable.load
    monkeypatch.setattr(SpilledTable, "load", lambda self: loads.append(1) or real_load(self))
    assert rec.event_count == 300
    recording.save(rec, tmp_path / "r.lpr")
    assert loads == []
    assert len(rec.events) == 300 and len(rec.events) == 300 and loads == [1]
    rec.events = rec.events.head(10)
    assert rec.event_count == 10 and rec.events_file is None
    assert len(recording.load(recording.save(rec, tmp_path / "r2.lpr")).events) == 10


def test_a_failed_save_keeps_spilled_events_in_the_rescue_file(tmp_path, monkeypatch):
    """The archive is written twice (the target, then the rescue copy): the
    spilled events are copied from their file both times."""
    raw = raw_events(300)
    built = events.build_events(chunked(raw, 100), 1_000_000_000, set())
    rec = Recording(
        meta={}, intervals=empty_table("intervals"), locks=empty_table("locks"),
        events_file=built.spilled,
    )  # fmt: skip
    rescue_dir = tmp_path / "rescue"
    rescue_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue_dir))
    with pytest.raises(LockprofError, match="data kept in") as excinfo:
        recording.save(rec, tmp_path / "no" / "such" / "dir" / "r.lpr")
    rescue = str(excinfo.value).rsplit(" ", 1)[1]
    assert os.path.dirname(rescue) == str(rescue_dir)
    pd.testing.assert_frame_equal(
        recording.load(rescue).events, events.events_frame(raw, 1_000_000_000)
    )
