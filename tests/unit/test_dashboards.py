"""The HTML report: frames, every figure builder, escaping, and the page.

Recorded data: tests/data/hostile-comm.lpr (see tests/data/hostile_workload.py):
a process whose threads are named `</script><b>x` contends on its mmap_lock
(read and write) and on page-table spinlocks, while `cat` processes read its
/proc/PID/maps (foreign tasks on its mmap_lock). And the older
mmapcount-1000.lpr (schema 1).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from plotly.offline import get_plotlyjs

import profiler
from dashboards import escape, figures, frames, html
from profiler import aggregate, recording, schema
from profiler.errors import LockprofError
from profiler.hist import slot_of

from .helpers import DATA, interval_row, intervals_frame

HOSTILE = DATA / "hostile-comm.lpr"
COMM = "</script><b>x"
ESCAPED = "&lt;/script&gt;&lt;b&gt;x"
SRC_MMAP = schema.const("LP_SRC_MMAP_LOCK")
SRC_CONT = schema.const("LP_SRC_CONTENTION")
READ, WRITE = schema.const("LP_LCB_READ"), schema.const("LP_LCB_WRITE")
SPIN = schema.const("LP_LCB_SPIN")


@pytest.fixture
def hostile() -> profiler.Recording:
    return profiler.load(HOSTILE)


@pytest.fixture
def parts(hostile):
    locks = frames.lock_table(hostile)
    return {
        "locks": locks,
        "intervals": frames.lock_intervals(hostile, locks),
        "events": frames.lock_events(hostile, locks),
        "tasks": frames.lock_tasks(hostile, locks),
        "callers": frames.lock_callers(hostile, locks),
        "summary": frames.summary_frame(hostile, locks),
        "folded": frames.folded_stacks(
            frames.lock_callers(hostile, locks), frames.stack_frames(hostile)
        ),
    }


def figure_strings(fig: go.Figure) -> list[str]:
    """Every string in a figure's JSON (what plotly.js will display)."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(pio.to_json(fig, validate=False)))
    return found


def is_empty_state(fig: go.Figure, words: str) -> bool:
    notes = [a.text for a in fig.layout.annotations]
    return len(fig.data) == 0 and any(words in note for note in notes)


def mode_slots(ns_values: list[int]) -> list[int]:
    slots = [0] * schema.const("LP_HIST_SLOTS")
    for ns in ns_values:
        slots[slot_of(ns, len(slots))] += 1
    return slots


def synthetic(rows: list[dict], owners=None, meta=None, **tables) -> profiler.Recording:
    intervals = intervals_frame(rows)
    callers = tables.pop("callers", recording.empty_table("callers"))
    locks = aggregate.name_locks(intervals, owners or {}, callers, {})
    return profiler.Recording(
        meta=meta or {"families": ["mmap_lock", "contention"], "cpus": 2},
        intervals=intervals,
        locks=locks,
        events=tables.pop("events", recording.empty_table("events")),
        tasks=tables.pop("tasks", recording.empty_table("tasks")),
        callers=callers,
        stacks=tables.pop("stacks", recording.empty_table("stacks")),
    )


def wait_row(lock, flags, source, cpu=0, interval=1, waits=(), holds=(), acquisitions=None):
    values = {
        "wait_count": len(waits),
        "wait_total_ns": sum(waits),
        "wait_max_ns": max(waits, default=0),
        "wait_running_max_ns": max(waits, default=0),
        "wait_slots": mode_slots(list(waits)),
        "hold_count": len(holds),
        "hold_total_ns": sum(holds),
        "hold_max_ns": max(holds, default=0),
        "hold_running_max_ns": max(holds, default=0),
        "hold_slots": mode_slots(list(holds)),
        "contended": len(waits) if source == SRC_CONT else 0,
    }
    if acquisitions is not None:
        values["acquisitions"] = acquisitions
    return interval_row(lock, flags, source, cpu=cpu, interval=interval, **values)


# -- frames -------------------------------------------------------------------------------


def test_labels_name_locks_by_identity(parts, hostile):
    locks = parts["locks"]
    per_address = locks.drop_duplicates("lock")
    assert per_address["label"].is_unique, "one label per lock address, unique"
    owned = hostile.locks.dropna(subset=["owner_pid"])
    for lock, pid in owned[["lock", "owner_pid"]].itertuples(index=False):
        label = per_address.set_index("lock").loc[lock, "label"]
        assert label.startswith(f"mmap_lock pid {int(pid)} (")
    assert f"mmap_lock pid {hostile.meta['target_pid']} ({COMM})" in set(locks["label"])


def mmap_lock_recording(rows: list[dict], owners: dict, ids) -> profiler.Recording:
    """A recording of mmap_lock rows whose lock ids come from ids (a LockIds:
    mms sharing addresses), named with owners {id: (pid, comm)}."""
    intervals = intervals_frame(rows)
    locks = aggregate.name_locks(intervals, owners, recording.empty_table("callers"), {},
                                 addresses=ids.addresses())  # fmt: skip
    return profiler.Recording(
        meta={"families": ["mmap_lock"], "cpus": 2},
        intervals=intervals,
        locks=locks,
        events=recording.empty_table("events"),
        tasks=recording.empty_table("tasks"),
        callers=recording.empty_table("callers"),
        stacks=recording.empty_table("stacks"),
    )


