"""profiler.recording: the .lpr file, its round trip and every way loading fails."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import profiler
from profiler import outputs, recording
from profiler.errors import LockprofError

from .helpers import intervals_frame


def assert_one_line_error(excinfo, path, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def assert_damaged(path, table: str, *fragments: str) -> None:
    """A defect in table: the recording is refused in one line if the table
    is an essential one (the aggregates); else the rest is read, the table
    left out empty, and its defect named in damaged and told to on_damage."""
    if table in recording.ESSENTIAL_TABLES:
        with pytest.raises(LockprofError) as excinfo:
            recording.load(path)
        assert_one_line_error(excinfo, path, *fragments)
        return
    for summary_only in (False, True):
        loaded, heard = _load_hearing_damage(path, summary_only)
        loaded.table(table)  # read now if it was left in the file
        assert list(loaded.damaged) == [table] and heard == list(loaded.damaged.items())
        assert loaded.table(table).empty
        assert list(loaded.table(table).columns) == list(recording.TABLE_COLUMNS[table])
        for fragment in fragments:  # what the refusal said, after "table NAME"
            assert fragment.split(f"table {table}")[-1].strip() in loaded.damaged[table]
        assert not loaded.interval_totals.empty and not loaded.locks.empty


def _load_hearing_damage(path, summary_only: bool):
    heard: list[tuple[str, str]] = []
    loaded = recording.load(
        path, summary_only=summary_only, on_damage=lambda *damage: heard.append(damage)
    )
    return loaded, heard


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(contents: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, payload in contents.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def with_meta(data: bytes, **changes) -> bytes:
    contents = members(data)
    meta = json.loads(contents["meta.json"])
    meta.update(changes)
    contents["meta.json"] = json.dumps(meta).encode()
    return rezip(contents)


# -- round trip -----------------------------------------------------------------------


def assert_same_recording(a: profiler.Recording, b: profiler.Recording) -> None:
    assert a.meta == b.meta
    for name in recording.TABLES:
        pd.testing.assert_frame_equal(a.table(name), b.table(name))


def test_round_trip_of_a_real_recording(rec, tmp_path):
    path = recording.save(rec, tmp_path / "copy.lpr")
    assert path == tmp_path / "copy.lpr"
    again = recording.load(path)
    assert_same_recording(rec, again)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # holds command lines
    assert again.meta["format"] == "lockprof-recording"
    assert again.meta["schema_version"] == recording.SCHEMA_VERSION == 3
    assert [p.name for p in tmp_path.iterdir()] == ["copy.lpr"]  # no temp file left


def test_round_trip_of_a_synthetic_recording(tmp_path, make_row):

    intervals = intervals_frame(
        [make_row(0xFFFF888100000100, 4, 0, cpu=c, acquisitions=c + 1) for c in range(3)]
    )
    locks = pd.DataFrame(
        {
            "lock": pd.Series([0xFFFF888100000100], dtype="uint64"),
            "flags": [4],
            "source": [0],
            "address": pd.Series([0xFFFF888100000100], dtype="uint64"),
            "lock_class": ["mmap_lock"],
            "mode": ["write"],
            "name": ["mmap_lock"],
            "owner_pid": [7.0],
            "owner_comm": ["a\x1b[31m b"],
        }
    )
    stacks = pd.DataFrame({"stack_id": [1], "frames": [["f+0x1", "g+0x2"]]})
    original = profiler.Recording(
        meta={"kernel": "6.1", "cpus": 3, "command": ["sh", "-c", "true"], "rusage": {}},
        intervals=intervals,
        locks=locks,
        stacks=stacks,
    )
    saved = recording.save(original, tmp_path / "s.lpr")
    loaded = profiler.load(saved)
    assert loaded.meta == {**original.meta, "format": "lockprof-recording", "schema_version": 3}
    assert original.meta.get("format") is None  # save does not modify its argument
    pd.testing.assert_frame_equal(loaded.intervals, intervals)
    assert int(loaded.intervals["lock"].iloc[0]) == 0xFFFF888100000100
    assert loaded.intervals["wait_slots"].map(list).tolist() == intervals["wait_slots"].tolist()
    assert loaded.locks["owner_comm"].iloc[0] == "a\x1b[31m b"
    assert list(loaded.stacks["frames"].iloc[0]) == ["f+0x1", "g+0x2"]
    assert loaded.events.empty and loaded.tasks.empty


def test_save_replaces_an_existing_file(rec, tmp_path):
    target = tmp_path / "r.lpr"
    target.write_bytes(b"old")
    recording.save(rec, target)
    assert recording.load(target).meta["target_pid"] == rec.meta["target_pid"]


# -- load errors ----------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.lpr"
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "no such file")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty"),
        (b"\x00" * 100, "zeros"),
        (random.Random(0).randbytes(4096), "random"),
        (b"PK\x03\x04" + b"\x00" * 60, "zip magic only"),
        (b'{"format": "lockprof-recording", "schema_version": 1}', "bare meta json"),
    ],
)
def test_not_a_zip(tmp_path, content, why):
    path = tmp_path / "bad.lpr"
    path.write_bytes(content)
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "not a lockprof recording")


def test_directory(tmp_path):
    with pytest.raises(LockprofError) as excinfo:
        recording.load(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "is a directory, not a recording")


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.33, 0.5, 0.75, 0.9, 0.99, 0.999])
def test_truncated_recording(recording_bytes, tmp_path, fraction):
    path = tmp_path / "cut.lpr"
    path.write_bytes(recording_bytes[: int(len(recording_bytes) * fraction)])
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path)
    if len(path.read_bytes()) >= 30 + len("meta.json"):
        # Said as what it is, not "not a lockprof recording (File is not a zip file)".
        assert "truncated or damaged lockprof recording" in str(excinfo.value)
    # and never replaced by another kind of output
    assert outputs.lockprof_kind(path) in (outputs.RECORDING, None)
    if len(path.read_bytes()) >= 40:
        assert outputs.lockprof_kind(path) == outputs.RECORDING


def test_zip_without_meta(recording_bytes, tmp_path):
    contents = members(recording_bytes)
    del contents["meta.json"]
    path = tmp_path / "nometa.lpr"
    path.write_bytes(rezip(contents))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "no meta.json")


def test_a_run_set_is_named_as_such(tmp_path, capsys):
    """`lockprof show before.lpset` said "not a lockprof recording (no
    meta.json)": the file is fine, only the command is wrong."""
    from profiler.cli.main import main

    path = tmp_path / "before.lpset"
    path.write_bytes(rezip({"manifest.json": b"{}", "runs/001.lpr": b""}))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "a run set (lockprof bench)", "lockprof compare")
    assert main(["show", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a run set" in err and "Traceback" not in err


def test_other_zip_file(tmp_path):
    path = tmp_path / "other.zip"
    path.write_bytes(rezip({"hello.txt": b"hi"}))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "not a lockprof recording")


def test_future_schema_version(recording_bytes, tmp_path):
    path = tmp_path / "future.lpr"
    future = recording.SCHEMA_VERSION + 1
    path.write_bytes(with_meta(recording_bytes, schema_version=future))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, f"schema version {future}", "upgrade lockprof")


