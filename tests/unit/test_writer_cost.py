"""The writer's price from off-CPU stacks and CPU samples (no root).

The stacks below are real ones, taken by lockprof --offcpu on this kernel
while workloads/cgmove moved processes between cgroups."""

from __future__ import annotations

import pandas as pd
import pytest

from profiler import summary, writer_cost

SYSCALL = [
    "kernfs_fop_write_iter+0x155",
    "vfs_write+0x22f",
    "ksys_write+0x66",
    "do_syscall_64+0x71",
]
CGROUP = ["cgroup_procs_write_start+0x1f8", "__cgroup_procs_write+0x57", "cgroup_procs_write+0x13"]
READER_DRAIN = ["__schedule+0x618", "schedule+0x23", "percpu_down_write+0xde", *CGROUP, *SYSCALL]
GRACE_PERIOD = [
    "__schedule+0x618",
    "schedule+0x23",
    "schedule_timeout+0xc1",
    "wait_for_completion+0x86",
    "synchronize_rcu_normal+0x83",
    "rcu_sync_enter+0x52",
    "percpu_down_write+0x1b",
    *CGROUP,
    *SYSCALL,
]
WRITER_WAIT = [
    "__schedule+0x618",
    "schedule+0x23",
    "percpu_rwsem_wait+0x10f",
    "percpu_down_write+0x5c",
    *CGROUP,
]
FORK_READER = [
    "__schedule+0x618",
    "schedule+0x23",
    "percpu_rwsem_wait+0x10f",
    "__percpu_down_read+0x5d",
    "cgroup_can_fork+0x3f0",
    "copy_process+0x1234",
]
MMAP_WRITER = [
    "__schedule+0x618",
    "schedule+0x23",
    "rwsem_down_write_slowpath+0x262",
    "down_write_killable+0x4e",
    "vm_mmap_pgoff+0x9c",
]
SLEEP = ["__schedule+0x618", "schedule+0x23", "do_nanosleep+0x5e", "hrtimer_nanosleep+0x74"]


@pytest.mark.parametrize(
    "frames, expected",
    [
        (READER_DRAIN, ("percpu-rwsem", "write", "reader_drain", "cgroup_procs_write_start+0x1f8")),
        (GRACE_PERIOD, ("percpu-rwsem", "write", "grace_period", "cgroup_procs_write_start+0x1f8")),
        (WRITER_WAIT, ("percpu-rwsem", "write", "writer_wait", "cgroup_procs_write_start+0x1f8")),
        (FORK_READER, ("percpu-rwsem", "read", "blocked_by_writer", "cgroup_can_fork+0x3f0")),
        (MMAP_WRITER, ("rwsem", "write", "wait", "vm_mmap_pgoff+0x9c")),
    ],
)
def test_classify_stack(frames, expected):
    where = writer_cost.classify_stack(frames)
    assert where is not None
    assert (where["lock_class"], where["mode"], where["component"], where["caller"]) == expected


def test_a_stack_without_a_lock_function_is_not_attributed():
    assert writer_cost.classify_stack(SLEEP) is None
    assert writer_cost.classify_stack([]) is None


def _stacks(*frames_lists):
    return pd.DataFrame(
        {"stack_id": list(range(1, len(frames_lists) + 1)), "frames": list(frames_lists)}
    )


def test_offcpu_rows_group_by_lock_mode_and_caller_and_split_components():
    stacks = _stacks(READER_DRAIN, GRACE_PERIOD, SLEEP, FORK_READER)
    offcpu = pd.DataFrame(
        {
            "tgid": [10, 10, 10, 11, 12],
            "comm": ["cgmove", "cgmove", "cgmove", "forker", "unknown-stack"],
            "stack_id": [1, 2, 3, 4, -14],
            "count": [40, 5, 100, 7, 3],
            "total_ns": [1_000_000, 200_000, 9_000_000, 70_000, 10],
            "max_ns": [90_000, 60_000, 1_000_000, 20_000, 5],
        }
    )
    rows = writer_cost.offcpu_rows(offcpu, stacks)
    assert [(r["lock_class"], r["mode"], r["caller"]) for r in rows] == [
        ("percpu-rwsem", "write", "cgroup_procs_write_start"),
        ("percpu-rwsem", "read", "cgroup_can_fork"),
    ]
    writer = rows[0]
    assert writer["lock"] == "percpu_down_write <- cgroup_procs_write_start"
    assert writer["wait_ns"] == {
        "count": 45,
        "total": 1_200_000,
        "p50": None,
        "p99": None,
        "max": 90_000,
    }
    assert writer["offcpu_components_ns"] == {"grace_period": 200_000, "reader_drain": 1_000_000}
    assert writer["tasks"] == ["cgmove"] and writer["source"] == "offcpu"
    assert writer["acquisitions"] is None and writer["hold_ns"] is None


def test_offcpu_rows_of_nothing():
    assert writer_cost.offcpu_rows(pd.DataFrame(columns=["stack_id"]), _stacks()) == []


SUM_STACK = ["__percpu_counter_sum+0x3f", "__mmdrop+0xb4", "finish_task_switch+0x1a3"]
IDLE_STACK = ["pv_native_safe_halt+0xb", "default_idle+0x5"]


