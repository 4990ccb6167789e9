"""lockprof bench and compare on real eBPF.

mmapcount -n N does exactly N mmap+munmap pairs, i.e. 2N write acquisitions
of its mmap_lock (plus a constant few from exec, the dynamic loader and the
warm-up pair). Three runs of N and three of N/2 must compare to about -50%
write acquisitions on the command's own mmap_lock, marked significant.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from conftest import BIN, LOCKPROF

PAIRS = 20_000


def bench(tmp_path, label: str, pairs: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *LOCKPROF,
            "bench",
            "--runs",
            "3",
            "--label",
            label,
            "-o",
            f"{label}.lpset",
            "--throughput-regex",
            r"(\d+) pairs",  # mmapcount prints nothing: no throughput
            "--",
            str(BIN / "mmapcount"),
            "-n",
            str(pairs),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compare")
    results = {
        "before": bench(tmp_path, "before", PAIRS),
        "after": bench(tmp_path, "after", PAIRS // 2),
    }
    return tmp_path, results


def test_bench_writes_a_set_of_three_runs(sets):
    tmp_path, results = sets
    for label, proc in results.items():
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"run set '{label}' with 3 runs written to {label}.lpset" in proc.stderr
        assert "matched no number in the command's stdout" in proc.stderr
        path = tmp_path / f"{label}.lpset"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
        assert manifest["label"] == label
        assert [r["exit_status"] for r in manifest["runs"]] == [0, 0, 0]
        assert all(r["rusage"]["sys_s"] is not None for r in manifest["runs"])
        assert all(r["throughput"] is None for r in manifest["runs"])
        assert manifest["command"][-1] == str(PAIRS if label == "before" else PAIRS // 2)


def test_half_the_pairs_is_minus_fifty_percent_write_acquisitions(sets):
    tmp_path, _results = sets
    proc = subprocess.run(
        [*LOCKPROF, "compare", "before.lpset", "after.lpset", "--json", "-o", "compare.html"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["before"]["runs"] == document["after"]["runs"] == 3
    # Once the command has exited, a new process may get an mm at the freed
    # mm's address; the probes then stop following the address and keep the
    # owner (probes/lockprof.bpf.c lp_learn_owner), so the command's row stays
    # the command's. compare would warn otherwise.
    moved = [w for w in document["warnings"] if "no mmap_lock is owned by the target pid" in w]
    assert not moved, moved
    (writes,) = [
        v
        for v in document["verdicts"]
        if v["lock"] == "mmap_lock (target mmapcount)"
        and v["mode"] == "write"
        and v["metric"] == "acquisitions"
    ]
    # Exactly 2N per run plus the same few extra from exec and startup.
    extra = writes["before"] - 2 * PAIRS
    assert 0 <= extra < 200, writes
    assert writes["after"] == pytest.approx(PAIRS + extra, abs=5)
    assert writes["delta_pct"] == pytest.approx(-50.0, abs=0.5)
    assert writes["significant"] is True
    assert writes["verdict"] == "significant decrease"
    assert writes["ci_low_pct"] <= writes["delta_pct"] <= writes["ci_high_pct"] < 0
    (downgrades,) = [
        v
        for v in document["verdicts"]
        if v["lock"] == "mmap_lock (target mmapcount)"
        and v["mode"] == "write"
        and v["metric"] == "downgrades"
    ]
    assert downgrades["delta_pct"] == pytest.approx(-50.0, abs=0.5)
    # Only the command line differs (N vs N/2); same kernel, CPUs, mechanisms.
    mismatches = [w for w in document["warnings"] if " differs" in w]
    assert len(mismatches) == 1 and mismatches[0].startswith("command line differs"), mismatches
    assert "lockprof: warning: command line differs" in proc.stderr
    assert any(line.startswith("sys time: ") for line in document["headline"])
    assert (tmp_path / "compare.html").stat().st_size > 1_000_000  # plotly.js inline


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def test_bench_d_stops_each_runs_command(tmp_path):
    """bench -d: each run's command, and what it forked, is stopped when the
    run's collection stops (it was left running into the next run, and never
    reaped), with the status that gave, marked as lockprof's doing."""
    script = "sleep 60 & echo $!; sleep 60 & echo $!; wait"
    proc = subprocess.run(
        [*LOCKPROF, "bench", "--runs", "2", "-q", "-d", "1", "-o", "d.lpset", "--",
         "sh", "-c", script],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    with zipfile.ZipFile(tmp_path / "d.lpset") as archive:
        manifest = json.loads(archive.read("manifest.json"))
        children = [int(pid) for name in archive.namelist() if name.endswith(".stdout")
                     for pid in archive.read(name).split()]  # fmt: skip
    try:
        assert proc.returncode == 0, proc.stderr
        runs = manifest["runs"]
        assert [r["exit_status"] for r in runs] == [128 + signal.SIGTERM] * 2
        assert all(r["ended_by_lockprof"] for r in runs)
        assert "run 1/2: exit 143 (stopped)" in proc.stderr
        assert "exited with status" not in proc.stderr  # no failure reported
        assert len(children) == 4 and not any(map(_alive, children))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_bench_whose_command_fails_in_every_run_exits_1_and_keeps_the_set(tmp_path):
    """Every run of a failing command: the set is written (its data kept),
    and the status says so; it was 0, and a script went on to compare
    sets of failures."""
    proc = subprocess.run(
        [*LOCKPROF, "bench", "--runs", "2", "-q", "-o", "fail.lpset",
         "--throughput-regex", r"(\d+) x", "--", "sh", "-c", "exit 7"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "lockprof: the command failed in every run (exit status 7); "
        "the run set is written all the same"
    )
    assert "--throughput-regex '(\\d+) x' matched no number" in proc.stderr
    from profiler import runset

    assert [run.exit_status for run in runset.load(tmp_path / "fail.lpset").runs] == [7, 7]


@pytest.mark.parametrize("when", ["during a run", "between runs"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_bench_stopped_by_a_signal_exits_128_plus_n_and_keeps_the_completed_runs(
    tmp_path, signum, when
):
    """A signal during a run's collection gave 130 whatever it was, one during
    the next run's start-up 128 + N (signals.Interrupted): now 128 + N both
    ways, as for run and attach."""
    proc = subprocess.Popen(
        [*LOCKPROF, "bench", "--runs", "5", "-q", "-o", "s.lpset", "--",
         str(BIN / "lpbizzy"), "-t", "1", "-S", "3" if when == "during a run" else "0.2", "-q"],
        cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "run 2/5" in line:
            break
    time.sleep(2.0 if when == "during a run" else 0.05)
    proc.send_signal(signum)
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 128 + signum, "".join(lines)
    assert "Traceback" not in "".join(lines)
    from profiler import runset

    assert len(runset.load(tmp_path / "s.lpset").runs) >= 1