@pytest.mark.parametrize("version", [0, -1, None, "1", 1.0, [1]])
def test_invalid_schema_version(recording_bytes, tmp_path, version):
    path = tmp_path / "v.lpr"
    path.write_bytes(with_meta(recording_bytes, schema_version=version))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "no valid schema version")


@pytest.mark.parametrize("fmt", ["perf-data", None, "", 1])
def test_wrong_format_field(recording_bytes, tmp_path, fmt):
    path = tmp_path / "f.lpr"
    path.write_bytes(with_meta(recording_bytes, format=fmt))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "not a lockprof recording")


@pytest.mark.parametrize("meta", [b"", b"{", b"[1, 2]", b"\xff\xfe", b"null", b'"x"'])
def test_meta_that_is_not_a_json_object(recording_bytes, tmp_path, meta):
    contents = members(recording_bytes)
    contents["meta.json"] = meta
    path = tmp_path / "m.lpr"
    path.write_bytes(rezip(contents))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize("table", recording.TABLES)
def test_corrupt_parquet_member(rec, tmp_path, table):
    contents = members(recording.dumps(rec))
    good = contents[f"{table}.parquet"]
    contents[f"{table}.parquet"] = good[:8] + b"\x00" * (len(good) - 16) + good[-8:]
    path = tmp_path / "p.lpr"
    path.write_bytes(rezip(contents))
    assert_damaged(path, table, f"table {table}")


