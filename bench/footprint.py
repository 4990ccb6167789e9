#!/usr/bin/env python3
"""lockprof's memory over a long system-wide run, and report time on its
recording (root).

`lockprof record -a` runs for --minutes while the ebizzy-like workload and an
mmap/munmap storm run in turns; lockprof's RSS is sampled every 10 s, and its
peak (VmHWM) is followed to its exit, so that the end of the run (writing
the recording, the final summary) counts too. Then `lockprof report` is
timed on the recording.

    sudo .venv/bin/python bench/footprint.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "workloads" / "bin"
LOCKPROF = [sys.executable, "-m", "profiler.cli.main"]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import proc_status  # noqa: E402  (bench/ scripts run as files)


class EndPeak:
    """lockprof's VmHWM (its peak RSS since it started), read every 20 ms
    on a thread until it exits: the last reading is the peak of the whole
    run, its end included (within 20 ms of the exit)."""

    def __init__(self, pid: int) -> None:
        self.mb = 0.0
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._done.is_set():
            high = proc_status(self._pid, ("VmHWM",)).get("VmHWM")
            if high is None:
                return  # exited
            self.mb = max(self.mb, high)
            time.sleep(0.02)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (BPF)", file=sys.stderr)
        return 1
    subprocess.run(["make", "-s", "-C", str(REPO / "workloads")], check=True)
    with tempfile.TemporaryDirectory(prefix="lpfoot-") as tmp:
        rec, html = Path(tmp) / "long.lpr", Path(tmp) / "long.html"
        lp = subprocess.Popen(
            [*LOCKPROF, "record", "-a", "-q", "-o", str(rec)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        assert lp.stderr is not None
        for line in lp.stderr:
            if "attached" in line:
                break
        load = subprocess.Popen(
            [
                "sh",
                "-c",
                f"while :; do {BIN}/lpbizzy -t 2 -S 5 -q >/dev/null; "
                f"{BIN}/mmapcount -n 200000 >/dev/null; done",
            ],
            start_new_session=True,
        )
        samples: list[tuple[float, float]] = []
        private: list[float] = []
        proportional: list[float] = []
        start = time.monotonic()
        end = start + args.minutes * 60
        while time.monotonic() < end:
            memory = proc_status(lp.pid)
            if {"VmRSS", "RssAnon", "Pss"} <= memory.keys():
                samples.append((time.monotonic() - start, memory["VmRSS"]))
                private.append(memory["RssAnon"])
                proportional.append(memory["Pss"])
            time.sleep(10)
        os.killpg(load.pid, signal.SIGKILL)
        load.wait()
        peak = EndPeak(lp.pid)
        lp.send_signal(signal.SIGINT)
        _out, lp_err = lp.communicate(timeout=600)
        peak.stop()
        if lp.returncode != 0 or not rec.exists():
            raise SystemExit(
                f"lockprof record exited {lp.returncode} without a recording: {lp_err.strip()}"
            )
        began = time.monotonic()
        done = subprocess.run(
            [*LOCKPROF, "report", str(rec), "-o", str(html)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"lockprof report failed: {done.stderr.strip()}")
        report_s = time.monotonic() - began
        rec_mb = rec.stat().st_size / 2**20
        html_mb = html.stat().st_size / 2**20
    first_minute = [v for t, v in samples if t <= 60] or [samples[0][1]]
    last_minute = [v for t, v in samples if t >= samples[-1][0] - 60]
    print(
        "\n".join(
            [
                f"Command: `sudo .venv/bin/python bench/footprint.py --minutes {args.minutes:g}` "
                "(part of `make bench`).",
                "",
                "| figure | value |",
                "|---|---|",
                f"| lockprof RSS after 1 minute (MB, max) | {max(first_minute):.0f} |",
                f"| lockprof RSS in the last minute (MB, max) | {max(last_minute):.0f} |",
                f"| lockprof RSS peak over {args.minutes:g} min (MB) | "
                f"{max(v for _t, v in samples):.0f} |",
                f"| lockprof peak RSS, the end of the run included (VmHWM, MB) | {peak.mb:.0f} |",
                f"| lockprof Pss (shared pages divided among their users) first / last / peak "
                f"(MB) | {proportional[0]:.0f} / {proportional[-1]:.0f} / "
                f"{max(proportional):.0f} |",
                f"| lockprof private memory (RssAnon) first / last / peak (MB) | "
                f"{private[0]:.0f} / {private[-1]:.0f} / {max(private):.0f} |",
                f"| recording size (MB) | {rec_mb:.1f} |",
                f"| `lockprof report` on it (s) | {report_s:.1f} |",
                f"| report size (MB) | {html_mb:.1f} |",
                "",
                "RSS samples (minute: MB): "
                + ", ".join(
                    f"{t / 60:.1f}: {v:.0f}" for t, v in samples[:: max(1, len(samples) // 12)]
                ),
                "",
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
