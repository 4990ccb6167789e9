"""The summary of a recording: the `show` table and the `show --json` document.

`show --json` is the stable interface for scripts (documented in README.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from profiler import aggregate, schema, writer_cost
from profiler.combine import CombinedRows
from profiler.combine import summary_rows as combined_rows
from profiler.foreign_tasks import foreign_task_rows
from profiler.recording import Recording, damage_text
from profiler.targets import recorded_exit

JSON_VERSION = 1


class LockRows:
    """A recording's summary rows, built one at a time as they are iterated:
    the aggregates' (lock and mode) rows, busiest first, then the off-CPU
    rows (--offcpu); with top, only the first top of each, as `show --top`
    prints them in its two tables. len() is the number iterated, total the
    number without top. `locks` and `offcpu` hold every row (the table's
    footer sums them all)."""

    def __init__(
        self,
        rec: Recording,
        top: int | None = None,
        sort: str = "wait_total",
        combine: bool = False,
    ):
        families = rec.meta.get("families", [])
        self.locks: aggregate.SummaryRows | CombinedRows
        if combine:
            target_pid = rec.meta.get("target_pid")
            self.locks = combined_rows(rec.interval_totals, rec.locks, families, target_pid, sort)
        else:
            self.locks = aggregate.SummaryRows(rec.interval_totals, rec.locks, families, sort)
        self.offcpu = writer_cost.offcpu_rows(rec.offcpu, rec.stacks)
        self.top = top

    @property
    def total(self) -> int:
        return len(self.locks) + len(self.offcpu)

    def __len__(self) -> int:
        if self.top is None:
            return self.total
        return min(len(self.locks), self.top) + min(len(self.offcpu), self.top)

    def __iter__(self) -> Iterator[dict]:
        yield from islice(self.locks, self.top)
        yield from self.offcpu[: self.top]


def lock_rows(rec: Recording) -> list[dict]:
    """Lock rows from the aggregates, then the off-CPU rows (--offcpu)."""
    return list(LockRows(rec))


def writer_cost_json(rec: Recording, what_if_cpus: int | None = None) -> dict | None:
    """The writer's sum over CPUs (--sample), or None when not sampled."""
    meta = rec.meta
    return writer_cost.sum_cost(
        rec.samples,
        rec.stacks,
        meta.get("sample_hz"),
        meta.get("cpus"),
        meta.get("duration_s"),
        what_if_cpus or meta.get("what_if_cpus"),
    )


# Kernel-side map-full counters, and what the user loses when they are nonzero.
MAP_FULL = {
    "stats_map_full": "distinct locks beyond the aggregate map (LP_MAX_LOCKS) were not counted",
    "task_map_full": "per-task rows beyond the task map (LP_MAX_TASKS) were not kept",
    "caller_map_full": "contention callers beyond the caller map (LP_MAX_CALLERS) were not kept",
    "owner_map_full": "mm owners beyond the owner map (LP_MAX_OWNERS) were not learned: "
    "their mmap_locks are unnamed",
    "stack": "kernel stacks not captured (their stack-map bucket held another stack, "
    "the map was full at LP_MAX_STACKS, or no unwind) are missing",
    "offcpu_map_full": "off-CPU stacks beyond the off-CPU map were not kept",
    "sample_map_full": "CPU samples beyond the sample map were not kept",
    "follow_map_full": "--follow: descendants beyond the follow map (LP_MAX_OWNERS) were not "
    "profiled",
}


# Events the kernel did not hand to lockprof's programs (recursion_misses is
# read from the programs' fdinfo, not from lp_errors), and what that leaves out.
KERNEL_SKIPPED = {
    "recursion_misses": "probe runs the kernel skipped (the same lockprof program was already "
    "running on that CPU, as when an interrupt contends during it): those of them lockprof follows "
    "were not counted; a wait among them is left out (irq wait skipped), or counts as end "
    "without begin or nest overflow",
    "irq_wait_skipped": "contended waits in an interrupt, while a lockprof contention program "
    "ran on that CPU, were left out: the kernel skipped their begin or their end",
}

