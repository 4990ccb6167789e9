"""lockprof bench --locks on real eBPF, and compare --pair-class of the two
lock implementations (what `make demo-patch` does, with exact counts).

rwbench -t T -n N -w W does exactly T*floor(N/W) writes and T*(N-floor(N/W))
reads (workloads/rwbench.c), each a lock+unlock of one lock; with -l
rw_mutex the writer calls percpu_counter_sum at least once per write.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import BIN, LOCKPROF

from profiler import doctor, runset

THREADS, OPS, WRITE_EVERY = 2, 500, 10
WRITES = THREADS * (OPS // WRITE_EVERY)
READS = THREADS * OPS - WRITES
LABEL = "pthread_rwlock -> rw_mutex (unnamed)"

pytestmark = pytest.mark.skipif(
    not doctor.mechanism_works("uprobe"), reason="doctor: uprobe does not work here"
)


def bench(tmp_path: Path, label: str, spec: str, lock: str) -> subprocess.CompletedProcess:
    options = ["--runs", "2", "-q", "--label", label, "-o", f"{label}.lpset", "--no-contention"]
    options += ["--locks", spec, "--throughput-regex", r"(\d+) ops/s"]
    argv = [str(BIN / "rwbench"), "-l", lock, "-t", str(THREADS), "-n", str(OPS)]
    return subprocess.run(
        [*LOCKPROF, "bench", *options, "--", *argv, "-w", str(WRITE_EVERY)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench-locks")
    done = {
        "pthread": bench(tmp_path, "pthread", "pthread_rwlock", "pthread"),
        "rw_mutex": bench(tmp_path, "rw_mutex", f"rw_mutex@{BIN / 'librw_mutex.so'}", "rw_mutex"),
    }
    return tmp_path, done


def test_bench_probes_the_spec_in_every_run(sets):
    tmp_path, done = sets
    for label, lock_class in (("pthread", "pthread_rwlock"), ("rw_mutex", "rw_mutex")):
        assert done[label].returncode == 0, done[label].stderr
        loaded = runset.load_side(tmp_path / f"{label}.lpset")
        assert len(loaded.runs) == 2
        for run in loaded.runs:
            assert run.recording.meta["lock_specs"][0]["name"] == lock_class
            intervals = run.recording.intervals.merge(
                run.recording.locks, on=["lock", "flags", "source"]
            )
            spec = intervals[intervals["lock_class"] == lock_class]
            per_mode = spec.groupby("mode")["acquisitions"].sum().to_dict()
            assert per_mode["read"] == READS and per_mode["write"] == WRITES
            if lock_class == "rw_mutex":
                assert per_mode["sum"] >= WRITES
            else:
                assert "sum" not in per_mode
        with zipfile.ZipFile(tmp_path / f"{label}.lpset") as archive:
            manifest = json.loads(archive.read("manifest.json"))
        assert [r["throughput"] is not None for r in manifest["runs"]] == [True, True]
    # The run line's acquisitions leave out the sum calls: reads, writes and
    # the command's few mmap_lock acquisitions.
    line = next(ln for ln in done["rw_mutex"].stderr.splitlines() if ln.startswith("run 1/2"))
    acquisitions = int(line.split(" acquisitions")[0].rsplit(", ", 1)[1].replace(",", ""))
    assert READS + WRITES <= acquisitions < READS + WRITES + 500


def test_compare_pairs_the_two_implementations_mode_by_mode(sets):
    tmp_path, _done = sets
    sides = ["pthread.lpset", "rw_mutex.lpset", "-o", "compare-patch.html"]
    done = subprocess.run(
        [*LOCKPROF, "compare", "--pair-class", "pthread_rwlock=rw_mutex", "--json", *sides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    by = {(v["mode"], v["metric"]): v for v in doc["verdicts"] if v["lock"] == LABEL}
    for mode, count in (("read", READS), ("write", WRITES)):
        entry = by[(mode, "acquisitions")]
        assert entry["before"] == entry["after"] == count
        # Two runs a side are too few for a verdict (profiler.compare.MIN_RUNS).
        assert entry["significant"] is None
        assert entry["verdict"] == "too few runs to judge (2 per side; need at least 3)"
        assert by[(mode, "wait_total_ns")]["after"] > 0
        assert by[(mode, "hold_p99_ns")]["before"] > 0 and by[(mode, "hold_p99_ns")]["after"] > 0
    calls = by[("sum", "acquisitions")]
    assert calls["name"] == "sum calls" and calls["before"] == 0 and calls["after"] >= WRITES
    assert by[("sum", "wait_total_ns")]["after"] > 0
    assert (tmp_path / "compare-patch.html").stat().st_size > 1_000_000