@pytest.mark.parametrize("table", recording.TABLES)
def test_missing_table(rec, tmp_path, table):
    contents = members(recording.dumps(rec))
    del contents[f"{table}.parquet"]
    path = tmp_path / "t.lpr"
    path.write_bytes(rezip(contents))
    if table in recording.OPTIONAL_TABLES:
        # Added after schema 2 was first written: absent means no rows.
        loaded = recording.load(path)
        assert loaded.table(table).empty
        assert list(loaded.table(table).columns) == list(recording.TABLE_COLUMNS[table])
        return
    assert_damaged(path, table, f"table {table} missing")


# -- table columns ---------------------------------------------------------------------

ALL_COLUMNS = [(t, c) for t in recording.TABLES for c in recording.TABLE_COLUMNS[t]]


def test_every_table_column_is_declared(rec):
    from profiler import aggregate

    assert list(recording.TABLE_COLUMNS["intervals"]) == aggregate.INTERVAL_COLUMNS
    assert list(recording.TABLE_COLUMNS["locks"]) == aggregate.LOCK_COLUMNS
    for name in recording.TABLES:
        assert list(rec.table(name).columns) == list(recording.TABLE_COLUMNS[name]), name
        assert not rec.table(name).empty, name  # so the dtype tests below mean something
        empty = recording.empty_table(name)
        assert empty.empty and list(empty.columns) == list(recording.TABLE_COLUMNS[name])


@pytest.mark.parametrize(("table", "column"), ALL_COLUMNS)
def test_table_that_lacks_a_column(rec, tmp_path, table, column):
    setattr(rec, table, rec.table(table).drop(columns=[column]))
    path = recording.save(rec, tmp_path / "c.lpr")
    assert_damaged(path, table, f"corrupt recording: table {table} lacks column {column}")


def _ragged(frame):
    frame["wait_slots"] = [
        list(v)[:-1] if i == 0 else list(v) for i, v in enumerate(frame["wait_slots"])
    ]


def _negative_slot(frame):
    frame["hold_slots"] = [[-1, *list(v)[1:]] for v in frame["hold_slots"]]


def _set(table, column, values):
    def change(frame):
        frame[column] = values(frame) if callable(values) else values

    return table, change