# Ends of waits and holds whose beginning the probes did not see. Mostly the
# waits and holds already under way when the probes were armed: every run
# starts in the middle of some (more system-wide, where every process's
# count), so a few are expected; they never pair later.
UNPAIRED = {
    "end_without_begin": "contended waits ended whose begin was not seen: waits under way "
    "when collection started (inherent: a few per run), or whose begin the kernel skipped "
    "(recursion misses) or gave way in a full nest (nest overflow); those waits are not in "
    "the figures",
    "acquire_without_start": "mmap_lock write acquisitions, or failed acquisitions, whose wait "
    "began before collection started (inherent: a few per run): not counted as acquisitions "
    "or waits, and their releases count as release without acquire",
    "release_without_acquire": "mmap_lock releases of holds taken before collection started "
    "(inherent: a few per run, more system-wide) or whose acquisition was not counted "
    "(acquire without start, downgrade without write, held overflow): those holds are not in "
    "the hold figures",
    "downgrade_without_write": "mmap_lock read acquisitions with no wait seen and no write hold "
    "to downgrade: the downgrade of a write lock taken before collection started, or a read "
    "whose wait began before it (inherent: a few per run); not counted, and their releases "
    "count as release without acquire",
    "spec_return_without_entry": "--locks: lock function returns whose call was not seen "
    "(calls under way when collection started: inherent, a few per run): those acquisitions "
    "and waits are not counted",
    "spec_unlock_without_lock": "--locks: unlocks of locks not seen taken (taken before "
    "collection started: inherent, a few per run; or beyond held overflow): those holds are "
    "not counted",
}

# Per-task state that ran out, and the event stream's buffer.
OVERFLOWS = {
    "task_storage": "the probes could not get a task's own state (the kernel's task storage "
    "was busy, as when an interrupt's probe runs during another on the same task): the wait "
    "or hold that event began or ended is not in the figures",
    "nest_overflow": "a task had more than LP_MAX_NEST (4) contended waits open at once: the "
    "oldest gave way, nearly always a wait whose end the kernel skipped (recursion misses); "
    "that wait is not in the figures",
    "held_overflow": "a task held more than LP_MAX_HELD (4) mmap_locks, or lock spec locks, "
    "at once: the extra acquisitions are counted but their holds are not timed (their "
    "releases count as release without acquire or spec unlock without lock)",
    "ringbuf_full": "waits and holds over --threshold were dropped from the event stream (its "
    "ring buffer was full): the events table and the timeline miss them; every aggregate "
    "figure still counts them",
}

# A note for every lp_errors counter, and for recursion_misses, by name; the
# unit tests check that LP_ERR_* in probes/lockprof.h has no counter without
# one. stack_rate is not here: its note names the --stack-rate limit
# (schema.stack_rate_note).
COUNTER_NOTES = {**MAP_FULL, **OVERFLOWS, **UNPAIRED, **KERNEL_SKIPPED}


def command_running_note(pid: int) -> str:
    return (
        f"the command (pid {pid}) was still running when collection stopped; lockprof "
        "left it running: its exit status is unknown and its rusage covers the "
        "collection window only"
    )


def command_stopped_note(pid: int) -> str:
    return (
        f"the command (pid {pid}) was still running when collection stopped; lockprof "
        "stopped it (SIGTERM, then SIGKILL), and its exit status is that ending's"
    )


