"""The report's "Writer's price" panel and lock spec rows in the other panels.

Off-CPU stacks are real ones, taken by lockprof --offcpu on this kernel
while workloads/cgmove moved processes between cgroups (as in
test_writer_cost.py); the spec recording mimics `lockprof run --locks
rw_mutex@librw_mutex.so -- rwbench`: one lock with read, write and sum rows.
"""

from __future__ import annotations

import pandas as pd
import pytest

import profiler
from dashboards import escape, figures, frames, html
from profiler import aggregate, recording, schema

from .helpers import DATA, interval_row, intervals_frame
from .test_dashboards import figure_strings, is_empty_state, mode_slots

COMM = "</script><b>x"
ESCAPED = "&lt;/script&gt;&lt;b&gt;x"
SYMBOL = "<img src=x onerror=alert(1)>"
SRC_SPEC = schema.const("LP_SRC_SPEC")
READ, WRITE = schema.const("LP_LCB_READ"), schema.const("LP_LCB_WRITE")
F_SUM = schema.const("LP_F_SUM")

CGROUP = ["cgroup_procs_write_start+0x1f8", "__cgroup_procs_write+0x57"]
READER_DRAIN = ["__schedule+0x618", "schedule+0x23", "percpu_down_write+0xde", *CGROUP]
GRACE_PERIOD = [
    "__schedule+0x618",
    "schedule+0x23",
    "synchronize_rcu_normal+0x83",
    "rcu_sync_enter+0x52",
    "percpu_down_write+0x1b",
    *CGROUP,
]
FORK_READER = [
    "__schedule+0x618",
    "schedule+0x23",
    "percpu_rwsem_wait+0x10f",
    "__percpu_down_read+0x5d",
    "cgroup_can_fork+0x3f0",
]
SLEEP = ["__schedule+0x618", "schedule+0x23", "do_nanosleep+0x5e"]
SUM_STACK = ["__percpu_counter_sum+0x3f", "__mmdrop+0xb4", "finish_task_switch+0x1a3"]
HOSTILE_SUM_STACK = ["__percpu_counter_sum+0x3f", f"{SYMBOL}+0x10"]
IDLE_STACK = ["pv_native_safe_halt+0xb", "default_idle+0x5"]


def with_writer_cost(rec: profiler.Recording, comm: str = "cgmove") -> profiler.Recording:
    """rec with off-CPU time of a cgroup.procs writer (named comm) and of a
    forking reader, and CPU samples, some in __percpu_counter_sum."""
    base = int(rec.stacks["stack_id"].max()) + 1 if not rec.stacks.empty else 1
    extra = [READER_DRAIN, GRACE_PERIOD, FORK_READER, SLEEP, SUM_STACK, HOSTILE_SUM_STACK]
    extra.append(IDLE_STACK)
    ids = list(range(base, base + len(extra)))
    rec.stacks = pd.concat(
        [rec.stacks, pd.DataFrame({"stack_id": ids, "frames": extra})], ignore_index=True
    )
    rec.offcpu = pd.DataFrame(
        {
            "tgid": [10, 10, 11, 10, 12],
            "comm": [comm, comm, "forker", comm, "cgmove"],
            "stack_id": [ids[0], ids[1], ids[2], ids[3], ids[0]],
            "count": [40, 5, 7, 100, 2],
            "total_ns": [300_000_000, 100_000_000, 70_000_000, 9_000_000_000, 20_000_000],
            "max_ns": [9_000_000, 30_000_000, 20_000_000, 1_000_000_000, 15_000_000],
        }
    )
    rec.samples = pd.DataFrame(
        {"stack_id": [ids[4], ids[5], ids[6]], "cpu": [0, 1, 1], "count": [30, 10, 160]}
    )
    rec.meta = {
        **rec.meta,
        "families": [*rec.meta.get("families", []), "offcpu", "sample"],
        "sample_hz": 100,
        "cpus": 2,
        "duration_s": 2.0,
        "what_if_cpus": 64,
    }
    return rec


@pytest.fixture
def cg() -> profiler.Recording:
    return with_writer_cost(profiler.load(DATA / "hostile-comm.lpr"), COMM)


