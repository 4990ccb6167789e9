"""The built-in workloads' own contracts that benchmarks rely on (no root)."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

LPBIZZY = Path(__file__).resolve().parents[2] / "workloads" / "bin" / "lpbizzy"

pytestmark = pytest.mark.skipif(not LPBIZZY.exists(), reason="workloads not built (make workloads)")


def progress(proc: subprocess.Popen) -> tuple[int, int]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    ops, ns = proc.stdout.readline().split()
    return int(ops), int(ns)


def finish(proc: subprocess.Popen) -> str:
    """Close stdin (the workers stop) and return the rest of stdout."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    out = proc.stdout.read()
    proc.wait(timeout=30)
    return out


def test_lpbizzy_progress_counts_operations_as_they_happen_and_stops_at_end_of_input():
    """bench/toggle.py's windows: each line read is answered with the
    operations so far and the clock, both rising; closing stdin stops it."""
    proc = subprocess.Popen(
        [str(LPBIZZY), "-t", "2", "-s", "65536", "-P", "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    answers = [progress(proc)]
    for _ in range(3):
        ops = answers[-1][0]
        while progress(proc)[0] == ops:
            pass
        answers.append(progress(proc))
    assert all(b[0] > a[0] and b[1] > a[1] for a, b in itertools.pairwise(answers))
    out = finish(proc)
    assert proc.returncode == 0
    total = int(out.split()[0])
    assert total >= answers[-1][0]


def test_lpbizzy_progress_with_an_operation_limit_ends_on_exactly_that_many():
    proc = subprocess.Popen(
        [str(LPBIZZY), "-t", "2", "-s", "65536", "-n", "40", "-P", "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    while progress(proc)[0] < 80:
        pass
    assert progress(proc)[0] == 80  # both threads stopped at 40
    out = finish(proc)
    assert out.splitlines()[0].startswith("80 records in ")
