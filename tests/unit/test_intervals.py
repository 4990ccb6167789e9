"""The end of a long run without the whole intervals table in memory:
collapsed totals give the summary the whole table gives, the table is
built a chunk at a time (profiler/intervals.py), `show` reads a recording's
intervals a batch at a time, and the JSON summary is written a line per
lock."""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from profiler import aggregate, events, hist, intervals, recording, schema
from profiler.cli.common import write_json_lines
from profiler.errors import LockprofError
from profiler.recording import Recording, empty_table

MMAP = schema.const("LP_SRC_MMAP_LOCK")
CONTENTION = schema.const("LP_SRC_CONTENTION")
SLOTS = schema.const("LP_HIST_SLOTS")
LOCKS = [0xFFFF888100818138, 0xFFFF888104F6A178, 0xFFFFFFFF830F3100, 0xFFFF8881003C4CEC]


def raw_intervals(n: int, seed: int = 1) -> np.ndarray:
    """n interval records over the LOCKS, two modes, two sources and two
    CPUs, with counts, sums, running maxima and slots."""
    rng = np.random.default_rng(seed)
    raw = np.zeros(n, dtype=aggregate.interval_record_dtype())
    raw["interval"] = np.arange(n) // 8
    raw["t_s"] = raw["interval"] * 1.0
    raw["lock"] = np.array(LOCKS, dtype=np.uint64)[rng.integers(0, len(LOCKS), n)]
    raw["flags"] = np.where(rng.integers(0, 2, n) == 1, 4, 2)
    raw["source"] = np.where(rng.integers(0, 3, n) == 0, CONTENTION, MMAP)
    raw["cpu"] = rng.integers(0, 2, n)
    for column in aggregate.COUNTER_COLUMNS:
        raw[column] = rng.integers(0, 50, n)
    for h in ("wait", "hold"):
        raw[f"{h}_slots"] = rng.integers(0, 3, (n, SLOTS)) * (rng.random((n, SLOTS)) < 0.2)
        raw[f"{h}_count"] = raw[f"{h}_slots"].sum(axis=1)
        raw[f"{h}_total_ns"] = rng.integers(0, 10**9, n)
        raw[f"{h}_running_max_ns"] = rng.integers(0, 10**7, n)
        raw[f"{h}_max_ns"] = np.where(rng.random(n) < 0.5, -1, raw[f"{h}_running_max_ns"])
    return raw


def chunked(raw: np.ndarray, rows: int):
    return lambda: (raw[i : i + rows].copy() for i in range(0, len(raw), rows))


def locks_of(frame: pd.DataFrame) -> pd.DataFrame:
    owners = {LOCKS[0]: (42, "mmapcount"), LOCKS[1]: (43, "sh")}
    return aggregate.name_locks(frame, owners, empty_table("callers"), {})


def summary_of(frame: pd.DataFrame, locks: pd.DataFrame) -> list[dict]:
    return aggregate.summary_rows(frame, locks, ["mmap_lock", "contention"])


def assert_same_totals(got: pd.DataFrame, want: pd.DataFrame) -> None:
    for column in aggregate.INTERVAL_COLUMNS:
        if column.endswith("_slots"):
            assert np.array_equal(np.stack(got[column]), np.stack(want[column])), column
        else:
            pd.testing.assert_series_equal(got[column], want[column], check_names=False)


def test_collapsed_totals_give_the_summary_of_the_whole_table():
    whole = aggregate.records_frame(raw_intervals(2000))
    totals = aggregate.collapse_intervals(whole)
    locks = locks_of(whole)
    assert len(totals) == len(whole[[*aggregate.KEY_COLUMNS, "cpu"]].drop_duplicates())
    assert summary_of(totals, locks) == summary_of(whole, locks)
    assert summary_of(whole, locks)  # not vacuous: there are rows to compare
    # Sums are sums, maxima are the largest, the slots added element-wise.
    first = totals.iloc[0]
    mine = whole[
        (whole["lock"] == first["lock"])
        & (whole["flags"] == first["flags"])
        & (whole["source"] == first["source"])
        & (whole["cpu"] == first["cpu"])
    ]
    assert first["acquisitions"] == mine["acquisitions"].sum()
    assert first["wait_running_max_ns"] == mine["wait_running_max_ns"].max()
    assert first["interval"] == mine["interval"].max()
    assert list(first["hold_slots"]) == list(np.sum(np.stack(mine["hold_slots"]), axis=0))
    assert totals["wait_max_ns"].isna().all()  # an interval's maximum: not a total's