def spec_recording() -> profiler.Recording:
    """rwbench under --locks rw_mutex: 900 reads, 100 writes (each waiting
    10 us), 400 sum calls of 20 us inside the write waits."""
    lock = 0x5597_89F1_B1C0

    def row(flags, count, wait_ns, hold_ns, cpu=0):
        return interval_row(
            lock,
            flags,
            SRC_SPEC,
            cpu=cpu,
            acquisitions=count,
            releases=count if hold_ns else 0,
            wait_count=count,
            wait_total_ns=count * wait_ns,
            wait_max_ns=wait_ns,
            wait_running_max_ns=wait_ns,
            wait_slots=mode_slots([wait_ns] * count),
            hold_count=count if hold_ns else 0,
            hold_total_ns=count * hold_ns,
            hold_max_ns=hold_ns,
            hold_running_max_ns=hold_ns,
            hold_slots=mode_slots([hold_ns] * count if hold_ns else []),
        )

    intervals = intervals_frame(
        [row(READ, 900, 1_000, 2_000), row(WRITE, 100, 100_000, 1_500), row(F_SUM, 400, 20_000, 0)]
    )
    locks = aggregate.name_locks(
        intervals, {}, recording.empty_table("callers"), {}, spec_class="rw_mutex"
    )
    return profiler.Recording(
        meta={"families": ["mmap_lock", "contention"], "cpus": 2, "duration_s": 1.0},
        intervals=intervals,
        locks=locks,
    )


# -- frames ---------------------------------------------------------------------------


def test_offcpu_frame_splits_each_lock_row_by_component(cg):
    frame = frames.offcpu_frame(cg)
    writer = frame[frame["label"] == "percpu_down_write <- cgroup_procs_write_start"]
    assert dict(zip(writer["component"], writer["component_ns"], strict=True)) == {
        "grace_period": 100_000_000,
        "reader_drain": 320_000_000,
    }
    assert set(writer["blocked"]) == {47} and set(writer["total_ns"]) == {420_000_000}
    assert set(writer["max_ns"]) == {30_000_000} and set(writer["mode"]) == {"write"}
    assert sorted(writer.iloc[0]["tasks"]) == sorted([COMM, "cgmove"])
    reader = frame[frame["mode"] == "read"]
    assert list(reader["component"]) == ["blocked_by_writer"]
    assert list(reader["label"]) == ["__percpu_down_read <- cgroup_can_fork"]
    # The sleep is not in a lock function: not attributed.
    assert frame["total_ns"].max() == 420_000_000


def test_frames_of_a_recording_without_writer_cost(rec):
    assert frames.offcpu_frame(rec).empty
    assert list(frames.offcpu_frame(rec).columns) == frames.OFFCPU_COLUMNS
    assert frames.sum_cost(rec) is None


def test_sum_cost_comes_from_the_summary(cg):
    cost = frames.sum_cost(cg)
    assert cost is not None
    assert cost["samples"] == 40 and cost["kernel_samples"] == 200
    assert cost["estimated_cpu_s"] == pytest.approx(0.4)
    assert cost["what_if"]["cpus"] == 64


# -- off-CPU figure ---------------------------------------------------------------------


def test_offcpu_figure_stacks_components_per_lock_and_caller(cg):
    fig = figures.build_offcpu(frames.offcpu_frame(cg))
    assert fig.layout.barmode == "stack"
    assert [t.name for t in fig.data] == [
        "RCU grace period (rcu_sync_enter)",
        "readers draining",
        "reader blocked by a writer",
    ]
    writer_label = "percpu_down_write &lt;- cgroup_procs_write_start (write)"
    reader_label = "__percpu_down_read &lt;- cgroup_can_fork (read)"
    for trace in fig.data:
        assert list(trace.y) == [writer_label, reader_label]
        assert trace.orientation == "h"
    grace, drain, reader = fig.data
    assert list(grace.x) == [pytest.approx(0.1), None]
    assert list(drain.x) == [pytest.approx(0.32), None]
    assert list(reader.x) == [None, pytest.approx(0.07)]
    assert grace.customdata[0][1] == "23.8%"  # of the writer's 420 ms
    assert grace.customdata[0][2] == "47"
    assert "runnable" in fig.layout.xaxis.title.text