def test_two_mms_at_one_address_get_their_own_labels_and_summary_rows():
    """Lock ids (profiler/lockids.py): a later mm at an address has a
    synthetic id; the report shows the address, and keeps the locks apart
    even when neither owner is known."""
    from profiler.lockids import LockIds

    ids = LockIds()
    mm = 0xFFFF888100000000
    first, second, third = ids.id_of(mm, 10), ids.id_of(mm, 11), ids.id_of(mm, 12)
    rows = [
        wait_row(lock, WRITE, SRC_MMAP, waits=[n], holds=[n], acquisitions=1)
        for lock, n in ((first, 100), (second, 200), (third, 300))
    ]
    owners = {first: (42, "sh")}  # the second and third never named
    rec = mmap_lock_recording(rows, owners, ids)
    labels = frames.lock_table(rec).set_index("lock")["label"]
    assert labels[first] == "mmap_lock pid 42 (sh)"
    assert labels[second] != labels[third]
    for lock_id in (second, third):
        # the address, not the id
        assert labels[lock_id].startswith(f"mmap_lock (owner unknown) {mm:#x}")
    summary = frames.summary_frame(rec)
    assert sorted(summary["wait_total"]) == [100, 200, 300]
    assert set(summary["lock_addr"]) == {f"{mm:#x}"}


def test_a_process_that_execs_one_program_again_gets_a_label_per_mm(capsys):
    """`sh` exec'ing `sh` four times: its mms alternate between two
    addresses (a freed mm's is the next one's), all owned by one pid and
    comm. The address did not tell them apart: the report failed on
    duplicate labels (ValueError in build_top_locks' reindex) and `show`
    printed four identical `mmap_lock pid 42 (sh)` rows."""
    from profiler.cli.common import print_summary
    from profiler.lockids import LockIds

    ids = LockIds()
    a, b = 0xFFFF888100000000, 0xFFFF888100004000
    mms = [ids.id_of(address, gen) for gen, address in enumerate((a, b, a, b), start=10)]
    rows = [
        wait_row(lock, WRITE, SRC_MMAP, waits=[100 * n], holds=[n], acquisitions=1)
        for n, lock in enumerate(mms, start=1)
    ]
    rec = mmap_lock_recording(rows, {lock: (42, "sh") for lock in mms}, ids)
    labels = frames.lock_table(rec).drop_duplicates("lock").set_index("lock")["label"]
    assert labels.is_unique and len(labels) == 4
    for lock in mms:
        assert labels[lock] == f"mmap_lock pid 42 (sh) id {lock:#x}"  # show --json's lock_id
    assert "mmap_lock pid 42 (sh)" in html.render(rec)  # builds, every panel
    print_summary(rec, as_json=False, top=None)
    out = capsys.readouterr().out.splitlines()
    shown = [line for line in out if line.startswith("│mmap_lock pid 42 (sh)")]
    assert len(shown) == 4 and len(set(shown)) == 4
    # the still-held lines (no release in the rows) name each as the table does
    held = [line for line in out if line.startswith("still held at the end: ")]
    for lock in mms:
        label = f"mmap_lock pid 42 (sh) id {lock:#x}"
        assert sum(label in line for line in shown) == 1
        assert f"still held at the end: {label} write x1" in held
    # A table cut short (--top) names its locks as the lines under it do,
    # which name every held lock, shown or not.
    print_summary(rec, as_json=False, top=2)
    out = capsys.readouterr().out.splitlines()
    shown = [line for line in out if line.startswith("│mmap_lock pid 42 (sh)")]
    held = [line for line in out if line.startswith("still held at the end: ")]
    assert len(shown) == 2 and len(held) == 4
    for line in shown:
        label = line.split("│")[1].strip()
        assert f"still held at the end: {label} write x1" in held


def test_distinct_labels_say_the_address_where_it_tells_locks_apart():
    from profiler.lockids import distinct_labels

    labels = {1: "mmap_lock pid 7 (sh)", 2: "mmap_lock pid 7 (sh)", 3: "x", 4: "y 0x4"}
    addresses = {1: 0xA0, 2: 0xB0, 3: 0xA0, 4: 0x4}
    assert distinct_labels(labels, addresses) == {
        1: "mmap_lock pid 7 (sh) 0xa0",
        2: "mmap_lock pid 7 (sh) 0xb0",
        3: "x",
        4: "y 0x4",
    }
    # the address already in the label: the id
    assert distinct_labels({4: "y 0x4", 5: "y 0x4"}, {5: 0x4}) == {
        4: "y 0x4 id 0x4",
        5: "y 0x4 id 0x5",
    }


def test_labels_skip_the_probes_own_frames(rec):
    """mmapcount-1000.lpr was recorded when spinlocks were named after the
    BPF program's frame; the report names them after the real caller."""
    labels = frames.lock_table(rec)["label"]
    assert not labels.str.startswith("bpf_prog_").any()
    assert "rcu_core+0xac (0xffffffff830f3100)" in set(labels)


def test_contention_rows_of_mmap_lock_are_not_counted_twice():
    mm, other = 0xFFFF888100000000, 0xFFFFFFFF83000000
    rec = synthetic(
        [
            wait_row(mm, WRITE, SRC_MMAP, waits=[1000, 50_000], holds=[10], acquisitions=2),
            wait_row(mm, WRITE, SRC_CONT, waits=[48_000]),  # the same contended wait
            wait_row(other, SPIN, SRC_CONT, waits=[7000]),
        ],
        owners={mm: (42, "victim")},
    )
    intervals = frames.lock_intervals(rec)
    assert intervals["wait_total_ns"].sum() == 1000 + 50_000 + 7000
    assert set(intervals["lock_class"]) == {"mmap_lock", "spinlock"}
    summary = frames.summary_frame(rec)
    assert summary["wait_total"].sum() == intervals["wait_total_ns"].sum()


