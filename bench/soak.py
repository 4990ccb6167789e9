#!/usr/bin/env python3
"""Soak: lockprof records the whole system for a long time under the storm
workload, with its live view on a terminal (root; run on demand, not in CI).

    sudo .venv/bin/python bench/soak.py                 # 30 minutes
    sudo .venv/bin/python bench/soak.py --minutes 3     # a short check

What runs:
- the storm: --workers shell loops, each running `mmapcount -n PAIRS -t 2`
  back to back (every run a new process: a new mm and mmap_lock, two
  threads contending on it), for the whole soak;
- `lockprof record -a -i INTERVAL -t THRESHOLD` on a pseudo-terminal, so the
  live view (rich) really draws; its output is read as it comes.

What is measured, and printed as a markdown summary:
- lockprof's memory: VmRSS, RssAnon and Pss every --sample seconds; the growth
  after a warm-up, as MB per hour from a least-squares line;
- lockprof's CPU: utime + stime over the soak;
- the live view's refreshes: every redraw of the header's elapsed time is
  timestamped on arrival; the gaps between refreshes (median, p99, max) and
  how many came later than 1.5 intervals;
- the event stream: lost events (ring buffer full) and events dropped in
  user space (--max-events), from the recording, and every nonzero
  kernel-side error counter;
- the end: how long lockprof took from SIGINT to exit (drain, build, write),
  and the recording's size.
Exit status 1 if lockprof failed, the recording does not load, or a
refresh gap exceeded --max-gap seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pty
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "workloads" / "bin"
LOCKPROF = [sys.executable, "-m", "profiler.cli.main"]
# The live view's header:
# "lockprof  the whole system  totals since start, 123.4s  5,678 events over 100us".
HEADER = re.compile(rb"lockprof  the whole system  totals since start, (\d+\.\d)s  ([\d,]+) events")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def proc_status(
    pid: int, fields: tuple[str, ...] = ("VmRSS", "RssAnon", "Pss")
) -> dict[str, float]:
    """Fields of /proc/PID/status and smaps_rollup in MB. Pss shares each
    shared page among the processes mapping it: another process using
    libLLVM (bpftrace, a second BCC tool) keeps its pages in lockprof's
    VmRSS, since a page mapped twice cannot be paged out of one of them."""
    out = {}
    for source in ("status", "smaps_rollup"):
        try:
            for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
                name = line.split(":", 1)[0]
                if name in fields and name not in out:
                    out[name] = int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
    return out


def cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Screen:
    """Reads the pseudo-terminal; timestamps each new elapsed time drawn."""

    master: int
    refreshes: list[tuple[float, float, int]] = field(default_factory=list)  # (t, elapsed, events)
    tail: bytes = b""
    bytes_read: int = 0
    escapes_from_names: int = 0

    def run(self, stop: threading.Event) -> None:
        buffer = b""
        last = None
        while not stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            self.bytes_read += len(chunk)
            buffer = (buffer + chunk)[-(1 << 16) :]
            plain = ANSI.sub(b"", buffer)
            for match in HEADER.finditer(plain):
                elapsed = float(match.group(1))
                if last is None or elapsed > last:
                    last = elapsed
                    events = int(match.group(2).replace(b",", b""))
                    self.refreshes.append((now, elapsed, events))
            buffer = buffer[-4096:]
            self.tail = (self.tail + chunk)[-8192:]


def storm(workers: int, pairs: int) -> list[subprocess.Popen]:
    loop = f"while :; do {BIN / 'mmapcount'} -n {pairs} -t 2 >/dev/null || exit 1; done"
    return [subprocess.Popen(["sh", "-c", loop], start_new_session=True) for _ in range(workers)]


def stop_storm(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0, help="lockprof -i (seconds)")
    parser.add_argument("--threshold", default="20us", help="lockprof -t")
    parser.add_argument("--workers", type=int, default=2, help="storm loops")
    parser.add_argument("--pairs", type=int, default=100_000, help="mmapcount -n per run")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the slope")
    parser.add_argument("--max-gap", type=float, default=5.0, help="worst refresh gap allowed")
    parser.add_argument("--keep", type=Path, help="keep the recording here")
    parser.add_argument(
        "--memtrace",
        type=Path,
        help="run lockprof under bench/memtrace.py, its memory breakdown to this file",
    )
    args = parser.parse_args()
    # SIGINT or SIGTERM ends the soak early, lockprof and its recording
    # included (a background job starts with SIGINT ignored; SIGTERM would
    # leave lockprof running without its pty).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    if os.geteuid() != 0:
        print("soak: needs root (BPF)", file=sys.stderr)
        return 1
    subprocess.run(["make", "-s", "-C", str(REPO / "workloads")], check=True)
    seconds = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="lpsoak-"))
    rec = args.keep or tmp / "soak.lpr"
    workers = storm(args.workers, args.pairs)
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "60"}
    lockprof = LOCKPROF
    if args.memtrace:
        lockprof = [sys.executable, str(REPO / "bench" / "memtrace.py")]
        env |= {"MEMTRACE_OUT": str(args.memtrace), "MEMTRACE_S": str(args.sample * 6)}
    started = time.monotonic()
    lp = subprocess.Popen(
        [*lockprof, "record", "-a", "-i", str(args.interval), "-t", args.threshold,
         "-o", str(rec)],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env,
    )  # fmt: skip
    os.close(slave)
    screen = Screen(master)
    done = threading.Event()
    reader = threading.Thread(target=screen.run, args=(done,), daemon=True)
    reader.start()
    samples: list[tuple[float, dict[str, float]]] = []
    try:
        while not screen.refreshes:  # attached and drawing
            if lp.poll() is not None or time.monotonic() - started > 120:
                print(screen.tail.decode(errors="replace"), file=sys.stderr)
                print("soak: lockprof did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        attached = time.monotonic()
        cpu_start = cpu_seconds(lp.pid) or 0.0
        try:
            while time.monotonic() - attached < seconds and lp.poll() is None:
                samples.append((time.monotonic() - attached, proc_status(lp.pid)))
                time.sleep(args.sample)
        except KeyboardInterrupt:  # cut short: end as at the planned end, with a report
            print("soak: interrupted; ending lockprof with SIGINT", file=sys.stderr)
        cpu_end = cpu_seconds(lp.pid) or 0.0
        samples.append((time.monotonic() - attached, proc_status(lp.pid)))
        stopping = time.monotonic()
        lp.send_signal(signal.SIGINT)
        code = lp.wait(timeout=600)
        stop_s = time.monotonic() - stopping
    finally:
        stop_storm(workers)
        if lp.poll() is None:
            lp.kill()
            lp.wait()
        time.sleep(0.3)
        done.set()
        reader.join(timeout=2)
        os.close(master)
    print(report(args, seconds, code, screen, samples, cpu_end - cpu_start, stop_s, rec, attached))
    failed = code != 0 or not rec.exists()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(screen.refreshes)]
    return 1 if failed or (gaps and max(gaps) > args.max_gap) else 0


def report(args, seconds, code, screen, samples, cpu_s, stop_s, rec, attached) -> str:
    lines = [f"## lockprof soak: {args.minutes:g} minutes, system-wide, storm workload", ""]
    uname = os.uname()
    lines += [
        f"- machine: {uname.nodename}, kernel {uname.release}, {os.cpu_count()} CPUs",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `sudo .venv/bin/python bench/soak.py --minutes {args.minutes:g} "
        f"--interval {args.interval:g} --threshold {args.threshold} --workers {args.workers} "
        f"--pairs {args.pairs}`",
        f"- lockprof exit status: {code}; SIGINT to exit (drain, build, write): {stop_s:.1f} s",
        "",
    ]
    rss = [(t, s["VmRSS"]) for t, s in samples if "VmRSS" in s]
    anon = [(t, s["RssAnon"]) for t, s in samples if "RssAnon" in s]
    late = [(t, v) for t, v in rss if t >= args.warmup]
    late_anon = [(t, v) for t, v in anon if t >= args.warmup]
    pss = [(t, s["Pss"]) for t, s in samples if "Pss" in s]
    late_pss = [(t, v) for t, v in pss if t >= args.warmup]
    if rss:
        lines += [
            "| memory | first | after warm-up | last | max | growth after warm-up |",
            "|---|---|---|---|---|---|",
        ]
        for name, points, after in (
            ("VmRSS", rss, late),
            ("RssAnon", anon, late_anon),
            ("Pss", pss, late_pss),
        ):
            if not points:
                continue
            slope = slope_per_hour(after)
            lines.append(
                f"| {name} MB | {points[0][1]:.1f} | {after[0][1] if after else float('nan'):.1f} "
                f"| {points[-1][1]:.1f} | {max(v for _, v in points):.1f} | "
                + (f"{slope:+.1f} MB/hour |" if slope is not None else "- |")
            )
        lines.append("")
        lines.append(f"- VmRSS by {_CURVE_STEP_S // 60} minutes (max in each): " + _curve(rss))
    ran_s = samples[-1][0] if samples else seconds  # less than planned if cut short
    lines.append(
        f"- lockprof CPU: {cpu_s:.1f} s over {ran_s:.0f} s "
        f"({100 * cpu_s / max(ran_s, 1):.1f}% of one CPU)"
    )
    refreshes = screen.refreshes
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(refreshes)]
    if gaps:
        slow = sum(1 for g in gaps if g > 1.5 * args.interval)
        drift = refreshes[-1][1] - (refreshes[-1][0] - refreshes[0][0]) - refreshes[0][1]
        lines.append(
            f"- live view: {len(refreshes)} refreshes; gap median {statistics.median(gaps):.3f} s, "
            f"p99 {percentile(gaps, 0.99):.3f} s, max {max(gaps):.3f} s; "
            f"{slow} gaps over {1.5 * args.interval:g} s; drift of the shown elapsed time "
            f"against the wall clock {drift:+.2f} s"
        )
    else:
        lines.append("- live view: no refresh seen")
    summary = recording_summary(rec)
    if summary is None:
        lines.append(f"- recording: {rec} does not load")
    else:
        meta, size = summary
        errors = {k: v for k, v in (meta.get("errors") or {}).items() if v}
        lines += [
            f"- recording: {size / 1e6:.1f} MB, {meta['duration_s']:.0f} s, "
            f"{meta['intervals']} intervals, {meta['events']:,} events over {args.threshold}",
            f"- events not in the recording: {meta.get('lost_events', 0):,} (the summary's "
            f"lost events: {(meta.get('errors') or {}).get('ringbuf_full', 0):,} lost in the "
            f"kernel, ring buffer full, and {meta.get('events_dropped_userspace', 0):,} "
            "dropped in user space at --max-events)",
            "- kernel-side counters: "
            + (", ".join(f"{k} {v:,}" for k, v in sorted(errors.items())) or "all zero"),
        ]
    return "\n".join(lines)


_CURVE_STEP_S = 300


def _curve(points: list[tuple[float, float]]) -> str:
    """The maximum of each 5-minute window, so a slope from an early rise
    that then levels off shows as such."""
    windows: dict[int, float] = {}
    for t, mb in points:
        window = int(t // _CURVE_STEP_S)
        windows[window] = max(windows.get(window, 0.0), mb)
    return ", ".join(
        f"{w * _CURVE_STEP_S // 60}-{(w + 1) * _CURVE_STEP_S // 60} min: {mb:.1f}"
        for w, mb in sorted(windows.items())
    )


def recording_summary(path: Path) -> tuple[dict, int] | None:
    code = (
        "import json, sys, profiler; r = profiler.load(sys.argv[1]);"
        "m = dict(r.meta, intervals=int(r.intervals['interval'].nunique()), events=len(r.events));"
        "print(json.dumps(m, default=str))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO
    )
    if done.returncode != 0:
        return None
    return json.loads(done.stdout), path.stat().st_size


if __name__ == "__main__":
    sys.exit(main())
