"""Log2 histograms of nanoseconds, as the BPF side fills them.

Slot 0 holds 0 ns; slot s >= 1 holds [2^(s-1), 2^s) ns; the last slot also
holds everything larger. Percentiles are estimated by linear interpolation
inside the slot and clamped to the exact maximum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def slot_bounds(slot: int) -> tuple[float, float]:
    """[low, high) nanoseconds covered by a slot (the last slot is open-ended)."""
    if slot == 0:
        return 0.0, 1.0
    return float(2 ** (slot - 1)), float(2**slot)


def slot_of(ns: int, nslots: int) -> int:
    """The slot the BPF side puts ns in (mirror of lp_slot())."""
    return 0 if ns <= 0 else min(int(ns).bit_length(), nslots - 1)


def percentile(
    slots: Sequence[int] | np.ndarray, q: float, max_ns: int | None = None
) -> float | None:
    """Estimated q-quantile (0 < q <= 1) in ns, or None for an empty histogram.

    Interpolated within the quantile's log2 bucket. With the exact maximum
    known: the bucket holding it spans low..max (no sample lies above it),
    and a quantile whose rank falls on the largest sample is the maximum
    itself (one wait of 478 ns has p50 478 ns, not 384)."""
    counts = np.asarray(slots, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    rank = q * total
    cumulative = np.cumsum(counts)
    slot = int(np.searchsorted(cumulative, rank, side="left"))
    slot = min(slot, len(counts) - 1)
    below = cumulative[slot - 1] if slot > 0 else 0.0
    low, high = slot_bounds(slot)
    if max_ns is not None and (float(max_ns) < high or slot == len(counts) - 1):
        high = max(float(max_ns), low)
    fraction = (rank - below) / counts[slot] if counts[slot] else 1.0
    value = low + (high - low) * fraction
    if max_ns is not None:
        if rank > total - 1:
            return float(max_ns)  # the largest sample's rank
        value = min(value, float(max_ns))
    return value


def percentiles(slots: np.ndarray, q: float, max_ns: np.ndarray) -> np.ndarray:
    """percentile() of each row of a (rows, slots) array at once, with each
    row's maximum; NaN for an empty histogram. The same arithmetic, so the
    same figures: a summary of 78k lock rows took 3 s one row at a time."""
    counts = np.asarray(slots, dtype=np.float64)
    rows, nslots = counts.shape
    cumulative = np.cumsum(counts, axis=1)
    total = cumulative[:, -1]
    rank = q * total
    slot = np.minimum((cumulative < rank[:, None]).sum(axis=1), nslots - 1)
    at = np.arange(rows)
    below = np.where(slot > 0, cumulative[at, np.maximum(slot - 1, 0)], 0.0)
    low = np.where(slot == 0, 0.0, np.exp2(slot - 1.0))
    high = np.where(slot == 0, 1.0, np.exp2(slot.astype(np.float64)))
    largest = np.asarray(max_ns, dtype=np.float64)
    high = np.where((largest < high) | (slot == nslots - 1), np.maximum(largest, low), high)
    in_slot = counts[at, slot]
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(in_slot != 0, (rank - below) / in_slot, 1.0)
    value = np.minimum(low + (high - low) * fraction, largest)
    value = np.where(rank > total - 1, largest, value)  # the largest sample's rank
    return np.where(total > 0, value, np.nan)


def summarize(
    count: int,
    total_ns: int,
    max_ns: int,
    slots: Sequence[int] | np.ndarray,
    p50: float | None = None,
    p99: float | None = None,
) -> dict:
    """{count, total, avg, p50, p99, max} in ns; figures are None when count
    is 0. p50 and p99 may come precomputed (percentiles(); NaN: none)."""
    if count == 0:
        return {"count": 0, "total": 0, "avg": None, "p50": None, "p99": None, "max": None}
    return {
        "count": int(count),
        "total": int(total_ns),
        "avg": total_ns / count,
        "p50": percentile(slots, 0.50, max_ns) if p50 is None else _known(p50),
        "p99": percentile(slots, 0.99, max_ns) if p99 is None else _known(p99),
        "max": int(max_ns),
    }


def _known(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
