#!/usr/bin/env python3
"""Event-stream rate and start-up time of lockprof (root).

stream:   `lockprof record -a -t 1ns` (every wait and hold is an event) while
          P mmapcount storms run at once; events/s that reached the
          recording, events lost (counted in the kernel as ringbuf_full), and
          whether the in-kernel aggregates stayed exact (the storms' known
          write acquisitions, whatever the stream lost).
startup:  seconds from running `lockprof record -a` to its first live-view
          row (the first progress line, stdout not being a terminal), and to
          "attached": with the compiled-probe cache's entry (put there by
          `lockprof precompile`, as make setup does) and without it
          (LOCKPROF_CACHE_DIR=off: as the first run on a kernel or BCC that
          nothing precompiled), alternating.

    sudo .venv/bin/python bench/stream.py [--reps 5] [--storms 2] [--pairs 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "workloads" / "bin"
LOCKPROF = [sys.executable, "-m", "profiler.cli.main"]

sys.path.insert(0, str(REPO))
import profiler  # noqa: E402  (the repository's, for the recordings' meta)
from profiler.probecache import CACHE_DIR_ENV, DEFAULT_DIR  # noqa: E402


def _held(pairs: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(BIN / "mmapcount"), "-w", "-n", str(pairs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
    return proc


def stream_once(storms: int, pairs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lpstream-") as tmp:
        out = Path(tmp) / "s.lpr"
        workers = [_held(pairs) for _ in range(storms)]
        lp = subprocess.Popen(
            [
                *LOCKPROF,
                "record",
                "-a",
                "-q",
                "-t",
                "1ns",
                "--max-events",
                "20000000",
                "-o",
                str(out),
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        assert lp.stderr is not None
        for line in lp.stderr:
            if "attached" in line:
                break
        start = time.monotonic()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"g")
            worker.stdin.flush()
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline() == b"done\n"
        elapsed = time.monotonic() - start
        # Stop lockprof before the storms exit: exit takes mmap_lock too.
        lp.send_signal(signal.SIGINT)
        lp.communicate(timeout=300)
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
            worker.wait()
        summary = json.loads(
            subprocess.run(
                [*LOCKPROF, "show", "--json", str(out)],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            ).stdout
        )
        pids = {w.pid for w in workers}
        writes = sum(
            r["acquisitions"] or 0
            for r in summary["locks"]
            if r.get("owner_pid") in pids and r["mode"] == "write"
        )
        return {
            "events": summary["events"],
            "lost": summary["lost_events"],
            "seconds": elapsed,
            "events_per_s": (summary["events"] + summary["lost_events"]) / elapsed,
            "exact": writes == 2 * pairs * storms,
        }


def startup_once(cache: bool = True) -> dict:
    """One start-up of `record -a`. cache: with the compiled-probe cache
    (its default directory, where `lockprof precompile` left the entry), else
    with LOCKPROF_CACHE_DIR=off (a full compile, as on a kernel or BCC that
    nothing precompiled)."""
    env = {**os.environ, CACHE_DIR_ENV: os.environ.get(CACHE_DIR_ENV, str(DEFAULT_DIR))}
    if not cache:
        env[CACHE_DIR_ENV] = "off"
    begin = time.monotonic()
    lp = subprocess.Popen(
        [*LOCKPROF, "record", "-a", "-o", "/tmp/lpstart.lpr"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert lp.stderr is not None
    attached = first_row = None
    for line in lp.stderr:
        if attached is None and "attached" in line:
            attached = time.monotonic() - begin
        if line.startswith("["):
            first_row = time.monotonic() - begin
            break
    lp.send_signal(signal.SIGINT)
    lp.communicate(timeout=120)
    compiled = profiler.load("/tmp/lpstart.lpr").meta.get("probes_compile") or {}
    Path("/tmp/lpstart.lpr").unlink(missing_ok=True)
    return {
        "attached_s": attached,
        "first_row_s": first_row,
        "from_cache": compiled.get("from_cache"),
        "compile_s": compiled.get("seconds"),
    }


def _startup_rows(label: str, starts: list[dict]) -> list[str]:
    firsts = [s["first_row_s"] for s in starts if s["first_row_s"] is not None]
    attaches = [s["attached_s"] for s in starts if s["attached_s"] is not None]
    compiles = [s["compile_s"] for s in starts if s["compile_s"] is not None]
    return [
        f"| seconds to 'attached', {label} | {statistics.median(attaches):.2f} | "
        f"{min(attaches):.2f}-{max(attaches):.2f} |",
        f"| seconds building the probes (meta.probes_compile), {label} | "
        f"{statistics.median(compiles):.2f} | {min(compiles):.2f}-{max(compiles):.2f} |",
        f"| seconds to the first live row (-i 1), {label} | {statistics.median(firsts):.2f} | "
        f"{min(firsts):.2f}-{max(firsts):.2f} |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--storms", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=200_000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (BPF)", file=sys.stderr)
        return 1
    subprocess.run(["make", "-s", "-C", str(REPO / "workloads")], check=True)
    # The entry the cached start-ups use, as make setup leaves it. Without
    # it (the cache off, a key refused) the table's "from the cache" row says so.
    precompiled = subprocess.run([*LOCKPROF, "precompile"], capture_output=True, text=True)
    if precompiled.returncode != 0:
        print(f"bench: {precompiled.stderr.strip()}", file=sys.stderr)
    streams, cached, compiled = [], [], []
    for rep in range(args.reps):
        streams.append(stream_once(args.storms, args.pairs))
        # in alternating order, so that both see the same stretches of a noisy host
        order = (True, False) if rep % 2 == 0 else (False, True)
        pair = {cache: startup_once(cache) for cache in order}
        cached.append(pair[True])
        compiled.append(pair[False])
        print(f"rep {rep + 1}: {streams[-1]} {pair}", file=sys.stderr)
    rates = [s["events_per_s"] for s in streams]
    lost = [s["lost"] for s in streams]
    print(
        "\n".join(
            [
                f"Command: `sudo .venv/bin/python bench/stream.py --reps {args.reps} "
                f"--storms {args.storms} --pairs {args.pairs}` (part of `make bench`).",
                "",
                "| figure | median | min-max |",
                "|---|---|---|",
                f"| events/s offered to the stream ({args.storms} storms, -t 1ns) | "
                f"{statistics.median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} |",
                f"| events lost per run (counted, ringbuf_full) | {statistics.median(lost):,.0f} "
                f"| {min(lost):,}-{max(lost):,} |",
                f"| in-kernel write acquisitions exact in every run | "
                f"{all(s['exact'] for s in streams)} | |",
                f"| start-ups from the compiled-probe cache, as asked | "
                f"{sum(s['from_cache'] is True for s in cached)} of {len(cached)} | |",
                f"| start-ups compiling, as asked | "
                f"{sum(s['from_cache'] is False for s in compiled)} of {len(compiled)} | |",
                *_startup_rows("cache entry (as after make setup)", cached),
                *_startup_rows("no entry (LOCKPROF_CACHE_DIR=off)", compiled),
                "",
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
