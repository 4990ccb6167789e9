"""profiler.summary: the `show --json` document of a real recording.

tests/data/mmapcount-1000.lpr is `lockprof run -- workloads/bin/mmapcount -n 1000`:
one untimed warm-up pair plus 1000 mmap+munmap pairs of one page. Each mmap
takes mmap_lock for write once; each munmap takes it for write, downgrades
it to read and releases the read lock (workloads/mmapcount.c). exec, ld.so
and exit add a few more acquisitions on top.
"""

from __future__ import annotations

import json
import re

import pytest

from profiler import summary

PAIRS = 1001  # warm-up + -n 1000
HIST_KEYS = {"count", "total", "avg", "p50", "p99", "max"}
# The keys README.md documents for `show --json`.
TOP_LEVEL_KEYS = {
    "json_version",
    "kernel",
    "cpus",
    "duration_s",
    "target",
    "target_pid",
    "command",
    "exit_status",
    "exit_signal",
    "mechanisms",
    "threshold_ns",
    "lost_events",
    "errors",
    "rusage",
    "events",
    "locks_total",
    "locks",
}
LOCK_KEYS = {
    "lock",
    "lock_class",
    "mode",
    "lock_addr",
    "lock_id",
    "owner_pid",
    "owner_comm",
    "acquisitions",
    "contended",
    "releases",
    "downgrades",
    "trylock_failures",
    "still_held",
    "reader_writer_ratio",
    "wait_ns",
    "hold_ns",
    "contended_wait_ns",
    "per_cpu",
}
PER_CPU_KEYS = {"cpu", "acquisitions", "contended", "wait_total_ns", "hold_total_ns"}


@pytest.fixture
def doc(rec):
    return summary.summary_json(rec)


def target_rows(doc, rec):
    """The mmap_lock rows of mmapcount's own mm (after exec), by mode."""
    rows = [
        r
        for r in doc["locks"]
        if r["lock"] == "mmap_lock"
        and r["owner_pid"] == rec.meta["target_pid"]
        and r["owner_comm"] == "mmapcount"
    ]
    return {r["mode"]: r for r in rows}


def test_top_level_schema(doc):
    for key in (
        "json_version",
        "kernel",
        "cpus",
        "duration_s",
        "target",
        "target_pid",
        "command",
        "exit_status",
        "mechanisms",
        "threshold_ns",
        "lost_events",
        "errors",
        "rusage",
        "events",
        "locks",
    ):
        assert key in doc, key
    assert doc["json_version"] == 1
    assert isinstance(doc["kernel"], str) and doc["kernel"]
    assert isinstance(doc["cpus"], int) and doc["cpus"] >= 1
    assert isinstance(doc["duration_s"], float) and doc["duration_s"] > 0
    assert doc["lost_events"] == 0
    assert set(doc["rusage"]) == {"user_s", "sys_s", "elapsed_s", "minor_faults"}
    assert all(isinstance(v, int | float) for v in doc["rusage"].values())
    assert isinstance(doc["locks"], list) and doc["locks"]


def test_document_is_plain_json(doc):
    # No numpy scalars or NaN: json.dumps in strict mode must take it as is.
    again = json.loads(json.dumps(doc, allow_nan=False))
    assert again == doc


def test_exit_status_as_a_shell_gives_it(rec):
    """128 + N and the signal's name when signal N killed the command; the
    -N that recordings stored before read the same way."""
    assert summary.summary_json(rec)["exit_signal"] is None
    for status, signame in ((143, "SIGTERM"), (-15, None)):
        rec.meta.update(exit_status=status, exit_signal=signame)
        doc = summary.summary_json(rec)
        assert (doc["exit_status"], doc["exit_signal"]) == (143, "SIGTERM")


def test_facts_of_the_run(doc, rec):
    assert doc["command"][1:] == ["-n", "1000"]
    assert doc["command"][0].endswith("workloads/bin/mmapcount")
    assert doc["exit_status"] == 0
    assert doc["target_pid"] == rec.meta["target_pid"]
    assert doc["events"] == len(rec.events)
    assert doc["rusage"]["elapsed_s"] <= doc["duration_s"]


