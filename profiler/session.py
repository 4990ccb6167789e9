"""One collection: attach, stream, aggregate per interval, detach, record.

Ctrl-C (SIGINT), SIGTERM and SIGHUP end collection, not the program: the
probes are detached, the recording is written and the summary is printed. A
second signal while draining is ignored with a message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from profiler import aggregate, combine, ksyms, schema
from profiler.allocator import release_free_heap
from profiler.errors import LockprofError
from profiler.events import CHUNK_ROWS as EVENT_CHUNK_ROWS
from profiler.events import build_events, on_locks, without_locks
from profiler.intervals import CHUNK_ROWS as INTERVAL_CHUNK_ROWS
from profiler.intervals import build_intervals
from profiler.options import FIRST_TICK_S, CollectOptions, CpuFigures, LiveState, in_cpu_totals
from profiler.recording import (
    CALLER_COLUMNS,
    OFFCPU_COLUMNS,
    SAMPLE_COLUMNS,
    TASK_COLUMNS,
    Recording,
)
from profiler.signals import GRACE, StopFlag
from profiler.spool import RecordSpool
from profiler.targets import PRE_EXEC_COMM, CommandTarget, Target, pre_exec_locks

POLL_MS = 100
# How often rows of exited tasks and of gone or idle locks move out of the
# kernel's maps (a retired lock row is freed one such round later).
RETIRE_NS = 10_000_000_000
# Test hook: another period, in seconds (tests/integration/test_retire.py).
RETIRE_ENV = "LOCKPROF_TEST_RETIRE_S"
# Rows idle for this many rounds (60 s) are retired too (those of the locks
# the live view shows only once the map is half full).
IDLE_ROUNDS = 6
# Once the lock map is over half full, rows idle this long retire (but the
# live view's).
CROWDED_IDLE_S = 2.0
# Once the lock map is over 1/ROUND_FILL full, a round comes every interval
# instead of every RETIRE_NS (with next_crowded_wait's back-off). Under
# process churn (a parallel build) new processes' mmap_locks came faster
# than 10 s rounds freed the exited ones' rows: at 400 short processes a
# second the 4,096 rows filled in ~3 s, and every lock first seen after that
# was lost (stats_map_full: 176,299 figures in 10 s, against 56 with rounds
# every interval from half full). From half full, churn kept the map near
# half full, and a burst of other processes beside it (a shell starting a
# hundred in 0.14 s, ~4 rows each) had only the other half: 15.5-21.6% of
# the figures lost in four runs of 32 processes a second with three such
# bursts at 512 rows, 9.5-15.0% from an eighth (the twenty-fourth session).
# A fork storm of thousands a second still outruns them (docs/performance.md).
ROUND_FILL = 8


@dataclass
class _Collected:
    previous: dict = field(default_factory=dict)
    interval: int = 0
    # Interval rows as fixed-size records, spilled to an unlinked temporary
    # file as each interval is taken. As dicts they took ~1.2 KB each and a
    # system-wide run under process churn makes ~45 a second: ~200 MB an
    # hour (docs/reliability.md). Packing them into Parquet chunks in memory
    # still grew, and the first chunk cost ~30 MB of Parquet machinery.
    spool: RecordSpool = field(
        default_factory=lambda: RecordSpool(aggregate.interval_record_dtype(), "interval rows")
    )
    retired_ns: int = 0  # monotonic time rows were last retired
    # Between rounds while the lock map is crowded (0: every interval); see
    # next_crowded_wait. rows_at_round: the map's rows after the last round.
    crowded_wait_ns: int = 0
    rows_at_round: int = 0
    # (lock, flags, source) -> t_s of its last interval row: idle rows retire
    last_active: dict = field(default_factory=dict)
    # source -> per-CPU sums of freed lock rows, for the live view's totals
    retired_totals: dict = field(default_factory=dict)

    def keep(self, records: np.ndarray) -> None:
        """Spool an interval's records (aggregate.delta_records)."""
        self.spool.append(records)