@pytest.mark.parametrize("path", [HOSTILE, DATA / "mmapcount-1000.lpr"])
def test_interval_totals_match_the_summary(path):
    rec = profiler.load(path)
    total = frames.lock_intervals(rec)["wait_total_ns"].sum()
    assert total == frames.summary_frame(rec)["wait_total"].sum() > 0


def test_events_keep_the_mmap_lock_view_of_a_wait():
    mm = 0xFFFF888100000000
    events = pd.DataFrame(
        {
            "t_s": [0.1, 0.1, 0.2],
            "duration_ns": [300_000, 290_000, 500_000],
            "lock": np.array([mm, mm, 0xFFFF0000], dtype=np.uint64),
            "tgid": [1, 1, 2],
            "tid": [1, 1, 2],
            "cpu": [0, 0, 1],
            "stack_id": [-1, 7, 8],
            "flags": [WRITE, WRITE, SPIN],
            "source": [SRC_MMAP, SRC_CONT, SRC_CONT],
            "kind": ["wait", "wait", "wait"],
            "comm": ["a", "a", "b"],
        }
    )
    rec = synthetic(
        [wait_row(mm, WRITE, SRC_MMAP, waits=[300_000], acquisitions=1)],
        owners={mm: (1, "a")},
        events=events,
    )
    kept = frames.lock_events(rec)
    assert sorted(kept["duration_ns"]) == [300_000, 500_000]
    assert kept.loc[kept["duration_ns"] == 500_000, "label"].item() == "spinlock 0xffff0000"
    # `show` counts the recording's 3 rows; the timeline says why it draws 2.
    assert kept.attrs["double_counted"] == 1
    title = figures.build_timeline(frames.lock_intervals(rec), kept).layout.title.text
    assert "1 contended mmap_lock wait also streamed by lock:contention is drawn once" in title


def test_folded_stacks_are_root_first_without_probe_frames_or_offsets():
    callers = pd.DataFrame(
        {
            "lock": np.array([1, 1, 2], dtype=np.uint64),
            "stack_id": [5, 6, -1],
            "flags": [WRITE, WRITE, SPIN],
            "count": [2, 1, 4],
            "total_ns": [700, 300, 50],
            "max_ns": [400, 300, 20],
        }
    )
    stacks = {
        5: [
            "bpf_prog_abc_lp_contention_begin+0x1ef",
            "bpf_trace_run2+0xf2",
            "rwsem_down_write_slowpath+0x58",
            "down_write+0x2",
            "do_syscall_64+0x71",
        ],
        6: ["rwsem_down_write_slowpath+0x99", "down_write+0x2", "do_syscall_64+0x71"],
    }
    folded = frames.folded_stacks(callers, stacks)
    assert folded == {
        "do_syscall_64;down_write;rwsem_down_write_slowpath": 1000,
        frames.NO_STACK: 50,
    }
    assert list(folded) == sorted(folded, key=lambda k: -folded[k])


def test_folded_frames_cannot_break_the_format():
    callers = pd.DataFrame(
        {"lock": [1], "stack_id": [5], "flags": [1], "count": [1], "total_ns": [9], "max_ns": [9]}
    )
    folded = frames.folded_stacks(callers, {5: ["evil;frame with space\n+0x1", "root+0x0"]})
    assert folded == {"root;evil_frame_with_space_": 9}


def test_sample_events_keeps_the_longest_and_every_time_slice():
    rng = np.random.default_rng(7)
    count = 20_000
    events = pd.DataFrame(
        {
            "t_s": np.sort(rng.uniform(0, 60, count)),
            "duration_ns": rng.integers(100_000, 1_000_000, count),
        }
    )
    events.loc[12_345, "duration_ns"] = 10**9
    shown = figures.sample_events(events, 1000, slices=100)
    assert len(shown) == 1000
    assert 10**9 in set(shown["duration_ns"])
    assert shown["t_s"].is_monotonic_increasing
    slices = np.minimum((shown["t_s"] / 60 * 100).astype(int), 99)
    assert slices.nunique() == 100, "every time slice keeps its longest events"
    small = events.head(10)
    assert figures.sample_events(small, 1000) is small


# -- header and summary --------------------------------------------------------------


def test_header_shows_the_recording(hostile):
    fig = figures.build_header(hostile.meta, len(hostile.events))
    (table,) = fig.data
    assert isinstance(table, go.Table)
    fields, values = table.cells.values
    shown = dict(zip(fields, values, strict=True))
    assert shown["kernel"].startswith(hostile.meta["kernel"])
    assert shown["CPUs"] == "2"
    assert shown["lost events"] == "0"
    assert "raw_tracepoint" in shown["mechanisms"]
    assert shown["rusage"].startswith("user ")
    assert "events lost" not in fig.layout.title.text


def test_header_names_the_lock_types_traced(hostile):
    def shown(meta):
        fields, values = figures.build_header(meta, 0).data[0].cells.values
        return dict(zip(fields, values, strict=True))

    assert "lock types" not in shown(hostile.meta)
    meta = {**hostile.meta, "lock_types": ["rwsem", "mutex"]}
    assert shown(meta)["lock types"] == "contention of rwsem, mutex only"