@pytest.mark.parametrize(
    ("table", "change", "problem"),
    [
        (*_set("intervals", "acquisitions", "many"), "column acquisitions is str, not integer"),
        (*_set("intervals", "acquisitions", 1.5), "column acquisitions is float64, not integer"),
        (*_set("intervals", "t_s", "soon"), "column t_s is str, not numeric"),
        (*_set("intervals", "acquisitions", -5), "column acquisitions has negative values"),
        (*_set("intervals", "t_s", float("nan")), "column t_s has nulls"),
        (*_set("intervals", "t_s", float("inf")), "column t_s has values out of range"),
        (*_set("locks", "owner_pid", float("inf")), "column owner_pid has values out of range"),
        (
            *_set(
                "intervals", "wait_count", lambda f: pd.array([None] + [1] * (len(f) - 1), "Int64")
            ),
            "column wait_count has nulls",
        ),
        (*_set("intervals", "wait_max_ns", "big"), "column wait_max_ns is str, not integer"),
        ("intervals", _ragged, "column wait_slots holds histograms of different or zero lengths"),
        (
            "intervals",
            _negative_slot,
            "column hold_slots holds histogram slots that are not counts",
        ),
        (
            *_set("intervals", "wait_slots", "x"),
            "column wait_slots holds values that are not lists",
        ),
        (*_set("locks", "name", 7), "column name holds values that are not text"),
        (*_set("locks", "owner_pid", "me"), "column owner_pid is str, not numeric"),
        (*_set("events", "duration_ns", "long"), "column duration_ns is str, not integer"),
        (*_set("tasks", "comm", None), "column comm has nulls"),
        (*_set("callers", "stack_id", 0.5), "column stack_id is float64, not integer"),
        (*_set("stacks", "frames", "f+0x1"), "column frames holds values that are not lists"),
    ],
)
def test_table_with_a_mistyped_column(rec, tmp_path, table, change, problem):
    frame = rec.table(table).copy()
    change(frame)
    setattr(rec, table, frame)
    path = recording.save(rec, tmp_path / "t.lpr")
    assert_damaged(path, table, f"corrupt recording: table {table} {problem}")


def test_nulls_where_they_are_allowed(rec, tmp_path):
    rec.locks["owner_pid"] = float("nan")
    rec.locks["owner_comm"] = None
    rec.intervals["hold_max_ns"] = pd.array([None] * len(rec.intervals), dtype="Int64")
    loaded = recording.load(recording.save(rec, tmp_path / "n.lpr"))
    assert loaded.locks["owner_comm"].isna().all()
    assert loaded.intervals["hold_max_ns"].isna().all()


def test_empty_tables_load(rec, tmp_path):
    for name in ("events", "tasks", "callers", "stacks"):
        # as a collection with no such rows writes them: object columns, no rows
        setattr(rec, name, pd.DataFrame(columns=list(recording.TABLE_COLUMNS[name])))
    loaded = recording.load(recording.save(rec, tmp_path / "e.lpr"))
    assert loaded.events.empty and loaded.stacks.empty
    assert list(loaded.tasks.columns) == list(recording.TABLE_COLUMNS["tasks"])


def test_schema_1_recording_is_upgraded(recording_bytes, rec):
    """tests/data holds a schema 1 recording: *_max_ns was the running
    maximum. It loads as the current schema with the running maxima kept
    and the interval maxima derived from them, and each lock's address is
    its id (before schema 3 a lock was its address)."""
    with zipfile.ZipFile(io.BytesIO(recording_bytes)) as archive:
        assert json.loads(archive.read("meta.json"))["schema_version"] == 1
        raw = pd.read_parquet(io.BytesIO(archive.read("intervals.parquet")))
    assert "wait_running_max_ns" not in raw
    assert rec.meta["schema_version"] == 3 and rec.meta["upgraded_from_schema"] == 1
    from profiler import aggregate

    assert list(rec.intervals.columns) == aggregate.INTERVAL_COLUMNS
    assert list(rec.locks.columns) == aggregate.LOCK_COLUMNS
    assert not rec.locks.empty and (rec.locks["address"] == rec.locks["lock"]).all()
    for h in ("wait", "hold"):
        assert rec.intervals[f"{h}_running_max_ns"].tolist() == raw[f"{h}_max_ns"].tolist()
    # One interval (a 0.1 s run): every maximum rose from 0, so the interval
    # maximum is the running maximum wherever there was a sample.
    assert (rec.intervals["interval"] == 1).all()
    has_holds = rec.intervals["hold_count"] > 0
    assert (rec.intervals.loc[has_holds, "hold_max_ns"] == raw.loc[has_holds, "hold_max_ns"]).all()
    assert rec.intervals.loc[~has_holds, "hold_max_ns"].isna().all()
    assert rec.intervals["wait_max_ns"].tolist() == raw["wait_max_ns"].tolist()


