"""profiler/spool.py: records spilled to an unlinked file come back in order,
and a disk that fails keeps them in memory instead of losing them."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from profiler.spool import RecordSpool

DTYPE = np.dtype([("ts_ns", np.uint64), ("lock", np.uint64), ("comm", "S16")])


def batch(start: int, n: int) -> np.ndarray:
    records = np.zeros(n, dtype=DTYPE)
    records["ts_ns"] = np.arange(start, start + n)
    records["lock"] = 0xFFFF888100000000 + records["ts_ns"]
    records["comm"] = [f"t{i}".encode() for i in range(start, start + n)]
    return records


def test_batches_come_back_in_order_from_an_unlinked_file(tmp_path):
    spool = RecordSpool(DTYPE, "events", directory=str(tmp_path))
    for start in (0, 5, 105):
        spool.append(batch(start, 100 if start == 5 else 5))
    spool.append(batch(0, 0))  # empty batches are nothing
    assert len(spool) == 110
    assert list(tmp_path.iterdir()) == []  # nothing named is left on disk
    got = spool.read()
    assert got["ts_ns"].tolist() == list(range(110))
    assert got["comm"][42] == b"t42"
    spool.append(batch(110, 1))  # reading does not end appending
    assert spool.read()["ts_ns"].tolist() == list(range(111))
    spool.clear()
    assert len(spool) == 0 and len(spool.read()) == 0


def test_empty_spool_reads_an_empty_array_of_its_dtype():
    got = RecordSpool(DTYPE, "events").read()
    assert got.dtype == DTYPE and len(got) == 0


class FailingFile:
    """A file whose writes fail with ENOSPC after `room` bytes, writing part
    of the batch that hits the limit, as a full disk does."""

    def __init__(self, room: int) -> None:
        self.data = bytearray()
        self.room = room

    def write(self, data) -> int:
        left = self.room - len(self.data)
        if left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        part = bytes(data[:left])
        self.data += part
        return len(part)

    def seek(self, offset: int, whence: int = 0) -> None:
        self.pos = offset if whence == 0 else len(self.data)

    def readinto(self, view) -> int:
        chunk = self.data[self.pos : self.pos + len(view)]
        view[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def close(self) -> None:
        pass


def test_a_full_disk_keeps_later_records_in_memory_with_one_warning(capsys):
    spool = RecordSpool(DTYPE, "events")
    spool._file = FailingFile(room=DTYPE.itemsize * 7 + 3)  # 7 records and a part
    spool.append(batch(0, 5))  # fits
    spool.append(batch(5, 5))  # 2 fit, then the disk is full mid-record
    spool.append(batch(10, 5))
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "cannot spill events" in warning
    assert "No space left" in warning
    got = spool.read()
    assert got["ts_ns"].tolist() == list(range(15))  # nothing lost, nothing twice


@pytest.mark.parametrize("n", [1, 1000])
def test_records_survive_the_round_trip_bit_for_bit(n):
    spool = RecordSpool(DTYPE, "events")
    original = batch(7, n)
    spool.append(original)
    assert spool.read().tobytes() == original.tobytes()


@pytest.mark.parametrize("rows", [1, 3, 7, 16, 1000])
def test_chunks_give_every_record_in_order_at_most_rows_at_a_time(rows):
    """From disk and, after a disk failure, from memory: the same records as
    read(), each chunk a separate array (the events are built a chunk at a
    time so that memory never holds them all)."""
    spool = RecordSpool(DTYPE, "events")
    spool._file = FailingFile(room=DTYPE.itemsize * 7 + 3)
    for start in (0, 5, 10):
        spool.append(batch(start, 5))
    spool.append(batch(15, 4))
    chunks = list(spool.chunks(rows))
    assert all(0 < len(c) <= rows for c in chunks)
    assert np.concatenate(chunks).tobytes() == spool.read().tobytes()
    assert [r for c in chunks for r in c["ts_ns"].tolist()] == list(range(19))
    chunks[0]["ts_ns"] = 99  # a chunk is a copy: the spool is untouched
    assert spool.read()["ts_ns"][0] == 0
    assert len(spool) == 19  # chunks() does not empty the spool


def test_chunks_of_an_empty_spool():
    assert list(RecordSpool(DTYPE, "events").chunks(10)) == []


def test_a_spill_file_that_cannot_be_read_back_is_one_error_not_a_write_failure(tmp_path, capsys):
    """A spill file shorter than what was written is not the disk refusing a
    write: the build must not say "cannot write" and retry in memory (which
    reads the same file), but end with one error naming the spool."""
    from profiler.errors import LockprofError
    from profiler.recording import spill_or_in_memory

    spool = RecordSpool(DTYPE, "interval rows", directory=str(tmp_path))
    spool.append(batch(0, 50))
    spool._file.truncate(10 * DTYPE.itemsize)  # what a lost write-back would leave
    attempts = []

    def build(spill: bool) -> int:
        attempts.append(spill)
        return sum(len(chunk) for chunk in spool.chunks(20))

    with pytest.raises(LockprofError, match="interval rows spill file is shorter than written"):
        spill_or_in_memory(build, "interval rows")
    assert attempts == [True]
    assert "cannot write" not in capsys.readouterr().err
    with pytest.raises(LockprofError, match="shorter than written"):
        spool.read()
