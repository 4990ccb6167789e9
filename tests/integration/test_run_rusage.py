"""`lockprof run` records its command's rusage as /usr/bin/time gives it,
with the probes attached: not lockprof's forked Python's faults and RSS, nor
an elapsed time rounded up to the collection loop's poll."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import LOCKPROF

from profiler import recording

TIME = "/usr/bin/time"


def run_meta(tmp_path: Path, *argv: str) -> dict:
    """The recording's meta of `lockprof run -q --json -- ARGV`."""
    out = tmp_path / "r.lpr"
    done = subprocess.run(
        [*LOCKPROF, "run", "-q", "--json", "-o", str(out), "--", *argv],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    meta = recording.load(out).meta
    assert summary["rusage"] == {k: meta["rusage"][k] for k in summary["rusage"]}
    return meta


def test_run_elapsed_is_the_commands_life(tmp_path):
    """`sleep 0.3` gave 0.3 s, not a 100 ms poll later (lpbizzy -S 0.5 gave
    0.602-0.605 s in every bench run, /bin/true 0.103 s)."""
    rusage = run_meta(tmp_path, "sleep", "0.3")["rusage"]
    assert rusage["elapsed_s"] == pytest.approx(0.3, abs=0.02)
    assert run_meta(tmp_path, "/bin/true")["rusage"]["elapsed_s"] < 0.05  # 3-6 ms; was 0.103


@pytest.mark.skipif(not os.access(TIME, os.X_OK), reason=f"no {TIME}")
def test_run_faults_and_max_rss_are_the_commands(tmp_path):
    """/bin/true: 380 minor faults and a max RSS of 19,064 KB, lockprof's
    forked Python's (/usr/bin/time: 68 and 1,024). time counts some 20
    faults of its own forked copy: the figure is no more than a few over
    time's, and no more than that 20 or so under it."""
    done = subprocess.run(
        [TIME, "-f", "%R %M", "/bin/true"], capture_output=True, text=True, check=True
    )
    faults, max_rss = map(int, done.stderr.split()[-2:])
    rusage = run_meta(tmp_path, "/bin/true")["rusage"]
    assert faults - 30 <= rusage["minor_faults"] <= faults + 5, (rusage, faults)
    assert rusage["max_rss_kb"] <= max_rss + 1024, (rusage, max_rss)