def test_schema_1_recording_that_lacks_a_column(recording_bytes, tmp_path):
    contents = members(recording_bytes)
    raw = pd.read_parquet(io.BytesIO(contents["intervals.parquet"]))
    buffer = io.BytesIO()
    raw.drop(columns=["hold_max_ns"]).to_parquet(buffer, index=False)
    contents["intervals.parquet"] = buffer.getvalue()
    path = tmp_path / "v1.lpr"
    path.write_bytes(rezip(contents))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert str(excinfo.value) == (
        f"{path}: corrupt recording: table intervals lacks column hold_max_ns"
    )


def test_crc_mismatch_in_meta(recording_bytes, tmp_path):
    data = bytearray(recording_bytes)
    at = data.index(b'"kernel"')  # inside the stored (uncompressed) meta.json
    data[at + 1] = ord("K")
    path = tmp_path / "crc.lpr"
    path.write_bytes(bytes(data))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "corrupt recording metadata")


def test_compressed_recording_still_loads(recording_bytes, tmp_path):
    # A recording re-zipped with deflate (e.g. by `zip -r`) is still a recording.
    path = tmp_path / "deflated.lpr"
    path.write_bytes(rezip(members(recording_bytes), zipfile.ZIP_DEFLATED))
    assert recording.load(path).meta["target_pid"] == 4560


def central_directory_entry(data: bytes, name: bytes) -> int:
    """Offset of the central directory header of member `name`."""
    at = data.index(b"PK\x01\x02")
    while True:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, at + 28)
        if data[at + 46 : at + 46 + name_len] == name:
            return at
        at += 46 + name_len + extra_len + comment_len


def patch_meta_entry(data: bytes, field_offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<H", out, central_directory_entry(data, b"meta.json") + field_offset, value)
    return bytes(out)


def corrupt_deflated_meta(data: bytes) -> bytes:
    contents = members(data)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in contents.items():
            method = zipfile.ZIP_DEFLATED if name == "meta.json" else zipfile.ZIP_STORED
            archive.writestr(name, payload, compress_type=method)
    out = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(out))) as archive:
        local = archive.getinfo("meta.json").header_offset
    name_len, extra_len = struct.unpack_from("<HH", out, local + 26)
    out[local + 30 + name_len + extra_len] ^= 0xFF  # first byte of the deflate stream
    return bytes(out)


# Defects zipfile reports with exceptions other than BadZipFile/ValueError/OSError.
ZIP_FEATURE_DEFECTS = {
    "version needed to extract 9.9": lambda d: patch_meta_entry(d, 6, 99),
    "encrypted flag": lambda d: patch_meta_entry(d, 8, 0x0001),
    "strong encryption flag": lambda d: patch_meta_entry(d, 8, 0x0040),
    "unknown compression method": lambda d: patch_meta_entry(d, 10, 99),
    "corrupt deflate stream": corrupt_deflated_meta,
}


@pytest.mark.parametrize("defect", list(ZIP_FEATURE_DEFECTS))
def test_meta_member_zip_defects(recording_bytes, tmp_path, defect):
    path = tmp_path / "z.lpr"
    path.write_bytes(ZIP_FEATURE_DEFECTS[defect](recording_bytes))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path)


@pytest.mark.parametrize(("offset", "value"), [(8, 0x0001), (8, 0x0040), (10, 99)])
def test_table_member_zip_defects_are_lockprof_errors(recording_bytes, tmp_path, offset, value):
    # The same header defects on a table member are handled (_read_table catches all).
    data = recording_bytes
    out = bytearray(data)
    struct.pack_into("<H", out, central_directory_entry(data, b"events.parquet") + offset, value)
    path = tmp_path / "z.lpr"
    path.write_bytes(bytes(out))
    assert_damaged(path, "events")


