"""The intervals table as the recording holds it, built at the end of a
collection from the spooled interval records, a chunk at a time (as
events.py builds the events).

A system-wide run of two hours spooled 334k interval rows. Built as one
DataFrame, with the histogram slots as lists of Python ints, they took
lockprof to 1.7 GB and two minutes to exit (docs/reliability.md). Here each
chunk becomes an Arrow table, built from the records' arrays, that goes to
a SpilledTable (Parquet on an unlinked temporary file, copied into the
recording's archive); its records also go into the
collapsed totals (aggregate.IntervalTotals) the final summary, the lock
names and the pre-exec note are computed from: memory follows the distinct
locks, not the length of the run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from profiler import aggregate
from profiler.events import on_locks
from profiler.recording import SpilledTable, spill_or_in_memory

# Interval records per chunk. Each chunk is written as one Parquet row group,
# and the writer's buffers follow the chunk: a record (~800 bytes) carries
# two histograms, and building a 10-minute run's intervals (30k records)
# took ~50 MB more than the records at 16k a chunk, 35 at 8k, 25 at 4k, 23
# at 2k (bench/endrun.py's end of run, its intervals from that recording).
CHUNK_ROWS = 4096


@dataclass
class BuiltIntervals:
    """The intervals table, in memory (frame) or spilled to Parquet
    (spilled), with its totals (Recording.interval_totals) and the totals of
    the hidden locks' rows, which the table leaves out."""

    frame: pd.DataFrame | None
    spilled: SpilledTable | None
    totals: pd.DataFrame
    hidden_totals: pd.DataFrame


def build_intervals(chunks: Callable[[], Iterable[np.ndarray]], hidden: set[int]) -> BuiltIntervals:
    """The interval rows of chunks() (a fresh iteration over the spooled
    records at each call) without those on the hidden locks."""
    return spill_or_in_memory(lambda spill: _build(chunks(), hidden, spill), "interval rows")


def _build(chunks: Iterable[np.ndarray], hidden: set[int], spill: bool) -> BuiltIntervals:
    totals = aggregate.IntervalTotals()
    hidden_locks = np.array(sorted(hidden), dtype=np.uint64)
    kept: list[np.ndarray] = []
    spilled: SpilledTable | None = None
    try:
        for raw in chunks:
            totals.add_records(raw)
            if len(hidden_locks):
                raw = raw[~np.isin(raw["lock"], hidden_locks)]
            # Every chunk goes to the file (when spill), as an Arrow table
            # built from its records' arrays. Even one chunk: as a frame,
            # its histograms are a numpy array per row, and a 10-minute
            # run's 30k rows took ~50 MB to build and ~90 MB to write
            # (pyarrow's conversion of those cells) at the end of the run.
            if spill:
                spilled = spilled or SpilledTable()
                spilled.append_table(records_table(raw))
            else:
                kept.append(raw)
        if spilled is not None:
            spilled.finish()
    except BaseException:
        if spilled is not None:
            spilled.close()
        raise
    frame = None
    if spilled is None:
        none = np.zeros(0, dtype=aggregate.interval_record_dtype())
        frame = aggregate.records_frame(np.concatenate(kept) if kept else none)
    every = totals.result()
    hidden_rows = on_locks(every, hidden) if hidden else np.zeros(len(every), dtype=bool)
    return BuiltIntervals(
        frame=frame,
        spilled=spilled,
        totals=every[~hidden_rows].reset_index(drop=True),
        hidden_totals=every[hidden_rows].reset_index(drop=True),
    )


def records_table(records: np.ndarray) -> pa.Table:
    """The Arrow table of interval records: the table of their frame
    (aggregate.records_frame), built from the records' arrays as they are.
    Through the frame, each chunk's histograms became 65k numpy row views,
    then Arrow list cells: a 2-hour run's end of run held ~140 MB more."""
    arrays = []
    for column in aggregate.INTERVAL_COLUMNS:
        values = np.ascontiguousarray(records[column])
        if column.endswith("_slots"):
            width = values.shape[1]
            offsets = np.arange(0, len(values) * width + 1, width, dtype=np.int32)
            arrays.append(pa.ListArray.from_arrays(offsets, values.reshape(-1)))
        elif column in aggregate.INTERVAL_MAX_COLUMNS:
            arrays.append(pa.array(values, mask=values == aggregate.UNKNOWN_MAX))
        else:
            arrays.append(pa.array(values))
    return pa.Table.from_arrays(arrays, schema=_records_schema())


@functools.cache
def _records_schema() -> pa.Schema:
    """The Arrow schema of an intervals frame, with the pandas metadata that
    gives the frame back its dtypes (Int64 maxima) when read."""
    one = np.zeros(1, dtype=aggregate.interval_record_dtype())
    return pa.Table.from_pandas(aggregate.records_frame(one), preserve_index=False).schema
