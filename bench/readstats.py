#!/usr/bin/env python3
"""How long one read of the kernel's aggregate map takes (root):
BpfSession.read_stats, with the map filled by 300 short mmapcount processes
and an lpbizzy run (the best of 12 reads; the row count varies a little).

    sudo .venv/bin/python bench/readstats.py
    sudo LPROOT=/tmp/wt-old PYTHONPATH=/tmp/wt-old .venv/bin/python bench/readstats.py
        (another revision's code, checked out with `git worktree add`)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("LPROOT", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
BIN = Path(__file__).resolve().parents[1] / "workloads" / "bin"

import toggle  # noqa: E402  (lockprof's programs as `record -a` loads them)


def main() -> int:
    session, switches = toggle.lockprof_switches()
    try:
        switches["lp"].set(True)
        for proc in [subprocess.Popen([str(BIN / "mmapcount"), "-n", "2000"]) for _ in range(300)]:
            proc.wait()
        subprocess.run(
            [str(BIN / "lpbizzy"), "-t", "2", "-S", "2", "-q"],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        switches["lp"].set(False)
        best, rows = float("inf"), 0
        for _ in range(12):
            start = time.perf_counter()
            rows = len(session.read_stats(0).rows)
            best = min(best, time.perf_counter() - start)
        print(
            f"{rows} rows: read_stats best {best * 1e3:.2f} ms ({best / rows * 1e6:.1f} us a row)"
        )
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