def test_sum_cost_from_samples_with_callers_and_what_if():
    stacks = _stacks(SUM_STACK, IDLE_STACK)
    samples = pd.DataFrame({"stack_id": [1, 1, 2], "cpu": [0, 1, 0], "count": [3, 2, 95]})
    cost = writer_cost.sum_cost(samples, stacks, 100, 2, 10.0, what_if_cpus=64)
    assert cost is not None
    assert cost["samples"] == 5 and cost["kernel_samples"] == 100
    assert cost["estimated_cpu_s"] == pytest.approx(0.05)
    assert cost["share_of_cpu"] == pytest.approx(0.05 / 20)
    assert cost["online_cpus"] == 2 and "sampling at 100 Hz" in cost["method"]
    assert cost["top_callers"] == [
        {"caller": "__mmdrop+0xb4", "samples": 5, "estimated_cpu_s": pytest.approx(0.05)}
    ]
    assert cost["what_if"]["cpus"] == 64
    assert cost["what_if"]["estimated_cpu_s"] == pytest.approx(0.05 * 32)
    assert "model" in cost["what_if"]["model"]


def test_sum_cost_is_none_without_sampling():
    stacks = _stacks(SUM_STACK)
    samples = pd.DataFrame({"stack_id": [1], "cpu": [0], "count": [1]})
    assert writer_cost.sum_cost(samples, stacks, None, 2, 1.0) is None
    assert writer_cost.sum_cost(samples.iloc[0:0], stacks, 99, 2, 1.0) is None
    assert writer_cost.sum_cost(samples, stacks, 99, 2, 1.0)["what_if"] is None


def test_summary_json_carries_offcpu_rows_and_writer_cost(rec):
    rec.stacks = _stacks(READER_DRAIN, SUM_STACK)
    rec.offcpu = pd.DataFrame(
        {
            "tgid": [1],
            "comm": ["cgmove"],
            "stack_id": [1],
            "count": [2],
            "total_ns": [500],
            "max_ns": [400],
        }
    )
    rec.samples = pd.DataFrame({"stack_id": [2], "cpu": [0], "count": [4]})
    rec.meta.update(sample_hz=99)
    document = summary.summary_json(rec, what_if_cpus=8)
    offcpu = [r for r in document["locks"] if r.get("source") == "offcpu"]
    assert len(offcpu) == 1 and offcpu[0]["wait_ns"]["total"] == 500
    assert document["writer_cost"]["samples"] == 4
    assert document["writer_cost"]["what_if"]["cpus"] == 8
    # Lock rows from the aggregates are still all there, in the same shape.
    assert {k for r in document["locks"] for k in r} >= {"lock", "mode", "wait_ns", "per_cpu"}


def test_top_keeps_the_busiest_rows_of_each_table_and_says_how_many_there_are(rec):
    """`show --json --top N`: the first N lock rows and the first N off-CPU
    rows, as `show --top N` prints its two tables; locks_total counts every
    row."""
    rec.stacks = _stacks(READER_DRAIN, FORK_READER)
    rec.offcpu = pd.DataFrame(
        {
            "tgid": [1, 2],
            "comm": ["cgmove", "forker"],
            "stack_id": [1, 2],
            "count": [2, 3],
            "total_ns": [500, 900],
            "max_ns": [400, 600],
        }
    )
    every = summary.summary_json(rec)["locks"]
    offcpu = [r for r in every if r.get("source") == "offcpu"]
    aggregates = [r for r in every if r.get("source") != "offcpu"]
    assert len(aggregates) > 1 and len(offcpu) == 2  # not vacuous
    first = summary.summary_json(rec, top=1)
    assert first["locks"] == [aggregates[0], offcpu[0]]
    assert offcpu[0]["tasks"] == ["forker"]  # the busier of the two
    assert first["locks_total"] == len(every) == summary.summary_json(rec)["locks_total"]
    assert len(summary.LockRows(rec, top=1)) == 2
    assert summary.summary_json(rec, top=len(every) + 5)["locks"] == every


def test_csv_summary_keeps_the_offcpu_components(rec):
    """`export --csv`: an off-CPU row's time split (grace period, reader
    drain) is in summary.csv. It was flattened as a distribution (count,
    total, p99, ...), which it is not, and every one of its cells was empty."""
    from profiler.cli.export import summary_table

    rec.stacks = _stacks(READER_DRAIN, GRACE_PERIOD)
    rec.offcpu = pd.DataFrame(
        {
            "tgid": [1, 1],
            "comm": ["cgmove", "cgmove"],
            "stack_id": [1, 2],
            "count": [2, 1],
            "total_ns": [500, 70],
            "max_ns": [400, 70],
        }
    )
    table = summary_table(rec)
    offcpu = table[table["source"] == "offcpu"]
    assert len(offcpu) == 1
    assert offcpu["offcpu_reader_drain_ns"].tolist() == [500]
    assert offcpu["offcpu_grace_period_ns"].tolist() == [70]
    assert offcpu["offcpu_writer_wait_ns"].isna().all()
    assert not any(c.startswith("offcpu_components") for c in table.columns)