def test_every_lock_entry_has_the_documented_shape(doc):
    for row in doc["locks"]:
        assert set(row) == LOCK_KEYS
        assert all(set(c) == PER_CPU_KEYS for c in row["per_cpu"])
        assert row["mode"] in {"read", "write", "exclusive"}
        assert isinstance(row["lock"], str) and row["lock"]
        for key in ("acquisitions", "contended", "downgrades", "trylock_failures"):
            assert row[key] is None or (isinstance(row[key], int) and row[key] >= 0), key
        for key in ("wait_ns", "hold_ns", "contended_wait_ns"):
            value = row[key]
            assert value is None or set(value) == HIST_KEYS, key
            if value and value["count"]:
                assert value["p50"] <= value["p99"] <= value["max"]
                assert value["max"] <= value["total"]
                assert value["avg"] == pytest.approx(value["total"] / value["count"])
        assert isinstance(row["per_cpu"], list) and row["per_cpu"]
        cpus = [c["cpu"] for c in row["per_cpu"]]
        assert cpus == sorted(set(cpus)) and all(0 <= c < 4096 for c in cpus)
        if row["acquisitions"] is not None:
            assert sum(c["acquisitions"] for c in row["per_cpu"]) == row["acquisitions"]
        if row["wait_ns"] is not None:
            assert sum(c["wait_total_ns"] for c in row["per_cpu"]) == row["wait_ns"]["total"]


def test_rows_are_sorted_by_total_wait(doc):
    totals = [(r["wait_ns"] or {}).get("total") or 0 for r in doc["locks"]]
    assert totals == sorted(totals, reverse=True)


def _sort_figure(row: dict, key: str):
    """The figure of a `show --json` row that `show --sort key` orders by
    (None: the row does not know it), read from the row as a user would."""
    if key in ("contended", "acquisitions"):
        return row[key]
    hist = row[f"{key.split('_')[0]}_ns"]
    if hist and key.endswith("_total"):
        return hist["total"]  # 0 where it has no samples: known
    if not hist or not hist["count"]:
        return None
    if key.endswith("_avg"):
        return hist["total"] / hist["count"]
    return hist[key.split("_")[1]]


@pytest.mark.parametrize(
    "key",
    ["contended", "acquisitions", "wait_max", "wait_avg", "hold_total", "hold_max", "hold_avg"],
)
def test_rows_sorted_by_another_figure_the_largest_first_unknowns_last(rec, key):
    """`show --sort` (perf lock contention's -k): every row, ordered by the
    figure, those without it (a '-' in the table) after the rest."""
    from profiler.options import SORT_KEYS

    assert key in SORT_KEYS
    rows = list(summary.LockRows(rec, sort=key).locks)
    assert len(rows) == len(list(summary.LockRows(rec).locks))
    figures = [_sort_figure(row, key) for row in rows]
    known = [f for f in figures if f is not None]
    assert figures[: len(known)] == known, "rows without the figure come last"
    assert known == sorted(known, reverse=True) and len(set(known)) > 1
    by_wait = [_sort_figure(row, key) for row in summary.LockRows(rec).locks]
    assert figures != by_wait, "not the default order"


def test_show_sort_orders_the_json_and_refuses_an_unknown_key(capsys, recording_path):
    from .helpers import one_error_line, run_main

    path = str(recording_path)
    code, out, _ = run_main(capsys, "show", path, "--json", "-k", "hold_max", "--top", "3")
    assert code == 0
    maxima = [row["hold_ns"]["max"] for row in json.loads(out)["locks"]]
    assert len(maxima) == 3 and maxima == sorted(maxima, reverse=True)
    code, _, err = run_main(capsys, "show", path, "--sort", "longest")
    assert code == 2 and "'longest' is not one of" in one_error_line(code, err)