def collect(
    options: CollectOptions,
    target: Target,
    working_mechanisms: set[str],
    on_interval: Callable[[LiveState], bool | None] | None = None,
    on_attached: Callable[[list], None] | None = None,
    stop: StopFlag | None = None,
    on_stopped: Callable[[], None] | None = None,
) -> Recording:
    """Run one collection and return its recording (not yet saved).

    on_stopped: called once collection stops, before the probes are
    detached and the recording is built (seconds, for a long one): the
    live view goes then, not a frozen frame that a further Ctrl-C's
    message would be written into.

    stop: the caller's installed StopFlag (it then stays installed after
    return, so that the recording is written under it). A signal before the
    target is released (compile, attach) undoes everything and raises
    signals.Interrupted; after that it ends collection."""
    from profiler import bpf as bpf_mod  # bcc is imported only when collecting

    session = None
    own_flag = stop is None
    flag = stop if stop is not None else StopFlag()
    try:
        if own_flag:
            flag.install()
        plans = _plans(options, working_mechanisms)
        flag.check_before_start()
        session = bpf_mod.BpfSession.for_collection(plans, options, target.tgid)
        flag.check_before_start()
        attached = session.attach()
        if target.mode == "attach":
            # Its lock is otherwise learned only when the target takes it.
            session.learn_target_lock(target.tgid)
        flag.check_before_start()
        target.check_present()
    except BaseException:
        if own_flag:
            flag.uninstall()
        if session is not None:
            session.close()
        if isinstance(target, CommandTarget):
            target.abandon()
        raise
    flag.phase = "collecting"
    with session, contextlib.ExitStack() as restore:
        if own_flag:
            restore.callback(flag.uninstall)
        stop = flag
        if on_attached:
            on_attached(attached)
        start_ns = time.monotonic_ns()
        wall_start = dt.datetime.now(dt.UTC)
        target.begin()
        state = _Collected(retired_ns=start_ns)
        namer = _LockNamer(session, spec_class(options.locks))
        if on_interval is not None:
            # The first live row names its locks: read the symbol tables
            # (~0.35 s here) while the first snapshot is awaited.
            namer.start_warming()
        _collect_loop(options, target, session, stop, state, namer, start_ns, on_interval)
        stop.draining = True
        if on_stopped is not None:
            _stopped(on_stopped)
        session.disarm()
        session.drain_events()
        end_ns = time.monotonic_ns()
        _take_interval(session, state, (end_ns - start_ns) / 1e9)
        _end_target(target, stop)
        return _build_recording(
            options,
            target,
            session,
            state,
            namer,
            attached,
            stop.reason,
            start_ns,
            end_ns,
            wall_start,
        )


def _plans(options: CollectOptions, working: set[str]) -> list:
    """Probe plans for the families and lock specs. Mechanisms beyond
    tracepoints (uprobe, kprobe, perf_event) are checked only when asked for."""
    from profiler import doctor, probes

    needed = {"kprobe" if spec.in_kernel else "uprobe" for spec in options.locks}
    if "sample" in options.families:
        needed.add("perf_event")
    working = set(working) | {m for m in needed - set(working) if doctor.mechanism_works(m)}
    if "sample" in options.families and "perf_event" not in working:
        raise LockprofError(
            "--sample needs perf_event cpu-clock sampling, which does not work here "
            "(see `lockprof doctor`)"
        )
    plans = probes.plan(options.families, working)
    for spec in options.locks:
        plans += probes.spec_plan(spec, working)
    return plans


