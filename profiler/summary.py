"""The summary of a recording: the `show` table and the `show --json` document.

`show --json` is the stable interface for scripts (documented in README.md).
"""

from __future__ import annotations

from profiler import aggregate
from profiler.recording import Recording

JSON_VERSION = 1


def lock_rows(rec: Recording) -> list[dict]:
    return aggregate.summary_rows(rec.intervals, rec.locks, rec.meta.get("families", []))


def summary_json(rec: Recording) -> dict:
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
    }