def test_mmapcount_mmap_lock_counts(doc, rec):
    rows = target_rows(doc, rec)
    assert set(rows) == {"read", "write"}
    write, read = rows["write"], rows["read"]
    # Exact figures of this recording (checked with `lockprof show --json`).
    assert (write["acquisitions"], write["releases"], write["downgrades"]) == (2030, 1028, 1002)
    assert (read["acquisitions"], read["releases"], read["downgrades"]) == (15, 1017, 0)
    # ... and why they are right: every pair is two write acquisitions and one
    # downgrade; each downgrade ends in a read release.
    assert write["acquisitions"] >= 2 * PAIRS and write["downgrades"] >= PAIRS
    assert write["acquisitions"] == write["releases"] + write["downgrades"]
    assert read["releases"] == read["acquisitions"] + write["downgrades"]
    assert write["still_held"] == 0 and read["still_held"] == 0
    assert write["trylock_failures"] == 0 and read["trylock_failures"] == 0
    assert write["wait_ns"]["count"] == 2030
    assert write["hold_ns"]["count"] == 2030  # a write hold ends by release or downgrade
    assert read["hold_ns"]["count"] == 1017
    ratio = 15 / 2030
    assert write["reader_writer_ratio"] == pytest.approx(ratio)
    assert read["reader_writer_ratio"] == pytest.approx(ratio)
    assert write["lock_addr"] == read["lock_addr"]
    assert write["contended"] == 0  # one thread: nobody to contend with


def test_contention_only_rows_in_the_recording(doc):
    spin = [r for r in doc["locks"] if r["lock_class"] == "spinlock"]
    assert len(spin) == 2
    for row in spin:
        assert row["mode"] == "exclusive"
        assert row["acquisitions"] is None and row["hold_ns"] is None
        assert row["contended"] == 1 == row["wait_ns"]["count"]


# -- notes: what the figures leave out ------------------------------------------------------


def test_no_notes_for_a_clean_run(doc):
    assert doc["notes"] == []


def test_notes_for_full_maps_forks_and_execs(rec):
    rec.meta["errors"] = dict(rec.meta["errors"], stats_map_full=12, owner_map_full=3)
    pid = rec.meta["target_pid"]
    rec.meta["lineage"] = {
        "children_seen": 4,
        "execs": [{"t_s": 1.25, "comm": "mmapcount", "exe": "/bin/mmapcount"}],
    }
    notes = summary.summary_json(rec)["notes"]
    assert notes == [
        "stats map full 12 times: distinct locks beyond the aggregate map (LP_MAX_LOCKS) "
        "were not counted; collection went on",
        "owner map full 3 times: mm owners beyond the owner map (LP_MAX_OWNERS) were not "
        "learned: their mmap_locks are unnamed; collection went on",
        f"pid {pid} forked processes (at least 4 seen): they are not followed (--follow "
        f"profiles them); only pid {pid} and tasks taking its mmap_lock are profiled",
        f"pid {pid} exec'd mmapcount (/bin/mmapcount) at 1.25 s: still profiled (same "
        "pid), its new mm's mmap_lock is a separate row",
    ]


def test_every_map_full_counter_has_a_note():
    from profiler import schema

    names = set(schema.error_names().values())
    assert set(summary.MAP_FULL) <= names
    assert {n for n in names if n.endswith("_map_full")} <= set(summary.MAP_FULL)


def test_every_kernel_counter_has_a_note():
    """Each LP_ERR_* counter of probes/lockprof.h, and recursion_misses, says
    in a note what it means for the figures when it is nonzero, so that a new
    counter cannot be added without one."""
    from profiler import schema

    names = [*schema.error_names().values(), "recursion_misses"]
    assert len(names) == schema.const("LP_NR_ERRORS") + 1
    for name in names:
        notes = summary.notes({"errors": {name: 37}, "stack_rate": 200})
        assert len(notes) == 1, name
        assert "37" in notes[0], (name, notes[0])
        assert summary.notes({"errors": {name: 0}, "stack_rate": 200}) == []


