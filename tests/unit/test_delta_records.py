"""aggregate.delta_records (numpy) against the per-row algorithm it replaced.

The oracle below is lockprof's interval_rows / _merged_rows / interval_max /
interval_records as they were before delta_records (commit 3fe36db): a dict
per (lock row, active CPU), then those dicts as records. delta_records must
give the same records, in the same order, for any pair of snapshots.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiler import aggregate, session

from .helpers import Snap, interval_records, record_dicts

INT64_MAX = 2**63 - 1
LOCKS = [0xFFFF888100000100, 0xFFFFFFFF830F3100, 2**64 - 1, 0x1000, 0]
FLAGS = [1, 2, 4, 32]
SOURCES = [0, 1]

# -- the oracle: the per-row algorithm (before delta_records) ---------------------


def _column_index(columns: list[str]) -> dict[str, int | list[int]]:
    where: dict[str, int | list[int]] = {}
    for name in aggregate.COUNTER_COLUMNS:
        where[name] = columns.index(name)
    for h in ("wait", "hold"):
        where[f"{h}_count"] = columns.index(f"{h}.count")
        where[f"{h}_total_ns"] = columns.index(f"{h}.total_ns")
        where[f"{h}_running_max_ns"] = columns.index(f"{h}.max_ns")
        where[f"{h}_slots"] = [i for i, c in enumerate(columns) if c.startswith(f"{h}.slots[")]
    return where


def _interval_max(running_before: int, running_now: int, samples: int) -> int | None:
    if running_now > INT64_MAX:
        return None
    if running_now > running_before:
        return running_now
    if running_now == 0 and samples > 0:
        return 0
    return None


def oracle_rows(previous, current, columns, interval, t_s) -> list[dict]:
    where = _column_index(columns)
    maxima = [
        (f"{h}_max_ns", columns.index(f"{h}.max_ns"), columns.index(f"{h}.count"))
        for h in ("wait", "hold")
    ]
    active_cols = [columns.index(c) for c in ("wait.count", "hold.count", "failures")]
    rows = []
    for key, now in current.items():
        before = previous.get(key)
        if before is None:
            before = np.zeros_like(now)
        delta = now.astype(np.int64) - before.astype(np.int64)
        for _name, max_col, _count_col in maxima:
            delta[:, max_col] = np.minimum(now[:, max_col], INT64_MAX)
        activity = delta[:, active_cols]
        for cpu in np.nonzero(activity.sum(axis=1))[0]:
            d = delta[cpu]
            row: dict = {
                "interval": interval,
                "t_s": t_s,
                "lock": key[0],
                "flags": key[1],
                "source": key[2],
                "cpu": int(cpu),
            }
            for name, index in where.items():
                row[name] = d[index].tolist() if isinstance(index, list) else int(d[index])
            for name, max_col, count_col in maxima:
                row[name] = _interval_max(
                    int(before[cpu, max_col]), int(now[cpu, max_col]), int(d[count_col])
                )
            rows.append(row)
    if len({key[:3] for key in current}) < len(current):
        rows = _merged_rows(rows)
    return rows


_MERGE_KEPT = ("interval", "t_s", "lock", "flags", "source", "cpu")


def _merged_rows(rows: list[dict]) -> list[dict]:
    merged: dict[tuple, dict] = {}
    for row in rows:
        ident = (row["lock"], row["flags"], row["source"], row["cpu"])
        into = merged.get(ident)
        if into is None:
            merged[ident] = row
            continue
        for h in ("wait", "hold"):
            into[f"{h}_max_ns"] = _interval_max_of_both(into, row, h)
            running = f"{h}_running_max_ns"
            into[running] = max(into[running], row[running])
        for name, value in row.items():
            if name in _MERGE_KEPT or name.endswith("max_ns"):
                continue
            if name.endswith("_slots"):
                into[name] = [a + b for a, b in zip(into[name], value, strict=True)]
            else:
                into[name] += value
    return list(merged.values())


def _interval_max_of_both(a: dict, b: dict, h: str) -> int | None:
    if not b[f"{h}_count"]:
        return a[f"{h}_max_ns"]
    if not a[f"{h}_count"]:
        return b[f"{h}_max_ns"]
    if a[f"{h}_max_ns"] is None or b[f"{h}_max_ns"] is None:
        return None
    return max(a[f"{h}_max_ns"], b[f"{h}_max_ns"])


def oracle_records(previous, current, columns, interval, t_s) -> np.ndarray:
    """oracle_rows as records, as _Collected.keep spooled them."""
    return interval_records(oracle_rows(previous, current, columns, interval, t_s))


# -- random snapshot pairs ---------------------------------------------------------


def _cumulative(rng, cpus: int, columns: list[str]) -> np.ndarray:
    """A row's cumulative figures: most CPUs and cells zero, small counts
    (so that deltas and maxima are often 0), now and then one >= 2**63."""
    values = np.zeros((cpus, len(columns)), dtype=np.uint64)
    used = rng.random(cpus) < rng.choice([0.0, 0.3, 1.0])
    cells = used[:, None] & (rng.random(values.shape) < 0.3)
    values[cells] = rng.integers(0, 4, cells.sum(), dtype=np.uint64)
    huge = rng.random(values.shape) < 0.003
    values[huge] = rng.integers(2**63, 2**64 - 1, huge.sum(), dtype=np.uint64, endpoint=True)
    return values


def _later(rng, before: np.ndarray, columns: list[str]) -> np.ndarray:
    """The same row one interval later: counters up by a little on some
    CPUs, some going backwards, running maxima raised, kept, lowered or
    corrupt (>= 2**63)."""
    now = before.copy()
    grew = rng.random(now.shape) < rng.choice([0.0, 0.05, 0.4])
    now[grew] += rng.integers(1, 4, grew.sum(), dtype=np.uint64)
    back = rng.random(now.shape) < 0.02
    now[back] -= rng.integers(1, 6, back.sum(), dtype=np.uint64)  # wraps below zero
    for h in ("wait", "hold"):
        running, count = columns.index(f"{h}.max_ns"), columns.index(f"{h}.count")
        choice = rng.integers(0, 6, len(now))
        now[choice == 0, running] = 0  # samples of 0 ns, or none
        now[choice == 1, running] += np.uint64(7)
        now[choice == 2, running] = rng.integers(2**63, 2**64 - 1, dtype=np.uint64)
        now[choice == 3, count] += np.uint64(1)
    # A wait counted and a failure uncounted: the activity sums to zero.
    if rng.random() < 0.3:
        cpu = rng.integers(len(now), size=1)  # an array: wraps without a warning
        now[cpu, columns.index("wait.count")] += np.uint64(1)
        now[cpu, columns.index("failures")] -= np.uint64(1)
    return now


def random_pair(seed: int, cpus: int, keys: int, columns: list[str]) -> tuple[dict, dict]:
    """(previous, current): keys rows of current, some (lock, flags, source)
    held at two or three indexes, some new since previous; previous also
    holds rows gone from current."""
    rng = np.random.default_rng(seed)
    pool = max(1, keys // rng.choice([1, 2, 3]))
    idents = [
        ((int(rng.choice(LOCKS)) + 64 * int(rng.integers(0, 3))) % 2**64,
         int(rng.choice(FLAGS)), int(rng.choice(SOURCES)))
        for _ in range(pool)
    ]  # fmt: skip
    indexes = rng.permutation(4 * keys + 8)
    previous: dict = {}
    current: dict = {}
    for n in range(keys):
        ident = idents[int(rng.integers(0, pool))] if n >= pool else idents[n]
        key = (*ident, int(indexes[n]))
        if key in current:
            continue
        before = _cumulative(rng, cpus, columns)
        if rng.random() < 0.8:
            previous[key] = before
        else:
            before = np.zeros_like(before)  # new: from zero
        current[key] = _later(rng, before, columns)
    for n in range(int(rng.integers(0, 3))):  # gone from current
        key = (*idents[0], int(indexes[keys + n]))
        previous[key] = _cumulative(rng, cpus, columns)
    return previous, current


def assert_same_records(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    assert len(got) == len(want)
    for column in aggregate.INTERVAL_COLUMNS:
        assert np.array_equal(got[column], want[column]), column


# -- delta_records == the oracle ---------------------------------------------------


@given(
    seed=st.integers(0, 2**32 - 1),
    cpus=st.integers(1, 64),
    keys=st.integers(0, 24),
    interval=st.integers(0, 10**6),
    t_s=st.floats(0, 1e6, allow_nan=False),
)
def test_delta_records_are_the_per_row_algorithms(stats_columns, seed, cpus, keys, interval, t_s):
    previous, current = random_pair(seed, cpus, keys, stats_columns)
    try:
        want = oracle_records(previous, current, stats_columns, interval, t_s)
    except OverflowError:
        # Two merged deltas past int64: the old code failed the interval
        # (see test_merged_deltas_past_int64_wrap); delta_records wraps.
        return
    got = aggregate.delta_records(previous, current, stats_columns, interval, t_s)
    assert_same_records(got, want)


@pytest.mark.parametrize("cpus", [1, 2, 3, 17, 64])
def test_delta_records_over_many_seeds(stats_columns, cpus):
    """Not only hypothesis' examples: 300 seeded pairs for each of a few CPU
    counts, with merged keys (an ident pool smaller than the keys)."""
    compared = 0
    for seed in range(300):
        previous, current = random_pair(seed, cpus, 1 + seed % 20, stats_columns)
        try:
            want = oracle_records(previous, current, stats_columns, seed, seed / 7)
        except OverflowError:
            continue
        got = aggregate.delta_records(previous, current, stats_columns, seed, seed / 7)
        assert_same_records(got, want)
        compared += len(want)
    assert compared > 1000


def test_the_random_pairs_cover_the_cases(stats_columns):
    """The generator makes what the comparisons are meant to cover."""
    seen = dict.fromkeys(
        ["merged", "negative", "unknown max", "zero max", "known max", "capped", "new key", "gone"],
        False,
    )
    for seed in range(300):
        previous, current = random_pair(seed, 1 + seed % 64, 1 + seed % 20, stats_columns)
        try:
            rows = oracle_rows(previous, current, stats_columns, 1, 1.0)
        except OverflowError:
            continue
        seen["merged"] |= len({key[:3] for key in current}) < len(current) and bool(rows)
        seen["new key"] |= any(key not in previous for key in current)
        seen["gone"] |= any(key not in current for key in previous)
        for row in rows:
            seen["negative"] |= row["acquisitions"] < 0 or min(row["wait_slots"]) < 0
            seen["unknown max"] |= row["wait_max_ns"] is None
            seen["zero max"] |= row["wait_max_ns"] == 0
            seen["known max"] |= bool(row["wait_max_ns"])
            seen["capped"] |= row["hold_running_max_ns"] == INT64_MAX
    assert all(seen.values()), seen


def test_merged_deltas_past_int64_wrap(stats_columns):
    """A key at two indexes whose two deltas add up past int64 (counters
    gone backwards by ~2**63 at both): the old code raised OverflowError
    and lost the interval; the sum wraps, as the deltas themselves do."""
    key = (0x1000, 4, 0)
    s = Snap(stats_columns, cpus=1)
    s.set(key, 0, {"acquisitions": 2**63 + 1, "wait.count": 1})
    before = s.copy()
    previous = {(*key, 0): before[(*key, 0)], (*key, 1): before[(*key, 0)].copy()}
    now = np.zeros((1, len(stats_columns)), dtype=np.uint64)
    now[0, stats_columns.index("wait.count")] = 2
    current = {(*key, 0): now, (*key, 1): now.copy()}
    with pytest.raises(OverflowError):
        oracle_records(previous, current, stats_columns, 1, 1.0)
    (record,) = aggregate.delta_records(previous, current, stats_columns, 1, 1.0)
    each = (0 - (2**63 + 1)) % 2**64  # 2**63 - 1, as int64
    assert record["acquisitions"] == (2 * each + 2**63) % 2**64 - 2**63 == -2
    assert record["wait_count"] == 2


def test_three_indexes_of_one_key_fold_in_order(stats_columns):
    """(a + b) + c, as the old fold: b's interval maximum is unknown, so
    a + b's is; but a + b's count is zero (b's went backwards), so c's
    maximum (known: raised to 90) is the result, not unknown."""
    key = (0x2000, 4, 0)
    rows = {}
    for index, (count, running) in enumerate(((1, 50), (2**64 - 1, 0), (3, 90))):
        values = np.zeros((2, len(stats_columns)), dtype=np.uint64)
        values[1, stats_columns.index("wait.count")] = count
        values[1, stats_columns.index("wait.max_ns")] = running
        rows[(*key, index)] = values
    previous = {(*key, 2): rows[(*key, 2)].copy()}
    previous[(*key, 2)][1, stats_columns.index("wait.count")] = 1  # c: 2 samples ...
    previous[(*key, 2)][1, stats_columns.index("wait.max_ns")] = 10  # ... raising it
    want = oracle_records(previous, rows, stats_columns, 1, 1.0)
    got = aggregate.delta_records(previous, rows, stats_columns, 1, 1.0)
    assert_same_records(got, want)
    assert got["wait_count"].tolist() == [2] and got["cpu"].tolist() == [1]
    assert got["wait_max_ns"].tolist() == [90]
    assert got["wait_running_max_ns"].tolist() == [90]


def test_snapshots_of_different_numbers_of_cpus_are_refused(stats_columns):
    def ones(cpus: int) -> np.ndarray:
        return np.ones((cpus, len(stats_columns)), dtype=np.uint64)

    rows = {(1, 2, 0, 0): ones(2), (1, 2, 0, 1): ones(3)}
    with pytest.raises(ValueError, match="numbers of CPUs"):
        aggregate.delta_records({}, rows, stats_columns, 1, 1.0)
    # The same total, differently split: not taken for the same CPUs.
    previous = {(1, 2, 0, 0): ones(3), (1, 2, 0, 1): ones(1)}
    with pytest.raises(ValueError, match="numbers of CPUs"):
        aggregate.delta_records(previous, {key: ones(2) for key in previous}, stats_columns, 1, 1)


def test_an_empty_snapshot_gives_no_records(stats_columns):
    records = aggregate.delta_records({}, {}, stats_columns, 1, 1.0)
    assert len(records) == 0 and records.dtype == aggregate.interval_record_dtype()


# -- the collection's interval -----------------------------------------------------


class _StatsSession:
    """BpfSession's read_stats, of a given snapshot (rows, columns)."""

    def __init__(self, rows: dict, columns: list[str]) -> None:
        self.rows, self.columns = rows, columns

    def read_stats(self, ts_ns: int):
        return self


@pytest.mark.parametrize("seed", range(20))
def test_an_interval_spools_the_records_and_marks_their_keys_active(stats_columns, seed):
    previous, current = random_pair(seed, 1 + seed * 3, 12, stats_columns)
    try:
        rows = oracle_rows(previous, current, stats_columns, 4, 2.5)
    except OverflowError:
        return
    state = session._Collected(interval=3)
    state.previous = previous
    state.last_active = {(7, 7, 7): 1.0}
    session._take_interval(_StatsSession(current, stats_columns), state, 2.5)
    assert state.previous is current
    assert_same_records(
        state.spool.read(), oracle_records(previous, current, stats_columns, 4, 2.5)
    )
    # What the old loop over the rows did: every row's key, this interval.
    want = {(7, 7, 7): 1.0} | {(r["lock"], r["flags"], r["source"]): 2.5 for r in rows}
    assert state.last_active == want
    assert all(type(v) is int for key in state.last_active for v in key)
    state.spool.close()


def test_record_dicts_are_the_old_rows(stats_columns):
    """tests/unit/helpers.record_dicts, which the older tests read rows
    with, gives the old dicts (lists, Python ints, None)."""
    previous, current = random_pair(5, 4, 16, stats_columns)
    want = oracle_rows(previous, current, stats_columns, 1, 0.5)
    assert record_dicts(aggregate.delta_records(previous, current, stats_columns, 1, 0.5)) == want