def test_offcpu_hover_names_the_tasks_escaped(cg):
    fig = figures.build_offcpu(frames.offcpu_frame(cg))
    drain = fig.data[1]
    tasks = drain.customdata[0][5]
    assert ESCAPED in tasks and "cgmove" in tasks
    assert "tasks: %{customdata[5]}" in drain.hovertemplate
    for string in figure_strings(fig):
        assert COMM not in string and "<b>x" not in string


def test_offcpu_hover_lists_at_most_a_few_tasks():
    shown = figures._task_list([f"t{i}" for i in range(20)])
    assert shown.startswith("t0, t1") and shown.endswith("and 12 more")
    assert figures._task_list([]) == "-"


def test_offcpu_empty_states(cg, rec):
    assert is_empty_state(figures.build_offcpu(frames.offcpu_frame(rec), False), "--offcpu")
    cg.offcpu = cg.offcpu[cg.offcpu["comm"] == "never"]
    fig = figures.build_offcpu(frames.offcpu_frame(cg), True)
    assert is_empty_state(fig, "No off-CPU time in percpu_down_write")


# -- the sum estimate -------------------------------------------------------------------


def test_sum_cost_figure_shows_callers_estimate_and_a_labelled_model(cg):
    cost = frames.sum_cost(cg)
    fig = figures.build_sum_cost(cost)
    callers, estimate, model = fig.data
    assert list(callers.y) == ["__mmdrop+0xb4", "&lt;img src=x onerror=alert(1)&gt;+0x10"]
    assert list(callers.x) == [pytest.approx(0.3), pytest.approx(0.1)]
    assert list(estimate.x) == ["sampled: 2 CPUs (estimate)"]
    assert list(estimate.y) == [pytest.approx(0.4)]
    assert model.name == "what-if 64 CPUs: a linear model, not a measurement"
    assert list(model.x) == ["MODEL: 64 CPUs (what-if)"]
    assert list(model.y) == [pytest.approx(0.4 * 64 / 2)]
    assert model.marker.pattern.shape == "/"
    assert "a model, not a measurement" in model.customdata[0][1]
    title = fig.layout.title.text
    assert "40 of 200 kernel samples" in title
    assert "cpu-clock sampling at 100 Hz" in title and "2 online CPUs" in title
    assert "10.000% of all CPU time" in title
    for string in figure_strings(fig):
        assert SYMBOL not in string


def test_sum_cost_without_what_if_has_no_model(cg):
    cg.meta["what_if_cpus"] = None
    fig = figures.build_sum_cost(frames.sum_cost(cg))
    assert [t.name for t in fig.data] == ["callers", "estimated from samples"]
    assert not any("MODEL" in s for s in figure_strings(fig))


def test_sum_cost_empty_states(cg, rec):
    assert is_empty_state(figures.build_sum_cost(frames.sum_cost(rec)), "record with --sample")
    cg.samples = cg.samples[cg.samples["stack_id"] == cg.samples["stack_id"].max()]
    fig = figures.build_sum_cost(frames.sum_cost(cg))
    assert is_empty_state(fig, "0 of 160 kernel samples were in __percpu_counter_sum")
    assert "2 online CPUs" in fig.layout.title.text


# -- the panel in the page ----------------------------------------------------------------


def test_the_panel_is_on_the_page(cg):
    built = {p.anchor: p for p in html.panels(cg)}
    panel = built["writer-cost"]
    assert panel.title == "Writer's price"
    assert [name for name, _fig in panel.figures] == ["offcpu", "sum-cost"]
    assert all(not (fig.layout.meta or {}).get("empty") for _n, fig in panel.figures)
    page = html.render(cg)
    assert '<section id="writer-cost">' in page and 'href="#writer-cost"' in page
    assert 'id="plot-offcpu"' in page and 'id="plot-sum-cost"' in page
    assert COMM not in page.split('id="lockprof-figures">', 1)[1]


