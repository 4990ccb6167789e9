"""The summary of a recording: the `show` table and the `show --json` document.

`show --json` is the stable interface for scripts (documented in README.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from profiler import aggregate, schema, writer_cost
from profiler.recording import Recording
from profiler.targets import recorded_exit

JSON_VERSION = 1


class LockRows:
    """A recording's summary rows, built one at a time as they are iterated:
    the aggregates' (lock and mode) rows, busiest first, then the off-CPU
    rows (--offcpu). len() is their number."""

    def __init__(self, rec: Recording):
        families = rec.meta.get("families", [])
        self.locks = aggregate.SummaryRows(rec.interval_totals, rec.locks, families)
        self.offcpu = writer_cost.offcpu_rows(rec.offcpu, rec.stacks)

    def __len__(self) -> int:
        return len(self.locks) + len(self.offcpu)

    def __iter__(self) -> Iterator[dict]:
        yield from self.locks
        yield from self.offcpu


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


def command_running_note(pid: int) -> str:
    return (
        f"the command (pid {pid}) was still running when collection stopped; lockprof "
        "left it running: its exit status is unknown and its rusage covers the "
        "collection window only"
    )


def notes(meta: dict) -> list[str]:
    """What the figures leave out: full kernel maps, processes the target
    forked (not followed), programs it exec'd (followed: same pid)."""
    out = []
    errors = meta.get("errors") or {}
    for name, consequence in {**MAP_FULL, **KERNEL_SKIPPED}.items():
        if errors.get(name):
            out.append(
                f"{name.replace('_', ' ')} {errors[name]:,} times: {consequence}; "
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


def summary_json(rec: Recording, what_if_cpus: int | None = None) -> dict:
    """The `show --json` document."""
    document = summary_document(rec, what_if_cpus)
    document["locks"] = list(document["locks"])
    return document


def summary_document(rec: Recording, what_if_cpus: int | None = None) -> dict:
    """summary_json() with its `locks` as LockRows, built as they are read."""
    meta = rec.meta
    rusage = meta.get("rusage") or {}
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
        "notes": notes(meta),
        "rusage": {k: rusage.get(k) for k in ("user_s", "sys_s", "elapsed_s", "minor_faults")},
        "events": rec.event_count,
        "locks": LockRows(rec),
        "writer_cost": writer_cost_json(rec, what_if_cpus),
    }
