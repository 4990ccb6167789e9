#!/usr/bin/env python3
"""Process churn: RATE short processes (/bin/true) a second for SECONDS, as a
parallel build starts compilers; each brings a new mm, so a new mmap_lock.

    python3 bench/churn.py 400 10

docs/performance.md ("Nineteenth session") runs it under `lockprof record -a`
to see whether the kernel's lock map keeps up (`stats_map_full`), and
docs/reliability.md ("Short processes") with bursts beside it;
tests/integration/test_retire.py runs it under `lockprof run -f`."""

from __future__ import annotations

import subprocess
import sys
import time


def main() -> None:
    rate, seconds = float(sys.argv[1]), float(sys.argv[2])
    start, spawned = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        subprocess.run(["/bin/true"], check=True)
        spawned += 1
        time.sleep(max(0.0, start + spawned / rate - time.monotonic()))
    print(f"spawned {spawned} in {time.monotonic() - start:.2f} s")


if __name__ == "__main__":
    main()
