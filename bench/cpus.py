#!/usr/bin/env python3
"""The Python side of one collection interval on many CPUs, without root.

Every interval lockprof reads the kernel's cumulative per-CPU counters
(profiler/bpf.py read_stats: (lock, flags, source, index) -> a uint64 array
of (cpus, lp_stats columns)) and turns the difference from the previous
snapshot into interval records (profiler/session.py _take_interval): the
delta, the records spooled to disk, each active row's last_active time.
This times exactly that, session._take_interval on a stand-in session whose
read_stats returns a synthetic snapshot, for each number of CPUs and of
lock rows, and its peak memory (tracemalloc, numpy's buffers included).

The synthetic snapshot pairs: a tenth of the rows are hot (cumulative
figures on every CPU, active on half to all of them in the interval), the
rest were used on 1-8 CPUs and are active on some of those; a sixth of the
rows had no activity in the interval, a twentieth are new (absent from the
previous snapshot). A few histogram slots are set; running maxima rise on
some active CPUs. Rows marked * are more than the kernel's lock map holds
at that many CPUs (profiler/bpf.py probe_cflags: 64 MB over every CPU).

    .venv/bin/python bench/cpus.py [--cpus 2,16,64,256] [--rows 100,1000,4096]
        [--reps 5] [--baseline REV]

--baseline REV also runs the same snapshots on the code of REV (a git
revision), checked out in a temporary `git worktree`, and prints both;
--json prints the results as JSON, and --compare FILE prints them beside
such a file's (an earlier run, labelled "before").
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Stop repeating a case once it has taken this long (the old per-row code
# takes seconds an interval at 256 CPUs).
CASE_BUDGET_S = 3.0
MAP_BUDGET_BYTES = 64 << 20  # profiler/bpf.py _STATS_MAP_BUDGET_BYTES


def _import_tree(tree: Path):
    sys.path.insert(0, str(tree))
    from profiler import allocator, session
    from tests.unit.helpers import flat_fields, header_structs

    # As the lockprof program does (profiler/cli/startup.py): large blocks
    # are mapped, and page faults, each time.
    if hasattr(allocator, "map_large_blocks"):
        allocator.map_large_blocks()
    return session, flat_fields(header_structs(), "lp_stats")


@dataclass
class _Snapshot:
    ts_ns: int
    columns: list[str]
    rows: dict


class _Session:
    """Stands in for BpfSession: read_stats() gives the prepared snapshot."""

    def __init__(self, snapshot: _Snapshot) -> None:
        self.snapshot = snapshot

    def read_stats(self, ts_ns: int) -> _Snapshot:
        return self.snapshot


def map_capacity(cpus: int, width: int) -> int:
    return max(256, min(4096, MAP_BUDGET_BYTES // (8 * width * cpus)))


def snapshot_pair(columns: list[str], cpus: int, rows: int, seed: int) -> tuple[dict, dict]:
    """(previous, current) cumulative snapshots of rows lock rows."""
    rng = np.random.default_rng([seed, cpus, rows])
    at = {c: i for i, c in enumerate(columns)}
    width = len(columns)
    slots = {
        h: [i for i, c in enumerate(columns) if c.startswith(f"{h}.slots[")]
        for h in ("wait", "hold")
    }
    previous: dict = {}
    current: dict = {}
    for n in range(rows):
        key = (0xFFFF888100000000 + 64 * (n // 3), (2, 4, 1)[n % 3], n % 3 // 2, n)
        hot = rng.random() < 0.1
        used = (
            np.arange(cpus)
            if hot
            else rng.choice(cpus, min(cpus, rng.integers(1, 9)), replace=False)
        )
        before = np.zeros((cpus, width), dtype=np.uint64)
        _add_samples(before, used, rng, at, slots, scale=1000)
        now = before.copy()
        if rng.random() >= 1 / 6:  # activity in the interval
            if hot:
                active = rng.choice(cpus, rng.integers(max(1, cpus // 2), cpus + 1), replace=False)
            else:
                active = rng.choice(used, rng.integers(1, len(used) + 1), replace=False)
            _add_samples(now, active, rng, at, slots, scale=10)
        if rng.random() >= 1 / 20:
            previous[key] = before
        current[key] = now
    return previous, current


def _add_samples(values, cpus, rng, at, slots, scale: int) -> None:
    """Waits and holds on cpus: counts, sums, 2-3 slots, running maxima."""
    n = len(cpus)
    count = rng.integers(1, 100 * scale, n).astype(np.uint64)
    for counter in ("acquisitions", "releases"):
        values[cpus, at[counter]] += count
    values[cpus, at["contended"]] += count // np.uint64(3)
    for h in ("wait", "hold"):
        values[cpus, at[f"{h}.count"]] += count
        values[cpus, at[f"{h}.total_ns"]] += count * np.uint64(700)
        for _ in range(3):
            slot = np.asarray(slots[h])[rng.integers(6, 20, n)]
            values[cpus, slot] += count // np.uint64(3)
        peak = rng.integers(1_000, 1_000_000, n).astype(np.uint64)
        values[cpus, at[f"{h}.max_ns"]] = np.maximum(values[cpus, at[f"{h}.max_ns"]], peak)


def measure(session, columns, cpus: int, rows: int, reps: int, seed: int) -> dict:
    previous, current = snapshot_pair(columns, cpus, rows, seed)
    snapshot = _Snapshot(0, columns, current)
    times = []
    out = 0
    started = time.perf_counter()
    for _ in range(reps):
        state = session._Collected()
        state.previous = previous
        gc.collect()
        t0 = time.perf_counter()
        session._take_interval(_Session(snapshot), state, 1.0)
        times.append(time.perf_counter() - t0)
        out = state.spool.records
        state.spool.close()
        if time.perf_counter() - started > CASE_BUDGET_S:
            break
    state = session._Collected()
    state.previous = previous
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    session._take_interval(_Session(snapshot), state, 1.0)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    state.spool.close()
    return {
        "cpus": cpus,
        "rows": rows,
        "records": out,
        "ms": 1e3 * float(min(times)),
        "reps": len(times),
        "peak_mb": peak / 2**20,
        "snapshot_mb": sum(v.nbytes for v in current.values()) / 2**20,
        "beyond_map": rows > map_capacity(cpus, len(columns)),
    }


def run(tree: Path, args) -> list[dict]:
    session, columns = _import_tree(tree)
    return [
        measure(session, columns, cpus, rows, args.reps, args.seed)
        for cpus in args.cpus
        for rows in args.rows
    ]


def _baseline(rev: str, args) -> list[dict]:
    """run() on REV's code, in a worktree of it and a process of its own."""
    with tempfile.TemporaryDirectory(prefix="lockprof-cpus-") as parent:
        tree = Path(parent) / "tree"
        git = ["git", "-C", str(REPO)]
        subprocess.run([*git, "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            command = [
                sys.executable, __file__, "--tree", str(tree), "--json",
                "--cpus", ",".join(map(str, args.cpus)), "--rows", ",".join(map(str, args.rows)),
                "--reps", str(args.reps), "--seed", str(args.seed),
            ]  # fmt: skip
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            return json.loads(done.stdout)
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)


