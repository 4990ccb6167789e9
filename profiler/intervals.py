"""The intervals table as the recording holds it, built at the end of a
collection from the spooled interval records, a chunk at a time (as
events.py builds the events).

A system-wide run of two hours spooled 334k interval rows. Built as one
DataFrame, with the histogram slots as lists of Python ints, they took
lockprof to 1.7 GB and two minutes to exit (docs/reliability.md). Here each
chunk becomes a frame that goes to a SpilledTable (Parquet on an unlinked
temporary file, copied into the recording's archive), and into the
collapsed totals (aggregate.IntervalTotals) the final summary, the lock
names and the pre-exec note are computed from: memory follows the distinct
locks, not the length of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler import aggregate
from profiler.events import on_locks, without_locks
from profiler.recording import SpilledTable, gather_frames, spill_or_in_memory


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

    def frames() -> Iterator[pd.DataFrame]:
        for raw in chunks:
            totals.add_records(raw)
            yield without_locks(aggregate.records_frame(raw), hidden)

    frame, spilled = gather_frames(frames(), spill)
    every = totals.result()
    hidden_rows = on_locks(every, hidden) if hidden else np.zeros(len(every), dtype=bool)
    return BuiltIntervals(
        frame=frame,
        spilled=spilled,
        totals=every[~hidden_rows].reset_index(drop=True),
        hidden_totals=every[hidden_rows].reset_index(drop=True),
    )
