"""show --combine-locks: locks of one name in one row (profiler/combine.py),
on a real recording (tests/data/hostile-comm.lpr: a page-table lock per page,
unnamed spinlocks, the target's mmap_lock)."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from profiler import recording, summary
from profiler.combine import lock_label

from .helpers import DATA, run_main

HOSTILE = DATA / "hostile-comm.lpr"


@pytest.fixture(scope="module")
def rec():
    return recording.load(HOSTILE)


@pytest.fixture(scope="module")
def rows(rec):
    return summary.summary_json(rec)["locks"]


@pytest.fixture(scope="module")
def combined(rec):
    return summary.summary_document(rec, combine=True)["locks"]


def _label(row: dict, rec) -> tuple[str, str]:
    return lock_label(
        row["lock_class"], row["lock"], row["owner_pid"], row["owner_comm"], rec.meta["target_pid"]
    )


def _groups(rows: list[dict], rec) -> dict[tuple[str, str], list[dict]]:
    groups = defaultdict(list)
    for row in rows:
        groups[(_label(row, rec)[0], row["mode"])].append(row)
    return groups


def test_the_recording_has_locks_to_combine(rows, rec):
    sizes = [len(group) for group in _groups(rows, rec).values()]
    assert max(sizes) >= 5, "the fixture no longer has several locks of one caller"


def test_one_row_per_label_and_mode_whose_figures_add_up(rows, combined, rec):
    groups = _groups(rows, rec)
    combined = list(combined)
    assert len(combined) == len(groups)
    for row in combined:
        members = groups[(_label(row, rec)[0], row["mode"])]
        assert row["locks_combined"] == len(members)
        assert row["contended"] == sum(m["contended"] for m in members)
        for figure in ("wait_ns", "contended_wait_ns"):
            if row[figure] is None:
                assert all(m[figure] is None for m in members)
                continue
            assert row[figure]["count"] == sum(m[figure]["count"] for m in members)
            assert row[figure]["total"] == sum(m[figure]["total"] for m in members)
            assert row[figure]["max"] == max(m[figure]["max"] for m in members)
            p99s = [m[figure]["p99"] for m in members if m[figure]["p99"] is not None]
            if p99s:  # a percentile of every wait together: within the members' range
                assert min(p99s) <= row[figure]["p99"] <= row[figure]["max"]


def test_a_lock_alone_keeps_its_name_address_and_owner(rows, combined, rec):
    by_id = {(row["lock_id"], row["mode"]): row for row in rows}
    alone = [row for row in combined if row["locks_combined"] == 1]
    assert alone
    for row in alone:
        original = by_id[(row["lock_id"], row["mode"])]
        assert row["lock"] == original["lock"]
        assert row["lock_addr"] == original["lock_addr"]
        assert row["owner_pid"] == original["owner_pid"]
    mmap = [row for row in alone if row["lock"] == "mmap_lock"]
    assert mmap and all(row["owner_pid"] == rec.meta["target_pid"] for row in mmap)


def test_a_row_of_several_locks_names_no_single_address(combined):
    several = [row for row in combined if row["locks_combined"] > 1]
    assert {row["lock"] for row in several} >= {"__pte_offset_map_lock+0x98", "spinlock (unnamed)"}
    for row in several:
        assert row["lock_addr"] is None and row["lock_id"] is None
        assert not re.search(r"\(0x|\s0x", row["lock"]), row["lock"]


def test_the_whole_run_is_the_same_combined_or_not(rows, combined):
    combined = list(combined)
    for figure in ("contended", "acquisitions"):
        assert sum(r[figure] or 0 for r in combined) == sum(r[figure] or 0 for r in rows)
    waited = sum(r["wait_ns"]["total"] for r in rows if r["wait_ns"])
    assert sum(r["wait_ns"]["total"] for r in combined if r["wait_ns"]) == waited


def test_show_combine_locks_prints_a_row_per_caller(capsys):
    code, table, _ = run_main(capsys, "show", "-c", HOSTILE)
    assert code == 0
    assert re.search(r"__pte_offset_map_lock\+0x98 \(\d+ locks\)", table)
    assert re.search(r"spinlock \(unnamed, \d+ locks\)", table)
    assert "__pte_offset_map_lock+0x98 (0x" not in table
    code, out, _ = run_main(capsys, "show", "--combine-locks", "--json", HOSTILE)
    assert code == 0
    locks = json.loads(out)["locks"]
    assert all("locks_combined" in row for row in locks)
    plain = json.loads(run_main(capsys, "show", "--json", HOSTILE)[1])["locks"]
    assert len(locks) < len(plain) and "locks_combined" not in plain[0]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            ("spinlock", "__pte_offset_map_lock+0x98 (0xffffea0004129fa8)", None, None),
            "__pte_offset_map_lock+0x98",
        ),
        (("spinlock", "spinlock 0xffff888152d21898", None, None), "spinlock (unnamed)"),
        (("spinlock", "rq_lock cpu1", None, None), "rq_lock cpu1"),
        (("mmap_lock", "mmap_lock", 7, "sh"), "mmap_lock (sh)"),
        (("mmap_lock", "mmap_lock", 42, "sh"), "mmap_lock (target sh)"),
        (("mmap_lock", "mmap_lock", None, None), "mmap_lock (owner unknown)"),
    ],
)
def test_lock_labels(fields, expected):
    assert lock_label(*fields, target_pid=42)[0] == expected


def test_one_caller_on_locks_of_two_classes_gets_a_row_for_each():
    rec = recording.load(HOSTILE)
    locks = rec.locks.copy()
    pte = locks["name"].str.startswith("__pte_offset_map_lock+0x98 (")
    mutexes = locks.index[pte][::2]
    locks.loc[mutexes, "lock_class"] = "mutex"
    rec.locks = locks
    names = {row["lock"] for row in summary.summary_document(rec, combine=True)["locks"]}
    pte_names = {name for name in names if name.startswith("__pte_offset_map_lock")}
    assert pte_names == {
        "__pte_offset_map_lock+0x98 (mutex)",
        "__pte_offset_map_lock+0x98 (spinlock)",
    }


def test_the_live_view_combines_its_rows_as_the_summary_does(rec, combined):
    """attach/run/record -c: the live view's rows (session._live_rows) over
    the same totals read as show -c's."""
    from types import SimpleNamespace

    from profiler.options import CollectOptions
    from profiler.session import _live_rows

    families = tuple(rec.meta["families"])
    target = SimpleNamespace(tgid=rec.meta["target_pid"])
    totals, locks = rec.interval_totals, rec.locks

    def key(row: dict) -> tuple:
        return (row["lock"], row["mode"], row["locks_combined"], row["contended"])

    live = _live_rows(totals, locks, CollectOptions(families=families, combine_locks=True), target)
    assert sorted(map(key, live)) == sorted(map(key, combined))
    apart = _live_rows(totals, locks, CollectOptions(families=families), target)
    assert len(apart) > len(live) and "locks_combined" not in apart[0]
