"""--lock-types: contention of the chosen lock types only. The others still
pair their begin and end in the probes (no end_without_begin), but are
neither timed nor counted anywhere."""

from __future__ import annotations

from conftest import BIN, show_json

import profiler
from profiler import schema, summary

# Two threads mapping, copying and unmapping: their mmap_lock (an rwsem) and
# page-table, zone and LRU spinlocks are contended.
LPBIZZY = [str(BIN / "lpbizzy"), "-t", "2", "-S", "2", "-q"]


def contention_types(rec: profiler.Recording) -> dict[str, int]:
    """Contended waits by lock type, from the contention rows."""
    rows = rec.intervals[rec.intervals["source"] == schema.const("LP_SRC_CONTENTION")]
    types: dict[str, int] = {}
    for flags, contended in rows.groupby("flags")["contended"].sum().items():
        kind = schema.classify(schema.const("LP_SRC_CONTENTION"), int(flags))[0]
        types[kind] = types.get(kind, 0) + int(contended)
    return types


def unpaired_ends(rec: profiler.Recording) -> int:
    """Ends without their begin, less those the kernel explains: a begin it
    skipped (recursion_misses, less the waits the probes caught and left out
    whole: irq_wait_skipped) or a full nest's entry that gave way
    (nest_overflow). What is left: waits in progress at arming."""
    errors = rec.meta["errors"]
    skipped = errors.get("recursion_misses", 0) - errors.get("irq_wait_skipped", 0)
    explained = max(skipped, 0) + errors["nest_overflow"]
    return max(errors["end_without_begin"] - explained, 0)


def profiled(lockprof_factory, tmp_path, name: str, *flags: str) -> profiler.Recording:
    lp = lockprof_factory("run", "-q", "-o", name, *flags, "--", *LPBIZZY)
    code, _out, err = lp.wait(timeout=120)
    assert code == 0, err
    return profiler.load(tmp_path / name)


def test_lock_types_keep_only_the_chosen_types_contention(lockprof_factory, tmp_path):
    every = profiled(lockprof_factory, tmp_path, "every.lpr")
    assert {"spinlock", "rwsem"} <= set(contention_types(every)), contention_types(every)

    spin = profiled(lockprof_factory, tmp_path, "spin.lpr", "--lock-types", "spinlock")
    assert set(contention_types(spin)) == {"spinlock"}
    assert spin.meta["lock_types"] == ["spinlock"]
    # The left-out waits neither unpaired nor anywhere else.
    assert unpaired_ends(spin) <= 2  # waits in progress at arming
    assert set(spin.callers["flags"]) == {schema.const("LP_LCB_SPIN")}
    spin_tasks = spin.tasks[spin.tasks["source"] == schema.const("LP_SRC_CONTENTION")]
    assert set(spin_tasks["flags"]) <= {schema.const("LP_LCB_SPIN")}
    assert any("--lock-types: contention of spinlock only" in n for n in summary.notes(spin.meta))
    assert show_json(tmp_path / "spin.lpr")["lock_types"] == ["spinlock"]
    assert show_json(tmp_path / "every.lpr")["lock_types"] is None

    rwsem = profiled(lockprof_factory, tmp_path, "rwsem.lpr", "--lock-types", "rwsem")
    assert set(contention_types(rwsem)) == {"rwsem"}
    assert unpaired_ends(rwsem) <= 2
    # mmap_lock's own figures do not depend on the filter: its acquisitions
    # still know they were contended.
    mmap = rwsem.intervals[rwsem.intervals["source"] == schema.const("LP_SRC_MMAP_LOCK")]
    assert int(mmap["contended"].sum()) > 0
