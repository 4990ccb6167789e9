"""The workload of tests/data/hostile-comm.lpr (run as root from the repo):

    lockprof run -i 0.5 -t 20us -o tests/data/hostile-comm.lpr -- \
        /usr/bin/python3 tests/data/hostile_workload.py 2

Three threads named like markup (comm `</script><b>x`, 14 bytes) map, touch and
unmap memory, so they contend on their process's mmap_lock (read for page
faults, write for mmap/munmap) and on page-table spinlocks. A child process
reads /proc/PARENT/maps in a loop: a foreign task taking the target's
mmap_lock. The report tests use the recording to check that hostile names
stay text.
"""

import ctypes
import mmap
import os
import subprocess
import sys
import threading
import time

NAME = b"</script><b>x"
PR_SET_NAME = 15
libc = ctypes.CDLL(None)


def storm(seconds: float) -> None:
    libc.prctl(PR_SET_NAME, NAME, 0, 0, 0)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        region = mmap.mmap(-1, 1 << 20)
        for offset in range(0, 1 << 20, 4096 * 16):
            region[offset] = 1
        region.close()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    libc.prctl(PR_SET_NAME, NAME, 0, 0, 0)
    reader = subprocess.Popen(
        [
            "sh",
            "-c",
            f"end=$(($(date +%s) + {int(seconds + 0.999)})); "
            f'while [ "$(date +%s)" -lt "$end" ]; do cat /proc/{os.getpid()}/maps; done >/dev/null',
        ]
    )
    threads = [threading.Thread(target=storm, args=(seconds,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader.wait()


if __name__ == "__main__":
    main()