def test_unpaired_mmap_lock_events_are_explained():
    """The counters a system-wide run has nonzero from its first instant:
    waits and holds under way when collection started."""
    errors = {
        "acquire_without_start": 2,
        "release_without_acquire": 9,
        "downgrade_without_write": 1,
    }
    notes = summary.notes({"errors": errors})
    assert [re.split(" times?:", n)[0] for n in notes] == [
        "acquire without start 2",
        "release without acquire 9",
        "downgrade without write 1",
    ]
    assert all("before collection started" in n and "inherent" in n for n in notes)


def test_stack_rate_is_a_note_not_a_failure():
    """Waits the --stack-rate limit left without a stack are reported as a
    note with the limit, never among kernel-side failures."""
    from profiler import schema, summary

    errors = {"ringbuf_full": 3, "stack_rate": 1234, "stack": 0, "held_overflow": 2}
    assert schema.failures(errors) == {"held_overflow": 2}
    meta = {"errors": errors, "stack_rate": 200}
    note = schema.stack_rate_note(meta)
    assert note is not None and note.startswith("1,234 contended waits over --stack-threshold")
    assert "--stack-rate 200 per CPU per second" in note
    assert note in summary.notes(meta)
    assert schema.stack_rate_note({"errors": {"stack_rate": 0}}) is None
    assert schema.stack_rate_note({}) is None


def test_probe_runs_the_kernel_skipped_are_a_failure_with_a_note():
    """recursion_misses (read from the programs' fdinfo, not lp_errors) is
    shown with the other kernel-side failures, and explained once."""
    from profiler import schema, summary

    errors = {"recursion_misses": 7, "end_without_begin": 3, "ringbuf_full": 0}
    assert schema.failures(errors) == {"recursion_misses": 7, "end_without_begin": 3}
    explained = [n for n in summary.notes({"errors": errors}) if n.startswith("recursion misses")]
    assert explained == [
        "recursion misses 7 times: "
        + summary.KERNEL_SKIPPED["recursion_misses"]
        + "; collection went on"
    ]
    assert not any("recursion" in n for n in summary.notes({"errors": {"recursion_misses": 0}}))


# -- rows built as they are used ------------------------------------------------------------


def test_lock_rows_built_one_at_a_time_are_the_documents_rows(rec, doc):
    rows = summary.LockRows(rec)
    assert len(rows) == len(doc["locks"]) > 2
    assert list(rows) == doc["locks"] == list(rows)  # and again: a fresh pass each time


def test_the_shown_rows_summarise_every_row_not_only_the_first(rec):
    """The table prints `top` rows; its per-CPU line, the still-held lines
    and the count of rows left out still cover every row."""
    from profiler import render
    from profiler.cli.common import _ShownRows, table_row

    rows = list(summary.LockRows(rec).locks)
    rows[-1] = dict(rows[-1], still_held=3)  # the quietest row: beyond any top
    shown = _ShownRows.of(iter(rows), top=1)
    assert shown.first == [table_row(rows[0])] and shown.count == len(rows)
    held = [table_row(r) for r in rows if r.get("still_held")]
    assert shown.held == held and table_row(rows[-1]) in shown.held
    every_cpu = render.per_cpu_line(rows).plain
    assert render.per_cpu_line(shown.first, shown.cpu_totals).plain == every_cpu
    assert render.per_cpu_line(shown.first).plain != every_cpu  # not vacuous
    assert _ShownRows.of(iter(rows), top=None).first == [table_row(r) for r in rows]