def test_header_makes_lost_events_prominent(hostile):
    hostile.meta["lost_events"] = 1234
    fig = figures.build_header(hostile.meta, len(hostile.events))
    assert "1,234 events lost" in fig.layout.title.text
    fields = list(fig.data[0].cells.values[0])
    fill = fig.data[0].cells.fill.color[0]
    assert fill[fields.index("lost events")] != "white"
    banner = html.lost_banner(hostile.meta)
    assert "1,234 events were lost" in banner


def test_summary_table_is_sortable_and_escaped(parts):
    table = html.summary_table(parts["summary"])
    assert "<td>mmap_lock pid " in table and f"({escape.html_text(COMM)})</td>" in table
    assert COMM not in table
    headers = re.findall(r'<th scope="col" tabindex="0" data-type="(\w+)">([^<]+)</th>', table)
    assert [t for _, t in headers][:5] == ["lock", "class", "mode", "acq", "contended"]
    assert {kind for kind, _ in headers} == {"text", "num"}
    rows = re.findall(r"<tr><td>", table)
    assert len(rows) == len(parts["summary"])
    # Numeric cells carry the exact value to sort on; missing figures sort as ''.
    assert 'data-v="">-</td>' in table
    values = [float(v) for v in re.findall(r'data-v="([0-9.e+]+)"', table)]
    assert values and all(v >= 0 for v in values)


def test_summary_table_limits_rows_and_says_so(parts):
    table = html.summary_table(parts["summary"], limit=3)
    assert len(re.findall(r"<tr><td>", table)) == 3
    assert f"Showing the 3 rows with the most wait time of {len(parts['summary'])}" in table


def test_summary_table_empty():
    assert "No lock activity" in html.summary_table(frames.summary_frame(synthetic([])))


# -- readers and writers ------------------------------------------------------------


def test_reader_writer(parts):
    fig = figures.build_reader_writer(parts["summary"])
    names = [t.name for t in fig.data]
    assert {"read acquisitions", "write acquisitions", "reads per write"} <= set(names)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    write = next(t for t in fig.data if t.name == "write acquisitions")
    summary = parts["summary"]
    target = summary[(summary["lock_class"] == "mmap_lock") & (summary["mode"] == "write")]
    top = target.sort_values("acquisitions", ascending=False).iloc[0]
    index = list(write.y).index(escape.text(top["label"]))
    assert write.x[index] == top["acquisitions"]
    assert all(COMM not in y for y in write.y)


def test_reader_writer_empty_without_rw_locks(parts):
    spin_only = parts["summary"][parts["summary"]["lock_class"] == "spinlock"]
    assert not spin_only.empty
    fig = figures.build_reader_writer(spin_only)
    assert is_empty_state(fig, "No reader/writer locks")


# -- distributions ------------------------------------------------------------------------


def test_distributions(parts):
    fig = figures.build_distributions(parts["intervals"])
    names = {t.name.split(" (")[0] for t in fig.data}
    assert {"wait read", "wait write", "wait exclusive", "hold read", "hold write"} <= names
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert fig.layout.xaxis.ticksuffix == "s"
    for trace in fig.data:
        assert trace.line.shape == "hv"
        assert sum(trace.y[:-1]) == pytest.approx(100.0), trace.name  # last point closes the step
        assert min(trace.x) > 0  # drawable on a log axis
    hold = [t for t in fig.data if t.name.startswith("hold")]
    assert all(t.xaxis == "x2" for t in hold)


def test_distribution_of_known_samples():
    mm = 0xFFFF888100000000
    rec = synthetic(
        [wait_row(mm, READ, SRC_MMAP, waits=[1500, 1600, 3000, 5000], holds=[100], acquisitions=4)],
        owners={mm: (1, "a")},
    )
    fig = figures.build_distributions(frames.lock_intervals(rec))
    wait = next(t for t in fig.data if t.name.startswith("wait read"))
    assert wait.name == "wait read (4)"
    # 1500 and 1600 ns in [1024, 2048), 3000 in [2048, 4096), 5000 in [4096, 8192)
    assert list(wait.x) == pytest.approx([1024e-9, 2048e-9, 4096e-9, 8192e-9])
    assert list(wait.y) == pytest.approx([50.0, 25.0, 25.0, 25.0])


def test_distributions_without_holds_say_so():
    rec = synthetic([wait_row(0xFFFF0000, SPIN, SRC_CONT, waits=[7000])])
    fig = figures.build_distributions(frames.lock_intervals(rec))
    assert [t.name for t in fig.data] == ["wait exclusive (1)"]
    notes = [a.text for a in fig.layout.annotations]
    assert any("no hold times" in note for note in notes)


def test_distributions_empty():
    assert is_empty_state(
        figures.build_distributions(frames.lock_intervals(synthetic([]))), "No lock activity"
    )


# -- per CPU --------------------------------------------------------------------------------


def test_cpu_heatmap(parts, hostile):
    intervals = parts["intervals"]
    fig = figures.build_cpu_heatmap(intervals, hostile.meta["cpus"])
    (heat,) = fig.data
    assert isinstance(heat, go.Heatmap)
    assert list(heat.y) == ["cpu 0", "cpu 1"]
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (2, intervals["interval"].nunique())
    seconds = np.diff(np.asarray(heat.x, dtype=float))  # z is wait ms per second
    assert (z * seconds).sum() == pytest.approx(intervals["wait_total_ns"].sum() / 1e6)
    per_cpu = intervals.groupby("cpu")["wait_total_ns"].sum() / 1e6
    expected = per_cpu.reindex([0, 1], fill_value=0).to_numpy()
    assert (z * seconds).sum(axis=1) == pytest.approx(expected)
    assert "binned" not in fig.layout.title.text


