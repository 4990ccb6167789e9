"""lockprof compare and run sets, without root: synthetic run sets with known
differences, identical sets, single runs, mismatch warnings, the .lpset
format (round trip, corrupt files) and the bench/compare command lines'
one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import stat
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler import aggregate, recording, runset, schema
from profiler import compare as cmp
from profiler.capture import (
    CapturedCommand,
    OutputCapture,
    compile_throughput,
    parse_throughput,
)
from profiler.cli.main import main
from profiler.errors import LockprofError
from profiler.hist import slot_of
from profiler.recording import Recording
from profiler.runset import Run, RunSet

from .helpers import EMPTY_CALLERS, interval_row, intervals_frame

SRC_MMAP = schema.const("LP_SRC_MMAP_LOCK")
SRC_CONT = schema.const("LP_SRC_CONTENTION")
WRITE = schema.const("LP_LCB_WRITE")
READ = schema.const("LP_LCB_READ")
SPIN = schema.const("LP_LCB_SPIN")
NSLOTS = schema.const("LP_HIST_SLOTS")
MECHANISMS = [
    {"probe": "mmap_lock.start", "mechanism": "raw_tracepoint", "target": "x"},
    {"probe": "contention.begin", "mechanism": "raw_tracepoint", "target": "y"},
]


def _hist(prefix: str, count: int, each_ns: int) -> dict:
    slots = [0] * NSLOTS
    slots[slot_of(each_ns, NSLOTS)] = count
    return {
        f"{prefix}_count": count,
        f"{prefix}_total_ns": count * each_ns,
        f"{prefix}_max_ns": each_ns if count else 0,
        f"{prefix}_running_max_ns": each_ns if count else 0,
        f"{prefix}_slots": slots,
    }


def make_recording(
    writes: int,
    sys_s: float = 1.0,
    *,
    reads: int = 100,
    wait_ns: int = 200,
    hold_ns: int = 2000,
    spin_waits: int = 0,
    read_failures: int = 0,
    pid: int = 4242,
    mm: int = 0xFFFF888000100000,
    spin: int = 0xFFFF888000200040,
    kernel: str = "6.18.44",
    cpus: int = 2,
    command: tuple[str, ...] = ("/bin/work", "-n", "10"),
    comm: str = "work",
    mechanisms: list | None = None,
    exit_status: int = 0,
    lock_types: list[str] | None = None,
    caller: str = "zap_pte_range+0x99",
) -> Recording:
    """One run: the target's mmap_lock taken `writes` times for write (half of
    them downgraded, as munmap does), `reads` times for read, and optionally a
    contended spinlock. Addresses and pid vary per call, as in real runs."""
    rows = []
    if writes:
        rows.append(
            interval_row(
                mm,
                WRITE,
                SRC_MMAP,
                cpu=0,
                acquisitions=writes,
                releases=writes - writes // 2,
                downgrades=writes // 2,
                **_hist("wait", writes, wait_ns),
                **_hist("hold", writes, hold_ns),
            )
        )
    if reads:
        rows.append(
            interval_row(
                mm,
                READ,
                SRC_MMAP,
                cpu=1,
                acquisitions=reads,
                failures=read_failures,
                releases=reads + writes // 2,
                **_hist("wait", reads, wait_ns),
                **_hist("hold", reads + writes // 2, hold_ns),
            )
        )
    if spin_waits:
        rows.append(
            interval_row(
                spin, SPIN, SRC_CONT, cpu=1, contended=spin_waits, **_hist("wait", spin_waits, 5000)
            )
        )
    intervals = intervals_frame(rows)
    callers = pd.DataFrame(
        [
            {
                "lock": spin,
                "stack_id": 7,
                "flags": SPIN,
                "count": spin_waits,
                "total_ns": 1,
                "max_ns": 1,
            }
        ]
        if spin_waits
        else [],
        columns=EMPTY_CALLERS.columns,
    )
    stacks = {7: ["_raw_spin_lock+0x10", caller]}
    locks = aggregate.name_locks(intervals, {mm: (pid, comm)}, callers, stacks)
    meta = {
        "kernel": kernel,
        "cpus": cpus,
        "mode": "run",
        "target_pid": pid,
        "target": f"pid {pid} ({' '.join(command)})",
        "command": list(command),
        "exit_status": exit_status,
        "families": ["mmap_lock", "contention"],
        "lock_types": lock_types,
        "mechanisms": MECHANISMS if mechanisms is None else mechanisms,
        "threshold_ns": 100_000,
        "duration_s": 3.0,
        "stop_reason": "command exited with status 0",
        "lost_events": 0,
        "errors": {},
        "rusage": {"user_s": 0.5, "sys_s": sys_s, "elapsed_s": 3.0, "minor_faults": writes * 3},
    }
    return Recording(meta=meta, intervals=intervals, locks=locks)


def make_set(label: str, specs: list[dict], throughputs=None, **common) -> RunSet:
    runs = []
    for i, spec in enumerate(specs):
        rec = make_recording(
            pid=1000 + 17 * i + (0 if label == "before" else 500),
            mm=0xFFFF888000100000 + 0x1000 * i + (0 if label == "before" else 0x80000),
            **{**common, **spec},
        )
        tp = throughputs[i] if throughputs else None
        runs.append(Run(recording=rec, throughput=tp, stdout=f"{tp} records/s\n".encode()))
    return RunSet(label=label, runs=runs, command=list(runs[0].recording.meta["command"]))


def verdict(document: dict, metric: str, mode: str = "write", lock: str | None = None) -> dict:
    lock = lock or "mmap_lock (target work)"
    (entry,) = [
        v
        for v in document["verdicts"]
        if v["lock"] == lock and v["mode"] == mode and v["metric"] == metric
    ]
    return entry


def rusage_entry(document: dict, metric: str) -> dict:
    (entry,) = [e for e in document["rusage"] if e["metric"] == metric]
    return entry


BEFORE = [
    {"writes": 10_000, "sys_s": 1.20},
    {"writes": 10_100, "sys_s": 1.25},
    {"writes": 9_900, "sys_s": 1.24},
]
AFTER = [
    {"writes": 5_000, "sys_s": 1.10},
    {"writes": 5_050, "sys_s": 1.09},
    {"writes": 4_950, "sys_s": 1.11},
]


# -- the statistics -----------------------------------------------------------------


def test_known_difference_gives_the_expected_delta_and_significance():
    before = make_set("before", BEFORE, throughputs=[100.0, 102.0, 98.0])
    after = make_set("after", AFTER, throughputs=[190.0, 200.0, 210.0])
    doc = cmp.compare(before, after).document
    acq = verdict(doc, "acquisitions")
    assert acq["before"] == pytest.approx(10_000)
    assert acq["after"] == pytest.approx(5_000)
    assert acq["delta"] == pytest.approx(-5_000)
    assert acq["delta_pct"] == pytest.approx(-50.0)
    assert acq["significant"] is True
    assert acq["verdict"] == "significant decrease"
    assert acq["ci_low_pct"] < -50 < acq["ci_high_pct"] < 0
    assert acq["runs_before"] == acq["runs_after"] == 3
    assert sorted(acq["before_values"]) == [9_900, 10_000, 10_100]
    # Downgrades follow writes; hold time per acquisition did not change.
    assert verdict(doc, "downgrades")["delta_pct"] == pytest.approx(-50.0)
    assert verdict(doc, "hold_p99_ns")["delta_pct"] == pytest.approx(0.0)
    assert verdict(doc, "hold_p99_ns")["significant"] is False
    assert verdict(doc, "wait_total_ns")["delta_pct"] == pytest.approx(-50.0)
    # Reads did not change: no significant change on the read row.
    reads = verdict(doc, "acquisitions", mode="read")
    assert reads["delta_pct"] == pytest.approx(0.0)
    assert reads["significant"] is False
    assert reads["verdict"] == "no significant change"
    # The reader:writer ratio doubles.
    assert verdict(doc, "reader_writer_ratio")["delta_pct"] == pytest.approx(100.0, rel=0.02)
    # Per-CPU totals: writes were all on CPU 0.
    assert verdict(doc, "cpu0.acquisitions")["delta_pct"] == pytest.approx(-50.0)
    assert verdict(doc, "cpu1.acquisitions", mode="read")["delta_pct"] == pytest.approx(0.0)

    sys_time = rusage_entry(doc, "sys_s")
    assert sys_time["before"] == pytest.approx(1.23)
    assert sys_time["after"] == pytest.approx(1.10)
    assert sys_time["delta_pct"] == pytest.approx(-10.57, abs=0.01)
    assert sys_time["significant"] is True
    assert sys_time["process"] == "work"
    throughput = rusage_entry(doc, "throughput")
    assert throughput["delta_pct"] == pytest.approx(100.0)
    assert throughput["verdict"] == "significant increase"
    # The seed's headline is a line the tool prints.
    (line,) = [h for h in doc["headline"] if h.startswith("sys time:")]
    assert line.startswith("sys time: 1.23 s -> 1.1 s (-10.6%, 95% CI -")
    assert line.endswith("): significant decrease")


def test_a_difference_within_the_noise_is_not_significant():
    before = make_set("before", [{"writes": w} for w in (1000, 1400, 800, 1200)])
    after = make_set("after", [{"writes": w} for w in (1100, 900, 1300, 1050)])
    acq = verdict(cmp.compare(before, after).document, "acquisitions")
    assert acq["delta_pct"] == pytest.approx(-1.136, abs=0.01)  # 1100 -> 1087.5
    assert acq["ci_low_pct"] < 0 < acq["ci_high_pct"]
    assert acq["significant"] is False
    assert acq["verdict"] == "no significant change"


def test_identical_sets_give_no_significant_change_everywhere():
    specs = [
        {"writes": 1000, "sys_s": 1.0, "spin_waits": 5},
        {"writes": 1200, "sys_s": 1.3, "spin_waits": 9},
        {"writes": 1100, "sys_s": 1.1, "spin_waits": 7},
    ]
    doc = cmp.compare(make_set("before", specs), make_set("after", specs)).document
    entries = doc["verdicts"] + doc["rusage"]
    assert len(doc["verdicts"]) > 20
    for entry in entries:
        if entry["verdict"].startswith("too few samples for a p99"):  # 5-9 spin waits
            assert entry["metric"] == "wait_p99_ns" and entry["lock_class"] == "spinlock"
            assert entry["significant"] is None
            continue
        assert entry["significant"] is False, entry
        assert entry["verdict"] == "no significant change", entry
        assert entry["delta_pct"] == pytest.approx(0.0)
    assert doc["warnings"] == []
    # Different addresses and pids in every run, yet one identity per lock and mode.
    assert {(v["lock"], v["mode"]) for v in doc["verdicts"]} == {
        ("mmap_lock (target work)", "write"),
        ("mmap_lock (target work)", "read"),
        ("zap_pte_range+0x99", "exclusive"),
    }


def test_a_lock_missing_from_some_runs_counts_zero_there():
    before = make_set("before", [{"writes": 10, "spin_waits": 6}, {"writes": 10, "spin_waits": 0}])
    after = make_set("after", [{"writes": 10}, {"writes": 10}])
    spin = verdict(
        cmp.compare(before, after).document, "contended", "exclusive", "zap_pte_range+0x99"
    )
    assert spin["before_values"] == [6.0, 0.0]
    assert spin["after_values"] == [0.0, 0.0]
    assert spin["delta_pct"] == pytest.approx(-100.0)
    # Percentiles of a lock a run never saw are unknown there, not 0.
    wait = verdict(
        cmp.compare(before, after).document, "wait_p99_ns", "exclusive", "zap_pte_range+0x99"
    )
    assert wait["runs_before"] == 1 and wait["runs_after"] == 0
    assert wait["verdict"] == "not measured on both sides"


def test_a_caller_the_change_moved_is_said_not_merged():
    """A patched function's call sites move: the same spinlock, named by
    its caller, is zap_pte_range+0x99 before and +0xa1 after, and reads as
    gone and new. The warning says so; the verdicts keep them apart (two
    offsets of one function may be two locks)."""
    before = make_set("before", [{"writes": 10, "spin_waits": 6}] * 3)
    after = make_set("after", [{"writes": 10, "spin_waits": 6, "caller": "zap_pte_range+0xa1"}] * 3)
    doc = cmp.compare(before, after).document
    assert doc["warnings"] == [
        "zap_pte_range+0x99 (before only) and zap_pte_range+0xa1 (after only): call sites "
        "in zap_pte_range at other offsets, perhaps one lock whose caller the change moved; "
        "compared as different locks"
    ]
    assert verdict(doc, "contended", "exclusive", "zap_pte_range+0x99")["after_values"] == [0] * 3
    assert verdict(doc, "contended", "exclusive", "zap_pte_range+0xa1")["before_values"] == [0] * 3
    # On both sides, or another function's: nothing to say
    same = make_set("after", [{"writes": 10, "spin_waits": 6}] * 3)
    other = make_set("after", [{"writes": 10, "spin_waits": 6, "caller": "do_wp_page+0x99"}] * 3)
    assert cmp.compare(before, same).document["warnings"] == []
    assert cmp.compare(before, other).document["warnings"] == []


def test_single_run_per_side_gives_no_confidence():
    before = make_set("before", [{"writes": 10_000, "sys_s": 1.23}])
    after = make_set("after", [{"writes": 5_000, "sys_s": 1.10}])
    doc = cmp.compare(before, after).document
    acq = verdict(doc, "acquisitions")
    assert acq["delta_pct"] == pytest.approx(-50.0)
    assert acq["significant"] is None
    assert acq["ci_low_pct"] is None and acq["ci_high_pct"] is None
    assert acq["verdict"] == "too few runs to judge (1 per side; need at least 3)"
    assert doc["confidence"] == "none: too few runs to judge (1 per side; need at least 3)"
    (line,) = [h for h in doc["headline"] if h.startswith("sys time")]
    assert line == (
        "sys time: 1.23 s -> 1.1 s (-10.6%): too few runs to judge (1 per side; need at least 3)"
    )


def test_two_runs_per_side_are_too_few_to_call_significant():
    """Two runs a side that do not overlap: the bootstrap's "interval" would be
    their whole range and exclude 0, a verdict that sides with no change at all
    reach one time in three."""
    before = make_set(
        "before", [{"writes": 10_000, "sys_s": 1.20}, {"writes": 10_100, "sys_s": 1.25}]
    )
    after = make_set("after", [{"writes": 16_800, "sys_s": 2.0}, {"writes": 17_000, "sys_s": 2.1}])
    doc = cmp.compare(before, after).document
    acq = verdict(doc, "acquisitions")
    assert acq["delta_pct"] == pytest.approx(68.16, abs=0.01)  # the difference is still given
    assert acq["significant"] is None and acq["ci_low"] is None and acq["ci_high"] is None
    assert acq["verdict"] == "too few runs to judge (2 per side; need at least 3)"
    assert not any(v["significant"] for v in doc["verdicts"] + doc["rusage"])
    assert doc["confidence"] == "none: too few runs to judge (2 per side; need at least 3)"
    assert doc["method"]["min_runs"] == 3
    (line,) = [h for h in doc["headline"] if h.startswith("sys time")]
    assert line.endswith("(+67.3%): too few runs to judge (2 per side; need at least 3)")
    # Uneven sides say which is short.
    three = make_set("after", [{"writes": w} for w in (16_800, 17_000, 16_900)])
    acq = verdict(cmp.compare(before, three).document, "acquisitions")
    assert acq["verdict"] == "too few runs to judge (2 before, 3 after; need at least 3 per side)"
    # Three runs a side are judged.
    three_before = make_set("before", [{"writes": w} for w in (10_000, 10_100, 9_900)])
    acq = verdict(cmp.compare(three_before, three).document, "acquisitions")
    assert acq["significant"] is True and acq["verdict"] == "significant increase"


def test_the_terminal_says_too_few_runs(tmp_path, capsys):
    before = make_set("before", [{"writes": 10_000}, {"writes": 10_100}])
    after = make_set("after", [{"writes": 16_800}, {"writes": 17_000}])
    paths = [runset.save(s, tmp_path / f"{s.label}.lpset") for s in (before, after)]
    assert main(["compare", str(paths[0]), str(paths[1])]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "noise: none: too few runs to judge (2 per side; need at least 3)" in out
    assert "significant increase" not in out


def test_the_bootstrap_is_deterministic_and_states_its_seed():
    before = make_set("before", [{"writes": w} for w in (1000, 1300, 900, 1111, 1234, 987)])
    after = make_set("after", [{"writes": w} for w in (800, 1250, 700, 1001, 1100, 950)])
    first = cmp.compare(before, after).document
    again = cmp.compare(before, after).document
    assert json.dumps(first["verdicts"]) == json.dumps(again["verdicts"])
    assert first["method"]["seed"] == cmp.SEED
    assert first["method"]["name"] == "percentile bootstrap"
    other = cmp.compare(before, after, seed=cmp.SEED + 1).document
    assert other["method"]["seed"] == cmp.SEED + 1
    assert (
        verdict(other, "acquisitions")["ci_low_pct"] != verdict(first, "acquisitions")["ci_low_pct"]
    )


def test_bootstrap_interval_covers_the_spread():
    low, high, low_pct, high_pct = cmp.bootstrap_ci([10, 12, 14], [20, 22, 24])
    # Resampled means range over [10, 14] and [20, 24]: the difference over [6, 14].
    assert 6 <= low < 10 < high <= 14
    assert low_pct is not None and high_pct is not None
    assert 6 / 14 * 100 <= low_pct < 10 / 12 * 100 < high_pct <= 14 / 10 * 100
    # Zero before: an absolute interval, no percent.
    low, high, low_pct, high_pct = cmp.bootstrap_ci([0, 0, 1], [5, 6, 7])
    assert low > 0 and low_pct is None and high_pct is None


def test_percent_edge_cases():
    assert cmp.percent(0, 0) == 0.0
    assert cmp.percent(0, 5) is None
    assert cmp.percent(None, 5) is None
    assert cmp.percent(200, 150) == pytest.approx(-25.0)


def test_headline_formats():
    entry = {
        "name": "sys time",
        "metric": "sys_s",
        "unit": "s",
        "before": 1.23,
        "after": 1.10,
        "delta": -0.13,
        "delta_pct": -10.569,
        "ci_low_pct": -14.2,
        "ci_high_pct": -7.0,
        "ci_low": -0.17,
        "ci_high": -0.09,
        "significant": True,
        "verdict": "significant decrease",
    }
    assert cmp.headline(entry) == (
        "sys time: 1.23 s -> 1.1 s (-10.6%, 95% CI -14.2% to -7.0%): significant decrease"
    )


# -- lock identity -----------------------------------------------------------------


@pytest.mark.parametrize(
    "row,target,expected",
    [
        (
            {"lock_class": "mmap_lock", "owner_pid": 7, "owner_comm": "ebizzy"},
            7,
            "mmap_lock (target ebizzy)",
        ),
        ({"lock_class": "mmap_lock", "owner_pid": 8, "owner_comm": "cat"}, 7, "mmap_lock (cat)"),
        (
            {"lock_class": "mmap_lock", "owner_pid": None, "owner_comm": None},
            7,
            "mmap_lock (owner unknown)",
        ),
        ({"lock_class": "rwsem", "lock": "do_mmap+0x1a (0xffff888001234000)"}, 7, "do_mmap+0x1a"),
        ({"lock_class": "mutex", "lock": "mutex 0xffff888001234000"}, 7, "mutex (unnamed)"),
        ({"lock_class": "spinlock", "lock": "tasklist_lock"}, 7, "tasklist_lock"),
    ],
)
def test_lock_identity_leaves_out_addresses_and_pids(row, target, expected):
    assert cmp.lock_identity(row, target)[0] == expected


def test_the_pre_exec_mm_of_run_is_kept_apart_from_the_command(rec):
    """Under `run`, the target pid owned lockprof's pre-exec mm for a moment:
    the command's mmap_lock is matched only with the command's."""
    figures = cmp.run_figures(rec)
    labels = {key[0] for key in figures.locks}
    assert "mmap_lock (target mmapcount)" in labels
    assert "mmap_lock (target lockprof)" in labels
    command = figures.locks[("mmap_lock (target mmapcount)", "mmap_lock", "write")]
    assert command["acquisitions"] == 2030


# -- mismatch guard -----------------------------------------------------------------


def test_mismatches_are_warned_about():
    before = make_set("before", [{"writes": 10}, {"writes": 10}])
    after = make_set(
        "after",
        [{"writes": 10}, {"writes": 10}],
        kernel="6.18.45-rw_mutex",
        cpus=4,
        command=("/bin/work", "-n", "10", "-R"),
        mechanisms=[{"probe": "mmap_lock.start", "mechanism": "tracepoint", "target": "x"}],
    )
    warnings = cmp.compare(before, after).document["warnings"]
    text = "\n".join(warnings)
    assert "kernel release differs: before 6.18.44, after 6.18.45-rw_mutex" in text
    assert "expected when comparing a kernel patch" in text
    assert "CPU count differs: before 2, after 4" in text
    assert "command line differs: before /bin/work -n 10, after /bin/work -n 10 -R" in text
    assert "mechanisms differs" in text
    assert len(warnings) == 4


def test_different_lock_types_are_warned_about():
    before = make_set("before", [{"writes": 10}])
    after = make_set("after", [{"writes": 10}], lock_types=["rwsem", "mutex"])
    warnings = cmp.compare(before, after).document["warnings"]
    assert warnings == [
        "--lock-types differs: before every type, after rwsem,mutex (the sides did not "
        "trace the same lock types' contention)"
    ]


def test_a_lock_type_one_side_did_not_trace_is_not_measured_there():
    """Before traced rwsem contention only (--lock-types rwsem): its runs
    know nothing of spinlocks, so the after side's spinlock is no
    "significant increase" from 0."""
    spins = [{"writes": 10, "spin_waits": n} for n in (40, 50, 60)]
    before = make_set("before", [{"writes": 10}] * 3, lock_types=["rwsem"])
    after = make_set("after", spins)
    doc = cmp.compare(before, after).document
    spin = verdict(doc, "contended", "exclusive", "zap_pte_range+0x99")
    assert spin["before_values"] == [] and spin["after_values"] == [40.0, 50.0, 60.0]
    assert spin["verdict"] == cmp.NOT_MEASURED
    # Without contention probes at all (--no-contention), likewise.
    before = make_set("before", [{"writes": 10}] * 3)
    for run in before.runs:
        run.recording.meta["families"] = ["mmap_lock"]
    spin = verdict(
        cmp.compare(before, after).document, "wait_total_ns", "exclusive", "zap_pte_range+0x99"
    )
    assert spin["verdict"] == cmp.NOT_MEASURED
    # A side that traced spinlocks and saw none still counts 0.
    before = make_set("before", [{"writes": 10}] * 3, lock_types=["spinlock"])
    spin = verdict(
        cmp.compare(before, after).document, "contended", "exclusive", "zap_pte_range+0x99"
    )
    assert spin["before_values"] == [0.0, 0.0, 0.0]
    assert spin["verdict"] == "significant increase"


def test_a_cpu_a_side_does_not_have_is_not_measured_there():
    """Before ran on 2 CPUs, after on 4: cpu3's figures are unknown before,
    not 0 (a "significant increase" from a CPU that did not exist)."""
    before = make_set("before", [{"writes": 10}] * 3)
    after = make_set("after", [{"writes": 10}] * 3, cpus=4)
    for run in after.runs:
        intervals = run.recording.intervals
        intervals.loc[intervals["cpu"] == 1, "cpu"] = 3
    doc = cmp.compare(before, after).document
    cpu3 = verdict(doc, "cpu3.acquisitions", "read")
    assert cpu3["runs_before"] == 0 and cpu3["after_values"] == [100.0] * 3
    assert cpu3["verdict"] == cmp.NOT_MEASURED
    # cpu1 exists on both machines: after's idle cpu1 is a real 0.
    cpu1 = verdict(doc, "cpu1.acquisitions", "read")
    assert cpu1["after_values"] == [0.0] * 3 and cpu1["verdict"] == "significant decrease"


def test_different_collection_times_are_warned_about():
    """`run -d 3` against `run -d 5` of one command: every count and total
    differs by two thirds with no change to the locks."""
    before = make_set("before", [{"writes": 10}] * 3)
    after = make_set("after", [{"writes": 10}] * 3)
    for run in after.runs:
        run.recording.meta["duration_s"] = 5.0
    # Each command ran to its end: the same work in less time is no mismatch.
    assert cmp.compare(before, after).document["warnings"] == []
    for run in before.runs + after.runs:
        run.recording.meta["stop_reason"] = "duration 3s reached"
    warnings = cmp.compare(before, after).document["warnings"]
    assert warnings == [
        "collection time differs: before 3 s, after 5 s (mean per run); counts and wait "
        "totals are per run, not per second, so they differ by that much for this alone"
    ]
    for run in after.runs:
        run.recording.meta["duration_s"] = 3.2  # within 10%: the usual jitter
    assert cmp.compare(before, after).document["warnings"] == []


def test_differences_within_a_side_and_failed_runs_are_warned_about():
    before = make_set(
        "before", [{"writes": 10}, {"writes": 10, "kernel": "6.19.0", "exit_status": 1}]
    )
    after = make_set("after", [{"writes": 10}, {"writes": 10}])
    warnings = cmp.compare(before, after).document["warnings"]
    assert "kernel release differs between the before runs: 6.18.44; 6.19.0" in warnings
    assert "before: run 2 exited 1" in warnings


def test_cli_prints_warnings_on_stderr_and_in_json(tmp_path, capsys):
    before = make_set("before", [{"writes": 10}])
    after = make_set("after", [{"writes": 10}], kernel="6.19.0")
    runset.save(before, tmp_path / "b.lpset")
    runset.save(after, tmp_path / "a.lpset")
    code = main(["compare", str(tmp_path / "b.lpset"), str(tmp_path / "a.lpset"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(out)
    assert any("kernel release differs" in w for w in document["warnings"])
    assert "lockprof: warning: kernel release differs" in err


def _profiling(runset: RunSet, mode: str) -> RunSet:
    """The set as if recorded system-wide (record -a) or attached (attach)."""
    for run in runset.runs:
        meta = run.recording.meta
        meta["mode"] = mode
        if mode == "system":
            meta.update(target="the whole system", target_pid=None, command=[])
    if mode == "system":
        runset.command = []
    return runset


def test_a_system_wide_side_against_a_command_is_warned_about(tmp_path, capsys):
    """compare rec1.lpr (record -a) run1.lpr (run) gave no warning, and
    headed the process lines "the whole system (the profiled process):"."""
    before = _profiling(make_set("before", [{"writes": 10}] * 3), "system")
    after = make_set("after", [{"writes": 10}] * 3)
    doc = cmp.compare(before, after).document
    assert (doc["before"]["target_mode"], doc["after"]["target_mode"]) == ("system", "run")
    (warning,) = doc["warnings"]  # no "command line differs: before (none)" besides
    assert warning == (
        "profiled target differs: before the whole system (record -a), after a command "
        "lockprof started (run, bench); the user, sys, elapsed time and minor faults before "
        "are the whole system's, after the command's and its reaped children's; the before "
        "side counts every process's locks, the after side the target's only: the sides do "
        "not measure the same thing"
    )
    assert cmp.process_heading(doc) == "before the whole system, after work (the profiled process)"
    paths = [runset.save(s, tmp_path / f"{s.label}.lpset") for s in (before, after)]
    assert main(["compare", *map(str, paths)]) == 0
    out, err = capsys.readouterr()
    assert "lockprof: warning: profiled target differs: before the whole system" in err
    assert "\nbefore the whole system, after work (the profiled process):\n" in out
    assert "before: before (3 runs, kernel 6.18.44, 2 CPUs) the whole system (record -a)" in out
    assert "(the profiled process)" not in out.replace("after work (the profiled process)", "")
    # The other way round.
    doc = cmp.compare(after, before).document
    assert "the after side counts every process's locks" in doc["warnings"][0]


def test_the_page_names_each_sides_target_and_metrics_as_the_terminal_does():
    from dashboards import compare as page

    before = _profiling(
        make_set("before", [{"writes": 10, "spin_waits": n} for n in (0, 6, 8)]), "system"
    )
    after = make_set("after", [{"writes": 10, "spin_waits": n} for n in (20, 22, 24)])
    result = cmp.compare(before, after)
    html = page.build(result)
    assert "<h2>The profiled targets</h2>" in html
    assert "before the whole system, after work (the profiled process): the mean" in html
    assert "the whole system (record -a)</code>" in html  # the before side's line
    table = page.verdict_table(result.document)
    assert "<td>the whole system -&gt; work (process)</td><td></td><td>sys time</td>" in table
    assert "<td>wait total</td>" in table and "<td>cpu1 contended</td>" in table
    assert "wait_total_ns" not in table and "cpu1." not in table
    assert '<td class="num">n/a</td>' in table and "n/a: no percent CI" in table
    # One kind of target: as before.
    same = page.verdict_table(cmp.compare(after, after).document)
    assert "<td>work (process)</td><td></td><td>sys time</td>" in same
    assert "n/a: no percent CI" not in same
    assert page.process_title(cmp.compare(after, after).document) == "The profiled process"
    system = cmp.compare(before, before).document
    assert page.process_title(system) == "The whole system"
    assert "<td>the whole system</td><td></td><td>sys time</td>" in page.verdict_table(system)


def test_an_attached_process_against_a_command_is_warned_about():
    before = _profiling(make_set("before", [{"writes": 10}] * 3), "attach")
    after = make_set("after", [{"writes": 10}] * 3)
    (warning,) = cmp.compare(before, after).document["warnings"]
    assert warning.startswith(
        "profiled target differs: before a running process (attach), after a command "
        "lockprof started (run, bench); the user, sys, elapsed time and minor faults before "
        "are the process's own (over the collection window), after the command's"
    )
    assert "every process's locks" not in warning


def test_sides_of_one_kind_of_target_are_not_warned_about():
    for mode, heading in (
        ("system", "the whole system"),
        ("attach", "work (the profiled process)"),
    ):
        before = _profiling(make_set("before", [{"writes": 10}] * 3), mode)
        after = _profiling(make_set("after", [{"writes": 10}] * 3), mode)
        doc = cmp.compare(before, after).document
        assert doc["warnings"] == [] and cmp.process_heading(doc) == heading
    # Recordings that do not say what they profiled are not taken to differ.
    before = make_set("before", [{"writes": 10}] * 3)
    after = _profiling(make_set("after", [{"writes": 10}] * 3), "system")
    for run in before.runs:
        del run.recording.meta["mode"]
    doc = cmp.compare(before, after).document
    assert not [w for w in doc["warnings"] if w.startswith("profiled target")]
    assert doc["before"]["target_mode"] is None


def test_runs_of_one_side_that_profiled_different_targets_are_warned_about():
    before = make_set("before", [{"writes": 10}] * 3)
    before.runs[1].recording.meta["mode"] = "attach"
    warnings = cmp.compare(before, make_set("after", [{"writes": 10}] * 3)).document["warnings"]
    assert warnings == [
        "profiled target differs between the before runs: a command lockprof started "
        "(run, bench); a running process (attach)"
    ]


def _warned_sets(tmp_path) -> list[str]:
    before = make_set("before", [{"writes": 10}])
    after = make_set("after", [{"writes": 10}], kernel="6.19.0")
    return [str(runset.save(s, tmp_path / f"{s.label}.lpset")) for s in (before, after)]


def test_each_warning_is_printed_once_on_a_terminal(tmp_path, capsys, monkeypatch):
    """Each warning was printed twice on the terminal: on stderr and as a
    "!" line of the report. On a terminal, stderr alone has it."""
    import rich.console

    from profiler import render

    def terminal(stderr: bool = False) -> rich.console.Console:
        return rich.console.Console(
            file=sys.stderr if stderr else sys.stdout, force_terminal=True, color_system=None
        )

    monkeypatch.setattr(render, "console", terminal)
    assert main(["compare", *_warned_sets(tmp_path)]) == 0
    out, err = capsys.readouterr()
    screen = out + err
    assert screen.count("kernel release differs") == 1
    assert "lockprof: warning: kernel release differs" in err
    assert "sys time:" in out  # the report is there, without the warning


def test_a_report_that_is_not_on_the_terminal_keeps_its_warnings(tmp_path, capsys):
    """Redirected (stdout a file or pipe, as under capsys), the report has
    the warnings too, so that a saved report carries them; stderr still
    says them once."""
    assert main(["compare", *_warned_sets(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.count("kernel release differs") == 1
    assert "warning: kernel release differs: before 6.18.44, after 6.19.0" in out
    assert "! " not in out
    assert err.count("kernel release differs") == 1


# -- the JSON document and the terminal ---------------------------------------------


def test_json_document_shape(tmp_path, capsys):
    before = make_set("before", BEFORE, throughputs=[100.0, 102.0, 98.0])
    after = make_set("after", AFTER, throughputs=[190.0, 200.0, 210.0])
    runset.save(before, tmp_path / "before.lpset")
    runset.save(after, tmp_path / "after.lpset")
    code = main(
        ["compare", str(tmp_path / "before.lpset"), str(tmp_path / "after.lpset"), "--json"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(out)
    assert document["compare_version"] == 1
    assert document["before"]["runs"] == 3 and document["before"]["label"] == "before"
    required = {
        "lock",
        "mode",
        "metric",
        "before",
        "after",
        "delta_pct",
        "ci_low_pct",
        "ci_high_pct",
        "significant",
    }
    for entry in document["verdicts"]:
        assert required <= set(entry)
    for entry in document["rusage"]:
        assert required - {"lock", "mode"} <= set(entry)
    assert {e["metric"] for e in document["rusage"]} == {
        "user_s",
        "sys_s",
        "elapsed_s",
        "minor_faults",
        "throughput",
    }
    assert document["method"]["seed"] == cmp.SEED


def test_terminal_output_shows_headline_and_verdicts(tmp_path, capsys):
    before = make_set("before", BEFORE)
    after = make_set("after", AFTER)
    runset.save(before, tmp_path / "before.lpset")
    runset.save(after, tmp_path / "after.lpset")
    code = main(["compare", str(tmp_path / "before.lpset"), str(tmp_path / "after.lpset")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "sys time: 1.23 s -> 1.1 s (-10.6%, 95% CI" in out
    assert "mmap_lock (target work)" in out
    assert "significant decrease" in out
    assert "seed 20070517" in out


def test_compare_writes_an_html_page(tmp_path, capsys):
    hostile = "<img src=x onerror=alert(1)>"
    before = make_set("before", BEFORE, comm=hostile)
    after = make_set("after", AFTER, comm=hostile)
    runset.save(before, tmp_path / "before.lpset")
    runset.save(after, tmp_path / "after.lpset")
    page = tmp_path / "compare.html"
    code = main(
        ["compare", str(tmp_path / "before.lpset"), str(tmp_path / "after.lpset"), "-o", str(page)]
    )
    _out, err = capsys.readouterr()
    assert code == 0, err
    html = page.read_text()
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert hostile not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "sys time: 1.23 s -&gt; 1.1 s (-10.6%, 95% CI" in html
    assert 'id="verdict-table"' in html
    assert "http://" not in html.split("<script", 1)[0]  # the head loads nothing


# -- run sets ---------------------------------------------------------------------


def test_lpset_round_trip(tmp_path):
    original = make_set("before", BEFORE, throughputs=[100.5, 101.0, 99.5])
    original.throughput_regex = r"(\d+) records/s"
    path = runset.save(original, tmp_path / "x.lpset")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = runset.load(path)
    assert loaded.label == "before"
    assert loaded.command == ["/bin/work", "-n", "10"]
    assert loaded.throughput_regex == r"(\d+) records/s"
    assert [r.throughput for r in loaded.runs] == [100.5, 101.0, 99.5]
    assert [r.stdout for r in loaded.runs] == [r.stdout for r in original.runs]
    for a, b in zip(original.runs, loaded.runs, strict=True):
        assert a.rusage == b.rusage
        assert a.exit_status == b.exit_status == 0
        pd.testing.assert_frame_equal(
            a.recording.intervals.reset_index(drop=True),
            b.recording.intervals,
            check_dtype=False,
        )
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert manifest["format"] == "lockprof-runset"
        assert manifest["schema_version"] == 1
        assert [r["throughput"] for r in manifest["runs"]] == [100.5, 101.0, 99.5]
        assert manifest["runs"][0]["rusage"]["sys_s"] == 1.20
        # Each run's recording is a plain .lpr that `lockprof show` reads.
        (tmp_path / "one.lpr").write_bytes(archive.read(manifest["runs"][0]["recording"]))
    assert recording.load(tmp_path / "one.lpr").meta["rusage"]["sys_s"] == 1.20
    # The same comparison from the file as from memory.
    after = make_set("after", AFTER)
    assert (
        cmp.compare(loaded, after).document["verdicts"]
        == cmp.compare(original, after).document["verdicts"]
    )


def test_a_single_recording_is_a_side_of_one_run(recording_path):
    side = runset.load_side(recording_path)
    assert len(side.runs) == 1
    assert side.label == "mmapcount-1000"
    assert side.runs[0].throughput is None
    doc = cmp.compare(side, side).document
    assert doc["confidence"].startswith("none")
    assert verdict(doc, "acquisitions", lock="mmap_lock (target mmapcount)")["before"] == 2030


def _zip(path: Path, members: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _good_manifest(**changes) -> str:
    manifest = runset.manifest(make_set("x", [{"writes": 1}]))
    manifest.update(changes)
    return json.dumps(manifest)


@pytest.fixture
def good_lpr_bytes() -> bytes:
    return recording.dumps(make_recording(10))


@pytest.mark.parametrize(
    "members,message",
    [
        (None, "not a lockprof run set or recording"),
        ({"other.txt": "x"}, "not a lockprof run set or recording"),
        ({"manifest.json": "{not json"}, "manifest.json is not JSON"),
        ({"manifest.json": json.dumps({"format": "something"})}, "not a lockprof run set"),
        ({"manifest.json": _good_manifest(schema_version=99)}, "newer than this lockprof reads"),
        ({"manifest.json": _good_manifest(schema_version="1")}, "no valid schema version"),
        ({"manifest.json": _good_manifest(runs=[])}, "lists no runs"),
        ({"manifest.json": _good_manifest(runs=["x"])}, "runs are not objects"),
        ({"manifest.json": _good_manifest(label=None)}, "has no label"),
        ({"manifest.json": _good_manifest()}, "runs/001.lpr is missing"),
        (
            {"manifest.json": _good_manifest(), "runs/001.lpr": b"garbage"},
            "runs/001.lpr: not a lockprof recording",
        ),
    ],
)
def test_corrupt_lpset_is_one_line_error(tmp_path, members, message):
    path = tmp_path / "bad.lpset"
    if members is None:
        path.write_bytes(b"this is not a zip file at all")
    else:
        _zip(path, members)
    with pytest.raises(LockprofError) as info:
        runset.load_side(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("throughput", "problem"),
    [("fast", "is not a number"), (float("nan"), "is not a finite number"),
     (float("inf"), "is not a finite number")],
)  # fmt: skip
def test_bad_throughput_in_manifest_is_one_line_error(
    tmp_path, good_lpr_bytes, throughput, problem
):
    """NaN and Infinity (JSON's extensions) were dropped without a word."""
    manifest = json.loads(_good_manifest())
    manifest["runs"][0]["throughput"] = throughput
    path = _zip(
        tmp_path / "bad.lpset",
        {"manifest.json": json.dumps(manifest), "runs/001.lpr": good_lpr_bytes},
    )
    with pytest.raises(LockprofError, match=f"run 1 throughput {problem}"):
        runset.load(path)


def test_truncated_lpset_is_one_line_error(tmp_path):
    good = runset.save(make_set("before", BEFORE), tmp_path / "good.lpset").read_bytes()
    for cut in (len(good) // 3, len(good) - 30):
        path = tmp_path / f"cut{cut}.lpset"
        path.write_bytes(good[:cut])
        with pytest.raises(LockprofError) as info:
            runset.load_side(path)
        assert "\n" not in str(info.value)
        assert str(info.value).startswith(f"{path}: ")
        assert "truncated or damaged" in str(info.value)
    # Cut inside the set's own directory, zipfile would find the last run's
    # (a stored zip) and read a single recording: the set is refused instead.
    path = tmp_path / "cut.lpset"
    path.write_bytes(good[:-30])
    with pytest.raises(LockprofError, match="corrupt run set: truncated or damaged"):
        runset.load_side(path)
    with pytest.raises(LockprofError, match="corrupt run set: truncated or damaged"):
        runset.load(path)


def test_empty_set_is_refused(tmp_path):
    with pytest.raises(LockprofError, match="at least one run"):
        runset.save(RunSet(label="x"), tmp_path / "x.lpset")


def test_save_failure_keeps_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(LockprofError, match="data kept in"):
        runset.save(make_set("x", [{"writes": 1}]), tmp_path / "missing-dir" / "x.lpset")


# -- command lines ------------------------------------------------------------------


def _one_line(code: int, err: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(("lockprof: ", "lockprof bench: ")), lines[0]
    return lines[0]


def test_compare_missing_file_is_one_line(tmp_path, capsys, recording_path):
    code = main(["compare", str(tmp_path / "nope.lpset"), str(recording_path)])
    assert "no such file" in _one_line(code, capsys.readouterr().err)


def test_compare_corrupt_set_is_one_line(tmp_path, capsys, recording_path):
    bad = tmp_path / "bad.lpset"
    bad.write_bytes(b"PK\x03\x04 but not really")
    code = main(["compare", str(recording_path), str(bad)])
    assert "bad.lpset" in _one_line(code, capsys.readouterr().err)


def test_compare_unwritable_html_is_one_line(tmp_path, capsys, recording_path):
    code = main(
        ["compare", str(recording_path), str(recording_path), "-o", str(tmp_path / "no" / "c.html")]
    )
    assert "does not exist" in _one_line(code, capsys.readouterr().err)


@pytest.mark.parametrize("runs", ["0", "-2"])
def test_bench_zero_runs_is_one_line(tmp_path, capsys, runs):
    code = main(["bench", "--runs", runs, "-o", str(tmp_path / "x.lpset"), "--", "true"])
    line = _one_line(code, capsys.readouterr().err)
    assert line.startswith(f"lockprof bench: --runs: {runs} is not in the range 1<=x<=1000")
    assert not (tmp_path / "x.lpset").exists()


def test_bench_command_not_found_is_one_line(tmp_path, capsys):
    code = main(["bench", "-o", str(tmp_path / "x.lpset"), "--", "no-such-command-lockprof"])
    assert _one_line(code, capsys.readouterr().err) == (
        "lockprof: command not found: no-such-command-lockprof"
    )
    code = main(["bench", "-o", str(tmp_path / "x.lpset"), "--", str(tmp_path / "missing")])
    assert "command not found" in _one_line(code, capsys.readouterr().err)
    code = main(["bench", "-o", str(tmp_path / "x.lpset"), "--", str(tmp_path)])
    assert "not executable" in _one_line(code, capsys.readouterr().err)


def test_bench_bad_regex_and_output_are_one_line(tmp_path, capsys):
    code = main(["bench", "--throughput-regex", "(", "-o", str(tmp_path / "x.lpset"), "--", "true"])
    assert "--throughput-regex" in _one_line(code, capsys.readouterr().err)
    code = main(["bench", "-o", str(tmp_path / "no" / "x.lpset"), "--", "true"])
    assert "does not exist" in _one_line(code, capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the privilege error of a normal user")
def test_bench_without_privileges_is_one_line(tmp_path, capsys):
    code = main(["bench", "-o", str(tmp_path / "x.lpset"), "--", "true"])
    assert "needs root" in _one_line(code, capsys.readouterr().err)


# -- capturing stdout and throughput -------------------------------------------------


@pytest.mark.parametrize(
    "pattern,text,expected",
    [
        (r"(\d+) records/s", "1 records in 3 s\n12345 records/s\n", 12345.0),
        (r"(\d+) records/s", "5 records/s\n7 records/s\n", 7.0),  # the last match
        (r"records/s", "1,234.5 records/s\n", None),  # no number inside the match
        (r"[\d,.]+ records/s", "1,234.5 records/s\n", 1234.5),
        (r"rate=(\S+)", "rate=fast", None),
        (r"(\d+) ops", "nothing here", None),
        (r"rate=(\S+)", "rate=1e999", None),  # no finite number: no throughput
    ],
)
def test_parse_throughput(pattern, text, expected):
    assert parse_throughput(compile_throughput(pattern), text) == expected


def test_captured_command_keeps_and_echoes_stdout():
    """The command's stdout goes to the capture (and the echo), not to ours."""
    echo = io.BytesIO()
    capture = OutputCapture(echo, cap=1 << 20)
    target = CapturedCommand(
        [sys.executable, "-c", "import sys; print('42 records/s'); print('x' * 100000)"],
        capture.write_fd,
    )
    capture.start()
    target.begin()
    while target.poll() is None:
        pass
    output = capture.finish()
    assert target.exit_status == 0
    assert output.startswith(b"42 records/s\n")
    assert len(output) == len("42 records/s\n") + 100001
    assert echo.getvalue() == output
    assert not capture.truncated
    assert parse_throughput(compile_throughput(r"(\d+) records/s"), output.decode()) == 42.0


def test_capture_is_capped():
    capture = OutputCapture(None, cap=1000)
    target = CapturedCommand([sys.executable, "-c", "print('y' * 5000)"], capture.write_fd)
    capture.start()
    target.begin()
    while target.poll() is None:
        pass
    output = capture.finish()
    assert output == b"y" * 1000
    assert capture.truncated


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")


def _started(path: Path) -> str:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().endswith("\n"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return path.read_text()


def _captured(argv: list[str]) -> tuple[OutputCapture, CapturedCommand]:
    """bench's target for argv, started, with its output captured."""
    capture = OutputCapture(None, cap=1 << 20)
    target = CapturedCommand(argv, capture.write_fd)
    capture.start()
    target.begin()
    return capture, target


def test_a_bench_runs_command_still_running_at_the_end_is_stopped_and_reaped(tmp_path):
    """bench -d: the command (and what it forked, which holds the capture
    pipe) is stopped when collection stops, SIGTERM first, and reaped; it
    was left running into the next run, a zombie once it ended, and the
    capture waited its 5 s timeout for the pipe to close."""
    pidfile = tmp_path / "child"
    script = f"sleep 60 & echo $!; echo $! > {pidfile}; sleep 60; wait"
    capture, target = _captured(["sh", "-c", script])
    child = int(_started(pidfile))
    try:
        target.end()
        started = time.monotonic()
        output = capture.finish()
        assert time.monotonic() - started < 1  # the pipe closed: no 5 s wait
        assert int(output) == child and not _alive(child)
        assert (target.exit_status, target.exit_signal) == (128 + signal.SIGTERM, "SIGTERM")
        assert target.ended_by_lockprof
        with pytest.raises(ChildProcessError):
            os.waitpid(target.tgid, os.WNOHANG)  # reaped, no zombie left
        assert target.rusage()["elapsed_s"] > 0
    finally:
        for pid in (child, target.tgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            target.wait()


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(monkeypatch, tmp_path):
    monkeypatch.setattr(CapturedCommand, "STOP_GRACE_S", 0.2)
    ready = tmp_path / "ready"
    script = f"trap '' TERM; echo > {ready}; while :; do sleep 0.05; done"
    capture, target = _captured(["sh", "-c", script])
    _started(ready)
    started = time.monotonic()
    target.end()
    assert 0.2 <= time.monotonic() - started < 1.5
    assert (target.exit_status, target.exit_signal) == (128 + signal.SIGKILL, "SIGKILL")
    assert target.ended_by_lockprof
    capture.finish(timeout=2)


def test_a_command_that_exits_by_itself_is_not_said_to_be_stopped():
    capture, target = _captured(["true"])
    while target.poll() is None:
        time.sleep(0.01)
    target.end()
    capture.finish()
    assert (target.exit_status, target.ended_by_lockprof) == (0, False)


def test_a_stopped_run_is_no_failure():
    """bench's run line and table say "(stopped)" for a command lockprof
    stopped at -d, and neither bench nor compare warns of its 143."""
    from profiler.cli import bench

    before = make_set("before", BEFORE)
    after = make_set("after", AFTER)
    for run in after.runs:
        run.recording.meta.update(exit_status=143, exit_signal="SIGTERM", ended_by_lockprof=True)
    assert bench.run_line(1, 3, after.runs[0]).startswith("run 1/3: exit 143 (stopped), ")
    assert runset.manifest(after)["runs"][0]["ended_by_lockprof"] is True
    assert not any("exited" in w for w in cmp.compare(before, after).document["warnings"])
    after.runs[0].recording.meta["ended_by_lockprof"] = False
    assert "after: run 1 exited 143" in cmp.compare(before, after).document["warnings"]


def test_histograms_are_kept_for_the_page():
    before = make_set("before", BEFORE)
    after = make_set("after", AFTER)
    result = cmp.compare(before, after)
    sides = result.hists[("mmap_lock (target work)", "mmap_lock", "write")]
    assert np.sum(sides["before"]["wait"]) == pytest.approx(10_000)
    assert np.sum(sides["after"]["wait"]) == pytest.approx(5_000)


def test_a_target_mmap_lock_filed_under_another_owner_is_warned_about():
    """The owner of an mm address can change when the command's mm is freed
    and reused by a new process before collection ends."""
    before = make_set("before", [{"writes": 10}, {"writes": 10}])
    after = make_set("after", [{"writes": 10}, {"writes": 10}])
    moved = after.runs[1].recording
    moved.locks["owner_pid"] = moved.locks["owner_pid"].where(moved.locks["owner_pid"].isna(), 9999)
    moved.locks["owner_comm"] = moved.locks["owner_comm"].where(
        moved.locks["owner_comm"].isna(), "python"
    )
    warnings = cmp.compare(before, after).document["warnings"]
    (warning,) = warnings
    assert warning.startswith("after run 2: no mmap_lock is owned by the target pid")
    assert "mmap_lock (python)" in warning
    assert cmp.compare(before, before).document["warnings"] == []


# -- lock spec classes paired across the sides ---------------------------------------------

SRC_SPEC = schema.const("LP_SRC_SPEC")
F_SUM = schema.const("LP_F_SUM")


def spec_recording(
    spec: str, address: int, reads: int, writes: int, sums: int = 0, wait_ns: int = 1000
) -> Recording:
    """One run of rwbench under --locks SPEC: the spec lock's read and write
    acquisitions (with waits and holds) and, for rw_mutex, its sum calls."""
    rows = [
        interval_row(
            address,
            flags,
            SRC_SPEC,
            acquisitions=count,
            releases=count,
            **_hist("wait", count, wait_ns),
            **_hist("hold", count, 2000),
        )
        for flags, count in ((READ, reads), (WRITE, writes))
    ]
    if sums:
        rows.append(
            interval_row(address, F_SUM, SRC_SPEC, acquisitions=sums, **_hist("wait", sums, 12_000))
        )
    intervals = intervals_frame(rows)
    locks = aggregate.name_locks(intervals, {}, EMPTY_CALLERS, {}, spec_class=spec)
    rec = make_recording(0, reads=0, command=("/bin/rwbench", "-l", spec))
    rec.intervals, rec.locks = intervals, locks
    rec.meta["lock_specs"] = [{"name": spec, "target": "/lib/x.so", "functions": {}}]
    return rec


def spec_set(label: str, spec: str, runs: list[tuple[int, int, int]]) -> RunSet:
    recs = [
        spec_recording(spec, 0x5500_0000_1000 + 0x100 * i, reads, writes, sums)
        for i, (reads, writes, sums) in enumerate(runs)
    ]
    return RunSet(
        label=label, runs=[Run(recording=r) for r in recs], command=recs[0].meta["command"]
    )


PTHREAD = [(9000, 1000, 0), (9100, 1010, 0), (8900, 990, 0)]
RW_MUTEX = [(4500, 500, 4000), (4550, 505, 4100), (4450, 495, 3900)]


def test_different_spec_classes_are_not_matched_and_the_warning_says_how_to_pair():
    doc = cmp.compare(
        spec_set("b", "pthread_rwlock", PTHREAD), spec_set("a", "rw_mutex", RW_MUTEX)
    ).document
    locks = {(v["lock"], v["mode"]) for v in doc["verdicts"]}
    assert ("pthread_rwlock (unnamed)", "read") in locks and ("rw_mutex (unnamed)", "read") in locks
    read = verdict(doc, "acquisitions", "read", "rw_mutex (unnamed)")
    assert read["before"] == 0 and read["after"] == pytest.approx(4500)
    assert doc["paired_classes"] == []
    (hint,) = [w for w in doc["warnings"] if w.startswith("lock spec classes differ")]
    assert "before pthread_rwlock, after rw_mutex" in hint
    assert "--pair-class pthread_rwlock=rw_mutex" in hint


def test_paired_spec_classes_compare_mode_by_mode_with_the_writers_sum():
    doc = cmp.compare(
        spec_set("b", "pthread_rwlock", PTHREAD),
        spec_set("a", "rw_mutex", RW_MUTEX),
        pairs={"pthread_rwlock": "rw_mutex"},
    ).document
    label = "pthread_rwlock -> rw_mutex (unnamed)"
    assert {v["lock"] for v in doc["verdicts"]} == {label}
    assert doc["paired_classes"] == [
        {"before": "pthread_rwlock", "after": "rw_mutex", "as": "pthread_rwlock -> rw_mutex"}
    ]
    assert not [w for w in doc["warnings"] if w.startswith("lock spec classes differ")]
    reads = verdict(doc, "acquisitions", "read", label)
    assert (reads["before"], reads["after"]) == (pytest.approx(9000), pytest.approx(4500))
    assert reads["delta_pct"] == pytest.approx(-50.0) and reads["significant"] is True
    writes = verdict(doc, "wait_total_ns", "write", label)
    assert writes["before"] == pytest.approx(1_000_000)
    assert writes["after"] == pytest.approx(500_000)
    assert verdict(doc, "hold_p99_ns", "write", label)["verdict"] == "no significant change"
    # The writer's sum: pthread_rwlock has none, so 0 calls before.
    calls = verdict(doc, "acquisitions", "sum", label)
    assert calls["name"] == "sum calls"
    assert (calls["before"], calls["after"]) == (0, pytest.approx(4000))
    time_in_sum = verdict(doc, "wait_total_ns", "sum", label)
    assert time_in_sum["name"] == "time in sum"
    assert time_in_sum["after"] == pytest.approx(4000 * 12_000)
    assert verdict(doc, "wait_p99_ns", "sum", label)["verdict"] == cmp.NOT_MEASURED
    assert verdict(doc, "acquisitions", "read", label)["name"] == "acquisitions"
    modes = [v["mode"] for v in doc["verdicts"] if v["metric"] == "acquisitions"]
    assert modes == ["write", "read", "sum"]


def test_paired_histograms_match_too():
    result = cmp.compare(
        spec_set("b", "pthread_rwlock", PTHREAD),
        spec_set("a", "rw_mutex", RW_MUTEX),
        pairs={"pthread_rwlock": "rw_mutex"},
    )
    key = ("pthread_rwlock -> rw_mutex (unnamed)", "pthread_rwlock -> rw_mutex", "read")
    assert np.sum(result.hists[key]["before"]["wait"]) == pytest.approx(9000)
    assert np.sum(result.hists[key]["after"]["wait"]) == pytest.approx(4500)


def test_pairing_a_class_a_side_lacks_is_refused():
    with pytest.raises(LockprofError) as error:
        cmp.compare(
            spec_set("b", "pthread_rwlock", PTHREAD),
            spec_set("a", "rw_mutex", RW_MUTEX),
            pairs={"pthread_rwlok": "rw_mutex"},
        )
    assert "before side has no pthread_rwlok locks" in str(error.value)
    assert "pthread_rwlock" in str(error.value)


def test_pair_class_on_the_command_line(tmp_path, capsys):
    before, after = tmp_path / "b.lpset", tmp_path / "a.lpset"
    runset.save(spec_set("pthread_rwlock", "pthread_rwlock", PTHREAD), before)
    runset.save(spec_set("rw_mutex", "rw_mutex", RW_MUTEX), after)
    code = main(["compare", "--pair-class", "pthread_rwlock=rw_mutex", str(before), str(after)])
    out = capsys.readouterr().out
    assert code in (0, None)
    assert "paired: the before side's pthread_rwlock locks" in out
    assert "pthread_rwlock -> rw_mutex (unnamed)" in out
    assert "sum calls" in out and "time in sum" in out
    page = tmp_path / "c.html"
    pair = ["--pair-class", "pthread_rwlock=rw_mutex"]
    code = main(["compare", *pair, str(before), str(after), "-o", str(page)])
    text = page.read_text()
    assert "Paired lock classes" in text and "<td>sum calls</td>" in text
    capsys.readouterr()
    for bad in ("pthread_rwlock", "=rw_mutex", "a=b"):
        code = main(["compare", "--pair-class", bad, str(before), str(after)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (bad, err)


def test_the_page_plots_times_in_seconds_with_si_ticks():
    """A wait total of 1.5 s was plotted as 1.5e9 on an axis titled "ns",
    which plotly ticks "1.5B": times are plotted in seconds, ticked 1.5s."""
    from dashboards import compare as page

    before = make_set("before", [{"writes": 10_000, "wait_ns": 150_000}] * 3)
    after = make_set("after", [{"writes": 10_000, "wait_ns": 100_000}] * 3)
    fig = page.locks_figure(cmp.compare(before, after).document)
    titles = [a.text for a in fig.layout.annotations]
    row = titles.index("wait total") + 1
    axis = fig.layout[f"yaxis{row if row > 1 else ''}"]
    assert axis.ticksuffix == "s" and axis.exponentformat == "SI"
    (bar,) = [
        t for t in fig.data if t.type == "bar" and t.yaxis == f"y{row}" and t.name == "before"
    ]
    assert bar.y[0] == pytest.approx(1.5)  # 10,000 write waits of 150us, in seconds
    assert "%{y:.3s}s" in bar.hovertemplate
    assert titles[0] == "acquisitions" and fig.layout.yaxis.ticksuffix is None  # counts


def test_verdicts_say_whether_a_change_is_better_or_worse():
    """A kernel developer reads "significant decrease" of wait time as good
    news and of throughput as bad: the verdict says which, where the metric's
    direction does not depend on the workload."""
    before = make_set("before", BEFORE, throughputs=[100.0, 102.0, 98.0])
    after = make_set(
        "after",
        [{**spec, "wait_ns": 400} for spec in AFTER],
        throughputs=[60.0, 61.0, 59.0],
    )
    doc = cmp.compare(before, after).document
    wait = verdict(doc, "wait_total_ns")  # 10,000 x 200ns -> 5,000 x 400ns
    assert wait["significant"] is False and wait["direction"] is None
    assert verdict(doc, "wait_p99_ns")["direction"] == "worse"
    assert verdict(doc, "cpu0.wait_total_ns")["direction"] is None
    acq = verdict(doc, "acquisitions")  # more or fewer: no better or worse
    assert acq["verdict"] == "significant decrease" and acq["direction"] is None
    throughput = rusage_entry(doc, "throughput")
    assert throughput["direction"] == "worse"
    assert doc["headline"][-1].endswith("significant decrease (worse)")
    assert rusage_entry(doc, "sys_s")["direction"] is None
    faster = make_set("after", AFTER, throughputs=[200.0, 201.0, 199.0])
    doc = cmp.compare(before, faster).document
    assert rusage_entry(doc, "throughput")["direction"] == "better"
    assert verdict(doc, "hold_p99_ns")["direction"] is None  # unchanged
    assert cmp.shown_verdict(verdict(doc, "acquisitions")) == "significant decrease"


def test_the_page_and_terminal_show_the_direction(tmp_path, capsys):
    before = make_set("before", BEFORE, throughputs=[100.0, 102.0, 98.0])
    after = make_set("after", AFTER, throughputs=[200.0, 201.0, 199.0])
    runset.save(before, tmp_path / "b.lpset")
    runset.save(after, tmp_path / "a.lpset")
    page = tmp_path / "c.html"
    code = main(["compare", str(tmp_path / "b.lpset"), str(tmp_path / "a.lpset"), "-o", str(page)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "significant increase (better)" in out  # the throughput headline
    assert '<td class="sig better">significant increase (better)</td>' in page.read_text()


def test_a_change_from_zero_says_new_and_zero_to_zero_says_unchanged():
    """The delta column holds percents: a lock only the after side saw has
    none, and showed "+15us" or "+3" there (an absolute change among
    percents); 0 -> 0 showed "+0.0%, CI +0.0% to +0.0%"."""
    before = make_set("before", [{"writes": 10}] * 3)
    after = make_set("after", [{"writes": 10, "spin_waits": 3}] * 3)
    doc = cmp.compare(before, after).document
    waits = verdict(doc, "wait_total_ns", "exclusive", "zap_pte_range+0x99")
    assert waits["delta_pct"] is None and waits["delta"] == pytest.approx(15_000)
    assert cmp.fmt_delta(waits) == "new" and cmp.fmt_ci(waits) == "-"
    contended = verdict(doc, "contended", "exclusive", "zap_pte_range+0x99")
    assert cmp.fmt_delta(contended) == "new"
    assert cmp.fmt_delta(verdict(doc, "acquisitions")) == "+0.0%"  # 10 -> 10: a percent
    zero = verdict(doc, "contended")  # the mmap_lock: 0 -> 0
    assert (zero["before"], zero["after"], zero["delta_pct"]) == (0, 0, 0.0)
    assert cmp.fmt_delta(zero) == "unchanged" and cmp.fmt_ci(zero) == "-"
    p99 = verdict(doc, "wait_p99_ns", "exclusive", "zap_pte_range+0x99")
    assert p99["delta"] is None and cmp.fmt_delta(p99) == "-"  # not measured before
    from dashboards import compare as page

    table = page.verdict_table(doc)
    assert '<td class="num">new</td>' in table and '<td class="num">unchanged</td>' in table
    assert "+15us" not in table


def test_the_delta_and_ci_columns_hold_percents_only(tmp_path, capsys):
    """Before with a run at 0 (a spinlock 1 run of 3 did not see): the
    percent change is known but its interval is not, and the CI column
    showed the absolute interval ("0 to 18,227", "0ns to 14.5ms") next to
    percents. It now says n/a, and never holds a figure in other units."""
    before = make_set("before", [{"writes": 10, "spin_waits": n} for n in (0, 6, 8)])
    after = make_set("after", [{"writes": 10, "spin_waits": n} for n in (20, 22, 24)])
    doc = cmp.compare(before, after).document
    spin = verdict(doc, "contended", "exclusive", "zap_pte_range+0x99")
    assert spin["delta_pct"] == pytest.approx(371.4, abs=0.1)  # 14/3 -> 22
    assert spin["ci_low_pct"] is None and spin["ci_low"] is not None
    assert cmp.fmt_delta(spin) == "+371.4%"
    assert cmp.fmt_ci(spin) == cmp.NO_PERCENT_CI == "n/a"
    percent = re.compile(r"^[+-][\d,.]+% to [+-][\d,.]+%$")
    for entry in doc["verdicts"] + doc["rusage"]:
        delta, ci = cmp.fmt_delta(entry), cmp.fmt_ci(entry)
        assert delta in ("new", "unchanged", "-") or re.fullmatch(r"[+-][\d,.]+%", delta), entry
        assert ci in ("-", "n/a") or percent.match(ci), entry
    paths = [runset.save(s, tmp_path / f"{s.label}.lpset") for s in (before, after)]
    assert main(["compare", "--all", str(paths[0]), str(paths[1])]) == 0
    out = capsys.readouterr().out
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines()]
    assert ["zap_pte_range+0x99", "exclusive", "contended", "4.67", "22", "+371.4%", "n/a"] in [
        row[:7] for row in rows
    ]
    assert cmp.NO_PERCENT_CI_NOTE in " ".join(out.split())


@pytest.mark.parametrize(
    "value,shown",
    [
        (-10.569, "-10.6%"),
        (0.0, "+0.0%"),
        (0.01, "+0.01%"),
        (-100.0, "-100.0%"),
        (999.94, "+999.9%"),
        (173_300.0, "+173,300%"),
        (-1234.5, "-1,234%"),
        (None, "-"),
    ],
)
def test_percent_formats(value, shown):
    assert cmp.fmt_pct(value) == shown


def _entry(**fields) -> dict:
    entry = {
        "name": "user time",
        "metric": "user_s",
        "unit": "s",
        "before": 0.000398,
        "after": 0.00239,
        "delta": 0.001992,
        "delta_pct": 500.3,
        "ci_low": 0.000414,
        "ci_high": 0.00435,
        "ci_low_pct": None,
        "ci_high_pct": None,
        "significant": True,
        "verdict": "significant increase",
    }
    return {**entry, **fields}


def test_headlines_keep_one_kind_of_unit():
    """The reviewer's line, 'user time: 0.000398 s -> 0.00239 s (+500.3%, 95%
    CI 0.000414 s to 0.00435 s)': a percent change with an interval in
    seconds."""
    assert cmp.headline(_entry()) == (
        "user time: 0.000398 s -> 0.00239 s (+500.3%, no percent CI: a before run was 0): "
        "significant increase"
    )
    new = _entry(before=0.0, after=0.002, delta=0.002, delta_pct=None)
    assert cmp.headline(new) == "user time: 0 s -> 0.002 s (new): significant increase"
    unchanged = _entry(
        before=0.0,
        after=0.0,
        delta=0.0,
        delta_pct=0.0,
        ci_low=0.0,
        ci_high=0.0,
        ci_low_pct=0.0,
        ci_high_pct=0.0,
        significant=False,
        verdict="no significant change",
    )
    assert cmp.headline(unchanged) == "user time: 0 s -> 0 s (unchanged): no significant change"
    few = _entry(significant=None, verdict="too few runs to judge (1 per side; need at least 3)")
    assert cmp.headline(few) == (
        "user time: 0.000398 s -> 0.00239 s (+500.3%): too few runs to judge (1 per side; "
        "need at least 3)"
    )


@pytest.mark.parametrize(
    "mode,metric,label",
    [
        ("write", "acquisitions", "acquisitions"),
        ("write", "wait_total_ns", "wait total"),
        ("read", "hold_p99_ns", "hold p99"),
        ("read", "reader_writer_ratio", "reader:writer ratio"),
        ("write", "cpu1.wait_total_ns", "cpu1 wait total"),
        ("sum", "wait_total_ns", "time in sum"),
        ("sum", "cpu0.acquisitions", "cpu0 sum calls"),
    ],
)
def test_metrics_are_shown_by_name(mode, metric, label):
    assert cmp.metric_label(mode, metric) == label


def test_the_terminal_names_metrics_as_the_show_table_does(tmp_path, capsys):
    paths = [
        runset.save(make_set(label, specs), tmp_path / f"{label}.lpset")
        for label, specs in (("before", BEFORE), ("after", AFTER))
    ]
    assert main(["compare", "--all", str(paths[0]), str(paths[1])]) == 0
    out = capsys.readouterr().out
    assert "wait total" in out and "cpu0 acquisitions" in out and "hold p99" in out
    assert "_ns" not in out and "cpu0." not in out


def test_error_bars_stop_at_zero():
    """A spinlock 1 run of 3 saw (0, 0, 30 waits): mean 10, sd 17. The lower
    arm stopped at -7, and the contended axis went below 0."""
    from dashboards import compare as page

    before = make_set("before", [{"writes": 10, "spin_waits": n} for n in (0, 0, 30)])
    after = make_set("after", [{"writes": 10}] * 3)
    fig = page.locks_figure(cmp.compare(before, after).document)
    row = [a.text for a in fig.layout.annotations].index("contended") + 1
    bars = [t for t in fig.data if t.type == "bar" and t.yaxis == f"y{row}" and t.name == "before"]
    (bar,) = bars
    spin = list(bar.x).index("zap_pte_range+0x99 exclusive")
    assert bar.y[spin] == pytest.approx(10.0)
    assert bar.error_y.array[spin] == pytest.approx(17.32, abs=0.01)
    assert bar.error_y.arrayminus[spin] == pytest.approx(10.0)  # down to 0, not -7.3
    assert not bar.error_y.symmetric


def test_distributions_use_a_log_count_axis():
    """After has 1/1000 of before's waits: on a linear axis its bars were
    flat at 0 under before's, its shape unseen."""
    from dashboards import compare as page

    result = cmp.compare(
        make_set("before", [{"writes": 100_000}] * 3), make_set("after", [{"writes": 100}] * 3)
    )
    key = ("mmap_lock (target work)", "mmap_lock", "write")
    fig = page.distribution_figure(key, result.hists[key])
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    assert "log" in fig.layout.yaxis.title.text


def test_the_command_line_is_compared_unless_the_target_warning_explains_it():
    """A system-wide side has no command: its "command line differs" warning
    is left out only where the "profiled target differs" warning says why.
    With the after side's runs of two kinds that warning is not given, and
    the command line's was left out too: no word on either."""
    before = _profiling(make_set("before", [{"writes": 10}] * 3), "system")
    after = make_set("after", [{"writes": 10}] * 3)
    after.runs[1].recording.meta["mode"] = "attach"
    warnings = cmp.compare(before, after).document["warnings"]
    assert not [w for w in warnings if w.startswith("profiled target differs:")]
    assert [w for w in warnings if w.startswith("command line differs: before")]


def test_a_p99_of_few_samples_gets_no_verdict():
    """A p99 of fewer than 100 samples a run is about its largest sample: a
    `-R` run's 44 start-up holds made "significant increase (worse)" of the
    mmap_lock's hold p99. Its values stay; the verdict says why there is
    none. With enough samples on both sides the same change is judged."""
    few = [{"writes": 40, "hold_ns": h} for h in (2000, 2100, 1900)]
    more = [{"writes": 40, "hold_ns": h} for h in (9000, 9100, 8900)]
    doc = cmp.compare(make_set("before", few), make_set("after", more)).document
    entry = verdict(doc, "hold_p99_ns")
    assert entry["significant"] is None and entry["direction"] is None
    assert entry["verdict"] == (
        "too few samples for a p99 (40 before and 40 after a run; 100 needed)"
    )
    assert entry["after"] > entry["before"]  # the values are still there
    assert verdict(doc, "hold_p50_ns")["significant"] is True  # p50s are judged
    many = [dict(spec, writes=400) for spec in few], [dict(spec, writes=400) for spec in more]
    doc = cmp.compare(make_set("before", many[0]), make_set("after", many[1])).document
    assert verdict(doc, "hold_p99_ns")["verdict"] == "significant increase"


def test_throughputs_read_by_different_regexes_are_not_compared():
    """Two --throughput-regex values may read different figures (records a
    second, records in the run): compared, "+63.7% (better)" was a loss."""
    before = make_set("before", BEFORE, throughputs=[100.0, 101.0, 99.0])
    after = make_set("after", AFTER, throughputs=[200.0, 201.0, 199.0])
    before.throughput_regex, after.throughput_regex = r"(\d+) records/s", r"(\d+) records in"
    doc = cmp.compare(before, after).document
    assert "throughput" not in [entry["metric"] for entry in doc["rusage"]]
    (warning,) = [w for w in doc["warnings"] if "--throughput-regex" in w]
    assert "records/s" in warning and "records in" in warning and "not compared" in warning
    after.throughput_regex = before.throughput_regex
    doc = cmp.compare(before, after).document
    assert rusage_entry(doc, "throughput")["significant"] is True


def test_the_process_is_named_as_its_mmap_lock_not_by_a_wrapper():
    """`bench -- sh -c "exec lpbizzy"` (or taskset, numactl, env): the
    heading said "sh (the profiled process)" over lpbizzy's locks."""
    wrapped = {"command": ("sh", "-c", "exec /bin/work -n 10")}
    before = make_set("before", [dict(spec, **wrapped) for spec in BEFORE])
    after = make_set("after", AFTER)
    doc = cmp.compare(before, after).document
    assert doc["before"]["process"] == doc["after"]["process"] == "work"
    assert cmp.process_heading(doc) == "work (the profiled process)"


def test_a_side_whose_every_run_failed_is_refused(tmp_path, capsys):
    """`bench -- lpbizzy -Z` (a bad option: status 2 in a millisecond)
    compared with status 0 and "significant" verdicts of the failure; some
    failed runs stay a warning. --seed -1 was an internal error."""
    failed = make_set("before", [dict(spec, exit_status=2) for spec in BEFORE])
    paths = [
        str(runset.save(s, tmp_path / f"{s.label}.lpset"))
        for s in (failed, make_set("after", AFTER))
    ]
    code = main(["compare", *paths])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"lockprof: {paths[0]}: the command failed in every run (exit status 2, 2, 2): "
        "nothing to compare\n"
    )
    some = make_set(
        "before", [dict(spec, exit_status=0 if i == 0 else 2) for i, spec in enumerate(BEFORE)]
    )
    paths[0] = str(runset.save(some, tmp_path / "some.lpset"))
    assert main(["compare", *paths]) == 0
    assert "before: run 2 exited 2, run 3 exited 2" in capsys.readouterr().err
    assert main(["compare", *paths, "--seed", "-1"]) == 2
    assert "--seed: -1 is not in the range x>=0" in capsys.readouterr().err


def test_a_narrow_terminal_gets_a_table_per_lock_with_nothing_cut():
    """On 80 columns the one table squeezed the lock column to nothing and
    cut figures and verdicts with an ellipsis; a wide terminal keeps it."""
    from rich.console import Console

    from profiler.cli import compare as cli

    doc = cmp.compare(make_set("before", BEFORE), make_set("after", AFTER)).document
    for width, tables in ((80, 2), (200, 1)):
        console = Console(width=width, force_terminal=True, color_system=None, record=True)
        console.print(cli.terminal_view(doc, 1, False, console=console))
        text = console.export_text()
        assert "…" not in text
        assert text.count("┏") == tables
        assert "mmap_lock (target work)" in text and "10,000" in text
        assert max(len(line) for line in text.splitlines()) <= width


def test_failed_trylocks_are_compared_without_a_direction():
    """`show`'s `fail` column (mmap_read_trylock failures of the per-VMA
    fault path: 18k-37k a run on lpbizzy) was left out of compare."""
    before = make_set(
        "before",
        [dict(spec, read_failures=f) for spec, f in zip(BEFORE, (900, 950, 1000), strict=True)],
    )
    after = make_set(
        "after", [dict(spec, read_failures=f) for spec, f in zip(AFTER, (90, 95, 100), strict=True)]
    )
    doc = cmp.compare(before, after).document
    entry = verdict(doc, "trylock_failures", mode="read")
    assert (entry["before"], entry["after"]) == (950.0, 95.0)
    assert entry["verdict"] == "significant decrease" and entry["direction"] is None
    assert cmp.entry_label(entry) == "trylock failures"


def test_comparing_a_file_with_itself_says_so(tmp_path, capsys):
    path = str(runset.save(make_set("before", BEFORE), tmp_path / "b.lpset"))
    assert main(["compare", path, path]) == 0
    err = capsys.readouterr().err
    assert f"lockprof: warning: BEFORE and AFTER are the same file ({path})" in err


def test_runs_ended_by_a_signal_and_single_recordings_are_only_warned_about(tmp_path, capsys):
    """A `run` stopped by Ctrl-C exits 130 (its command dies of SIGINT): a
    side of such runs, or one recording of a command whose status was an
    error, is compared with a warning, not refused."""
    stopped = make_set("before", [dict(spec, exit_status=130) for spec in BEFORE])
    paths = [
        str(runset.save(s, tmp_path / f"{s.label}.lpset"))
        for s in (stopped, make_set("after", AFTER))
    ]
    assert main(["compare", *paths]) == 0
    assert "before: run 1 exited 130" in capsys.readouterr().err
    single = runset.RunSet(
        label="one", runs=[make_set("x", [dict(BEFORE[0], exit_status=2)]).runs[0]]
    )
    one = str(runset.save(single, tmp_path / "one.lpset"))
    assert main(["compare", one, paths[1]]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("wrapper_first", [True, False])
def test_a_wrappers_mm_of_the_same_pid_does_not_name_the_process(wrapper_first):
    """`bench -- sh -c "exec work"`: the pid owned sh's mm (a few
    acquisitions) and then work's; both come in the first interval, in no
    set order. The busiest names the process."""
    pid, mm, wrapper_mm = 4242, 0xFFFF888000100000, 0xFFFF888000300000
    rows = [
        interval_row(wrapper_mm, WRITE, SRC_MMAP, acquisitions=3, **_hist("wait", 3, 100)),
        interval_row(mm, WRITE, SRC_MMAP, acquisitions=5000, **_hist("wait", 5000, 100)),
    ]
    intervals = intervals_frame(rows if wrapper_first else rows[::-1])
    owners = {wrapper_mm: (pid, "sh"), mm: (pid, "work")}
    locks = aggregate.name_locks(intervals, owners, EMPTY_CALLERS, {})
    rec = Recording(meta={"target_pid": pid, "command": ["sh", "-c", "exec work"]},
                    intervals=intervals, locks=locks)  # fmt: skip
    assert cmp.process_name(runset.from_recording(rec, "x")) == "work"
