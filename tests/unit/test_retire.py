"""Retiring lock rows from the kernel's map (session.locks_to_retire, the
previous-snapshot bookkeeping and delta_records over a key at two indexes).
The kernel side is tested for real in tests/integration/test_retire.py."""

from __future__ import annotations

import numpy as np

from profiler import aggregate, session
from profiler.options import CpuFigures

from .helpers import Snap, record_dicts

READ, WRITE = 2, 4
SRC_MMAP, SRC_CONT = 0, 1
DEAD_PID, LIVE_PID = 1_000_001, 1_000_002
DEAD_LOCK, LIVE_LOCK, SPIN_LOCK = 0x1000, 0x2000, 0x3000


def alive(tgid: int) -> bool:
    return tgid == LIVE_PID


OWNERS = {DEAD_LOCK: (DEAD_PID, "gone"), LIVE_LOCK: (LIVE_PID, "here")}
LIVE = {
    (DEAD_LOCK, WRITE, SRC_MMAP): 1,
    (DEAD_LOCK, WRITE, SRC_CONT): 2,
    (LIVE_LOCK, READ, SRC_MMAP): 3,
    (SPIN_LOCK, 1, SRC_CONT): 4,
}


def test_every_row_of_an_exited_owners_lock_retires_even_when_shown():
    last_active = {key: 99.0 for key in LIVE}  # all active a second ago
    shown = {DEAD_LOCK, LIVE_LOCK, SPIN_LOCK}
    victims = session.locks_to_retire(
        LIVE, OWNERS, alive, last_active, 100.0, 4096, idle_s=60, keep=shown
    )
    assert sorted(victims) == [((DEAD_LOCK, WRITE, SRC_MMAP), 1), ((DEAD_LOCK, WRITE, SRC_CONT), 2)]


def test_idle_rows_retire_unless_the_live_view_shows_their_lock():
    last_active = {key: 95.0 for key in LIVE}
    last_active[(SPIN_LOCK, 1, SRC_CONT)] = 10.0  # idle 90 s
    last_active[(LIVE_LOCK, READ, SRC_MMAP)] = 30.0  # idle 70 s, but shown
    victims = session.locks_to_retire(
        LIVE, OWNERS, alive, last_active, 100.0, 4096, idle_s=60, keep={LIVE_LOCK}
    )
    assert ((SPIN_LOCK, 1, SRC_CONT), 4) in victims
    assert ((LIVE_LOCK, READ, SRC_MMAP), 3) not in victims
    # shown too: the idle spinlock stays while the map has room
    kept = session.locks_to_retire(
        LIVE, OWNERS, alive, last_active, 100.0, 4096, idle_s=60, keep={LIVE_LOCK, SPIN_LOCK}
    )
    assert ((SPIN_LOCK, 1, SRC_CONT), 4) not in kept


def test_shown_idle_rows_retire_too_once_the_map_is_half_full():
    last_active = {key: 95.0 for key in LIVE}
    last_active[(SPIN_LOCK, 1, SRC_CONT)] = 10.0  # idle 90 s
    shown = {LIVE_LOCK, SPIN_LOCK}
    # 2 rows stay after the dead owner's: over half of a 2-row map
    victims = session.locks_to_retire(LIVE, OWNERS, alive, last_active, 100.0, 2, 60, shown)
    assert ((SPIN_LOCK, 1, SRC_CONT), 4) in victims
    assert ((LIVE_LOCK, READ, SRC_MMAP), 3) not in victims  # active 5 s ago
    roomy = session.locks_to_retire(LIVE, OWNERS, alive, last_active, 100.0, 8, 60, shown)
    assert ((SPIN_LOCK, 1, SRC_CONT), 4) not in roomy