def test_cpu_heatmap_bins_long_recordings(parts):
    intervals = parts["intervals"]
    fig = figures.build_cpu_heatmap(intervals, 4, max_columns=2)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (4, 2), "idle CPUs are rows too"
    seconds = np.diff(np.asarray(fig.data[0].x, dtype=float))
    assert (z * seconds).sum() == pytest.approx(intervals["wait_total_ns"].sum() / 1e6)
    assert "shown as 2 columns" in fig.layout.title.text


def test_cpu_heatmap_cells_span_their_intervals():
    """Snapshots at 0.5 s (the early first one), 1 s and 2 s: the cells are
    [0, 0.5], [0.5, 1], [1, 2]. Given their centres (0.25, 0.75, 1.5),
    plotly drew [0, 0.5], [0.5, 1.125], [1.125, 2]. And their colour is wait
    per second: 1 ms in 0.5 s is as much waiting as 2 ms in 1 s."""
    rows = [
        interval_row(0x10, WRITE, SRC_MMAP, cpu=0, interval=i, wait_count=1, wait_total_ns=ns)
        for i, ns in ((1, 1_000_000), (2, 2_000_000), (3, 4_000_000))
    ]
    rec = synthetic(rows)
    rec.intervals["t_s"] = rec.intervals["interval"].map({1: 0.5, 2: 1.0, 3: 2.0})
    fig = figures.build_cpu_heatmap(frames.lock_intervals(rec), 1)
    (heat,) = fig.data
    assert list(np.asarray(heat.x, dtype=float)) == [0.0, 0.5, 1.0, 2.0]
    assert np.asarray(heat.z, dtype=float).tolist() == [[2.0, 4.0, 4.0]]  # ms per s
    spans = [str(cell[0]) for cell in heat.customdata[0]]
    assert spans == ["0.00 to 0.50 s", "0.50 to 1.00 s", "1.00 to 2.00 s"]
    assert [float(cell[1]) for cell in heat.customdata[0]] == [1.0, 2.0, 4.0]  # ms
    # Binned, the cells still meet end to end and cover the recording.
    fig = figures.build_cpu_heatmap(frames.lock_intervals(rec), 1, max_columns=2)
    assert list(np.asarray(fig.data[0].x, dtype=float)) == [0.0, 0.5, 2.0]


def test_cpu_heatmap_quiet_intervals_keep_their_place():
    """The intervals table has rows only where something happened: a wait
    in interval 4 (2 to 3 s) after two quiet ones is 4 ms in 1 s, not in the
    2.5 s since interval 1's snapshot (a cell drawn over the quiet time)."""
    rows = [
        interval_row(0x10, WRITE, SRC_MMAP, cpu=0, interval=i, wait_count=1, wait_total_ns=ns)
        for i, ns in ((1, 1_000_000), (4, 4_000_000))
    ]
    rec = synthetic(rows)
    rec.intervals["t_s"] = rec.intervals["interval"].map({1: 0.5, 4: 3.0})
    fig = figures.build_cpu_heatmap(frames.lock_intervals(rec), 1, interval_s=1.0)
    (heat,) = fig.data
    assert list(np.asarray(heat.x, dtype=float)) == [0.0, 0.5, 1.0, 2.0, 3.0]
    assert np.asarray(heat.z, dtype=float).tolist() == [[2.0, 0.0, 0.0, 4.0]]  # ms per s


def test_timeline_rate_after_quiet_intervals():
    """A burst in interval 10 (8 to 9 s, --interval 1) after eight quiet
    intervals: 1,000 acquisitions in 1 s, not in the 8.5 s since the last
    snapshot with rows."""
    rows = [
        interval_row(0x10, WRITE, SRC_MMAP, interval=i, acquisitions=n, wait_count=n)
        for i, n in ((1, 500), (10, 1000))
    ]
    rec = synthetic(rows)
    rec.intervals["t_s"] = rec.intervals["interval"].map({1: 0.5, 10: 9.0})
    fig = figures.build_timeline(
        frames.lock_intervals(rec), frames.lock_events(rec), interval_s=1.0
    )
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["acquisitions"].y) == [1000.0, 1000.0]


def test_report_passes_the_interval_to_the_rate_figures():
    from dashboards import html

    rows = [
        interval_row(0x10, WRITE, SRC_MMAP, cpu=0, interval=i, wait_count=1, wait_total_ns=ns)
        for i, ns in ((1, 1_000_000), (4, 4_000_000))
    ]
    rec = synthetic(rows)
    rec.intervals["t_s"] = rec.intervals["interval"].map({1: 0.5, 4: 3.0})
    rec.meta["interval_s"] = 1.0
    built = {name: fig for panel in html.panels(rec) for name, fig in panel.figures}
    assert list(np.asarray(built["cpu-heatmap"].data[0].x, dtype=float)) == [0, 0.5, 1, 2, 3]


def test_cpu_totals(parts):
    intervals = parts["intervals"]
    fig = figures.build_cpu_totals(intervals, 2)
    assert {t.name for t in fig.data} == set(
        intervals.loc[intervals["wait_total_ns"] > 0, "lock_class"]
    )
    assert fig.layout.barmode == "stack"
    total = sum(float(np.sum(t.y)) for t in fig.data)
    assert total == pytest.approx(intervals["wait_total_ns"].sum() / 1e9)


def test_cpu_views_empty():
    empty = frames.lock_intervals(synthetic([]))
    assert is_empty_state(figures.build_cpu_heatmap(empty, 2), "No lock waits")
    assert is_empty_state(figures.build_cpu_totals(empty, 2), "No lock waits")


