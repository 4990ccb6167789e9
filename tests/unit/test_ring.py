"""RingReader on a ring laid out as the kernel lays out a BPF ring buffer
(a memfd stands in for the map: no root, no BPF)."""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np
import pytest

from profiler.bpf import RingReader

EVENT = np.dtype([("ts_ns", "<u8"), ("lock", "<u8")])  # 16 bytes: records of 24
RECORD = 8 + EVENT.itemsize
SIZE = 4 * mmap.PAGESIZE


@pytest.fixture
def ring():
    """(reader, write(records, producer)) over a memfd: page 0 the consumer
    position, page 1 the producer position, then the data pages twice."""
    fd = os.memfd_create("lockprof-test-ring")
    os.ftruncate(fd, 2 * mmap.PAGESIZE + 2 * SIZE)
    raw = mmap.mmap(fd, 2 * mmap.PAGESIZE + 2 * SIZE)
    reader = RingReader(fd, SIZE, EVENT)

    def write(records: list[tuple[int, int, int]], start: int = 0) -> None:
        """records: (header bits, ts_ns, lock) from ring position start (the
        consumer's, set here too). The kernel maps the data pages twice in a
        row, so a record past the end continues in the second mapping: here
        the file's bytes after the first copy stand in for it."""
        struct.pack_into("<Q", raw, 0, start)
        offset = 2 * mmap.PAGESIZE + (start % SIZE)
        for bits, ts, lock in records:
            struct.pack_into("<IIQQ", raw, offset, EVENT.itemsize | bits, 0, ts, lock)
            offset += RECORD
        struct.pack_into("<Q", raw, mmap.PAGESIZE, start + len(records) * RECORD)

    yield reader, write
    reader.close()
    raw.close()
    os.close(fd)


def test_every_record_is_read_once_in_order(ring):
    reader, write = ring
    write([(0, 10, 1), (0, 20, 2), (0, 30, 3)])
    assert reader.fill() == 3 * RECORD
    events = reader.read()
    assert events["ts_ns"].tolist() == [10, 20, 30]
    assert events["lock"].tolist() == [1, 2, 3]
    assert reader.fill() == 0 and len(reader.read()) == 0
    # A copy: the kernel reuses the ring's bytes once they are consumed.
    write([(0, 99, 9), (0, 99, 9), (0, 99, 9)])
    assert events["ts_ns"].tolist() == [10, 20, 30]


def test_discarded_records_are_skipped_and_consumed(ring):
    reader, write = ring
    write([(0, 10, 1), (RingReader.DISCARD, 20, 2), (0, 30, 3)])
    events = reader.read()
    assert events["ts_ns"].tolist() == [10, 30]
    assert reader.fill() == 0


def test_reading_stops_at_a_record_still_being_written(ring):
    reader, write = ring
    write([(0, 10, 1), (RingReader.BUSY, 20, 2), (0, 30, 3)])
    assert reader.read()["ts_ns"].tolist() == [10]
    assert reader.fill() == 2 * RECORD  # the busy record and what follows wait


def test_a_record_that_wraps_past_the_end_is_read_whole(ring):
    """Positions only grow; the reader masks them into the ring. The second
    record here starts 8 bytes before the end and wraps."""
    reader, write = ring
    start = 3 * SIZE - RECORD - 8  # two laps and a bit: masks to SIZE - 32
    write([(0, 10, 1), (0, 20, 2), (0, 30, 3)], start=start)
    events = reader.read()
    assert events["ts_ns"].tolist() == [10, 20, 30]
    assert events["lock"].tolist() == [1, 2, 3]
    assert reader.fill() == 0