def test_a_crowded_map_retires_rows_no_view_shows_after_a_short_idle():
    """Over half full, rows idle CROWDED_IDLE_S go (process churn brings new
    locks faster than 60 s of idleness frees rows); the locks the live view
    shows keep the long threshold; a roomy map keeps every row idle 5 s."""
    last_active = {key: 95.0 for key in LIVE}  # every row idle 5 s
    shown = {LIVE_LOCK}
    idle = dict(idle_s=60, keep=shown, crowded_idle_s=session.CROWDED_IDLE_S)
    assert session.CROWDED_IDLE_S < 5
    crowded = session.locks_to_retire(LIVE, OWNERS, alive, last_active, 100.0, 2, **idle)
    assert ((SPIN_LOCK, 1, SRC_CONT), 4) in crowded
    assert ((LIVE_LOCK, READ, SRC_MMAP), 3) not in crowded  # shown: 60 s still
    roomy = session.locks_to_retire(LIVE, OWNERS, alive, last_active, 100.0, 8, **idle)
    assert ((SPIN_LOCK, 1, SRC_CONT), 4) not in roomy
    last_active[(SPIN_LOCK, 1, SRC_CONT)] = 99.0  # active a second ago: stays
    busy = session.locks_to_retire(LIVE, OWNERS, alive, last_active, 100.0, 2, **idle)
    assert ((SPIN_LOCK, 1, SRC_CONT), 4) not in busy


def test_a_round_comes_every_interval_once_the_lock_map_is_over_an_eighth_full():
    class Snapshot:
        def __init__(self, rows: int):
            self.rows = {(lock, 1, 0, lock): None for lock in range(rows)}

    assert not session._crowded(Snapshot(512), 4096)
    assert session._crowded(Snapshot(513), 4096)


def test_a_row_never_seen_active_is_not_idle():
    victims = session.locks_to_retire(
        {(SPIN_LOCK, 1, SRC_CONT): 4}, {}, alive, {}, 1000.0, 0, idle_s=60
    )
    assert victims == []


def _only_row(rows, key):
    found = [r for r in rows if (r["lock"], r["flags"], r["source"]) == key]
    assert len(found) == 1, found
    return found[0]


def test_a_key_back_at_a_new_index_while_the_old_one_retires_gives_exact_deltas(stats_columns):
    """Interval 1: K at index 0. K is retired; before index 0 is freed, K
    comes back at index 7. Interval 2 holds both; interval 3 follows the
    free. Every interval's delta is what happened in it."""
    key = (LIVE_LOCK, WRITE, SRC_MMAP)
    snap = Snap(stats_columns, cpus=2)
    for ns in (100, 200):
        snap.hist_add(key, 0, "wait", ns)
        snap.bump(key, 0, "acquisitions")
    first = snap.copy()  # {(K, 0): ...}
    state = session._Collected()
    rows = record_dicts(aggregate.delta_records(state.previous, first, stats_columns, 1, 1.0))
    assert _only_row(rows, key)["acquisitions"] == 2
    state.previous = first

    snap.hist_add(key, 0, "wait", 300)  # a last one at the old index
    snap.bump(key, 0, "acquisitions")
    old = snap.copy()[(*key, 0)]
    again = Snap(stats_columns, cpus=2)
    again.hist_add(key, 0, "wait", 5000)
    again.bump(key, 0, "acquisitions")
    second = {(*key, 0): old, (*key, 7): again.copy()[(*key, 0)]}
    rows = record_dicts(aggregate.delta_records(state.previous, second, stats_columns, 2, 2.0))
    merged = _only_row(rows, key)
    assert merged["acquisitions"] == 2  # one at each index
    assert merged["wait_count"] == 2 and merged["wait_max_ns"] == 5000
    assert merged["wait_running_max_ns"] == 5000
    state.previous = second

    session._forget_freed(state, {0: key})
    assert list(state.previous) == [(*key, 7)]
    assert state.retired_totals[SRC_MMAP][0, stats_columns.index("acquisitions")] == 3
    third = {(*key, 7): second[(*key, 7)].copy()}
    third[(*key, 7)][1, stats_columns.index("acquisitions")] += 4
    third[(*key, 7)][1, stats_columns.index("wait.count")] += 4
    rows = record_dicts(aggregate.delta_records(state.previous, third, stats_columns, 3, 3.0))
    assert _only_row(rows, key)["acquisitions"] == 4 and _only_row(rows, key)["cpu"] == 1