# -- timeline -----------------------------------------------------------------------------


def test_timeline(parts, hostile):
    fig = figures.build_timeline(parts["intervals"], parts["events"], hostile.meta["threshold_ns"])
    names = [t.name for t in fig.data]
    assert {"acquisitions", "contended", "wait write"} <= set(names)
    event_traces = [t for t in fig.data if t.name.endswith("(events)")]
    assert sum(len(t.x) for t in event_traces) == len(parts["events"])
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis3.type == "log"
    assert "showing" not in fig.layout.title.text
    comms = {c for t in event_traces for c in np.asarray(t.customdata)[:, 0]}
    assert ESCAPED in comms and COMM not in comms
    assert all("task %{customdata[0]}" in t.hovertemplate for t in event_traces)


def test_timeline_rates_are_per_second_of_each_interval():
    """The first two intervals last 0.5 s (the early first snapshot), the
    next 1 s: the same steady contention is the same rate in each, where
    totals per interval drew a ramp-up over the first second."""
    rows = [
        interval_row(
            0x10,
            WRITE,
            SRC_MMAP,
            interval=i,
            acquisitions=n,
            contended=n // 10,
            wait_count=n,
            wait_total_ns=n * 1000,
        )
        for i, n in ((1, 500), (2, 500), (3, 1000))
    ]
    rec = synthetic(rows)
    rec.intervals["t_s"] = rec.intervals["interval"].map({1: 0.5, 2: 1.0, 3: 2.0})
    fig = figures.build_timeline(frames.lock_intervals(rec), frames.lock_events(rec))
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["acquisitions"].y) == [1000.0, 1000.0, 1000.0]
    assert list(by_name["contended"].y) == [100.0, 100.0, 100.0]
    assert list(by_name["wait write"].y) == pytest.approx([0.001] * 3)  # tasks waiting
    assert "per second" in fig.layout.annotations[0].text


def test_timeline_downsamples_and_says_so(parts):
    events = parts["events"]
    fig = figures.build_timeline(parts["intervals"], events, max_events=100)
    event_traces = [t for t in fig.data if t.name.endswith("(events)")]
    assert sum(len(t.x) for t in event_traces) == 100
    assert f"showing 100 of {len(events):,} events" in fig.layout.title.text
    longest = max(max(t.y) for t in event_traces)
    assert longest == pytest.approx(events["duration_ns"].max() / 1e9)


def test_timeline_without_events(parts):
    fig = figures.build_timeline(parts["intervals"], parts["events"].iloc[0:0], 100_000)
    assert not [t for t in fig.data if t.name.endswith("(events)")]
    assert any(
        "no individual waits or holds of at least 100us" in a.text for a in fig.layout.annotations
    )


def test_timeline_empty():
    rec = synthetic([])
    fig = figures.build_timeline(frames.lock_intervals(rec), frames.lock_events(rec))
    assert is_empty_state(fig, "No lock activity")


# -- top locks, callers, stacks, tasks ------------------------------------------------------


def test_top_locks(parts):
    summary = parts["summary"]
    fig = figures.build_top_locks(summary, top=5)
    assert fig.layout.barmode == "stack"
    labels = list(fig.layout.yaxis.categoryarray)
    expected = summary.groupby("label")["wait_total"].sum().sort_values(ascending=False).head(5)
    assert labels == [escape.text(label) for label in expected.index]
    assert expected.index[0].startswith("mmap_lock pid") and COMM in expected.index[0]
    total = sum(float(np.nansum(np.asarray(t.x, dtype=float))) for t in fig.data)
    assert total == pytest.approx(expected.sum() / 1e9)


def test_top_callers(parts):
    callers = parts["callers"]
    fig = figures.build_top_callers(callers, top=100)
    (bars,) = fig.data
    assert sum(bars.x) == pytest.approx(callers["total_ns"].sum() / 1e9)
    assert list(bars.x) == sorted(bars.x, reverse=True)
    assert any(y.startswith("__vm_munmap+") or y.startswith("vm_mmap_pgoff+") for y in bars.y)


def test_stacks_icicle(parts):
    folded = parts["folded"]
    fig = figures.build_stacks(folded)
    (icicle,) = fig.data
    assert isinstance(icicle, go.Icicle)
    assert icicle.branchvalues == "total"
    values = dict(zip(icicle.ids, icicle.values, strict=True))
    assert values["n0"] == sum(folded.values())
    children: dict[str, int] = {}
    for node, parent in zip(icicle.ids, icicle.parents, strict=True):
        if parent:
            children[parent] = children.get(parent, 0) + values[node]
    assert all(total <= values[parent] for parent, total in children.items())
    top_frames = {icicle.labels[i] for i, p in enumerate(icicle.parents) if p == "n0"}
    assert "entry_SYSCALL_64_after_hwframe" in top_frames


def test_stacks_fold_small_subtrees():
    folded = {"a;b": 1_000_000, "a;c": 10, "d": 1}
    fig = figures.build_stacks(folded, min_share=0.01)
    assert set(fig.data[0].labels) == {"all contended waits", "a", "b"}
    assert "folded into their caller" in fig.layout.title.text


def test_tasks(parts, hostile):
    fig = figures.build_tasks(parts["tasks"], parts["events"], hostile.meta["target_pid"])
    groups = {t.name: t for t in fig.data}
    assert set(groups) == {"target process", "other processes"}
    assert all(y.startswith("cat (") for y in groups["other processes"].y)
    assert any(y.startswith(f"{ESCAPED} (") for y in groups["target process"].y)
    assert fig.layout.xaxis.type == "log"
    assert "per-task totals" in fig.layout.title.text


