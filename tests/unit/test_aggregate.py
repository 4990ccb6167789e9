"""profiler.aggregate: snapshot deltas, lock naming and the summary rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from profiler import aggregate, schema

from .helpers import EMPTY_CALLERS, intervals_frame, record_dicts

READ, WRITE, SPIN, PERCPU, MUTEX = 2, 4, 1, 16, 32
SRC_MMAP, SRC_CONT = 0, 1
MM_LOCK = 0xFFFF888100000100  # kernel addresses are above 2^63
OTHER_LOCK = 0xFFFFFFFF830F3100
SLOTS = schema.const("LP_HIST_SLOTS")


# -- delta_records ------------------------------------------------------------------


def test_first_interval_is_the_snapshot_itself(snap, stats_columns):
    s = snap(cpus=2)
    key = (MM_LOCK, WRITE, SRC_MMAP)
    s.set(
        key,
        1,
        {
            "acquisitions": 3,
            "releases": 2,
            "wait.count": 3,
            "wait.total_ns": 900,
            "wait.max_ns": 500,
            "wait.slots[9]": 3,
            "hold.count": 2,
            "hold.total_ns": 4000,
            "hold.max_ns": 3000,
            "hold.slots[12]": 2,
        },
    )
    rows = record_dicts(aggregate.delta_records({}, s.copy(), stats_columns, 1, 0.5))
    assert len(rows) == 1  # cpu 0 had no activity: no row
    row = rows[0]
    assert (row["interval"], row["t_s"], row["lock"], row["flags"], row["source"], row["cpu"]) == (
        1,
        0.5,
        MM_LOCK,
        WRITE,
        SRC_MMAP,
        1,
    )
    assert (
        row["acquisitions"],
        row["releases"],
        row["contended"],
        row["downgrades"],
        row["failures"],
    ) == (3, 2, 0, 0, 0)
    assert (row["wait_count"], row["wait_total_ns"], row["wait_max_ns"]) == (3, 900, 500)
    assert (row["hold_count"], row["hold_total_ns"], row["hold_max_ns"]) == (2, 4000, 3000)
    # The first interval's maximum is the running maximum.
    assert (row["wait_running_max_ns"], row["hold_running_max_ns"]) == (500, 3000)
    assert row["wait_slots"] == [3 if i == 9 else 0 for i in range(SLOTS)]
    assert row["hold_slots"] == [2 if i == 12 else 0 for i in range(SLOTS)]
    assert set(row) == set(aggregate.INTERVAL_COLUMNS)
    assert all(type(row[c]) is int for c in aggregate.COUNTER_COLUMNS)


def test_deltas_between_cumulative_snapshots(snap, stats_columns):
    s = snap(cpus=1)
    key = (MM_LOCK, READ, SRC_MMAP)
    s.set(
        key,
        0,
        {
            "acquisitions": 10,
            "releases": 9,
            "wait.count": 10,
            "wait.total_ns": 1000,
            "wait.max_ns": 50,
            "wait.slots[5]": 10,
            "hold.count": 9,
            "hold.total_ns": 9000,
            "hold.max_ns": 2000,
            "hold.slots[10]": 9,
        },
    )
    before = s.copy()
    s.set(
        key,
        0,
        {
            "acquisitions": 15,
            "releases": 15,
            "wait.count": 15,
            "wait.total_ns": 1600,
            "wait.max_ns": 120,
            "wait.slots[5]": 12,
            "wait.slots[7]": 3,
            "hold.count": 15,
            "hold.total_ns": 9600,
            "hold.max_ns": 2000,
            "hold.slots[10]": 15,
        },
    )
    (row,) = record_dicts(aggregate.delta_records(before, s.copy(), stats_columns, 2, 2.0))
    assert (row["acquisitions"], row["releases"]) == (5, 6)
    assert (row["wait_count"], row["wait_total_ns"]) == (5, 600)
    assert (row["hold_count"], row["hold_total_ns"]) == (6, 600)
    assert row["wait_slots"][5] == 2 and row["wait_slots"][7] == 3 and sum(row["wait_slots"]) == 5
    assert row["hold_slots"][10] == 6 and sum(row["hold_slots"]) == 6
    # A maximum cannot be differenced. The running maximum since the start:
    assert (row["wait_running_max_ns"], row["hold_running_max_ns"]) == (120, 2000)
    # The interval's own maximum: the wait maximum rose from 50 to 120, so a
    # wait of 120 ns happened in this interval and none longer ...
    assert row["wait_max_ns"] == 120
    # ... the hold maximum did not move: this interval's holds were all
    # <= 2000 ns, but how long the longest was is unknown, not 2000 or 0.
    assert row["hold_max_ns"] is None


@pytest.mark.parametrize(
    ("before", "now", "samples", "expected"),
    [
        (0, 0, 0, None),  # no sample
        (0, 0, 4, 0),  # every sample so far was 0 ns
        (0, 300, 1, 300),
        (300, 900, 5, 900),  # raised: the raising sample is the largest
        (900, 900, 5, None),  # not raised: somewhere in [0, 900]
        (900, 900, 0, None),
        (900, 2**64 - 40, 1, None),  # a corrupt sample: not a figure
        (0, 2**63 - 1, 1, 2**63 - 1),
    ],
)
def test_interval_maxima(before, now, samples, expected):
    known = aggregate.interval_maxima(
        np.array([before], dtype=np.uint64), np.array([now], dtype=np.uint64), np.array([samples])
    )
    assert known.tolist() == [aggregate.UNKNOWN_MAX if expected is None else expected]


def test_interval_maxima_over_several_intervals(snap, stats_columns):
    """Samples of known size on one CPU, read at the end of each interval:
    the interval maximum is exact where the running maximum rose, else null;
    the running maximum never decreases."""
    s = snap(cpus=2)
    key = (MM_LOCK, WRITE, SRC_MMAP)
    per_interval = [[100, 400], [50, 60], [700], [], [700, 10], [0]]
    previous: dict = {}
    records = []
    for i, waits in enumerate(per_interval, 1):
        for ns in waits:
            s.bump(key, 1, "acquisitions")
            s.hist_add(key, 1, "wait", ns)
        s.bump(key, 0, "acquisitions")  # cpu 0: one 0 ns wait per interval
        s.hist_add(key, 0, "wait", 0)
        current = s.copy()
        records.append(aggregate.delta_records(previous, current, stats_columns, i, float(i)))
        previous = current
    frame = aggregate.records_frame(np.concatenate(records))
    cpu1 = frame[frame["cpu"] == 1].set_index("interval")
    assert list(cpu1.index) == [1, 2, 3, 5, 6]  # interval 4: no sample, no row
    assert cpu1["wait_running_max_ns"].tolist() == [400, 400, 700, 700, 700]
    assert cpu1["wait_max_ns"].tolist() == [400, pd.NA, 700, pd.NA, pd.NA]
    assert cpu1["wait_count"].tolist() == [2, 2, 1, 2, 1]
    cpu0 = frame[frame["cpu"] == 0]
    assert cpu0["wait_max_ns"].tolist() == [0] * 6  # all 0 ns: known exactly
    assert frame["wait_max_ns"].dtype == "Int64"
    # hold: no sample at all, so no maximum is known
    assert frame["hold_max_ns"].isna().all() and (frame["hold_running_max_ns"] == 0).all()
    # The interval maxima never exceed the running maxima, and the largest
    # known interval maximum is the largest sample (700).
    known = frame.dropna(subset=["wait_max_ns"])
    assert (known["wait_max_ns"] <= known["wait_running_max_ns"]).all()
    assert frame["wait_max_ns"].max() == 700 == frame["wait_running_max_ns"].max()
    # Derived from the running maxima alone (a schema 1 recording), the same.
    derived = aggregate.interval_maxima_from_running(frame.drop(columns=["wait_max_ns"]))
    pd.testing.assert_series_equal(derived["wait_max_ns"], frame["wait_max_ns"])
    pd.testing.assert_series_equal(derived["hold_max_ns"], frame["hold_max_ns"])


def test_summary_max_is_the_largest_sample(snap, stats_columns):
    m = MmapLock(snap)
    m.acquire(WRITE, wait_ns=9000)
    m.release(WRITE)
    m.tick()
    m.acquire(WRITE, wait_ns=30)  # interval 2: a small wait, maximum unknown
    m.release(WRITE)
    rows = by_mode(m.summary(stats_columns))
    assert rows["write"]["wait_ns"]["max"] == 9000
    assert rows["write"]["wait_ns"]["p99"] <= 9000


def test_unchanged_snapshot_yields_no_rows(snap, stats_columns):
    s = snap(cpus=4)
    s.set((MM_LOCK, WRITE, SRC_MMAP), 2, {"acquisitions": 7, "wait.count": 7, "wait.max_ns": 9})
    s.set((OTHER_LOCK, SPIN, SRC_CONT), 3, {"contended": 1, "wait.count": 1})
    first = s.copy()
    assert len(aggregate.delta_records({}, first, stats_columns, 1, 1.0)) == 2
    assert record_dicts(aggregate.delta_records(first, s.copy(), stats_columns, 2, 2.0)) == []


def test_one_row_per_active_cpu(snap, stats_columns):
    s = snap(cpus=4)
    key = (OTHER_LOCK, SPIN, SRC_CONT)
    s.set(key, 0, {"contended": 1, "wait.count": 1, "wait.total_ns": 10})
    s.set(key, 2, {"contended": 4, "wait.count": 4, "wait.total_ns": 40})
    before = s.copy()
    s.set(key, 2, {"contended": 6, "wait.count": 6, "wait.total_ns": 70})
    s.set(key, 3, {"contended": 1, "wait.count": 1, "wait.total_ns": 5})
    rows = record_dicts(aggregate.delta_records(before, s.copy(), stats_columns, 2, 2.0))
    assert {r["cpu"]: (r["contended"], r["wait_total_ns"]) for r in rows} == {2: (2, 30), 3: (1, 5)}


def test_failures_alone_make_a_row(snap, stats_columns):
    # A failed trylock bumps only `failures` (no wait, no hold sample).
    s = snap(cpus=1)
    s.set((MM_LOCK, WRITE, SRC_MMAP), 0, {"failures": 2})
    (row,) = record_dicts(aggregate.delta_records({}, s.copy(), stats_columns, 1, 1.0))
    assert row["failures"] == 2 and row["wait_count"] == 0


def test_new_key_in_a_later_interval_counts_from_zero(snap, stats_columns):
    s = snap(cpus=1)
    s.set((MM_LOCK, WRITE, SRC_MMAP), 0, {"acquisitions": 1, "wait.count": 1})
    before = s.copy()
    s.set((MM_LOCK, READ, SRC_MMAP), 0, {"acquisitions": 4, "wait.count": 4})
    (row,) = record_dicts(aggregate.delta_records(before, s.copy(), stats_columns, 2, 2.0))
    assert (row["flags"], row["acquisitions"]) == (READ, 4)


def test_intervals_frame_keeps_kernel_addresses(make_row):
    frame = intervals_frame([make_row(MM_LOCK, WRITE, SRC_MMAP, acquisitions=1)])
    assert list(frame.columns) == aggregate.INTERVAL_COLUMNS
    assert frame["lock"].dtype == np.uint64
    assert int(frame["lock"].iloc[0]) == MM_LOCK


def test_intervals_frame_dtypes(make_row):
    frame = intervals_frame(
        [
            make_row(MM_LOCK, WRITE, SRC_MMAP, acquisitions=1, wait_max_ns=None),
            make_row(MM_LOCK, READ, SRC_MMAP, acquisitions=1, wait_max_ns=5),
        ]
    )
    empty = intervals_frame([])
    for column in aggregate.INTERVAL_COLUMNS:
        assert frame[column].dtype == empty[column].dtype, column
    assert frame["wait_max_ns"].tolist() == [pd.NA, 5]


def test_empty_intervals():
    frame = intervals_frame([])
    assert list(frame.columns) == aggregate.INTERVAL_COLUMNS and frame.empty
    assert aggregate.summary_rows(frame, frame, ["mmap_lock"]) == []


# -- a small model of the BPF mmap_lock programs ------------------------------------------


class MmapLock:
    """Drives per-CPU lp_stats the way lp_mmap_acquired/_released/_downgrade do
    for one mm, so summary figures can be checked against a known sequence."""

    def __init__(self, snap, lock=MM_LOCK, cpus=2):
        self.s = snap(cpus)
        self.lock = lock
        self.snapshots: list[dict] = []

    def _key(self, flags):
        return (self.lock, flags, SRC_MMAP)

    def acquire(self, flags, cpu=0, wait_ns=200):
        self.s.bump(self._key(flags), cpu, "acquisitions")
        self.s.hist_add(self._key(flags), cpu, "wait", wait_ns)

    def release(self, flags, cpu=0, hold_ns=1500):
        self.s.bump(self._key(flags), cpu, "releases")
        self.s.hist_add(self._key(flags), cpu, "hold", hold_ns)

    def downgrade(self, cpu=0, hold_ns=700):
        self.s.bump(self._key(WRITE), cpu, "downgrades")
        self.s.hist_add(self._key(WRITE), cpu, "hold", hold_ns)

    def mmap(self, cpu=0):
        self.acquire(WRITE, cpu)
        self.release(WRITE, cpu)

    def munmap(self, cpu=0):
        self.acquire(WRITE, cpu)
        self.downgrade(cpu)
        self.release(READ, cpu)

    def contended_wait(self, flags, cpu=0, wait_ns=5000):
        key = (self.lock, flags, SRC_CONT)
        self.s.bump(key, cpu, "contended")
        self.s.hist_add(key, cpu, "wait", wait_ns)

    def tick(self):
        """End of an interval: read the maps."""
        self.snapshots.append(self.s.copy())

    def frame(self, columns):
        previous: dict = {}
        records = []
        for i, current in enumerate(self.snapshots, 1):
            records.append(aggregate.delta_records(previous, current, columns, i, float(i)))
            previous = current
        return aggregate.records_frame(np.concatenate(records))

    def summary(self, columns, owners=None, families=("mmap_lock", "contention")):
        self.tick()  # the final read when collection ends
        frame = self.frame(columns)
        owners = {self.lock: (4242, "mmapcount")} if owners is None else owners
        locks = aggregate.name_locks(frame, owners, EMPTY_CALLERS, {})
        return {
            (r["lock_addr"], r["mode"]): r
            for r in aggregate.summary_rows(frame, locks, list(families))
        }


def by_mode(rows, lock=MM_LOCK):
    return {mode: row for (addr, mode), row in rows.items() if addr == f"{lock:#x}"}


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_mmap_munmap_pairs_reconcile(snap, stats_columns, n):
    m = MmapLock(snap)
    for i in range(n):
        m.mmap(cpu=i % 2)
        m.munmap(cpu=(i + 1) % 2)
        if i % 3 == 2:
            m.tick()  # several intervals: deltas must add back up
    rows = by_mode(m.summary(stats_columns))
    write, read = rows["write"], rows["read"]
    assert (write["acquisitions"], write["releases"], write["downgrades"]) == (2 * n, n, n)
    assert (read["acquisitions"], read["releases"], read["downgrades"]) == (0, n, 0)
    assert write["still_held"] == 0 and read["still_held"] == 0
    assert write["hold_ns"]["count"] == 2 * n  # n releases + n downgrades end a write hold
    assert write["hold_ns"]["total"] == n * 1500 + n * 700
    assert read["wait_ns"]["count"] == 0  # no read acquisition was ever timed
    assert read["wait_ns"]["p50"] is None
    assert read["hold_ns"]["count"] == n
    assert write["reader_writer_ratio"] == 0.0 == read["reader_writer_ratio"]
    assert write["lock"] == "mmap_lock" and write["owner_pid"] == 4242
    assert write["owner_comm"] == "mmapcount"
    assert sum(c["acquisitions"] for c in write["per_cpu"]) == 2 * n


def test_write_never_released_is_still_held(snap, stats_columns):
    m = MmapLock(snap)
    for _ in range(5):
        m.mmap()
        m.munmap()
    m.acquire(WRITE)  # e.g. the collection ended inside a long mmap()
    rows = by_mode(m.summary(stats_columns))
    assert rows["write"]["acquisitions"] == 11
    assert rows["write"]["still_held"] == 1
    assert rows["read"]["still_held"] == 0


def test_read_never_released_is_still_held(snap, stats_columns):
    m = MmapLock(snap)
    m.acquire(READ)
    m.acquire(READ)
    m.release(READ)
    m.mmap()
    rows = by_mode(m.summary(stats_columns))
    assert rows["read"]["still_held"] == 1
    assert rows["write"]["still_held"] == 0
    assert rows["read"]["reader_writer_ratio"] == pytest.approx(2.0)


def test_trylock_failures_are_reported(snap, stats_columns):
    m = MmapLock(snap)
    m.mmap()
    m.s.bump((MM_LOCK, READ, SRC_MMAP), 1, "failures", 3)
    rows = by_mode(m.summary(stats_columns))
    assert rows["read"]["trylock_failures"] == 3
    assert rows["read"]["acquisitions"] == 0
    assert rows["write"]["trylock_failures"] == 0


def test_mmap_and_contention_rows_on_one_lock_merge(snap, stats_columns):
    m = MmapLock(snap)
    for _ in range(4):
        m.mmap()
    m.s.bump((MM_LOCK, WRITE, SRC_MMAP), 0, "contended", 2)
    m.contended_wait(WRITE, wait_ns=5000)
    m.contended_wait(WRITE, cpu=1, wait_ns=9000)
    rows = by_mode(m.summary(stats_columns))
    assert list(rows) == ["write"]  # one row per lock and mode, not one per family
    write = rows["write"]
    assert write["lock_class"] == "mmap_lock"
    assert write["acquisitions"] == 4  # from the mmap_lock tracepoints
    assert write["contended"] == 2
    assert write["wait_ns"]["count"] == 4  # every acquisition's wait
    assert write["contended_wait_ns"]["count"] == 2
    assert write["contended_wait_ns"]["total"] == 14000
    assert write["contended_wait_ns"]["max"] == 9000
    assert write["still_held"] == 0


def test_contended_is_unknown_without_the_contention_family(snap, stats_columns):
    m = MmapLock(snap)
    m.mmap()
    rows = by_mode(m.summary(stats_columns, families=("mmap_lock",)))
    assert rows["write"]["contended"] is None
    assert rows["write"]["acquisitions"] == 1


def test_contention_only_rows(snap, stats_columns):
    s = snap(cpus=2)
    key = (OTHER_LOCK, SPIN, SRC_CONT)
    s.hist_add(key, 0, "wait", 300)
    s.hist_add(key, 1, "wait", 700)
    s.bump(key, 0, "contended")
    s.bump(key, 1, "contended")
    frame = aggregate.records_frame(aggregate.delta_records({}, s.copy(), stats_columns, 1, 1))
    locks = aggregate.name_locks(frame, {}, EMPTY_CALLERS, {})
    (row,) = aggregate.summary_rows(frame, locks, ["mmap_lock", "contention"])
    assert (row["lock_class"], row["mode"]) == ("spinlock", "exclusive")
    assert row["lock"] == f"spinlock {OTHER_LOCK:#x}"
    assert row["contended"] == 2
    for unknown in (
        "acquisitions",
        "releases",
        "downgrades",
        "trylock_failures",
        "hold_ns",
        "still_held",
        "reader_writer_ratio",
    ):
        assert row[unknown] is None, unknown
    assert row["wait_ns"]["count"] == 2 and row["wait_ns"]["total"] == 1000
    assert row["wait_ns"]["max"] == 700
    assert row["contended_wait_ns"] == row["wait_ns"]
    assert [
        (c["cpu"], c["acquisitions"], c["contended"], c["hold_total_ns"]) for c in row["per_cpu"]
    ] == [(0, None, 1, None), (1, None, 1, None)]


def test_reader_writer_ratio_from_contention_counts(make_row):
    rwsem = 0xFFFF888200000000
    frame = intervals_frame(
        [
            make_row(rwsem, READ, SRC_CONT, contended=6, wait_count=6, wait_total_ns=60),
            make_row(rwsem, WRITE, SRC_CONT, contended=2, wait_count=2, wait_total_ns=20),
        ]
    )
    locks = aggregate.name_locks(frame, {}, EMPTY_CALLERS, {})
    rows = aggregate.summary_rows(frame, locks, ["contention"])
    assert {r["mode"]: r["reader_writer_ratio"] for r in rows} == {"read": 3.0, "write": 3.0}
    assert {r["lock_class"] for r in rows} == {"rwsem"}


def test_reader_writer_ratio_none_without_writes(snap, stats_columns):
    m = MmapLock(snap)
    m.acquire(READ)
    m.release(READ)
    rows = by_mode(m.summary(stats_columns))
    assert rows["read"]["reader_writer_ratio"] is None  # 1 read : 0 writes


def test_rows_sorted_by_total_wait(make_row):
    frame = intervals_frame(
        [
            make_row(0x1000, SPIN, SRC_CONT, contended=1, wait_count=1, wait_total_ns=10),
            make_row(0x2000, SPIN, SRC_CONT, contended=1, wait_count=1, wait_total_ns=30),
            make_row(0x3000, MUTEX, SRC_CONT, contended=1, wait_count=1, wait_total_ns=20),
        ]
    )
    locks = aggregate.name_locks(frame, {}, EMPTY_CALLERS, {})
    rows = aggregate.summary_rows(frame, locks, ["contention"])
    assert [r["lock_addr"] for r in rows] == ["0x2000", "0x3000", "0x1000"]


def test_unowned_mmap_lock_reconciles_whatever_the_row_order(snap, stats_columns):
    m = MmapLock(snap)
    for _ in range(5):
        m.mmap()
        m.munmap()
    m.contended_wait(WRITE)
    m.tick()
    # Map iteration order is arbitrary: put the contention row first.
    m.snapshots[-1] = dict(sorted(m.snapshots[-1].items(), key=lambda kv: -kv[0][2]))
    rows = by_mode(m.summary(stats_columns, owners={}))  # owner map full / never learned
    assert {r["lock_class"] for r in rows.values()} == {"mmap_lock"}
    assert rows["read"]["still_held"] == 0
    assert rows["write"]["still_held"] == 0
    assert {r["lock"] for r in rows.values()} == {"mmap_lock"}
    assert rows["write"]["acquisitions"] == 10 and rows["write"]["downgrades"] == 5
    assert rows["write"]["contended_wait_ns"]["count"] == 1
    assert rows["read"]["reader_writer_ratio"] == 0.0


@pytest.mark.parametrize("order", [1, -1])
def test_summary_identity_ignores_locks_table_order(make_row, order):
    # A locks table as older versions wrote it: the contention row of an
    # mmap_lock whose owner was unknown says "rwsem"; another row knows the owner.
    frame = intervals_frame(
        [
            make_row(MM_LOCK, WRITE, SRC_CONT, contended=1, wait_count=1, wait_total_ns=900),
            make_row(MM_LOCK, WRITE, SRC_MMAP, acquisitions=3, releases=2, downgrades=1),
            make_row(MM_LOCK, READ, SRC_MMAP, acquisitions=2, releases=3),
        ]
    )
    locks = pd.DataFrame(
        [
            (
                MM_LOCK,
                WRITE,
                SRC_CONT,
                MM_LOCK,
                "rwsem",
                "write",
                f"rwsem {MM_LOCK:#x}",
                None,
                None,
            ),
            (MM_LOCK, WRITE, SRC_MMAP, MM_LOCK, "mmap_lock", "write", "mmap_lock", None, None),
            (MM_LOCK, READ, SRC_MMAP, MM_LOCK, "mmap_lock", "read", "mmap_lock", 77.0, "app"),
        ][::order],
        columns=aggregate.LOCK_COLUMNS,
    ).astype({"lock": "uint64"})
    rows = {r["mode"]: r for r in aggregate.summary_rows(frame, locks, ["mmap_lock"])}
    assert set(rows) == {"read", "write"}
    for row in rows.values():
        assert (row["lock"], row["lock_class"], row["owner_pid"], row["owner_comm"]) == (
            "mmap_lock",
            "mmap_lock",
            77,
            "app",
        )
    assert rows["write"]["still_held"] == 0  # 3 - 2 released - 1 downgraded
    assert rows["read"]["still_held"] == 0  # 2 + 1 downgrade - 3 released
    assert rows["write"]["contended_wait_ns"]["total"] == 900


def one_slot(slot: int, n: int) -> list[int]:
    return [n if i == slot else 0 for i in range(SLOTS)]


def mixed_families(make_row):
    """Rows of every family: an owned mmap_lock with a contention row, an
    unowned one whose wait ties with it, an rwsem seen only contended (its
    read and write waits tie), a spinlock on two CPUs, and a lock spec's read,
    write and sum functions."""
    spec, summed = schema.const("LP_SRC_SPEC"), schema.const("LP_F_SUM")
    unowned, rwsem, spec_lock = MM_LOCK + 0x100, 0xFFFF888200000000, 0xFFFF888300000000

    def timed(lock, flags, source, cpu, waits, wait_ns, slot, **counts):
        holds = counts.get("releases", 0)
        return make_row(
            lock,
            flags,
            source,
            cpu,
            wait_count=waits,
            wait_total_ns=wait_ns,
            wait_running_max_ns=2**slot,
            wait_slots=one_slot(slot, waits),
            hold_count=holds,
            hold_total_ns=holds * 3000,
            hold_running_max_ns=4096 if holds else 0,
            hold_slots=one_slot(12, holds),
            **counts,
        )

    frame = intervals_frame(
        [
            timed(
                MM_LOCK, WRITE, SRC_MMAP, 0, 10, 5000, 9, acquisitions=10, releases=6, downgrades=3
            ),
            timed(MM_LOCK, WRITE, SRC_MMAP, 1, 4, 800, 8, acquisitions=4, releases=4),
            timed(
                MM_LOCK, READ, SRC_MMAP, 0, 20, 3000, 8, acquisitions=20, releases=22, failures=2
            ),
            timed(MM_LOCK, WRITE, SRC_CONT, 1, 3, 7000, 12, contended=3),
            timed(unowned, READ, SRC_MMAP, 1, 5, 5800, 10, acquisitions=5, releases=5),
            timed(rwsem, READ, SRC_CONT, 0, 6, 600, 7, contended=6),
            timed(rwsem, WRITE, SRC_CONT, 1, 2, 600, 9, contended=2),
            timed(OTHER_LOCK, SPIN, SRC_CONT, 1, 1, 700, 9, contended=1),
            timed(OTHER_LOCK, SPIN, SRC_CONT, 0, 1, 300, 8, contended=1),
            timed(spec_lock, READ, spec, 0, 7, 1400, 8, acquisitions=7, releases=7),
            timed(spec_lock, WRITE, spec, 1, 2, 9000, 13, acquisitions=2, releases=1),
            timed(spec_lock, summed, spec, 0, 9, 2700, 8, acquisitions=9, releases=9),
        ]
    )
    owners = {MM_LOCK: (4242, "app")}
    return frame, aggregate.name_locks(frame, owners, EMPTY_CALLERS, {}, spec_class="pthread")


def test_summary_figures_of_every_family(make_row):
    frame, locks = mixed_families(make_row)
    rows = aggregate.summary_rows(frame, locks, ["mmap_lock", "contention"])
    figures = [
        (
            row["lock"],
            row["mode"],
            row["owner_pid"],
            row["acquisitions"],
            row["contended"],
            row["releases"],
            row["downgrades"],
            row["trylock_failures"],
            row["still_held"],
            row["reader_writer_ratio"],
            row["wait_ns"] and row["wait_ns"]["total"],
            row["hold_ns"] and row["hold_ns"]["count"],
            row["contended_wait_ns"] and row["contended_wait_ns"]["count"],
            [cpu["cpu"] for cpu in row["per_cpu"]],
        )
        for row in rows
    ]
    spec, spin, rwsem = (
        "pthread 0xffff888300000000",
        f"spinlock {OTHER_LOCK:#x}",
        "rwsem 0xffff888200000000",
    )
    # Busiest first, ties in the order the locks came; an mmap_lock's
    # contended count is its tracepoint rows' (zero here), its contention
    # rows give contended_wait_ns.
    assert figures == [
        (spec, "write", None, 2, None, 1, 0, 0, 1, 3.5, 9000, 1, None, [1]),
        ("mmap_lock", "write", 4242, 14, 0, 10, 3, 0, 1, 20 / 14, 5800, 10, 3, [0, 1]),
        ("mmap_lock", "read", None, 5, 0, 5, 0, 0, 0, None, 5800, 5, None, [1]),
        ("mmap_lock", "read", 4242, 20, 0, 22, 0, 2, 1, 20 / 14, 3000, 22, None, [0]),
        (spec, "sum", None, 9, None, None, None, None, None, None, 2700, None, None, [0]),
        (spec, "read", None, 7, None, 7, 0, 0, 0, 3.5, 1400, 7, None, [0]),
        (spin, "exclusive", None, None, 2, None, None, None, None, None, 1000, None, 2, [0, 1]),
        (rwsem, "read", None, None, 6, None, None, None, None, 3.0, 600, None, 6, [0]),
        (rwsem, "write", None, None, 2, None, None, None, None, 3.0, 600, None, 2, [1]),
    ]


# -- naming locks ---------------------------------------------------------------------------


def names(frame, owners=None, callers=EMPTY_CALLERS, stacks=None, data_symbols=None):
    locks = aggregate.name_locks(frame, owners or {}, callers, stacks or {}, data_symbols)
    return {(int(r.lock), int(r.flags), int(r.source)): r for r in locks.itertuples()}


def test_rwsem_that_is_an_mm_mmap_lock_is_named_mmap_lock(make_row):
    frame = intervals_frame(
        [
            make_row(MM_LOCK, READ, SRC_CONT, contended=1, wait_count=1),
            make_row(MM_LOCK, WRITE, SRC_MMAP, acquisitions=1, wait_count=1),
            make_row(0xFFFF888300000000, WRITE, SRC_CONT, contended=1, wait_count=1),
        ]
    )
    named = names(frame, owners={MM_LOCK: (1234, "firefox")})
    for key in ((MM_LOCK, READ, SRC_CONT), (MM_LOCK, WRITE, SRC_MMAP)):
        row = named[key]
        assert (row.lock_class, row.name, row.owner_pid, row.owner_comm) == (
            "mmap_lock",
            "mmap_lock",
            1234,
            "firefox",
        )
    other = named[(0xFFFF888300000000, WRITE, SRC_CONT)]
    assert (other.lock_class, other.mode) == ("rwsem", "write")
    assert other.name == "rwsem 0xffff888300000000"
    assert pd.isna(other.owner_pid) and pd.isna(other.owner_comm)


def test_contention_row_of_an_unowned_mmap_lock_is_named_mmap_lock(make_row):
    # No owner entry (owner map full, or only foreign tasks took the lock), but
    # the mmap_lock tracepoints fired on this address: every row is mmap_lock.
    frame = intervals_frame(
        [
            make_row(MM_LOCK, WRITE, SRC_CONT, contended=1, wait_count=1),
            make_row(MM_LOCK, READ, SRC_MMAP, acquisitions=1, wait_count=1),
            make_row(0xFFFF888300000000, WRITE, SRC_CONT, contended=1, wait_count=1),
        ]
    )
    named = names(frame)
    cont = named[(MM_LOCK, WRITE, SRC_CONT)]
    assert (cont.lock_class, cont.mode, cont.name) == ("mmap_lock", "write", "mmap_lock")
    assert pd.isna(cont.owner_pid)
    assert named[(0xFFFF888300000000, WRITE, SRC_CONT)].lock_class == "rwsem"


def test_only_rwsems_become_mmap_lock(make_row):
    # A percpu rwsem can never be an mmap_lock, even at an address in the owner map.
    frame = intervals_frame([make_row(MM_LOCK, PERCPU | READ, SRC_CONT, contended=1, wait_count=1)])
    (row,) = names(frame, owners={MM_LOCK: (1, "init")}).values()
    assert row.lock_class == "percpu-rwsem"


def test_mmap_source_without_owner_is_still_mmap_lock(make_row):
    frame = intervals_frame([make_row(MM_LOCK, READ, SRC_MMAP, acquisitions=1)])
    (row,) = names(frame).values()
    assert (row.lock_class, row.name, row.owner_pid) == ("mmap_lock", "mmap_lock", None)


def test_data_symbol_names_a_lock(make_row):
    frame = intervals_frame([make_row(OTHER_LOCK, SPIN, SRC_CONT, contended=1)])
    callers = pd.DataFrame(
        [{"lock": OTHER_LOCK, "stack_id": 3, "flags": SPIN, "count": 1, "total_ns": 5, "max_ns": 5}]
    )
    (row,) = names(
        frame, callers=callers, stacks={3: ["foo+0x1"]}, data_symbols={OTHER_LOCK: "jiffies_lock"}
    ).values()
    assert row.name == "jiffies_lock"  # a symbol beats a caller


def test_top_caller_names_a_lock(make_row):
    frame = intervals_frame([make_row(OTHER_LOCK, MUTEX, SRC_CONT, contended=3)])
    callers = pd.DataFrame(
        [
            {
                "lock": OTHER_LOCK,
                "stack_id": 1,
                "flags": MUTEX,
                "count": 2,
                "total_ns": 100,
                "max_ns": 60,
            },
            {
                "lock": OTHER_LOCK,
                "stack_id": 2,
                "flags": MUTEX,
                "count": 1,
                "total_ns": 500,
                "max_ns": 500,
            },
        ]
    )
    stacks = {
        1: ["__mutex_lock.constprop.0+0x1a", "mutex_lock+0x2e", "cold_path+0x10"],
        2: ["__mutex_lock.constprop.0+0x1a", "mutex_lock+0x2e", "hot_path+0x44", "x+0x1"],
    }
    (row,) = names(frame, callers=callers, stacks=stacks).values()
    assert row.name == f"hot_path+0x44 ({OTHER_LOCK:#x})"  # most total wait wins
    assert row.lock_class == "mutex"


@pytest.mark.parametrize(
    ("frames", "caller"),
    [
        (["_raw_spin_lock_irqsave+0x4d", "rcu_core+0xac", "handle_softirqs+0xcd"], "rcu_core+0xac"),
        (
            [
                "queued_spin_lock_slowpath+0x1",
                "_raw_spin_lock+0x3b",
                "__schedule+0xad",
                "schedule+0x23",
                "exit_to_user_mode_loop+0x51",
            ],
            "exit_to_user_mode_loop+0x51",
        ),
        (
            ["rwsem_down_write_slowpath+0x2", "down_write_killable+0x5", "vm_mmap_pgoff+0x9"],
            "vm_mmap_pgoff+0x9",
        ),
        (
            ["rwsem_down_read_slowpath+0x2", "lock_mm_and_find_vma+0x4", "do_user_addr_fault+0x1"],
            "do_user_addr_fault+0x1",
        ),
        (
            ["percpu_rwsem_wait+0x1", "__percpu_down_read+0x2", "cgroup_procs_write+0x3"],
            "cgroup_procs_write+0x3",
        ),
        (["_raw_spin_lock+0x1", "queued_spin_lock_slowpath+0x2"], "queued_spin_lock_slowpath+0x2"),
        ([], None),
    ],
)
def test_caller_of_skips_lock_internals(frames, caller):
    assert aggregate.caller_of(frames) == caller


def test_caller_of_skips_paravirt_spinlock_slowpath(rec):
    frames = {
        int(s): list(f) for s, f in rec.stacks[["stack_id", "frames"]].itertuples(index=False)
    }
    # strip the BPF/tracepoint frames on top, as BpfSession.stack_frames does now
    stripped = {s: f[2:] for s, f in frames.items()}
    assert stripped[173][0] == "__pv_queued_spin_lock_slowpath+0x10e"
    assert aggregate.caller_of(stripped[173]) == "rcu_core+0xac"
    assert aggregate.caller_of(stripped[310]) == "exit_to_user_mode_loop+0x51"


def test_waits_without_a_stack_do_not_keep_a_lock_unnamed(make_row):
    """A page-table spinlock: most of its waits are under --stack-threshold
    and share the no-stack row (stack_id -1), which holds most of the wait
    time; the few with a stack still name the lock after their caller."""
    frame = intervals_frame([make_row(OTHER_LOCK, SPIN, SRC_CONT, contended=94_079)])
    pte = ["__pv_queued_spin_lock_slowpath+0x15b", "_raw_spin_lock+0x3b"]
    rows = [
        (-1, 94_077, 100_023_509),
        (8952, 1, 30_000),  # two stacks, one caller: their times add up
        (8953, 1, 20_000),
        (8954, 1, 45_000),
    ]
    callers = pd.DataFrame(
        [
            {"lock": OTHER_LOCK, "stack_id": s, "flags": SPIN, "count": n, "total_ns": t}
            | {"max_ns": t}
            for s, n, t in rows
        ]
    )
    stacks = {
        8952: [*pte, "__pte_offset_map_lock+0x98", "do_anonymous_page+0x3e6"],
        8953: [*pte, "__pte_offset_map_lock+0x98", "do_wp_page+0x1a"],
        8954: [*pte, "zap_pte_range+0x99"],
    }
    (row,) = names(frame, callers=callers, stacks=stacks).values()
    assert row.name == f"__pte_offset_map_lock+0x98 ({OTHER_LOCK:#x})"
    # With no stack at all, the class and the address.
    (row,) = names(frame, callers=callers[callers["stack_id"] < 0], stacks=stacks).values()
    assert row.name == f"spinlock {OTHER_LOCK:#x}"


def test_per_cpu_figures_are_null_where_the_rows_are(make_row):
    """A figure the lock's row cannot know is not known per CPU either: a
    lock spec's contended waits, its sum row's holds, the contended waits
    of mmap_lock rows recorded without lock:contention_*. They read 0 per
    CPU, as if measured (compare then judged "cpu0.contended 0 -> 0")."""
    frame, locks = mixed_families(make_row)
    for families in (["mmap_lock", "contention"], ["mmap_lock"]):
        for row in aggregate.summary_rows(frame, locks, families):
            for name, figure in (
                ("acquisitions", row["acquisitions"]),
                ("contended", row["contended"]),
                ("wait_total_ns", row["wait_ns"]),
                ("hold_total_ns", row["hold_ns"]),
            ):
                per_cpu = [cpu[name] for cpu in row["per_cpu"]]
                assert (figure is None) == all(v is None for v in per_cpu), (row["lock"], name)
    spec_rows = [
        r for r in aggregate.summary_rows(frame, locks, ["mmap_lock", "contention"])
        if r["lock_class"] == "pthread"
    ]  # fmt: skip
    assert {r["mode"] for r in spec_rows} == {"read", "write", "sum"}
    assert all(cpu["contended"] is None for r in spec_rows for cpu in r["per_cpu"])