def test_the_live_views_per_cpu_totals_keep_freed_rows(stats_columns):
    rows = {(LIVE_LOCK, WRITE, SRC_MMAP, 3): np.zeros((2, len(stats_columns)), dtype=np.uint64)}
    rows[(LIVE_LOCK, WRITE, SRC_MMAP, 3)][0, stats_columns.index("acquisitions")] = 5
    freed = np.zeros((2, len(stats_columns)), dtype=np.uint64)
    freed[1, stats_columns.index("acquisitions")] = 7
    freed[1, stats_columns.index("wait.total_ns")] = 70
    totals = session.cpu_totals(rows, stats_columns, {SRC_MMAP: freed})
    assert totals == {0: CpuFigures(5, 0, 0), 1: CpuFigures(7, 0, 70)}


def test_freed_rows_count_in_the_per_cpu_totals_as_live_ones_do(stats_columns):
    """A freed lock:contention_* row of an mmap_lock's mode holds the
    contended acquisitions its mmap_lock row counts: kept, they would count
    twice (the summary's per_cpu takes the mmap_lock row's)."""
    snap = Snap(stats_columns, cpus=2)
    for key in (
        (LIVE_LOCK, WRITE, SRC_MMAP),
        (LIVE_LOCK, WRITE, SRC_CONT),
        (SPIN_LOCK, 1, SRC_CONT),
    ):
        snap.bump(key, 0, "contended", 2)
    state = session._Collected()
    state.previous = snap.copy()  # at indexes 0, 1, 2
    session._forget_freed(state, {i: key[:3] for i, key in enumerate(state.previous)})
    assert state.previous == {} and sorted(state.retired_totals) == [SRC_MMAP, SRC_CONT]
    totals = session.cpu_totals({}, stats_columns, state.retired_totals)
    assert totals[0] == CpuFigures(acquisitions=0, contended=4, wait_ns=0)


def test_freed_rows_of_hidden_locks_stay_out_of_the_per_cpu_totals(stats_columns):
    """A `run` child's pre-exec mm is freed at its exec: its rows, left out
    of the live per-CPU line while live, stay out once freed."""
    snap = Snap(stats_columns, cpus=2)
    snap.bump((LIVE_LOCK, WRITE, SRC_MMAP), 0, "acquisitions", 3)
    snap.bump((SPIN_LOCK, 1, SRC_CONT), 1, "contended", 2)
    state = session._Collected()
    state.previous = snap.copy()
    session._forget_freed(
        state, {i: key[:3] for i, key in enumerate(state.previous)}, hidden={LIVE_LOCK}
    )
    totals = session.cpu_totals({}, stats_columns, state.retired_totals)
    assert totals[0] == CpuFigures(acquisitions=0, contended=0, wait_ns=0)
    assert totals[1] == CpuFigures(acquisitions=0, contended=2, wait_ns=0)


