"""The event stream as the recording holds it: a DataFrame (EVENT_COLUMNS)
built from the kernel's struct lp_event records.

A system-wide run keeps up to --max-events (1,000,000) events. As one
DataFrame they are ~100 MB, and building it at once took lockprof from
~180 MB to ~495 MB at the end of the run. build_events() turns the spooled
records into frames a chunk at a time and writes each to a SpilledTable
(Parquet on an unlinked temporary file), which the recording copies into its
archive: memory holds one chunk, not the stream (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from profiler import schema
from profiler.recording import EVENT_COLUMNS, SpilledTable, gather_frames, spill_or_in_memory

# Records per chunk: 8k events are 0.5 MB raw and ~1 MB as a frame. Smaller
# chunks leave less behind in the allocators (docs/reliability.md), and the
# Parquet writer's buffers follow them: 85k events (a 10-minute system-wide
# run) took 21 MB over their records to build at 32k a chunk, 9 at 8k, in
# the same time.
CHUNK_ROWS = 8192


def on_locks(frame: pd.DataFrame, locks: set[int]) -> pd.Series:
    """Which rows of frame are about one of locks (kernel addresses are
    above 2**63: compared as uint64)."""
    return frame["lock"].astype("uint64").isin(np.array(sorted(locks), dtype=np.uint64))


def without_locks(frame: pd.DataFrame, locks: set[int]) -> pd.DataFrame:
    if not locks or frame.empty:
        return frame
    return frame[~on_locks(frame, locks)].reset_index(drop=True)


def events_frame(events: np.ndarray, start_ns: int) -> pd.DataFrame:
    """The frame of a structured array of struct lp_event records."""
    if len(events) == 0:
        return pd.DataFrame(
            {
                c: pd.Series(
                    dtype={"comm": "object", "kind": "object", "t_s": "float64"}.get(c, "int64")
                )
                for c in EVENT_COLUMNS
            }
        )
    return pd.DataFrame(
        {
            "t_s": (events["ts_ns"].astype(np.int64) - start_ns) / 1e9,
            "duration_ns": events["duration_ns"].astype(np.int64),
            "lock": events["lock"].astype(np.uint64),
            "tgid": events["tgid"].astype(np.int64),
            "tid": events["tid"].astype(np.int64),
            "cpu": events["cpu"].astype(np.int64),
            "stack_id": events["stack_id"].astype(np.int64),
            "flags": events["flags"].astype(np.int64),
            "source": events["source"].astype(np.int64),
            "kind": _shared_strings(
                np.array(["wait", "hold"]), events["kind"] == schema.const("LP_KIND_HOLD")
            ),
            "comm": _comms(events["comm"]),
        }
    )


def _comms(raw: np.ndarray) -> pd.Series:
    """The events' comms, decoded once per distinct comm: a million events
    hold a few dozen, and one string each cost ~160 MB at the end of a
    system-wide run (docs/reliability.md)."""
    raw = np.ascontiguousarray(raw)
    if raw.ndim == 2:  # char[16] as BCC's ctypes give it: 16 one-byte strings a row
        raw = raw.view(np.dtype((np.bytes_, raw.shape[1] * raw.dtype.itemsize))).reshape(-1)
    distinct, codes = np.unique(raw, return_inverse=True)
    decoded = [bytes(c).split(b"\0", 1)[0].decode(errors="replace") for c in distinct]
    # Distinct bytes can decode alike (invalid UTF-8 becomes U+FFFD).
    names, alike = np.unique(np.array(decoded, dtype=object), return_inverse=True)
    return _shared_strings(names, alike[codes])


def _shared_strings(names: np.ndarray, codes: np.ndarray) -> pd.Series:
    """A string column from per-row codes into names, without a Python
    string per row."""
    categories = pd.Index(names.tolist(), dtype="str")
    return pd.Series(pd.Categorical.from_codes(codes.astype(np.int64), categories)).astype("str")


@dataclass
class BuiltEvents:
    """The events table, in memory (frame) or spilled to Parquet (spilled),
    plus what the recording needs to know of the events left out."""

    frame: pd.DataFrame | None = None
    spilled: SpilledTable | None = None
    stack_ids: set[int] = field(default_factory=set)
    hidden: int = 0  # events on the hidden locks, left out


def build_events(
    chunks: Callable[[], Iterable[np.ndarray]], start_ns: int, hidden: set[int]
) -> BuiltEvents:
    """The events of chunks() (a fresh iteration over the spooled records at
    each call) without those on the hidden locks. One chunk stays in memory;
    more are spilled (recording.spill_or_in_memory)."""
    return spill_or_in_memory(lambda spill: _build(chunks(), start_ns, hidden, spill), "events")


def _build(
    chunks: Iterable[np.ndarray], start_ns: int, hidden: set[int], spill: bool
) -> BuiltEvents:
    built = BuiltEvents()

    def frames() -> Iterator[pd.DataFrame]:
        for raw in chunks:
            frame = events_frame(raw, start_ns)
            if hidden:
                built.hidden += int(on_locks(frame, hidden).sum())
                frame = without_locks(frame, hidden)
            built.stack_ids.update(np.unique(frame["stack_id"].to_numpy()).tolist())
            yield frame

    built.frame, built.spilled = gather_frames(frames(), spill)
    return built
