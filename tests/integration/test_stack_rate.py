"""--stack-rate: at most N kernel stacks of long contended waits per CPU per
second. The waits left without one are counted (stack_rate), keep stack -1
among the callers, and every wait is still counted once in the aggregates."""

from __future__ import annotations

from conftest import BIN

import profiler
from profiler import summary
from profiler.bpf import MAX_STACKS_ENV, STACK_DEPTH_ENV

RWCONTEND = [str(BIN / "rwcontend"), "-w", "2", "-r", "2", "-S", "2", "-m", "16"]


def contended(
    lockprof_factory, tmp_path, name: str, *flags: str, env: dict[str, str] | None = None
) -> profiler.Recording:
    # A 1 ns stack threshold: every contended wait asks for a stack.
    lp = lockprof_factory(
        "run", "-q", "-o", name, "--stack-threshold", "1ns", *flags, "--", *RWCONTEND, env=env
    )
    code, _out, err = lp.wait(timeout=120)
    assert code == 0, err
    return profiler.load(tmp_path / name)


def test_stack_rate_limits_stacks_and_counts_the_rest(lockprof_factory, tmp_path):
    rec = contended(lockprof_factory, tmp_path, "limited.lpr", "--stack-rate", "5")
    waits = int(rec.intervals.loc[rec.intervals["source"] == 1, "contended"].sum())
    skipped = rec.meta["errors"]["stack_rate"]
    stacked = int(rec.callers.loc[rec.callers["stack_id"] >= 0, "count"].sum())
    failed = rec.meta["errors"]["stack"]
    assert rec.meta["stack_rate"] == 5
    # 5 a second per CPU over the run (one more per CPU: the first is free),
    # and as many naming stacks (lp_wait_stack), one per lock row and CPU.
    cpus, seconds = rec.meta["cpus"], rec.meta["duration_s"]
    rows = len(rec.intervals.loc[rec.intervals["source"] == 1, ["lock", "flags"]].drop_duplicates())
    per_cpu = 5 * seconds + 1
    assert 0 < stacked + failed <= cpus * (per_cpu + min(rows, per_cpu)), (stacked, failed, rows)
    assert waits > 100 and skipped > 0
    # Every wait counted once among the callers: stacked, failed or skipped.
    assert int(rec.callers["count"].sum()) == waits
    assert stacked + skipped + failed == waits  # every wait asked for one (1 ns)
    notes = summary.notes(rec.meta)
    assert any(f"{skipped:,} contended waits over --stack-threshold got no" in n for n in notes)


def test_stack_rate_zero_takes_every_stack(lockprof_factory, tmp_path):
    rec = contended(lockprof_factory, tmp_path, "every.lpr", "--stack-rate", "0")
    waits = int(rec.intervals.loc[rec.intervals["source"] == 1, "contended"].sum())
    stacked = int(rec.callers.loc[rec.callers["stack_id"] >= 0, "count"].sum())
    assert rec.meta["errors"]["stack_rate"] == 0
    assert stacked + rec.meta["errors"]["stack"] == waits > 100
    assert not any("--stack-rate" in n for n in summary.notes(rec.meta))


def test_stacks_deeper_than_their_bucket_keep_their_innermost_frames(lockprof_factory, tmp_path):
    """A stack bucket holds LP_STACK_DEPTH frames. With the test hook at 8,
    every stack fills its bucket (the tracing frames alone take ~3): each
    is read back whole, as the innermost frames of the same wait's full
    stack, and nothing fails."""
    full = contended(lockprof_factory, tmp_path, "full.lpr", "--stack-rate", "0")
    cut = contended(
        lockprof_factory, tmp_path, "cut.lpr", "--stack-rate", "0", env={STACK_DEPTH_ENV: "8"}
    )
    full_stacks = [tuple(f) for f in full.stacks["frames"] if len(f) > 8]
    cut_stacks = [tuple(f) for f in cut.stacks["frames"] if len(f)]
    assert full_stacks, "no stack deeper than 8 frames to cut"
    assert cut_stacks and max(len(f) for f in cut_stacks) < 8
    # The innermost frames: each cut stack begins some full stack.
    assert any(f[: len(c)] == c for c in cut_stacks for f in full_stacks)
    # Every full bucket was read back (an unreadable stack is kept with no
    # frames, and counted in errors["stack"] with the captures the kernel
    # failed: those vary from run to run, 0 to 213 here, so are not checked).
    assert all(len(f) for f in cut.stacks["frames"]), "a stack read back without frames"


def test_a_failed_stack_capture_joins_the_waits_without_a_stack(lockprof_factory, tmp_path):
    """A stack map of 2 buckets: most captures fail (-EEXIST, the bucket
    holds another stack). Each such wait is counted in errors["stack"] and
    kept under stack -1 with the waits that got no stack, not under its
    errno as a caller of its own (with no frames)."""
    rec = contended(
        lockprof_factory, tmp_path, "few.lpr", "--stack-rate", "0", env={MAX_STACKS_ENV: "2"}
    )
    waits = int(rec.intervals.loc[rec.intervals["source"] == 1, "contended"].sum())
    failed = rec.meta["errors"]["stack"]
    callers = rec.callers
    assert set(callers.loc[callers["stack_id"] < 0, "stack_id"]) == {-1}
    assert (callers["stack_id"] < 2).all()  # 2 buckets: ids 0 and 1
    stackless = int(callers.loc[callers["stack_id"] == -1, "count"].sum())
    stacked = int(callers.loc[callers["stack_id"] >= 0, "count"].sum())
    assert waits > 100 and failed > waits // 2, (waits, failed)
    assert stackless == failed and stacked + stackless == waits


def test_every_contended_lock_is_named_by_its_caller_without_long_waits(lockprof_factory, tmp_path):
    """A lock with no symbol is named after its callers, from stacks of its
    waits. With every stack left to --stack-threshold, an ebizzy-like run's
    busy page-table spinlock (its waits short) and the locks whose waits
    lost the --stack-rate draw to the mmap_lock's went unnamed: `spinlock
    0x...` in 6-8 of 10-11 rows of a 3 s `record -a` (86% of the contended
    waits), named in one run and not in the next. Each lock row's first
    wait on a CPU now takes a naming stack whatever its length, from a
    budget of its own: with no wait long enough for a stack (1 s), every
    contended lock is named, by naming stacks alone (one per row and CPU;
    --stack-rate 0: no lock's first wait lost to another's naming stack)."""
    lp = lockprof_factory(
        "run", "-q", "-o", "named.lpr", "--stack-threshold", "1s", "--stack-rate", "0", "--",
        str(BIN / "lpbizzy"), "-t", "2", "-S", "1",
    )  # fmt: skip
    code, _out, err = lp.wait(timeout=120)
    assert code == 0, err
    rec = profiler.load(tmp_path / "named.lpr")
    waits = rec.intervals.loc[rec.intervals["source"] == 1]
    rows = waits[["lock", "flags"]].drop_duplicates()
    locks = rec.locks.loc[rec.locks["lock_class"] != "mmap_lock"]
    assert len(locks) > 0 and int(waits["contended"].sum()) > 1000
    unnamed = locks.loc[locks["name"].str.fullmatch(r"[a-z-]+ 0x[0-9a-f]+")]
    assert unnamed.empty, unnamed
    stacked = int(rec.callers.loc[rec.callers["stack_id"] >= 0, "count"].sum())
    assert 0 < stacked <= len(rows) * rec.meta["cpus"]
    assert rec.meta["errors"]["stack_rate"] == 0  # no wait was long enough to ask