def test_the_per_cpu_totals_leave_a_lock_specs_sum_calls_out(stats_columns):
    """A lock spec's sum row counts calls of the sum function and their time,
    which lies inside the write wait: the per-CPU line counted 79,862
    acquisitions (39,780 of them sum calls) and 4.48 s of wait where the
    report's per-CPU panel said 3.88 s. Both the live and the final line
    leave the sum out now."""
    from profiler import render, schema

    spec, write_flags = schema.const("LP_SRC_SPEC"), WRITE
    sum_flags = WRITE | schema.const("LP_F_SUM")
    assert schema.classify(spec, sum_flags)[1] == "sum"
    rows = {}
    for flags, count, wait_ns in ((write_flags, 10, 1000), (sum_flags, 8, 400)):
        values = np.zeros((1, len(stats_columns)), dtype=np.uint64)
        values[0, stats_columns.index("acquisitions")] = count
        values[0, stats_columns.index("wait.total_ns")] = wait_ns
        rows[(LIVE_LOCK, flags, spec, 0)] = values
    assert session.cpu_totals(rows, stats_columns) == {0: CpuFigures(10, 0, 1000)}
    summary_rows = [
        {"mode": "write", "per_cpu": [{"cpu": 0, "acquisitions": 10, "wait_total_ns": 1000}]},
        {"mode": "sum", "per_cpu": [{"cpu": 0, "acquisitions": 8, "wait_total_ns": 400}]},
    ]
    # Neither row knows its contended waits (a lock spec's are not traced).
    assert render.cpu_totals_of(summary_rows) == {0: CpuFigures(10, None, 1000)}


def test_the_per_cpu_line_says_nothing_of_contended_waits_not_traced(stats_columns):
    """Under --no-contention the per-CPU line said "0 contended waits" on
    every CPU, live and at the end, where the table says "-": the waits
    were not traced, not absent."""
    from profiler import render, schema

    values = np.zeros((2, len(stats_columns)), dtype=np.uint64)
    values[:, stats_columns.index("acquisitions")] = (7, 9)
    rows = {(LIVE_LOCK, WRITE, schema.const("LP_SRC_MMAP_LOCK"), 0): values}
    live = session.cpu_totals(rows, stats_columns, contention_traced=False)
    assert live == {0: CpuFigures(7, None, 0), 1: CpuFigures(9, None, 0)}
    line = render.per_cpu_line([], live).plain
    assert "contended" not in line and "cpu1: 9 acq, wait" in line
    assert "contended" not in render.activity(render.all_cpus(live))
    traced = session.cpu_totals(rows, stats_columns)
    assert render.activity(render.all_cpus(traced)) == "16 acq, 0 contended waits, wait 0ns"
    # The summary's rows: null contended waits beside known ones add up to the known.
    summary_rows = [
        {"mode": "write", "per_cpu": [{"cpu": 0, "acquisitions": 4, "contended": None}]},
        {"mode": "write", "per_cpu": [{"cpu": 0, "acquisitions": 0, "contended": 1}]},
    ]
    assert render.cpu_totals_of(summary_rows) == {0: CpuFigures(4, 1, 0)}
    assert render.cpu_totals_of(summary_rows[:1]) == {0: CpuFigures(4, None, 0)}


def test_a_map_crowded_with_busy_locks_gets_rounds_less_and_less_often():
    """A round reads the owner and task maps and /proc for every row: while
    rounds free little (busy locks crowd the map), their wait doubles from
    one interval up to the usual period; under churn (many freed) every
    interval."""
    second, period = 1_000_000_000, session.RETIRE_NS
    wait = 0
    waits = []
    for _ in range(6):
        wait = session.next_crowded_wait(wait, 3, 4096, second, period)
        waits.append(wait // second)
    assert waits == [1, 2, 4, 8, 10, 10]
    assert session.next_crowded_wait(wait, 64, 4096, second, period) == 0  # churn again
    assert session.next_crowded_wait(wait, 4, 256, second, period) == 0  # small maps: 4 rows


def test_a_crowded_map_that_gains_rows_gets_a_round_whatever_its_back_off():
    """Churn that starts after a quiet crowded spell (rounds backed off to
    10 s) filled the map before the next round: a round's worth of new
    rows since the last one brings the next at once."""

    class Snapshot:
        def __init__(self, rows: int):
            self.rows = {(lock, 1, 0, lock): None for lock in range(rows)}

    step = session.round_rows(4096)
    assert step == 64
    assert not session._grown(Snapshot(3000 + step - 1), 3000, 4096)
    assert session._grown(Snapshot(3000 + step), 3000, 4096)