def _collect_loop(options, target, session, stop, state, namer, start_ns, on_interval) -> None:
    # The first snapshot comes early, so the live view shows rows within a
    # moment of attaching; later ones every interval from the start.
    next_tick = start_ns + int(min(options.interval_s, FIRST_TICK_S) * 1e9)
    first = True
    deadline = start_ns + int(options.duration_s * 1e9) if options.duration_s else None
    retire_ns = _retire_period_ns()
    while stop.reason is None:
        now = time.monotonic_ns()
        wait_ms = max(0, min(POLL_MS, (next_tick - now) // 1_000_000))
        session.poll_events(int(wait_ms))
        ended = target.poll()
        if ended:
            stop.request(ended)
        if session.rq_learning_overdue():
            session.rq_lock_names()  # detaches lp_learn_rq on time, whatever the interval
        now = time.monotonic_ns()
        if deadline is not None and now >= deadline:
            stop.request(f"duration {options.duration_s:g}s reached")
        if now >= next_tick and stop.reason is None:
            interval_ns = int(options.interval_s * 1e9)
            if first:  # then on the interval grid from the start, past now
                first = False
                next_tick = start_ns + interval_ns * ((now - start_ns) // interval_ns + 1)
            else:
                next_tick += interval_ns
            snapshot = _take_interval(session, state, (now - start_ns) / 1e9)
            session.rq_lock_names()  # reads what lp_learn_rq found; detaches it when done
            since = now - state.retired_ns
            due = since >= retire_ns
            if due or (
                _crowded(snapshot, session.max_locks)
                and (
                    since >= state.crowded_wait_ns
                    or _grown(snapshot, state.rows_at_round, session.max_locks)
                )
            ):
                state.retired_ns = now
                live_locks = {key[0] for key in snapshot.rows}
                session.retire_dead_tasks(functools.partial(_task_alive, live_locks=live_locks))
                entries = session.owner_entries()  # the owner map, read once a round
                if "follow" in options.families:
                    session.forget_dead_followed(_process_alive, session.read_owners(entries))
                owners = session.lock_owners(entries=entries)
                hidden = hidden_locks(target, session)
                retired = _retire_locks(
                    session, state, snapshot, owners, (now - start_ns) / 1e9, retire_ns, hidden
                )
                state.crowded_wait_ns = next_crowded_wait(
                    state.crowded_wait_ns, retired, session.max_locks, interval_ns, retire_ns
                )
                state.rows_at_round = len(snapshot.rows) - retired
                session.forget_owners(_process_alive, entries)
                # Each interval builds and drops numpy and pandas temporaries;
                # glibc keeps the freed pages unless asked, and a long run's
                # RSS crept up by them.
                release_free_heap()
            if on_interval and not _shown(
                on_interval,
                functools.partial(
                    _live_state, snapshot, session, namer, target, options, now - start_ns, state
                ),
            ):
                on_interval = None  # and no live state is built from now on


def _shown(on_interval: Callable[[LiveState], bool | None], live: Callable[[], LiveState]) -> bool:
    """Give the live view its state (built here: live()). False when the
    view is to be called no more: it said so (its terminal is gone), or it
    failed, which is said in one line on stderr. Collection goes on either
    way: the recording is what counts."""
    try:
        return on_interval(live()) is not False
    except Exception as exc:
        _say_view_failed("lockprof: live view stopped ({}); collection goes on", exc)
        return False


def _stopped(on_stopped: Callable[[], None]) -> None:
    """Tell the live view that collection stopped; whatever becomes of it,
    the recording is written."""
    try:
        on_stopped()
    except Exception as exc:
        _say_view_failed("lockprof: live view: {}", exc)


def _say_view_failed(line: str, exc: Exception) -> None:
    """line, its {} the exception, on stderr (a gone stderr silences it)."""
    from profiler.render import safe_text

    with contextlib.suppress(OSError):
        sys.stderr.write(line.format(safe_text(f"{type(exc).__name__}: {exc}")) + "\n")


def _crowded(snapshot, capacity: int) -> bool:
    """The lock map is crowded enough for a round every interval
    (snapshot.rows: one entry a row in use, retired ones not yet freed
    included; ROUND_FILL)."""
    return len(snapshot.rows) > capacity // ROUND_FILL


def over_half(rows: int, capacity: int) -> bool:
    """What crowded means for what a round retires (locks_to_retire) from a
    lock map of capacity rows (rounds come sooner: _crowded)."""
    return rows > capacity // 2


def _grown(snapshot, rows_at_round: int, capacity: int) -> bool:
    """Has the map gained a round's worth of rows (ROUND_ROWS) since the
    last round? Churn that starts while a map crowded with busy locks had
    backed off its rounds to 10 s would otherwise fill it before the next."""
    return len(snapshot.rows) - rows_at_round >= round_rows(capacity)


def round_rows(capacity: int) -> int:
    """Rows that make a round worth it: retired by one, or gained since."""
    return max(4, capacity // 64)


def next_crowded_wait(
    wait_ns: int, retired: int, capacity: int, interval_ns: int, retire_ns: int
) -> int:
    """The wait before the next round while the map is crowded, after one
    that retired `retired` rows. A round reads the owner and task maps and
    looks up /proc for every row (tens of ms with thousands of rows): a map
    crowded with busy locks, where rounds free little, gets them less and
    less often (doubling up to the usual period); churn, where they free
    many, every interval."""
    if retired >= round_rows(capacity):
        return 0
    return min(retire_ns, max(interval_ns, 2 * wait_ns))


def _retire_period_ns() -> int:
    override = os.environ.get(RETIRE_ENV)
    return int(float(override) * 1e9) if override else RETIRE_NS


def _task_alive(
    tgid: int, tid: int, lock: int | None = None, live_locks: Collection[int] = ()
) -> bool:
    """Is the task's row (on lock, its id) still wanted? While the task is
    there. The idle tasks (pid 0, one per CPU, waiting in interrupts) are
    not in /proc and never exit: retired every round, their rows lost the
    waits counted between a read and the reset; kept for good, one per lock
    an interrupt ever contended on, they would fill the task map. Theirs go
    with their lock's row (live_locks: the lock ids of the kernel's rows)."""
    if tid == 0:
        return lock is not None and lock in live_locks
    return os.path.exists(f"/proc/{tgid}/task/{tid}")


def _process_alive(tgid: int) -> bool:
    return os.path.exists(f"/proc/{tgid}")


def _retire_locks(
    session,
    state: _Collected,
    snapshot,
    owners,
    t_s: float,
    period_ns: int,
    hidden: Collection[int] = (),
) -> int:
    """Free the lock rows retired a round ago (snapshot, just read, holds
    their last figures), then retire the rows of exited processes' locks
    (owners: session.lock_owners()) and idle rows (locks_to_retire). A
    long system-wide run under process churn otherwise fills the kernel's
    lock map (new locks then lost as stats_map_full) and grows lockprof's
    memory with it. hidden: locks the live view leaves out (hidden_locks).
    Returns how many rows it retired."""
    freed = session.free_retired_locks()
    _forget_freed(state, freed, hidden)
    live = {key[:3]: key[3] for key in snapshot.rows if key[3] not in freed}
    for key in live:
        state.last_active.setdefault(key, t_s)
    # While the map has room, the rows of the locks the live view shows stay
    # however idle (their cumulative figures would restart from zero on
    # screen). In a run with at most LIVE_LOCKS locks, that is all of them.
    shown, _more = busiest_rows(snapshot.rows, snapshot.columns, LIVE_LOCKS)
    victims = locks_to_retire(
        live,
        owners,
        _process_alive,
        state.last_active,
        t_s,
        session.max_locks,
        idle_s=IDLE_ROUNDS * period_ns / 1e9,
        keep={key[0] for key in shown},
        crowded_idle_s=CROWDED_IDLE_S,
    )
    return session.retire_locks(victims)


def _forget_freed(
    state: _Collected, freed: dict[int, tuple[int, int, int]], hidden: Collection[int] = ()
) -> None:
    """Drop freed rows from the previous snapshot (the next interval's
    deltas start from nothing at their index), keeping their figures in the
    live view's per-CPU totals, as cpu_totals counts the live rows: not
    those of hidden locks (a `run` child's pre-exec mm, freed at its exec)."""
    gone = [key for key in state.previous if freed.get(key[3]) == key[:3]]
    # As cpu_totals counts the live rows: a spec's sum rows left out too.
    counted = set(per_cpu_keys(state.previous, hidden))
    for key in gone:
        values = state.previous.pop(key)
        if key not in counted:
            continue
        into = state.retired_totals.get(key[2])
        state.retired_totals[key[2]] = values.copy() if into is None else into + values
    still_used = {key[:3] for key in state.previous}
    for key in set(freed.values()) - still_used:
        state.last_active.pop(key, None)


def locks_to_retire(
    live: dict[tuple[int, int, int], int],
    owners: dict[int, tuple[int, str]],
    process_alive: Callable[[int], bool],
    last_active: dict[tuple[int, int, int], float],
    now_s: float,
    capacity: int,
    idle_s: float,
    keep: Collection[int] = (),
    crowded_idle_s: float | None = None,
) -> list[tuple[tuple[int, int, int], int]]:
    """Which of the kernel's lock rows (live: (lock, flags, source) -> index)
    to retire:
    - every row of an mmap_lock whose owner process has exited (its mm is
      gone; the address, if reused, is another process's lock);
    - every row idle for idle_s, unless its lock is in keep (the locks the
      live view shows) and the map is at most half full; over half full,
      the rows of the locks not in keep go once idle for crowded_idle_s if
      that is shorter. Transient locks
      (page-table spinlocks come and go by the thousand under process churn)
      would otherwise stay until the map is half full, and lockprof's copy
      of every row (two snapshots: rows x CPUs x 728 bytes) with them: ~12 MB
      an hour on 2 CPUs under the soak's churn, 32 times that on 64.
    A retired key used again gets a new row; the recording's interval rows
    are deltas, so nothing is lost."""
    dead = {lock for lock, (tgid, _comm) in owners.items() if not process_alive(tgid)}
    victims = [(key, index) for key, index in live.items() if key[0] in dead]
    crowded = over_half(len(live) - len(victims), capacity)  # the rows that stay
    # Over half full, the rows no live view shows go sooner.
    unkept_idle_s = idle_s
    if crowded and crowded_idle_s is not None:
        unkept_idle_s = min(idle_s, crowded_idle_s)
    victims += [
        (key, index)
        for key, index in live.items()
        if key[0] not in dead
        and (crowded or key[0] not in keep)
        and now_s - last_active.get(key, now_s) >= (idle_s if key[0] in keep else unkept_idle_s)
    ]
    return victims


def _take_interval(session, state: _Collected, t_s: float):
    snapshot = session.read_stats(time.monotonic_ns())
    state.interval += 1
    records = aggregate.delta_records(
        state.previous, snapshot.rows, snapshot.columns, state.interval, round(t_s, 6)
    )
    state.keep(records)
    state.last_active.update(dict.fromkeys(_active_keys(records), t_s))
    state.previous = snapshot.rows
    return snapshot


def _active_keys(records: np.ndarray) -> list[tuple[int, int, int]]:
    """The (lock, flags, source) of records: of each run of records of one
    key, the first (a key's records are consecutive but for merged ones,
    see aggregate.delta_records: a key may come more than once)."""
    idents = [records[name] for name in aggregate.KEY_COLUMNS]
    starts = np.ones(len(records), dtype=bool)
    if len(records):
        starts[1:] = np.logical_or.reduce([i[1:] != i[:-1] for i in idents])
    return list(zip(*(i[starts].tolist() for i in idents), strict=True))


# After a signal ends a `run`, the command has this long to exit before it
# counts as still running. A terminal's Ctrl-C reaches it too: its exit
# status (130) is then passed on, as `time` does.
SIGNAL_GRACE_S = 0.3


def _end_target(target: Target, stop: StopFlag) -> None:
    """Collection has stopped: end the target's window. A `run` command's
    window closes first, then it gets its moment to exit after a signal:
    one that outlives it is measured, as the lock figures are, up to the
    stop (its elapsed time was the window plus SIGNAL_GRACE_S)."""
    if isinstance(target, CommandTarget):
        target.close_window()
        _grace_for_command(target, stop)
    target.end()


def _grace_for_command(target: CommandTarget, stop: StopFlag) -> None:
    """Wait, after a signal only, up to SIGNAL_GRACE_S for the command to
    finish exiting; a further signal ends the wait at once. Nothing else
    waits for a command still running when collection stops (-d, or a
    signal to lockprof alone): CommandTarget.end leaves it running, as
    `attach` leaves its target, with its rusage over the collection window
    (`bench` stops it there: stop_at_end)."""
    if stop.signum is None:
        return
    deadline = time.monotonic() + SIGNAL_GRACE_S
    repeats, phase = stop.repeats, stop.phase
    stop.phase = GRACE  # what a further signal says it does
    try:
        while target.poll() is None and time.monotonic() < deadline and stop.repeats == repeats:
            time.sleep(0.02)
    finally:
        stop.phase = phase


def _cumulative_frame(snapshot) -> pd.DataFrame:
    """A snapshot as one interval of per-CPU rows (for the live view)."""
    records = aggregate.delta_records({}, snapshot.rows, snapshot.columns, 0, 0.0)
    return aggregate.records_frame(records)


# The live view summarises this many locks, the busiest by wait and hold
# time: a system-wide run sees thousands of mm's, and summarising them all
# every interval cost a tenth of a CPU (docs/performance.md).
LIVE_LOCKS = 40


def busiest_rows(rows: dict, columns: list[str], limit: int) -> tuple[dict, int]:
    """The snapshot rows of the `limit` locks with the most wait+hold time,
    and how many locks were left out."""
    wait, hold = columns.index("wait.total_ns"), columns.index("hold.total_ns")
    score: dict[int, int] = {}
    for key, values in rows.items():
        lock = key[0]
        score[lock] = score.get(lock, 0) + int(values[:, wait].sum()) + int(values[:, hold].sum())
    if len(score) <= limit:
        return rows, 0
    keep = set(sorted(score, key=score.__getitem__, reverse=True)[:limit])
    return {key: v for key, v in rows.items() if key[0] in keep}, len(score) - limit


def _sees_every_acquisition(source: int) -> bool:
    return source in schema.every_acquisition_sources()


@functools.cache
def _mode(source: int, flags: int) -> str:
    return schema.classify(source, flags)[1]


def per_cpu_keys(keys: Iterable[tuple], hidden: Collection[int] = ()) -> list[tuple]:
    """The snapshot keys (lock, flags, source, ...) whose figures the per-CPU
    totals add up: those the summary's per_cpu entries come from
    (aggregate.SummaryRows), but for the hidden locks (hidden_locks) and a
    lock spec's sum rows (options.in_cpu_totals). Not the rows another
    family counts already (aggregate.shadowed): the contention rows of a
    lock and mode whose every acquisition is counted (its contended
    acquisitions are those waits), a kernel spec's rows on an mmap_lock."""
    keys = [k for k in keys if k[0] not in hidden and in_cpu_totals(_mode(k[2], k[1]))]
    if not keys:
        return []
    frame = pd.DataFrame(
        {
            "lock": [k[0] for k in keys],
            "mode": [_mode(k[2], k[1]) for k in keys],
            "source": [k[2] for k in keys],
        }
    )
    left_out = aggregate.shadowed(frame)
    return [k for k, out in zip(keys, left_out.tolist(), strict=True) if not out]


def cpu_totals(
    rows: dict,
    columns: list[str],
    retired: dict[int, np.ndarray] | None = None,
    hidden: Collection[int] = (),
    contention_traced: bool = True,
) -> dict[int, CpuFigures]:
    """Per CPU, over every lock but the hidden ones: the figures the
    summary's per_cpu entries add up to (render.add_cpu_totals), for the
    live view's per-CPU line. retired: source -> per-CPU sums of the rows
    freed from the kernel map (_forget_freed keeps those counted here).
    Without contention_traced the contended waits are not known (None), as
    the summary's per_cpu entries have them, not 0."""
    acq, cont = columns.index("acquisitions"), columns.index("contended")
    wait = columns.index("wait.total_ns")
    sourced = [(key[2], rows[key]) for key in per_cpu_keys(rows, hidden)]
    sourced += list((retired or {}).items())
    cpus = max((values.shape[0] for _source, values in sourced), default=0)
    figures = np.zeros((cpus, 3), dtype=np.uint64)  # acquisitions, contended, wait ns
    for source, values in sourced:
        if _sees_every_acquisition(source):
            figures[:, 0] += values[:, acq]
        figures[:, 1] += values[:, cont]
        figures[:, 2] += values[:, wait]
    return {
        cpu: CpuFigures(
            int(figures[cpu, 0]),
            int(figures[cpu, 1]) if contention_traced else None,
            int(figures[cpu, 2]),
        )
        for cpu in range(cpus)
    }


def _live_state(snapshot, session, namer, target, options, elapsed_ns, state) -> LiveState:
    shown, more = busiest_rows(snapshot.rows, snapshot.columns, LIVE_LOCKS)
    frame = _cumulative_frame(StatsView(shown, snapshot.columns))
    hidden = hidden_locks(target, session)
    frame = without_locks(frame, hidden)
    locks = namer.name(frame)
    rows = _live_rows(frame, locks, options, target)
    if "offcpu" in options.families:
        rows += _live_offcpu_rows(session, namer)
    return LiveState(
        elapsed_s=elapsed_ns / 1e9,
        target=target.describe(),
        rows=rows,
        errors=session.read_errors(),
        events=session.events_pending(),
        cpus=len(session_cpus()),
        more_rows=more,
        cpu_totals=cpu_totals(
            snapshot.rows,
            snapshot.columns,
            state.retired_totals,
            hidden,
            contention_traced="contention" in options.families,
        ),
        threshold_ns=options.threshold_ns,
    )


def _live_rows(frame: pd.DataFrame, locks: pd.DataFrame, options, target) -> list[dict]:
    """The live view's lock rows: one per lock and mode, or with -c one per
    lock name and mode (combine.Combined), over the busiest locks only, as
    the rows without -c are: a name's quieter locks join its row when they
    become busy enough, and the final summary combines every lock."""
    families = list(options.families)
    if not options.combine_locks:
        return aggregate.summary_rows(frame, locks, families)
    return list(combine.summary_rows(frame, locks, families, target.tgid or None))


def _live_offcpu_rows(session, namer) -> list[dict]:
    """Blocked time in lock functions so far (--offcpu), for the live view."""
    from profiler import writer_cost

    offcpu = pd.DataFrame(session.read_offcpu(), columns=OFFCPU_COLUMNS)
    if offcpu.empty:
        return []
    frames = namer.frames(sorted(s for s in offcpu["stack_id"].unique() if s >= 0))
    stacks = pd.DataFrame({"stack_id": list(frames), "frames": list(frames.values())})
    return writer_cost.offcpu_rows(offcpu, stacks)


@dataclass
class StatsView:
    """A subset of a snapshot's rows, shaped like the snapshot."""

    rows: dict
    columns: list[str]


def session_cpus() -> list[int]:
    from profiler import bpf as bpf_mod

    return bpf_mod.online_cpus()


class _LockNamer:
    """Names locks from the owner map, contention stacks and data symbols,
    caching stack symbolization across intervals."""

    def __init__(self, session, spec_class: str = "lockspec") -> None:
        self._session = session
        self._spec_class = spec_class
        self._frames: dict[int, list[str]] = {}
        self._data_symbols: dict[int, str] | None = None
        self._merged: dict[int, str] | None = None  # _symbols()
        self._merged_rq = 0  # runqueue locks in it
        self.unreadable_stacks = 0  # stacks whose frames could not be read
        self._warming: threading.Thread | None = None

    def start_warming(self) -> None:
        """Read kallsyms' data and text symbols in a thread, so that the first
        naming finds them read: the first live row came ~0.35 s after the
        first snapshot, for them. The loop's polls go on meanwhile (they
        wait in the kernel, without the GIL). Started after the probes are
        loaded: their own frames are in kallsyms by then."""
        self._warming = threading.Thread(target=self._warm, name="lockprof-symbols", daemon=True)
        self._warming.start()

    def _warm(self) -> None:
        with contextlib.suppress(Exception):  # read again, and failing there, when used
            self._data_symbols = ksyms.data_symbols()
            self._session.read_text_symbols()

    def _warmed(self) -> None:
        warming, self._warming = self._warming, None
        if warming is not None:
            warming.join()

    def callers(self, retired: bool = True) -> pd.DataFrame:
        return pd.DataFrame(self._session.read_callers(retired), columns=CALLER_COLUMNS)

    def frames(self, stack_ids) -> dict[int, list[str]]:
        """The frames of these stacks (each read once, then cached). Only
        these: the cache also holds the ids name() looked up, a failed
        capture's errno (-17) among them, which are no stacks to record."""
        self._warmed()
        wanted = [int(stack_id) for stack_id in stack_ids]
        for stack_id in wanted:
            if stack_id not in self._frames:
                # Stacks share most frames: one string per frame, not per
                # stack (thousands of stacks are kept in a long run).
                frames = self._stack_frames(stack_id)
                self._frames[stack_id] = [sys.intern(f) for f in frames]
        return {stack_id: self._frames[stack_id] for stack_id in wanted}

    def _stack_frames(self, stack_id: int) -> list[str]:
        """A stack's frames, or none: frames only name callers, and a stack
        that cannot be read must not cost the run its recording (BCC's
        StackTrace.walk raised IndexError on a full stack bucket, and the
        run ended with exit 70 and nothing written). Counted with the
        stacks the kernel could not capture."""
        try:
            return self._session.stack_frames(stack_id)
        except Exception:
            self.unreadable_stacks += 1
            return []

    def _symbols(self) -> dict[int, str]:
        """kallsyms' data symbols with the runqueue locks the probes
        recognised over them, merged again only when more runqueue locks
        are known: with CONFIG_KALLSYMS_ALL there are 100k+ data symbols,
        and the live view names its locks every interval."""
        self._warmed()
        if self._data_symbols is None:
            self._data_symbols = ksyms.data_symbols()
        rq_names = self._session.rq_lock_names()
        if self._merged is None or self._merged_rq != len(rq_names):
            self._merged = {**self._data_symbols, **rq_names}
            self._merged_rq = len(rq_names)  # learned locks only add up
        return self._merged

    def name(self, frame: pd.DataFrame, callers: pd.DataFrame | None = None) -> pd.DataFrame:
        """The locks table of frame's rows. The live view passes no callers
        (only those of the rows shown are read); the recording passes them,
        and gets the exited processes' mmap_locks named too."""
        symbols = self._symbols()
        final = callers is not None
        if callers is None:
            callers = self.callers(retired=False)
            callers = callers[on_locks(callers, set(frame["lock"].tolist()))]
        stacks = self.frames(callers["stack_id"].unique()) if not callers.empty else {}
        return aggregate.name_locks(
            frame,
            self._session.lock_owners(forgotten=final),
            callers,
            stacks,
            symbols,
            spec_class=self._spec_class,
            addresses=self._session.lock_addresses(forgotten=final),
        )


# -- the pre-exec mm of `lockprof run` ------------------------------------------


def hidden_locks(target: Target, session) -> set[int]:
    """Locks (lock ids) left out of the live view and the recording: the
    mmap_lock of a `run` child's pre-exec mm (a copy of lockprof's own, not
    the command's)."""
    if not isinstance(target, CommandTarget):
        return set()
    return pre_exec_locks(session.lock_owners(), target.tgid, session.target_lock_id())


def pre_exec_note(
    intervals: pd.DataFrame,
    hidden_events: int,
    locks: set[int],
    addresses: dict[int, int] | None = None,
) -> dict | None:
    """What leaving out the pre-exec mmap_lock removed, for meta (addresses:
    the lock ids that are not their own address, lockids.py)."""
    if not locks:
        return None
    addresses = addresses or {}
    mine = intervals[on_locks(intervals, locks)] if not intervals.empty else intervals
    return {
        "locks": [f"{addresses.get(lock, lock):#x}" for lock in sorted(locks)],
        "comm": PRE_EXEC_COMM,
        "acquisitions": int(mine["acquisitions"].sum()),
        "wait_total_ns": int(mine["wait_total_ns"].sum()),
        "hold_total_ns": int(mine["hold_total_ns"].sum()),
        "events": hidden_events,
    }


def relabel_pre_exec_tasks(tasks: pd.DataFrame, tgid: int, comm: str | None) -> pd.DataFrame:
    """A per-task row keeps the comm its task had when first seen. The `run`
    child's rows first seen before its exec (on the command's new mm, which
    exec builds while the child is still PRE_EXEC_COMM) are the command's
    main thread: give them the command's comm."""
    if not comm or comm == PRE_EXEC_COMM or tasks.empty:
        return tasks
    tasks = tasks.copy()
    tasks.loc[(tasks["tgid"] == tgid) & (tasks["comm"] == PRE_EXEC_COMM), "comm"] = comm
    return tasks


def _command_comm(target: Target, session) -> str | None:
    """The comm the command's own mm was learned under, if known."""
    pid, comm = session.read_owners().get(session.target_lock(), (None, None))
    return comm if pid == target.tgid else None


def _build_recording(
    options, target, session, state, namer, attached, stop_reason, start_ns, end_ns, wall_start
) -> Recording:
    callers = namer.callers()
    tasks = pd.DataFrame(session.read_tasks(), columns=TASK_COLUMNS)
    hidden = hidden_locks(target, session)
    intervals = build_intervals(lambda: state.spool.chunks(INTERVAL_CHUNK_ROWS), hidden)
    # The chunks' temporaries, freed, stay in glibc's heap unless asked: the
    # 2-hour soak's rows left 130 MB there while the recording was written
    # and the summary (or --html's report) built: 405 -> 274 MB. (The peak,
    # building the summary, is not lower for it: bench/endrun.py.)
    release_free_heap()
    events = build_events(lambda: session.take_events(EVENT_CHUNK_ROWS), start_ns, hidden)
    release_free_heap()
    pre_exec = pre_exec_note(
        intervals.hidden_totals, events.hidden, hidden, session.lock_addresses(forgotten=True)
    )
    callers, tasks = (without_locks(frame, hidden) for frame in (callers, tasks))
    if isinstance(target, CommandTarget):
        tasks = relabel_pre_exec_tasks(tasks, target.tgid, _command_comm(target, session))
    # Empty for a family the run did not compile in (the session knows which).
    offcpu = pd.DataFrame(session.read_offcpu(), columns=OFFCPU_COLUMNS)
    samples = pd.DataFrame(session.read_samples(), columns=SAMPLE_COLUMNS)
    stack_ids = set(callers["stack_id"].tolist()) | events.stack_ids
    stack_ids |= set(offcpu["stack_id"].tolist()) | set(samples["stack_id"].tolist())
    frames = namer.frames(sorted(s for s in stack_ids if s >= 0))
    locks = namer.name(intervals.totals, callers)
    release_free_heap()  # the kallsyms table's temporaries (profiler/ksyms.py)
    stacks = pd.DataFrame({"stack_id": list(frames), "frames": list(frames.values())})
    errors = session.read_errors()
    # Stacks lockprof could not read are as missing as those the kernel did
    # not capture (the "stack" note says so).
    errors["stack"] = errors.get("stack", 0) + namer.unreadable_stacks
    lost = errors.get("ringbuf_full", 0) + session.events_dropped_userspace
    meta = {
        "lockprof_version": _version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": len(session_cpus()),
        "mode": target.mode,
        "target_pid": target.tgid or None,
        "target": target.describe(),
        "command": target.command(),
        # As a shell's $? (128 + N for signal N), and the signal's name.
        "exit_status": target.exit_status,
        "exit_signal": target.exit_signal,
        # bench: lockprof stopped a command still running when collection did
        "ended_by_lockprof": target.ended_by_lockprof
        if isinstance(target, CommandTarget)
        else None,
        # bench: background processes the command left, stopped with its run
        "orphans_stopped": getattr(target, "orphans_stopped", None),
        # Forks are not followed, execs keep the pid (profiled): what was seen.
        "lineage": target.lineage.meta() if target.lineage is not None else None,
        "families": list(options.families),
        # --lock-types: contention of these types only (None: every type)
        "lock_types": list(options.lock_types) if options.lock_types is not None else None,
        "lock_specs": [_spec_meta(spec) for spec in options.locks],
        "sample_hz": options.sample_hz if "sample" in options.families else None,
        "what_if_cpus": options.what_if_cpus,
        "mechanisms": [a.__dict__ for a in attached],
        # The probes came from the compiled-probe cache or a full compile (start-up)
        "probes_compile": session.compile_info.__dict__ if session.compile_info else None,
        "interval_s": options.interval_s,
        "snapshots": state.interval,  # aggregate snapshots taken (rows only where active)
        "threshold_ns": options.threshold_ns,
        "stack_threshold_ns": options.stack_threshold_ns,
        "stack_rate": options.stack_rate,
        "start_time": wall_start.isoformat(),
        "start_ns": start_ns,
        "end_ns": end_ns,
        "duration_s": round((end_ns - start_ns) / 1e9, 6),
        "stop_reason": stop_reason,
        "lost_events": lost,
        "pre_exec_mmap_lock": pre_exec,
        "events_dropped_userspace": session.events_dropped_userspace,
        # Lock rows moved out of the kernel's map (exited processes' locks,
        # idle locks): their figures are all here.
        "locks_retired": session.locks_retired,
        # --follow: the target's descendants profiled (None: not asked)
        "followed": session.followed_count() if "follow" in options.families else None,
        "errors": errors,
        "rusage": target.rusage(),
        "lockprof_pid": os.getpid(),
        "headers": headers_in_use(),
    }
    return Recording(
        meta=meta,
        intervals=intervals.frame,
        intervals_file=intervals.spilled,
        interval_totals=intervals.totals,
        locks=locks,
        events=events.frame,
        events_file=events.spilled,
        tasks=tasks,
        callers=callers,
        stacks=stacks,
        offcpu=offcpu,
        samples=samples,
    )


def spec_class(specs) -> str:
    """The lock class of lock spec rows: the spec's name (one spec per run)."""
    return specs[0].name if len(specs) == 1 else "lockspec"


def _spec_meta(spec) -> dict:
    return {
        "name": spec.name,
        "target": spec.target,
        "functions": {role: list(fns) for role, fns in spec.functions.items()},
        "status": sorted(spec.status),
    }


def _version() -> str:
    from profiler import __version__

    return __version__


def headers_in_use() -> dict:
    """Which kernel headers BCC compiles against: exact or a fallback."""
    release = platform.release()
    build = Path(f"/lib/modules/{release}/build")
    if not build.exists():
        return {"kind": "missing", "path": str(build)}
    resolved = build.resolve()
    version_file = resolved / "include/generated/utsrelease.h"
    try:
        version = version_file.read_text().split('"')[1]
    except (OSError, IndexError):
        version = resolved.name
    kind = "exact" if version == release else "fallback"
    return {"kind": kind, "path": str(resolved), "version": version}


def require_privileges(uprobes: bool = False) -> None:
    """Refuse to collect without the capabilities BPF tracing needs, naming
    the missing ones (profiler.privileges)."""
    from profiler import privileges

    privileges.require(uprobes)


__all__ = ["CollectOptions", "LiveState", "LockprofError", "collect", "require_privileges"]
