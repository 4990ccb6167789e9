"""The writer's price, from off-CPU stacks and CPU samples (pure functions).

A percpu rw-semaphore writer (percpu_down_write) first waits for an RCU grace
period in rcu_sync_enter, so that readers switch to the slow path, then waits
for the readers inside to drain. Neither shows in lock:contention_*: only
off-CPU time with kernel stacks does. offcpu_rows() attributes blocked time to
the lock function on the stack, splits it into grace-period, reader-drain and
writer-wait time by what the stack holds, and names the caller that took the
lock (cgroup_procs_write_start, ...).

sum_cost() estimates the CPU time of __percpu_counter_sum, the O(NR_CPUS) sum
the 2007 thread argued about, from CPU samples where no kprobe can time it.
"""

from __future__ import annotations

import pandas as pd

from profiler import aggregate

# Lock functions a task blocks in, innermost match wins: (class, mode).
BLOCKING_FUNCTIONS = {
    "percpu_down_write": ("percpu-rwsem", "write"),
    "__percpu_down_read": ("percpu-rwsem", "read"),
    "percpu_down_read": ("percpu-rwsem", "read"),
    "percpu_down_read_internal": ("percpu-rwsem", "read"),
    "rwsem_down_write_slowpath": ("rwsem", "write"),
    "rwsem_down_read_slowpath": ("rwsem", "read"),
}
# Frames inside the lock function that say what the writer waits for.
GRACE_PERIOD_FRAMES = ("rcu_sync_enter", "synchronize_rcu", "__wait_rcu_gp")
WRITER_WAIT_FRAMES = ("percpu_rwsem_wait",)
SUM_FUNCTIONS = ("__percpu_counter_sum", "percpu_counter_sum")
# What classify_stack splits a row's off-CPU time into (offcpu_components_ns).
COMPONENTS = ("grace_period", "reader_drain", "writer_wait", "blocked_by_writer", "wait")


def _function(frame: str) -> str:
    return frame.split("+", 1)[0]


def classify_stack(frames: list[str]) -> dict | None:
    """What a blocked stack (innermost first) waited for, or None when no
    lock function is on it."""
    for depth, frame in enumerate(frames):
        found = BLOCKING_FUNCTIONS.get(_function(frame))
        if found is None:
            continue
        lock_class, mode = found
        inner = {_function(f) for f in frames[:depth]}
        if inner & set(GRACE_PERIOD_FRAMES):
            component = "grace_period"
        elif inner & set(WRITER_WAIT_FRAMES) or mode == "read":
            component = "writer_wait" if mode == "write" else "blocked_by_writer"
        elif lock_class == "percpu-rwsem":
            component = "reader_drain"  # rcuwait_wait_event(readers_active_check)
        else:
            component = "wait"
        caller = aggregate.caller_of(frames[depth + 1 :]) or "?"
        return {
            "lock_class": lock_class,
            "mode": mode,
            "function": _function(frame),
            "component": component,
            "caller": caller,
        }
    return None


def _frames_by_id(stacks: pd.DataFrame) -> dict[int, list[str]]:
    return {int(s): list(f) for s, f in zip(stacks["stack_id"], stacks["frames"], strict=True)}


def offcpu_rows(offcpu: pd.DataFrame, stacks: pd.DataFrame) -> list[dict]:
    """Blocked time in lock functions, one row per lock class, mode and
    caller, shaped like the summary's lock rows (figures off-CPU time cannot
    give are None)."""
    if offcpu.empty:
        return []
    frames = _frames_by_id(stacks)
    groups: dict[tuple, dict] = {}
    for row in offcpu.to_dict("records"):
        where = classify_stack(frames.get(int(row["stack_id"]), []))
        if where is None:
            continue
        caller_fn = _function(where["caller"])
        key = (where["lock_class"], where["mode"], caller_fn)
        group = groups.setdefault(
            key,
            {"count": 0, "total": 0, "max": 0, "components": {}, "comms": set(), "where": where},
        )
        group["count"] += int(row["count"])
        group["total"] += int(row["total_ns"])
        group["max"] = max(group["max"], int(row["max_ns"]))
        component = where["component"]
        group["components"][component] = group["components"].get(component, 0) + int(
            row["total_ns"]
        )
        group["comms"].add(str(row["comm"]))
    rows = [_offcpu_row(key, group) for key, group in groups.items()]
    rows.sort(key=lambda r: r["wait_ns"]["total"], reverse=True)
    return rows


def _offcpu_row(key: tuple, group: dict) -> dict:
    lock_class, mode, caller = key
    where = group["where"]
    return {
        "lock": f"{where['function']} <- {caller}",
        "lock_class": lock_class,
        "mode": mode,
        "source": "offcpu",
        "lock_addr": None,
        "lock_id": None,
        "owner_pid": None,
        "owner_comm": None,
        "caller": caller,
        "acquisitions": None,
        "contended": None,
        "releases": None,
        "downgrades": None,
        "trylock_failures": None,
        "still_held": None,
        "reader_writer_ratio": None,
        # Blocked episodes and their off-CPU time: an upper bound of the
        # wait, which also holds any time spent runnable before running.
        "wait_ns": {
            "count": group["count"],
            "total": group["total"],
            "p50": None,
            "p99": None,
            "max": group["max"],
        },
        "hold_ns": None,
        "contended_wait_ns": None,
        "offcpu_components_ns": dict(sorted(group["components"].items())),
        "tasks": sorted(group["comms"]),
        "per_cpu": [],
    }


def sum_cost(
    samples: pd.DataFrame,
    stacks: pd.DataFrame,
    sample_hz: int | None,
    online_cpus: int | None,
    duration_s: float | None,
    what_if_cpus: int | None = None,
) -> dict | None:
    """CPU time inside __percpu_counter_sum estimated from samples, with its
    top callers and an optional linear what-if for another CPU count."""
    if not sample_hz or samples.empty:
        return None
    frames = _frames_by_id(stacks)
    in_sum = 0
    callers: dict[str, int] = {}
    for row in samples.to_dict("records"):
        stack = frames.get(int(row["stack_id"]), [])
        at = next((i for i, f in enumerate(stack) if _function(f) in SUM_FUNCTIONS), None)
        if at is None:
            continue
        in_sum += int(row["count"])
        caller = aggregate.caller_of(stack[at + 1 :]) or "?"
        callers[caller] = callers.get(caller, 0) + int(row["count"])
    cpu_s = in_sum / sample_hz
    result: dict[str, object] = {
        "function": "__percpu_counter_sum",
        "method": f"cpu-clock sampling at {sample_hz} Hz per CPU, kernel stacks",
        "online_cpus": online_cpus,
        "samples": in_sum,
        "kernel_samples": int(samples["count"].sum()),
        "estimated_cpu_s": cpu_s,
        "share_of_cpu": (
            cpu_s / (duration_s * online_cpus) if duration_s and online_cpus else None
        ),
        "top_callers": [
            {"caller": c, "samples": n, "estimated_cpu_s": n / sample_hz}
            for c, n in sorted(callers.items(), key=lambda kv: -kv[1])[:10]
        ],
        "what_if": None,
    }
    if what_if_cpus and online_cpus:
        result["what_if"] = {
            "cpus": what_if_cpus,
            "estimated_cpu_s": cpu_s * what_if_cpus / online_cpus,
            "model": "linear in CPUs: the sum reads one counter per possible CPU; "
            "a model, not a measurement",
        }
    return result