def notes(meta: dict) -> list[str]:
    """What the figures leave out: every nonzero kernel-side counter (full
    maps, unpaired events, skipped probe runs), processes the target forked
    (not followed), programs it exec'd (followed: same pid)."""
    out = []
    errors = meta.get("errors") or {}
    for name, consequence in COUNTER_NOTES.items():
        if errors.get(name):
            out.append(
                f"{name.replace('_', ' ')} {errors[name]:,} "
                f"{'time' if errors[name] == 1 else 'times'}: {consequence}; "
                "collection went on"
            )
    stack_note = schema.stack_rate_note(meta)
    if stack_note:
        out.append(stack_note)
    if meta.get("lock_types") is not None and "contention" in (meta.get("families") or []):
        out.append(
            f"--lock-types: contention of {', '.join(meta['lock_types'])} only; "
            "other lock types were not traced"
        )
    lineage = meta.get("lineage") or {}
    pid = meta.get("target_pid")
    if meta.get("mode") == "run" and pid and meta.get("exit_status") is None:
        out.append(command_running_note(pid))
    elif meta.get("mode") == "run" and pid and meta.get("ended_by_lockprof") is True:
        out.append(command_stopped_note(pid))
    orphans = meta.get("orphans_stopped")
    if orphans:
        what = "1 background process" if orphans == 1 else f"{orphans:,} background processes"
        out.append(
            f"the command left {what} running when it ended; lockprof stopped "
            f"{'it' if orphans == 1 else 'them'} (SIGTERM, then SIGKILL) so that nothing "
            "runs into the next run"
        )
    if pid and meta.get("followed") is not None:
        out.append(
            f"--follow: pid {pid} and its descendants ({meta['followed']:,} processes) "
            "were profiled"
        )
    elif pid and lineage.get("children_seen"):
        out.append(
            f"pid {pid} forked processes (at least {lineage['children_seen']:,} seen): they "
            f"are not followed (--follow profiles them); only pid {pid} and tasks taking "
            "its mmap_lock are profiled"
        )
    for change in lineage.get("execs") or []:
        out.append(
            f"pid {pid} exec'd {change.get('comm')} ({change.get('exe') or 'exe unknown'}) "
            f"at {change.get('t_s', 0):g} s: still profiled (same pid), its new mm's "
            "mmap_lock is a separate row"
        )
    return out


def damage_notes(rec: Recording) -> list[str]:
    """A note for every table of the recording found damaged (left out)."""
    return [damage_text(name, why) for name, why in rec.damaged.items()]


def summary_json(rec: Recording, what_if_cpus: int | None = None, top: int | None = None) -> dict:
    """The `show --json` document (`--top N`: its first N rows)."""
    document = summary_document(rec, what_if_cpus, top)
    document["locks"] = list(document["locks"])
    return document


def summary_document(
    rec: Recording,
    what_if_cpus: int | None = None,
    top: int | None = None,
    sort: str = "wait_total",
    combine: bool = False,
) -> dict:
    """summary_json() with its `locks` as LockRows, built as they are read
    (sort: what orders them, options.SORT_KEYS; combine: locks of one
    name in one row, combine.Combined)."""
    meta = rec.meta
    rusage = meta.get("rusage") or {}
    rows = LockRows(rec, top, sort, combine)
    exit_status, exit_signal = recorded_exit(meta)
    return {
        "json_version": JSON_VERSION,
        "kernel": meta.get("kernel"),
        "cpus": meta.get("cpus"),
        "duration_s": meta.get("duration_s"),
        "target": meta.get("target"),
        "target_pid": meta.get("target_pid"),
        "command": meta.get("command"),
        "exit_status": exit_status,
        "exit_signal": exit_signal,
        "mechanisms": meta.get("mechanisms"),
        "threshold_ns": meta.get("threshold_ns"),
        "lock_types": meta.get("lock_types"),
        "lost_events": meta.get("lost_events", 0),
        "errors": meta.get("errors", {}),
        "notes": notes(meta) + damage_notes(rec),
        "rusage": {k: rusage.get(k) for k in ("user_s", "sys_s", "elapsed_s", "minor_faults")},
        "events": rec.event_count,
        "locks_total": rows.total,
        "locks": rows,
        "writer_cost": writer_cost_json(rec, what_if_cpus),
        # Tasks of other processes on an mmap_lock (khugepaged, /proc readers).
        "foreign_tasks": foreign_task_rows(rec.tasks, rec.locks, rec.meta)[:top],
    }