def _table(results: list[dict], baseline: list[dict] | None, rev: str | None) -> str:
    if baseline is None:
        lines = [
            "| CPUs | lock rows | records | ms per interval | peak MB | snapshot MB |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            lines.append(
                f"| {r['cpus']} | {r['rows']}{'*' if r['beyond_map'] else ''} | {r['records']:,} "
                f"| {r['ms']:.1f} | {r['peak_mb']:.1f} | {r['snapshot_mb']:.1f} |"
            )
        return "\n".join(lines)
    lines = [
        f"| CPUs | lock rows | records | ms {rev} | ms now | x faster | peak MB {rev} "
        "| peak MB now | snapshot MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    before = {(b["cpus"], b["rows"]): b for b in baseline}
    for r in results:
        b = before[(r["cpus"], r["rows"])]
        assert b["records"] == r["records"], "not the same snapshots, or not the same records"
        lines.append(
            f"| {r['cpus']} | {r['rows']}{'*' if r['beyond_map'] else ''} | {r['records']:,} "
            f"| {b['ms']:.1f} | {r['ms']:.1f} | {b['ms'] / r['ms']:.0f} "
            f"| {b['peak_mb']:.1f} | {r['peak_mb']:.1f} | {r['snapshot_mb']:.1f} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpus", type=_ints, default=[2, 16, 64, 256])
    parser.add_argument("--rows", type=_ints, default=[100, 1000, 4096])
    parser.add_argument("--reps", type=int, default=5, help="at most, per case (the fastest kept)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", metavar="REV", help="also time REV's code (a git revision)")
    parser.add_argument("--compare", type=Path, help="also print this --json output")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--tree", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args()
    baseline = None
    if args.baseline:
        baseline = _baseline(args.baseline, args)
    elif args.compare:
        baseline, args.baseline = json.loads(args.compare.read_text()), "before"
    results = run(args.tree, args)
    if args.json:
        print(json.dumps(results))
        return
    print(_table(results, baseline, args.baseline))
    print(
        "\nms: the fastest of up to --reps session._take_interval calls (delta to records, "
        "spool append, last_active); peak MB: tracemalloc's peak during one, over what "
        "was allocated before it; snapshot MB: one snapshot's arrays. "
        "*: more rows than the kernel's lock map holds at that many CPUs."
    )


if __name__ == "__main__":
    main()