def test_tasks_from_events_when_there_is_no_task_table(parts):
    fig = figures.build_tasks(parts["tasks"].iloc[0:0], parts["events"], None)
    assert "streamed waits" in fig.layout.title.text
    (bars,) = fig.data
    waits = parts["events"][parts["events"]["kind"] == "wait"]
    assert sum(bars.x) == pytest.approx(
        waits.groupby("tid")["duration_ns"].sum().nlargest(20).sum() / 1e9
    )


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda p: figures.build_top_locks(p["summary"].iloc[0:0]), "No lock waits"),
        (lambda p: figures.build_top_callers(p["callers"].iloc[0:0]), "No contended waits"),
        (lambda p: figures.build_stacks({}), "No contended waits with kernel stacks"),
        (
            lambda p: figures.build_tasks(p["tasks"].iloc[0:0], p["events"].iloc[0:0]),
            "No per-task waits",
        ),
    ],
)
def test_empty_states(parts, build, words):
    assert is_empty_state(build(parts), words)


def test_a_recording_with_only_contention_has_every_panel(hostile):
    """Recorded with --no-mmap-lock: no acquisitions, no holds, no readers."""
    keep = hostile.intervals["source"] == SRC_CONT
    hostile.intervals = hostile.intervals[keep].reset_index(drop=True)
    hostile.locks = hostile.locks[hostile.locks["source"] == SRC_CONT].reset_index(drop=True)
    hostile.meta["families"] = ["contention"]
    built = html.panels(hostile)
    assert [p.anchor for p in built] == [
        "header",
        "summary",
        "readers-writers",
        "distributions",
        "cpus",
        "timeline",
        "top",
        "stacks",
        "tasks",
        "writer-cost",
    ]
    dist = dict(built[3].figures)["distributions"]
    assert not [t for t in dist.data if t.name.startswith("hold")]


# -- escaping -------------------------------------------------------------------------------


NASTY = [
    COMM,
    '"><img src=x onerror=alert(1)>',
    "<!--<script>",
    "a&amp;b",
    "line\u2028sep",
    "\x1b[31mred",
]


def nasty_recording(hostile) -> profiler.Recording:
    """The hostile recording with more hostile comms and a hostile symbol."""
    count = len(hostile.events)
    hostile.events["comm"] = [NASTY[i % len(NASTY)] for i in range(count)]
    hostile.tasks["comm"] = [NASTY[i % len(NASTY)] for i in range(len(hostile.tasks))]
    spin = hostile.locks.index[hostile.locks["lock_class"] == "spinlock"][0]
    hostile.locks.loc[spin, "name"] = "<svg onload=alert(2)>"
    hostile.meta["target"] = "pid 1 (</title><script>alert(3)</script>)"
    return hostile


def test_text_escaping():
    assert escape.text(COMM) == ESCAPED
    assert escape.text("a&b") == "a&amp;b"
    assert escape.text("\x1b[1m") == "\\x1b[1m"
    assert escape.html_text('"x"') == "&quot;x&quot;"


def test_script_json_cannot_close_the_script():
    document = json.dumps({"s": "</script><!-- & \u2028"})
    safe = escape.script_json(document)
    assert "<" not in safe and ">" not in safe and "&" not in safe and "\u2028" not in safe
    assert json.loads(safe) == {"s": "</script><!-- & \u2028"}


def test_no_figure_carries_raw_hostile_text(hostile):
    for panel in html.panels(nasty_recording(hostile)):
        for name, fig in panel.figures:
            strings = figure_strings(fig)
            for string in strings:
                for raw in ("<img", "<svg", "</script", "<!--", "<script", "\x1b"):
                    assert raw not in string, (name, string)


def test_hostile_text_is_shown_escaped_in_figures(parts, hostile):
    tasks = figures.build_tasks(parts["tasks"], parts["events"], hostile.meta["target_pid"])
    assert any(ESCAPED in s for s in figure_strings(tasks))
    timeline = figures.build_timeline(parts["intervals"], parts["events"])
    assert any(s == ESCAPED for s in figure_strings(timeline))


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_page_structure_survives_hostile_text(hostile):
    page = html.render(nasty_recording(hostile))
    parser = _Elements()
    parser.feed(page)
    assert parser.tags.count("script") == 3  # plotly.js, the figures' JSON, the page's own
    assert "img" not in parser.tags and "svg" not in parser.tags
    assert parser.tags.count("title") == 1
    ours = page.replace(get_plotlyjs(), "")
    for raw in ("<img", "<svg", "</script><b>", "alert(3)</script>"):
        assert raw not in ours
    assert "pid 1 (&lt;/title&gt;&lt;script&gt;alert(3)&lt;/script&gt;)" in page
    assert ours.count("</script>") == 3


# -- the page ---------------------------------------------------------------------------


@pytest.fixture
def page(hostile) -> str:
    return html.render(hostile, source="tests/data/hostile-comm.lpr")


def test_page_is_self_contained(page):
    plotly_js = get_plotlyjs()
    assert page.count(plotly_js) == 1, "plotly.js inline, exactly once"
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert not re.search(r"<link[^>]*href=", page)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.replace(plotly_js, ""))
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "connect-src" not in csp
    nonce = re.search(r"script-src 'nonce-([^']+)'", csp).group(1)
    assert page.count(f'<script nonce="{nonce}">') == 2