def test_the_panel_of_a_recording_without_writer_cost_says_what_is_absent(rec):
    panel = {p.anchor: p for p in html.panels(rec)}["writer-cost"]
    offcpu, cost = (fig for _n, fig in panel.figures)
    assert is_empty_state(offcpu, "record with --offcpu")
    assert is_empty_state(cost, "record with --sample")
    assert panel.html == ""


# -- lock spec rows in the other panels -------------------------------------------------


def test_spec_rows_in_the_summary_table_with_their_class_and_sum_mode():
    spec = spec_recording()
    summary = frames.summary_frame(spec)
    assert sorted(zip(summary["lock_class"], summary["mode"], strict=True)) == [
        ("rw_mutex", "read"),
        ("rw_mutex", "sum"),
        ("rw_mutex", "write"),
    ]
    table = html.summary_table(summary)
    assert table.count("<td>rw_mutex</td>") == 3 and "<td>sum</td>" in table
    sums = summary[summary["mode"] == "sum"].iloc[0]
    assert sums["acquisitions"] == 400 and sums["wait_total"] == 400 * 20_000
    assert pd.isna(sums["hold_avg"])


def test_spec_locks_are_readers_and_writers():
    summary = frames.summary_frame(spec_recording())
    fig = figures.build_reader_writer(summary)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["read acquisitions"].y) == ["rw_mutex 0x559789f1b1c0"]
    assert list(by_name["read acquisitions"].x) == [900]
    assert list(by_name["write acquisitions"].x) == [100]
    assert list(by_name["reads per write"].x) == [pytest.approx(9.0)]


def test_sum_calls_are_not_waits_or_acquisitions_in_the_other_panels():
    spec = spec_recording()
    locks = frames.lock_table(spec)
    intervals = frames.lock_intervals(spec, locks)
    assert set(intervals["mode"]) == {"read", "write"}
    timeline = figures.build_timeline(intervals, frames.lock_events(spec, locks))
    acquisitions = next(t for t in timeline.data if t.name == "acquisitions")
    assert list(acquisitions.y) == [1000]
    totals = figures.build_cpu_totals(intervals, 2)
    assert sum(totals.data[0].y) == pytest.approx((900 * 1_000 + 100 * 100_000) / 1e9)
    top = figures.build_top_locks(frames.summary_frame(spec, locks))
    assert [t.name for t in top.data] == ["read", "write"]
    dist = figures.build_distributions(intervals)
    assert {t.name for t in dist.data} == {
        "wait read (900)",
        "wait write (100)",
        "hold read (900)",
        "hold write (100)",
    }


def test_spec_sum_table_shows_the_sum_beside_the_write_wait():
    summary = frames.summary_frame(spec_recording())
    sums = frames.spec_sum_frame(summary)
    assert len(sums) == 1
    assert sums.iloc[0]["write_wait_total"] == 100 * 100_000
    table = html.spec_sum_table(sums)
    assert 'id="spec-sum-table"' in table
    assert '<td class="num" data-v="400.0">400</td>' in table
    assert "<td>rw_mutex</td>" in table and "80.0%" in table  # 8 ms of 10 ms
    panel = {p.anchor: p for p in html.panels(spec_recording())}["writer-cost"]
    assert panel.html == table


def test_spec_sum_table_escapes_names():
    summary = frames.summary_frame(spec_recording())
    summary["label"] = COMM
    table = html.spec_sum_table(frames.spec_sum_frame(summary))
    assert COMM not in table and escape.html_text(COMM) in table


def test_report_cpus_overrides_the_recorded_what_if(cg, tmp_path, capsys):
    from profiler.cli.main import main

    path = tmp_path / "cg.lpr"
    recording.save(cg, path)
    assert main(["report", str(path), "-o", str(tmp_path / "a.html")]) in (0, None)
    assert main(["report", str(path), "--cpus", "256", "-o", str(tmp_path / "b.html")]) in (0, None)
    recorded, asked = (tmp_path / "a.html").read_text(), (tmp_path / "b.html").read_text()
    assert "MODEL: 64 CPUs (what-if)" in recorded and "MODEL: 256" not in recorded
    assert "MODEL: 256 CPUs (what-if)" in asked and "MODEL: 64 CPUs" not in asked
    assert "report written to" in capsys.readouterr().err