def test_totals_given_in_parts_equal_the_totals_of_the_whole():
    whole = aggregate.records_frame(raw_intervals(3000, seed=2))
    totals = aggregate.IntervalTotals()
    for start in range(0, len(whole), 97):  # many parts: collapsed again as they grow
        totals.add(whole.iloc[start : start + 97])
    got = totals.result().sort_values([*aggregate.KEY_COLUMNS, "cpu"], ignore_index=True)
    want = aggregate.collapse_intervals(whole)
    want = want.sort_values([*aggregate.KEY_COLUMNS, "cpu"], ignore_index=True)
    assert_same_totals(got, want)
    assert aggregate.IntervalTotals().result().empty


@pytest.mark.parametrize("chunk_rows", [1, 7, 500])
def test_collapsed_a_chunk_of_keys_at_a_time_as_at_once(monkeypatch, chunk_rows):
    """Each column's rows are sorted by key a chunk of whole runs of one key
    at a time (aggregate.RUN_CHUNK_ROWS rows; a longer run is a chunk of its
    own), not whole: the same totals."""
    whole = aggregate.records_frame(raw_intervals(3000, seed=5))
    want = aggregate.collapse_intervals(whole)  # one chunk
    monkeypatch.setattr(aggregate, "RUN_CHUNK_ROWS", chunk_rows)
    assert_same_totals(aggregate.collapse_intervals(whole), want)


@pytest.mark.parametrize("chunk_rows", [1, 7, 500])
def test_summary_a_chunk_of_histograms_at_a_time_as_at_once(monkeypatch, chunk_rows):
    """SummaryRows stacks the histograms of a chunk of (lock, mode, family)
    keys' rows at a time (aggregate.RUN_CHUNK_ROWS rows), sums them and
    keeps their percentiles: the rows of one chunk."""
    whole = aggregate.records_frame(raw_intervals(3000, seed=6))
    locks = locks_of(whole)
    want = summary_of(whole, locks)  # one chunk
    monkeypatch.setattr(aggregate, "RUN_CHUNK_ROWS", chunk_rows)
    assert summary_of(whole, locks) == want


def test_summary_leaves_out_the_rows_of_unnamed_locks_wherever_they_are():
    whole = aggregate.records_frame(raw_intervals(2000, seed=7))
    locks = locks_of(whole)
    named = locks[locks["lock"] != LOCKS[2]]
    kept = whole[whole["lock"] != LOCKS[2]].reset_index(drop=True)
    # Addresses too: the rows of unnamed locks once made them float64 (rounded).
    assert summary_of(whole, named) == summary_of(kept, named)
    assert len(summary_of(kept, named)) < len(summary_of(whole, locks))


def test_summary_refuses_histograms_of_different_lengths_in_different_chunks(monkeypatch):
    whole = aggregate.records_frame(raw_intervals(200, seed=8))
    whole["hold_slots"] = [
        list(slots)[:-1] if lock == LOCKS[3] else list(slots)
        for slots, lock in zip(whole["hold_slots"], whole["lock"], strict=True)
    ]
    monkeypatch.setattr(aggregate, "RUN_CHUNK_ROWS", 1)  # each key's rows: a chunk
    with pytest.raises(ValueError, match="histograms of different lengths"):
        summary_of(whole, locks_of(whole))