class _Reads(dict):
    """A dict that notes the keys read from it (nested: with their path)."""

    def __init__(self, row: dict, read: set, path: str = ""):
        super().__init__(
            (k, _Reads(v, read, f"{path}{k}.") if isinstance(v, dict) else v)
            for k, v in row.items()
        )
        self._read, self._path = read, path

    def __getitem__(self, key):
        self._read.add(self._path + key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._read.add(self._path + key)
        return super().get(key, default)


def test_the_table_rows_hold_all_the_table_reads(rec):
    """_ShownRows keeps only what the table reads of each row it prints
    (table_row): the same cells and still-held lines as the whole rows."""
    from profiler import render
    from profiler.cli.common import TABLE_FIELDS, TABLE_FIGURES, table_row

    rows = [dict(row, still_held=2) for row in summary.LockRows(rec).locks]
    read: set[str] = set()
    for row in rows:
        assert render.summary_cells(table_row(row)) == render.summary_cells(row)
        render.summary_cells(_Reads(row, read))
        render.lock_label(_Reads(row, read))
    assert render.row_labels([table_row(row) for row in rows]) == render.row_labels(rows)
    render.row_labels([_Reads(row, read) for row in rows])
    kept = set(TABLE_FIELDS) | {f"{name}.{f}" for name, fs in TABLE_FIGURES.items() for f in fs}
    assert read - set(TABLE_FIGURES) <= kept
    assert {"lock", "mode", "still_held"} <= kept  # the still-held lines


def test_print_summary_with_top_keeps_the_footer_of_all_rows(rec, capsys):
    from profiler.cli.common import print_summary

    print_summary(rec, as_json=False, top=None)
    everything = capsys.readouterr().out.splitlines()
    print_summary(rec, as_json=False, top=1)
    first = capsys.readouterr().out.splitlines()
    per_cpu = [line for line in everything if line.startswith("per CPU")]
    assert per_cpu and per_cpu == [line for line in first if line.startswith("per CPU")]
    more = len(summary.LockRows(rec)) - 1
    assert f"({more} more rows; `lockprof show FILE` lists all)" in first


def test_interrupt_waits_left_out_are_a_failure_with_a_note():
    """irq_wait_skipped (lp_errors: a wait whose other half the kernel
    skipped) is shown as a failure and named in a note, with its count."""
    from profiler import schema, summary

    errors = {"irq_wait_skipped": 5, "recursion_misses": 8}
    assert schema.failures(errors) == errors
    notes = summary.notes({"errors": errors})
    assert any(
        n.startswith("irq wait skipped 5 times: contended waits in an interrupt") for n in notes
    )
    assert not any(
        n.startswith("irq wait") for n in summary.notes({"errors": {"irq_wait_skipped": 0}})
    )


def test_show_sort_takes_perf_locks_key_names(capsys, recording_path):
    from .helpers import one_error_line, run_main

    path = str(recording_path)
    by_name = [
        run_main(capsys, "show", path, "--json", "-k", key)[1] for key in ("wait_avg", "avg_wait")
    ]
    assert by_name[0] == by_name[1]
    assert (
        run_main(capsys, "show", path, "--json", "-k", "acquired")[1]
        == run_main(capsys, "show", path, "--json", "-k", "acquisitions")[1]
    )
    code, _, err = run_main(capsys, "show", path, "-k", "wait_min")
    assert code == 2 and "wait_min is not kept" in one_error_line(code, err)


def test_a_row_with_no_holds_sorts_by_its_hold_total_of_0_not_last():
    """A row whose hold total is a known 0 (no releases in the run) went
    among the rows that cannot know holds (contention-only locks), for
    -k hold_total; it has no max or average, so those keys still put it
    last."""
    from profiler import recording

    from .helpers import DATA

    rec = recording.load(DATA / "hostile-comm.lpr")
    frame = rec.intervals.copy()
    reads = (frame["source"] == 0) & (
        frame["flags"] == frame.loc[frame["source"] == 0, "flags"].min()
    )
    for column in ("hold_count", "hold_total_ns", "hold_running_max_ns", "releases"):
        frame.loc[reads, column] = 0
    frame.loc[reads, "hold_max_ns"] = None
    frame["hold_slots"] = [
        [0] * len(slots) if read else slots
        for slots, read in zip(frame["hold_slots"], reads, strict=True)
    ]
    rec.intervals = frame
    for key in ("hold_total", "hold_max"):
        rows = list(summary.summary_document(rec, sort=key)["locks"])
        figures = [_sort_figure(row, key) for row in rows]
        known = [f for f in figures if f is not None]
        assert figures[: len(known)] == sorted(known, reverse=True)
        assert all(f is None for f in figures[len(known) :])
        assert (0 in known) == (key == "hold_total")