# -- fuzzing ------------------------------------------------------------------------------


def load_bytes(data: bytes) -> None:
    """load() data from a file: succeed, or raise a one-line LockprofError."""
    with tempfile.NamedTemporaryFile(suffix=".lpr") as handle:
        handle.write(data)
        handle.flush()
        try:
            recording.load(handle.name)
        except LockprofError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(handle.name)


@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(data):
    load_bytes(data)


@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_after_zip_magic(data):
    load_bytes(b"PK\x03\x04" + data)


def _known_zip_feature_bug(exc: BaseException) -> bool:
    """NotImplementedError/RuntimeError raised by zipfile itself while load()
    opens the archive or reads meta.json: the bug that the xfail test
    test_meta_member_zip_defects documents. Anything else fails the fuzz test."""
    if not isinstance(exc, NotImplementedError | RuntimeError):
        return False
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    in_load = any(
        name in ("load", "_read_meta") and file.endswith("recording.py") for file, name in frames
    )
    return in_load and frames[-1][0].endswith(("zipfile.py", "zipfile/__init__.py"))


@given(st.data())
def test_fuzz_mutated_real_recording(recording_bytes, data):
    blob = bytearray(recording_bytes)
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), min_size=1, max_size=8
        )
    )
    for offset, value in edits:
        blob[offset] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    if cut is not None:
        del blob[cut:]
    try:
        load_bytes(bytes(blob))
    except Exception as exc:
        if not _known_zip_feature_bug(exc):
            raise


@given(st.data())
def test_fuzz_mutated_members_with_valid_crcs(recording_bytes, data):
    """Raw byte flips mostly trip zip CRC checks; mutate one member's payload
    and re-zip it so the JSON and parquet readers see the damage."""
    contents = members(recording_bytes)
    name = data.draw(st.sampled_from(sorted(contents)))
    payload = bytearray(contents[name])
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(payload) - 1), st.integers(0, 255)), min_size=1, max_size=6
        )
    )
    for offset, value in edits:
        payload[offset] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(payload))))
    contents[name] = bytes(payload[:cut])
    load_bytes(rezip(contents))


# -- save failures --------------------------------------------------------------------------


@pytest.fixture
def rescue_dir(tmp_path, monkeypatch):
    """Where save() puts the rescue copy (tempfile's default directory)."""
    directory = tmp_path / "rescue"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def unwritable_targets(tmp_path):
    yield "missing directory", tmp_path / "no" / "such" / "dir" / "r.lpr"
    existing_dir = tmp_path / "is_a_dir.lpr"
    existing_dir.mkdir()
    yield "target is a directory", existing_dir
    if os.geteuid() != 0:  # root ignores directory permissions
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o500)
        yield "read-only directory", read_only / "r.lpr"


def test_save_failure_keeps_the_data_in_a_named_rescue_file(rec, tmp_path, rescue_dir):
    out = tmp_path / "out"
    out.mkdir()
    for why, target in unwritable_targets(out):
        with pytest.raises(LockprofError) as excinfo:
            recording.save(rec, target)
        message = str(excinfo.value)
        assert "\n" not in message, why
        assert message.startswith(f"cannot write recording to {target}"), why
        match = re.search(r"data kept in (\S+)$", message)
        assert match, why
        rescue = match.group(1)
        assert os.path.dirname(rescue) == str(rescue_dir), why
        assert stat.S_IMODE(os.stat(rescue).st_mode) == 0o600, why
        assert_same_recording(rec, recording.load(rescue))
        os.unlink(rescue)
    assert not any(out.rglob("*.lpr.*")), "temporary files left behind"


def test_check_writable(tmp_path):
    outputs.check_writable(tmp_path / "fine.lpr")
    with pytest.raises(LockprofError, match="does not exist"):
        outputs.check_writable(tmp_path / "missing" / "x.lpr")
    with pytest.raises(LockprofError, match="is a directory"):
        outputs.check_writable(tmp_path)


