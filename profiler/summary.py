"""The summary of a recording: the `show` table and the `show --json` document.

`show --json` is the stable interface for scripts (documented in README.md).
"""

from __future__ import annotations

from profiler import aggregate, writer_cost
from profiler.recording import Recording

JSON_VERSION = 1


def lock_rows(rec: Recording) -> list[dict]:
    """Lock rows from the aggregates, then the off-CPU rows (--offcpu)."""
    rows = aggregate.summary_rows(rec.intervals, rec.locks, rec.meta.get("families", []))
    return rows + writer_cost.offcpu_rows(rec.offcpu, rec.stacks)


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


def summary_json(rec: Recording, what_if_cpus: int | None = None) -> dict:
    meta = rec.meta
    rusage = meta.get("rusage") or {}
    return {
        "json_version": JSON_VERSION,
        "kernel": meta.get("kernel"),
        "cpus": meta.get("cpus"),
        "duration_s": meta.get("duration_s"),
        "target": meta.get("target"),
        "target_pid": meta.get("target_pid"),
        "command": meta.get("command"),
        "exit_status": meta.get("exit_status"),
        "mechanisms": meta.get("mechanisms"),
        "threshold_ns": meta.get("threshold_ns"),
        "lost_events": meta.get("lost_events", 0),
        "errors": meta.get("errors", {}),
        "rusage": {k: rusage.get(k) for k in ("user_s", "sys_s", "elapsed_s", "minor_faults")},
        "events": len(rec.events),
        "locks": lock_rows(rec),
        "writer_cost": writer_cost_json(rec, what_if_cpus),
    }