def test_page_has_every_panel_and_figure(page, hostile):
    built = html.panels(hostile)
    for panel in built:
        assert f'<section id="{panel.anchor}">' in page
        for name, _fig in panel.figures:
            assert f'<div class="plot" id="plot-{name}"' in page
    document = re.search(
        r'<script type="application/json" id="lockprof-figures">(.*?)</script>', page, re.S
    ).group(1)
    specs = json.loads(document)
    assert [s["div"] for s in specs["figures"]] == [
        f"plot-{name}" for p in built for name, _ in p.figures
    ]
    assert 'id="summary-table" class="sortable"' in page
    assert "sortBy" in page


def test_page_size_and_time(hostile):
    import time

    start = time.perf_counter()
    page = html.render(hostile)
    elapsed = time.perf_counter() - start
    assert len(page.encode()) < 15 * 1024 * 1024
    assert elapsed < 10


def test_write_report(hostile, tmp_path):
    path = html.write_report(hostile, tmp_path / "r.html")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


@pytest.mark.parametrize("where", ["missing-dir/r.html", "."])
def test_write_report_refuses_bad_paths(hostile, tmp_path, where):
    with pytest.raises(LockprofError) as error:
        html.write_report(hostile, tmp_path / where)
    assert "\n" not in str(error.value)


def test_figure_json_cannot_end_its_script_even_unescaped(hostile, monkeypatch):
    """Second line of defence: a string that reached a figure unescaped
    still cannot end the script element that carries the figures."""
    raw = "</script><img src=x onerror=alert(4)><!--"
    monkeypatch.setattr(
        figures, "build_header", lambda meta, events: figures.empty_figure(raw, raw)
    )
    page = html.render(hostile)
    parser = _Elements()
    parser.feed(page)
    assert parser.tags.count("script") == 3 and "img" not in parser.tags
    document = re.search(
        r'<script type="application/json" id="lockprof-figures">(.*?)</script>', page, re.S
    ).group(1)
    header = json.loads(document)["figures"][0]["figure"]
    assert header["layout"]["title"]["text"] == raw


def test_summary_of_the_top_locks_only(hostile, parts):
    full = parts["summary"]
    top = frames.summary_frame(hostile, parts["locks"], max_locks=3)
    assert top.attrs["total_rows"] == len(full) > len(top)
    assert top["lock_addr"].nunique() == 3
    waits = full.groupby("lock_addr")["wait_total"].sum().nlargest(3)
    assert set(top["lock_addr"]) == set(waits.index)
    merged = top.merge(full, on=["lock_addr", "mode"], suffixes=("", "_full"))
    assert len(merged) == len(top)
    for column in ("acquisitions", "contended", "wait_total", "wait_p99", "hold_max"):
        assert merged[column].equals(merged[f"{column}_full"]), column
    table = html.summary_table(top)
    assert f"Showing the {len(top)} rows with the most wait time of {len(full)}" in table


def test_a_report_read_batch_by_batch_is_the_report_read_whole(tmp_path):
    """`lockprof report` loads summary_only: the histograms are summed as the
    intervals are read, and the per-interval figures read the intervals
    without them (interval_columns). Every figure is the same as from the
    recording read whole."""
    mm, spin = 0xFFFF888100000000, 0xFFFF0000
    rows = [
        wait_row(mm, READ, SRC_MMAP, cpu=c, interval=i, waits=[1500 * i, 3000], holds=[100 * c + 1],
                 acquisitions=2)
        for i in (1, 2, 3) for c in (0, 1)
    ] + [wait_row(spin, SPIN, SRC_CONT, cpu=1, interval=2, waits=[7000, 9000])]  # fmt: skip
    path = recording.save(synthetic(rows, owners={mm: (1, "a")}), tmp_path / "r.lpr")
    whole, batched = profiler.load(path), profiler.load(path, summary_only=True)
    scalars = batched.interval_columns(frames.INTERVAL_SCALARS)
    assert batched.unread_file("intervals") is not None  # still only in the file
    assert not any(c.endswith("_slots") for c in scalars.columns)
    pd.testing.assert_frame_equal(scalars, whole.intervals[frames.INTERVAL_SCALARS])
    panels = {p.anchor: p for p in html.panels(whole)}
    for panel in html.panels(batched):
        for (name, fig), (_name, expected) in zip(panel.figures, panels[panel.anchor].figures,
                                                  strict=True):  # fmt: skip
            assert fig.to_json() == expected.to_json(), name
        assert panel.html == panels[panel.anchor].html
    assert batched.unread_file("intervals") is not None  # never read whole


def test_callers_and_stacks_say_when_contention_was_not_traced():
    """A --no-contention recording's callers and stacks panels said "No
    contended waits with a call site", word for word what a traced run with
    no contention says: they now say it was not traced."""
    empty = pd.DataFrame(columns=["caller", "label", "total_ns", "count", "max_ns"])
    for fig in (
        figures.build_top_callers(empty, traced=False),
        figures.build_stacks({}, traced=False),
    ):
        assert is_empty_state(fig, "lock:contention_* was not traced")
    for fig in (figures.build_top_callers(empty), figures.build_stacks({})):
        assert is_empty_state(fig, "No contended waits with")
    rec = synthetic([wait_row(0xFFFF888100000000, WRITE, SRC_MMAP, waits=[100], holds=[5],
                              acquisitions=1)],
                    meta={"families": ["mmap_lock"], "cpus": 2})  # fmt: skip
    assert "lock:contention_* was not traced" in html.render(rec)