def test_summary_rows_keep_arrays_not_objects_per_row():
    """What builds the rows as they are read is kept as arrays: dicts and
    tuples per row and per CPU were ~100 MB of a 2-hour recording's `show`
    (~1.1 KB a row here)."""
    n = 6000
    raw = np.zeros(n, dtype=aggregate.interval_record_dtype())
    raw["lock"] = np.uint64(LOCKS[0]) + (np.arange(n) // 2).astype(np.uint64) * np.uint64(64)
    raw["flags"] = np.where(np.arange(n) % 2, 4, 2)  # a read and a write row per lock
    raw["source"] = MMAP
    raw["cpu"] = np.arange(n) // 2 % 2
    raw["acquisitions"] = raw["releases"] = 3
    for h in ("wait", "hold"):
        raw[f"{h}_count"], raw[f"{h}_total_ns"], raw[f"{h}_running_max_ns"] = 3, 900, 400
        raw[f"{h}_slots"][:, 8] = 3
    frame = aggregate.records_frame(raw)
    locks = locks_of(frame)
    tracemalloc.start()
    try:
        rows = aggregate.SummaryRows(frame, locks, ["mmap_lock"])
        kept, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == n
    assert kept / n < 600  # bytes a row


def test_percentiles_at_once_equal_one_row_at_a_time():
    rng = np.random.default_rng(3)
    slots = rng.integers(0, 5, (300, SLOTS)) * (rng.random((300, SLOTS)) < 0.15)
    slots[:5] = 0  # empty histograms
    slots[5, -1] = 7  # everything in the open-ended last slot
    largest = rng.integers(1, 2**40, 300)
    for q in (0.5, 0.99):
        at_once = hist.percentiles(slots, q, largest)
        one_by_one = [
            hist.percentile(row, q, int(m)) for row, m in zip(slots, largest, strict=True)
        ]
        for got, want in zip(at_once, one_by_one, strict=True):
            assert (want is None and np.isnan(got)) or got == want


@pytest.mark.parametrize("hidden", [set(), {LOCKS[1]}], ids=["all", "one-lock-hidden"])
def test_spilled_chunks_make_the_table_and_totals_of_one_frame(tmp_path, hidden):
    raw = raw_intervals(1000)
    whole = aggregate.records_frame(raw)
    at_once = intervals.build_intervals(chunked(raw, 1000), hidden)
    spilled = intervals.build_intervals(chunked(raw, 64), hidden)
    # Without a temporary file (spill_or_in_memory's fallback): in memory.
    in_memory = intervals._build(chunked(raw, 64)(), hidden, spill=False)
    # Even one chunk is spilled: as a frame, its histograms are a numpy
    # array per row, costly to build and to write.
    assert at_once.frame is None and at_once.spilled is not None
    assert spilled.frame is None and spilled.spilled is not None
    assert in_memory.spilled is None and in_memory.frame is not None
    kept = events.without_locks(whole, hidden)
    assert spilled.spilled.rows == at_once.spilled.rows == len(in_memory.frame) == len(kept)
    # The chunks' Arrow tables (intervals.records_table) read back as the
    # in-memory frame: values, nulls and dtypes.
    pd.testing.assert_frame_equal(spilled.spilled.load(), in_memory.frame)
    pd.testing.assert_frame_equal(at_once.spilled.load(), in_memory.frame)
    assert (
        in_memory.frame["wait_max_ns"].isna().any()
        and str(in_memory.frame["wait_max_ns"].dtype) == "Int64"
    )
    locks = locks_of(whole)
    for built in (at_once, spilled, in_memory):
        assert summary_of(built.totals, locks) == summary_of(kept, locks)
        hidden_rows = whole[events.on_locks(whole, hidden)] if hidden else whole.iloc[:0]
        assert int(built.hidden_totals["acquisitions"].sum()) == int(
            hidden_rows["acquisitions"].sum()
        )
        rec = Recording(
            meta={"families": ["mmap_lock", "contention"]},
            intervals=built.frame,
            intervals_file=built.spilled,
            interval_totals=built.totals,
            locks=locks,
        )
        loaded = recording.load(recording.save(rec, tmp_path / "r.lpr"))
        assert len(loaded.intervals) == len(kept)
        assert summary_of(loaded.intervals, locks) == summary_of(kept, locks)
    assert hidden == set() or len(kept) < len(whole)


def test_show_reads_the_intervals_a_batch_at_a_time(tmp_path, monkeypatch):
    """load(summary_only=True): the totals of the whole table, read in
    batches (here of 100 rows); the intervals and events stay in the file
    until used, and a save copies them from it."""
    monkeypatch.setattr(recording, "SUMMARY_BATCH_ROWS", 100)
    monkeypatch.setattr(recording, "ROW_GROUP_ROWS", 100)
    whole = aggregate.records_frame(raw_intervals(1000, seed=4))
    events = pd.DataFrame({c: [] for c in recording.EVENT_COLUMNS})
    rec = Recording(meta={"families": ["mmap_lock", "contention"]}, intervals=whole,
                    locks=locks_of(whole), events=events)  # fmt: skip
    path = recording.save(rec, tmp_path / "r.lpr")
    full = recording.load(path)
    light = recording.load(path, summary_only=True)
    assert light.unread_file("intervals") is not None and light.unread_events_file is not None
    assert light.unread_file("intervals").rows == len(full.intervals) == 1000  # counted as read
    assert summary_of(light.interval_totals, light.locks) == summary_of(full.intervals, full.locks)
    assert light.event_count == 0 and light.unread_file("intervals") is not None
    copy = recording.load(recording.save(light, tmp_path / "copy.lpr"))
    pd.testing.assert_frame_equal(copy.intervals, full.intervals)
    pd.testing.assert_frame_equal(light.intervals, full.intervals)  # read when used
    assert light.unread_file("intervals") is None


def test_show_refuses_a_corrupt_intervals_batch_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(recording, "SUMMARY_BATCH_ROWS", 100)
    monkeypatch.setattr(recording, "ROW_GROUP_ROWS", 100)
    whole = aggregate.records_frame(raw_intervals(300))
    whole["wait_slots"] = [list(v) for v in whole["wait_slots"]]
    whole.loc[250, "wait_slots"] = [-1] * SLOTS  # not counts, in the third batch
    rec = Recording(meta={}, intervals=whole, locks=locks_of(whole))
    path = recording.save(rec, tmp_path / "bad.lpr")
    with pytest.raises(LockprofError, match="column wait_slots holds histogram slots that"):
        recording.load(path, summary_only=True)


def _bad_slots(kind: str):
    """A wait_slots column (300 rows) that is not what lockprof writes."""
    rows = [list(map(int, v)) for v in aggregate.records_frame(raw_intervals(300))["wait_slots"]]
    if kind == "null-slot":
        rows[120][3] = None
    elif kind == "null-list":
        rows[120] = None
    elif kind == "ragged":
        rows[120] = rows[120][:-1]
    elif kind == "empty-lists":
        rows = [[] for _ in rows]
    elif kind == "floats":  # integral: the checked path takes them
        rows = [[float(x) for x in row] for row in rows]
    elif kind == "width-per-batch":  # each batch well formed, not the whole
        rows = [row if i < 100 else row[:20] for i, row in enumerate(rows)]
    return rows


@pytest.mark.parametrize(
    "kind", ["null-slot", "null-list", "ragged", "empty-lists", "floats", "width-per-batch"]
)
def test_show_takes_unusual_histograms_as_a_full_load_does(tmp_path, monkeypatch, kind):
    """Histograms the Arrow fast path (recording._slot_matrix) does not take
    go the checked way: show then accepts or refuses them, in one line, as
    a full load does."""
    from profiler import summary

    monkeypatch.setattr(recording, "SUMMARY_BATCH_ROWS", 100)
    monkeypatch.setattr(recording, "ROW_GROUP_ROWS", 100)
    whole = aggregate.records_frame(raw_intervals(300))
    whole["wait_slots"] = _bad_slots(kind)
    path = recording.save(
        Recording(meta={}, intervals=whole, locks=locks_of(whole)), tmp_path / "r.lpr"
    )
    outcomes = []
    for summary_only in (False, True):
        try:
            rec = recording.load(path, summary_only=summary_only)
            outcomes.append(summary.summary_json(rec)["locks"])
        except LockprofError as exc:
            assert "\n" not in str(exc)
            outcomes.append(f"refused: {str(exc).split(': ', 1)[1]}")
    if kind == "floats":
        assert isinstance(outcomes[1], list) and outcomes[1] == outcomes[0]
    else:
        assert str(outcomes[1]).startswith("refused"), outcomes[1]
        if kind != "width-per-batch":  # a full load reads one table, not batches
            assert outcomes[1] == outcomes[0]


def test_json_lines_hold_the_same_document_a_lock_per_line():
    document = {
        "kernel": "6.18",
        "errors": {"ringbuf_full": 0},
        "empty": [],
        "locks": [{"lock": "mmap_lock", "per_cpu": [{"cpu": 0}]}, {"lock": "<b>\x1b[31m"}],
    }
    out = io.StringIO()
    write_json_lines(document, out)
    text = out.getvalue()
    assert json.loads(text) == document
    lines = text.splitlines()
    assert '    {"lock": "mmap_lock", "per_cpu": [{"cpu": 0}]},' in lines
    assert "\x1b" not in text  # escaped, as json.dumps does


def test_show_summarises_every_schema_as_a_full_load_does(recording_path, tmp_path):
    """The committed recording is schema 1 (read whole, then upgraded); saved
    again it is schema 3 (read a batch at a time)."""
    from profiler import summary

    for path in (
        recording_path,
        recording.save(recording.load(recording_path), tmp_path / "3.lpr"),
    ):
        full = summary.summary_json(recording.load(path))
        light = summary.summary_json(recording.load(path, summary_only=True))
        assert light == full and full["locks"], path