def test_rescue_falls_back_to_the_home_directory(rec, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(LockprofError) as excinfo:
        recording.save(rec, tmp_path / "missing" / "r.lpr")
    rescue = re.search(r"data kept in (\S+)$", str(excinfo.value)).group(1)
    assert os.path.dirname(rescue) == str(home)
    assert_same_recording(rec, recording.load(rescue))


def test_save_with_nowhere_to_keep_the_data_says_it_is_lost(rec, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    with pytest.raises(LockprofError) as excinfo:
        recording.save(rec, tmp_path / "missing" / "r.lpr")
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write recording to {tmp_path / 'missing' / 'r.lpr'} (")
    assert message.endswith("): the recording is lost")
    assert "no-such-tmp: No such file or directory" in message


def test_write_delay_test_hook(rec, tmp_path, monkeypatch, capsys):
    slept = []
    monkeypatch.setattr(recording.time, "sleep", slept.append)
    monkeypatch.setenv(recording.WRITE_DELAY_ENV, "1.5")
    recording.save(rec, tmp_path / "r.lpr")
    assert slept == [1.5]
    assert "pausing 1.5 s before the rename" in capsys.readouterr().err
    monkeypatch.delenv(recording.WRITE_DELAY_ENV)
    recording.save(rec, tmp_path / "r.lpr")
    assert slept == [1.5]


def test_check_writable_refuses_a_nearly_full_file_system(tmp_path, monkeypatch):
    real = os.statvfs(tmp_path)

    class Full:
        f_frsize = real.f_frsize
        f_bavail = (outputs.MIN_FREE_BYTES - 1) // real.f_frsize

    monkeypatch.setattr(outputs.os, "statvfs", lambda _path: Full)
    with pytest.raises(LockprofError, match=r"KiB free; a recording needs at least 1024 KiB"):
        outputs.check_writable(tmp_path / "r.lpr")


def test_check_writable_tries_a_file_where_access_cannot_tell(tmp_path, monkeypatch):
    def read_only(*_args, **_kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(outputs.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(
        LockprofError,
        match=r"cannot create a file in output directory .* \(Read-only file system\)",
    ):
        outputs.check_writable(tmp_path / "r.lpr")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_special_files_are_refused_without_reading(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "r.lpr"
        os.mkfifo(path)  # opening it would wait for a writer
    else:
        path = Path("/dev/zero")  # reading it would never end
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "not a lockprof recording (not a regular file)")


def test_members_that_claim_to_expand_enormously_are_refused(recording_bytes, tmp_path):
    data = bytearray(recording_bytes)
    at = central_directory_entry(recording_bytes, b"meta.json")
    struct.pack_into("<I", data, at + 24, 0xFFFFFFF0)  # uncompressed size: 4 GiB
    path = tmp_path / "bomb.lpr"
    path.write_bytes(bytes(data))
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, "corrupt recording: its members claim", "bytes")


# -- meta: what show and the reports read ----------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.sampled_from([*recording.META_KINDS, "lock_specs", "pre_exec_mmap_lock"]), _JSON)
def test_fuzz_meta_values_load_and_show_or_refuse(recording_bytes, key, value):
    """Any JSON value in a meta field: load refuses it in one line, or show,
    show --json and the CSV summary handle it."""
    from profiler import summary
    from profiler.cli.common import print_summary
    from profiler.cli.export import summary_table

    data = with_meta(recording_bytes, **{key: value})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.lpr"
        path.write_bytes(data)
        try:
            rec = recording.load(path)
        except LockprofError as exc:
            assert "\n" not in str(exc) and f"meta field {key}" in str(exc)
            return
    json.dumps(summary.summary_json(rec), default=str)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        print_summary(rec, as_json=False, top=None)
        print_summary(rec, as_json=True, top=None)
    summary_table(rec)


@pytest.mark.parametrize(
    "key, value, kind",
    [
        ("duration_s", "10", "a number >= 0"),
        ("cpus", True, "a CPU count (1 to 65,536)"),
        ("errors", {"ringbuf_full": "1"}, "counts by name"),
        ("rusage", {"user_s": [1]}, "figures by name"),
        # In range as well (QA pass: cpus 10**12 took `report` to the OOM
        # killer; negative figures were printed as they were).
        ("cpus", 10**12, "a CPU count (1 to 65,536)"),
        ("cpus", 0, "a CPU count"),
        ("duration_s", -5, "a number >= 0"),
        ("duration_s", float("inf"), "a number >= 0"),
        ("lost_events", -7, "an integer >= 0"),
        ("threshold_ns", 10**400, "an integer >= 0"),
        ("threshold_ns", -100, "an integer >= 0"),
        ("errors", {"stack": -3}, "counts by name"),
        ("rusage", {"elapsed_s": -1}, "figures by name"),
        ("exit_status", 300, "an exit status (-255 to 255)"),
        ("duration_s", 10**400, "a number >= 0"),  # no float holds it
        ("exit_status", -15, None),  # killed by SIGTERM, as older recordings say it
        ("command", "rm -rf /", "a list of text"),
        ("lineage", {"execs": [{"t_s": "soon"}]}, "children and execs"),
    ],
)
def test_meta_of_the_wrong_kind_is_one_line(recording_bytes, tmp_path, key, value, kind):
    path = tmp_path / "m.lpr"
    path.write_bytes(with_meta(recording_bytes, **{key: value}))
    if kind is None:
        assert recording.load(path).meta[key] == value
        return
    with pytest.raises(LockprofError) as excinfo:
        recording.load(path)
    assert_one_line_error(excinfo, path, f"corrupt recording: meta field {key} is not {kind}")


def test_tables_left_in_the_file_come_from_the_file_that_was_loaded(tmp_path, recording_bytes):
    """load(summary_only=True) leaves the intervals and events in the file:
    read later by name, a recording replaced meanwhile (a cron job
    re-recording to one name) gave `report` the summary of one and the
    events of the other."""
    from .helpers import DATA

    path = tmp_path / "same.lpr"
    shutil.copyfile(DATA / "hostile-comm.lpr", path)
    rec = recording.load(path, summary_only=True)
    expected = recording.load(DATA / "hostile-comm.lpr")
    other = tmp_path / "other.lpr"
    other.write_bytes(recording_bytes)
    os.replace(other, path)  # as a rename into place does
    assert len(rec.events) == len(expected.events) != len(recording.load(path).events)
    assert len(rec.intervals) == len(expected.intervals)


def test_events_a_moment_before_the_start_are_kept(rec, tmp_path):
    """An event of the moment between arming the probes and the run's start
    has a t_s a few ms below 0 (87 of 353 recordings on the dev machine):
    a range check on t_s left out the whole events table of such a run."""
    events = rec.events.copy()
    assert len(events)
    events.loc[events.index[0], "t_s"] = -0.0031
    rec.events = events
    loaded = recording.load(recording.save(rec, tmp_path / "early.lpr"))
    assert loaded.damaged == {} and len(loaded.events) == len(events)
    assert loaded.events["t_s"].min() == pytest.approx(-0.0031)


def test_a_recording_loaded_for_its_summary_lets_go_of_its_file(tmp_path):
    """load(summary_only=True) holds the file open for the tables left in
    it; close() (or a with block) lets go of it: 50 loads held 50 fds."""
    from .helpers import DATA

    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    with recording.load(DATA / "hostile-comm.lpr", summary_only=True) as rec:
        assert fds() == before + 1
        assert len(rec.events)  # read from the open file
    assert fds() == before
    rec = recording.load(DATA / "hostile-comm.lpr")  # read whole: nothing held
    assert fds() == before
    rec.close()
