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
    """Estimated q-quantile (0 < q <= 1) in ns, or None for an empty histogram."""
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
    if slot == len(counts) - 1 and max_ns is not None:
        high = max(float(max_ns), low)
    fraction = (rank - below) / counts[slot] if counts[slot] else 1.0
    value = low + (high - low) * fraction
    if max_ns is not None:
        value = min(value, float(max_ns))
    return value


def summarize(count: int, total_ns: int, max_ns: int, slots: Sequence[int] | np.ndarray) -> dict:
    """{count, total, avg, p50, p99, max} in ns; figures are None when count is 0."""
    if count == 0:
        return {"count": 0, "total": 0, "avg": None, "p50": None, "p99": None, "max": None}
    return {
        "count": int(count),
        "total": int(total_ns),
        "avg": total_ns / count,
        "p50": percentile(slots, 0.50, max_ns),
        "p99": percentile(slots, 0.99, max_ns),
        "max": int(max_ns),
    }
