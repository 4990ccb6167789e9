#!/usr/bin/env python3
"""The end of a long run, replayed without root: lockprof's memory and time
from the spooled interval rows to the written recording and its summary.

A system-wide run spools one interval row per active lock, mode and CPU each
second; a 2-hour run under process churn spooled 334k rows over ~150k
distinct keys (docs/reliability.md). This builds such a spool (synthetic:
--rows rows over --keys keys, a few histogram slots set in each; or the
interval rows of a recording, --from FILE), then times what lockprof does
with it once collection ends (profiler/intervals.py, recording.save, the
final summary) in a fresh process, and prints that process's peak RSS
against its RSS before the end began. Then `lockprof show` and
`lockprof show --json` of the recording it wrote, with their peak RSS.

    .venv/bin/python bench/endrun.py [--rows 334000] [--keys 150000] [--from FILE]
        [--keep FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from profiler import aggregate, allocator, recording, schema  # noqa: E402


def synthetic_records(rows: int, keys: int, seed: int = 1) -> np.ndarray:
    """rows interval rows over keys (lock, flags, source, cpu) keys, in
    interval order, each key active in a run of consecutive intervals (locks
    of processes that come and go)."""
    rng = np.random.default_rng(seed)
    records = np.zeros(rows, dtype=aggregate.interval_record_dtype())
    key = np.sort(rng.integers(0, keys, rows))  # a key's rows are consecutive
    records["interval"] = np.arange(rows) * 7200 // rows
    records["t_s"] = records["interval"].astype(np.float64)
    records["lock"] = np.uint64(0xFFFF888100000000) + (key // 4).astype(np.uint64) * np.uint64(64)
    records["flags"] = np.where(key % 2, 4, 2)
    records["source"] = schema.const("LP_SRC_MMAP_LOCK")
    records["cpu"] = (key // 2) % 2
    count = rng.integers(1, 200, rows)
    for h in ("wait", "hold"):
        slot = rng.integers(5, 20, rows)
        records[f"{h}_slots"][np.arange(rows), slot] = count
        records[f"{h}_count"] = count
        records[f"{h}_total_ns"] = count * (1 << slot)
        records[f"{h}_running_max_ns"] = 1 << slot
        records[f"{h}_max_ns"] = -1
    records["acquisitions"] = count
    records["releases"] = count
    return records


def recording_records(path: Path) -> np.ndarray:
    frame = recording.load(path).intervals
    records = np.zeros(len(frame), dtype=aggregate.interval_record_dtype())
    for column in aggregate.INTERVAL_COLUMNS:
        if column.endswith("_slots"):
            records[column] = aggregate._slots_matrix(frame[column])
        elif column in aggregate.INTERVAL_MAX_COLUMNS:
            records[column] = frame[column].fillna(-1).to_numpy(dtype=np.int64)
        else:
            records[column] = frame[column].to_numpy()
    return records


def end_of_run(records_path: Path, out: Path) -> dict:
    """In this process: spool the records, then end the run as lockprof does
    (pyarrow on glibc's malloc, as the CLI loads it: main() runs this
    process with ARROW_DEFAULT_MEMORY_POOL set)."""
    allocator.map_large_blocks()  # as the lockprof program does first
    from profiler.cli.common import FINAL_SUMMARY_TOP, print_summary
    from profiler.intervals import CHUNK_ROWS, build_intervals
    from profiler.spool import RecordSpool

    spool = RecordSpool(aggregate.interval_record_dtype(), "interval rows")
    for batch in _read_records(records_path, 5_000):
        spool.append(batch)
    before_kb = _status_kb("VmRSS")
    started = time.monotonic()
    built = build_intervals(lambda: spool.chunks(CHUNK_ROWS), set())
    allocator.release_free_heap()  # as the session does once the intervals are built
    locks = aggregate.name_locks(built.totals, {}, recording.empty_table("callers"), {})
    rec = recording.Recording(
        meta={"families": ["mmap_lock"], "cpus": 2},
        intervals=built.frame,
        intervals_file=built.spilled,
        interval_totals=built.totals,
        locks=locks,
    )
    recording.save(rec, out)
    # The final summary as the CLI prints it (its 50 busiest rows).
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        print_summary(rec, False, top=FINAL_SUMMARY_TOP)
    return {
        "seconds": round(time.monotonic() - started, 2),
        "rss_before_mb": round(before_kb / 1024, 1),
        # VmHWM, not ru_maxrss: that keeps the forking parent's peak
        "peak_mb": round(_status_kb("VmHWM") / 1024, 1),
        "lock_cpu_totals": len(built.totals),
    }


def _read_records(path: Path, rows: int):
    """The records of a .npy file, rows at a time (a memory map would count
    the whole file in this process's RSS)."""
    with open(path, "rb") as file:
        major, _minor = np.lib.format.read_magic(file)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, _fortran, dtype = read_header(file)
        left = shape[0]
        while left:
            take = min(rows, left)
            yield np.frombuffer(file.read(take * dtype.itemsize), dtype=dtype)
            left -= take


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def timed(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command, output discarded."""
    started = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *argv], capture_output=True, text=True, check=True
    )
    return time.monotonic() - started, int(done.stderr.strip().splitlines()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=334_000)
    parser.add_argument("--keys", type=int, default=150_000)
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--keep", type=Path, help="copy the recording written to FILE")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(end_of_run(*args.child)))
        return 0
    with tempfile.TemporaryDirectory(prefix="lpend-") as tmp:
        records_path, out = Path(tmp) / "records.npy", Path(tmp) / "end.lpr"
        records = (
            recording_records(args.source)
            if args.source
            else synthetic_records(args.rows, args.keys)
        )
        np.save(records_path, records)
        print(f"{len(records):,} interval rows", flush=True)
        del records
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(records_path), str(out)],
            # pyarrow on glibc's malloc, as the CLI loads it (allocator.py):
            # this file's imports load pyarrow before end_of_run could ask.
            env={**os.environ, allocator.ARROW_POOL_ENV: "system"},
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        print("end of run:", child.stdout.strip())
        lockprof = [sys.executable, "-m", "profiler.cli.main"]
        for extra in ([], ["--json"]):
            seconds, peak = timed([*lockprof, "show", *extra, str(out)])
            print(f"show {' '.join(extra)}: {seconds:.1f} s, peak {peak:.0f} MB")
        if args.keep:
            shutil.copyfile(out, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
