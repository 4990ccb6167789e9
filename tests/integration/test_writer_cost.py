"""Issue 5 on real eBPF: lock specs through uprobes with exact counts, the
clear refusal of kernel specs where kprobes do not work, off-CPU time of a
percpu rw-semaphore writer, and CPU sampling.

rwbench -t T -n N -w W does exactly T*floor(N/W) writes and T*(N-floor(N/W))
reads (workloads/rwbench.c), each a lock+unlock of one lock.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, LOCKPROF, show_json

import profiler
from profiler import bpf, doctor

THREADS, OPS, WRITE_EVERY = 4, 1000, 10
WRITES = THREADS * (OPS // WRITE_EVERY)
READS = THREADS * OPS - WRITES


def _run(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LOCKPROF, "run", "-q", "-o", str(tmp_path / "rec.lpr"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


def _spec_rows(summary: dict, lock_class: str) -> dict[str, dict]:
    rows = [r for r in summary["locks"] if r["lock_class"] == lock_class]
    assert len({r["lock_addr"] for r in rows}) == 1, rows  # the workload's one lock
    return {r["mode"]: r for r in rows}


needs_uprobes = pytest.mark.skipif(
    not doctor.mechanism_works("uprobe"), reason="doctor: uprobe does not work here"
)


@needs_uprobes
@pytest.mark.parametrize(
    "spec, lock, lock_class",
    [
        (f"rw_mutex@{BIN / 'librw_mutex.so'}", "rw_mutex", "rw_mutex"),
        ("pthread_rwlock", "pthread", "pthread_rwlock"),
    ],
)
def test_uprobe_spec_counts_are_exact(tmp_path, spec, lock, lock_class):
    argv = [str(BIN / "rwbench"), "-l", lock, "-t", str(THREADS), "-n", str(OPS)]
    done = _run(tmp_path, "--locks", spec, "--", *argv, "-w", str(WRITE_EVERY))
    assert done.returncode == 0, done.stderr
    assert f"reads {READS} writes {WRITES}" in done.stdout
    rows = _spec_rows(show_json(tmp_path / "rec.lpr"), lock_class)
    read, write = rows["read"], rows["write"]
    assert (read["acquisitions"], write["acquisitions"]) == (READS, WRITES)
    assert (read["releases"], write["releases"]) == (READS, WRITES)
    assert read["still_held"] == write["still_held"] == 0
    assert read["trylock_failures"] == write["trylock_failures"] == 0
    assert read["reader_writer_ratio"] == pytest.approx(READS / WRITES)
    for row in (read, write):
        # Plausible: every wait and hold took some time, none took seconds.
        assert row["wait_ns"]["count"] == row["acquisitions"]
        assert 0 < row["wait_ns"]["p50"] < 1e9 and 0 < row["hold_ns"]["p50"] < 1e9
        assert row["hold_ns"]["count"] == row["releases"]
    if lock_class == "rw_mutex":
        # The writer's sum over reader slots: at least one call per write.
        total = rows["sum"]
        assert total["acquisitions"] >= WRITES
        assert total["wait_ns"]["count"] == total["acquisitions"]
        assert total["wait_ns"]["total"] > 0


@needs_uprobes
def test_uprobe_spec_leaves_out_other_processes(tmp_path):
    """pthread_rwlock lives in libc, which every process maps: only the
    target's calls may count."""
    noise = subprocess.Popen(
        [str(BIN / "rwbench"), "-l", "pthread", "-t", "1", "-S", "3"], stdout=subprocess.DEVNULL
    )
    try:
        argv = [str(BIN / "rwbench"), "-l", "pthread", "-t", "2", "-n", "500", "-w", "5"]
        done = _run(tmp_path, "--locks", "pthread_rwlock", "--", *argv)
    finally:
        noise.kill()
        noise.wait()
    assert done.returncode == 0, done.stderr
    rows = _spec_rows(show_json(tmp_path / "rec.lpr"), "pthread_rwlock")
    assert (rows["read"]["acquisitions"], rows["write"]["acquisitions"]) == (800, 200)


def test_kernel_spec_without_kprobes_is_refused_in_one_line(tmp_path):
    if doctor.mechanism_works("kprobe"):
        pytest.skip("kprobes work here; the refusal is for kernels without them")
    done = _run(tmp_path, "--locks", "rwsem", "--", "true", timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "lock spec rwsem" in lines[0] and "kprobe" in lines[0]
    assert not (tmp_path / "rec.lpr").exists()


def test_spec_naming_missing_functions_is_refused_before_attaching(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(
        f'name = "bad"\ntarget = "{BIN / "librw_mutex.so"}"\n'
        '[functions]\nread_lock = ["no_such_function"]\nunlock = ["rw_mutex_read_unlock"]\n'
    )
    done = _run(tmp_path, "--locks", str(spec), "--", "true", timeout=60)
    assert done.returncode != 0
    assert "has no function no_such_function" in done.stderr
    assert "attached" not in done.stderr


def test_offcpu_reports_the_percpu_rwsem_writers_blocked_time(tmp_path):
    """cgmove writes cgroup.procs: each move takes cgroup_threadgroup_rwsem
    for write against forking readers."""
    done = _run(tmp_path, "--offcpu", "--", str(BIN / "cgmove"), "-S", "2", "-f", "2")
    if done.returncode != 0 and "cgroup" in done.stdout + done.stderr:
        pytest.skip(f"cgmove cannot run here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    summary = show_json(tmp_path / "rec.lpr")
    writers = [
        r
        for r in summary["locks"]
        if r.get("source") == "offcpu"
        and r["lock"].startswith("percpu_down_write")
        and r["mode"] == "write"
    ]
    assert writers, [r["lock"] for r in summary["locks"] if r.get("source") == "offcpu"]
    writer = max(writers, key=lambda r: r["wait_ns"]["total"])
    assert writer["lock_class"] == "percpu-rwsem"
    assert writer["caller"] == "cgroup_procs_write_start"
    assert writer["wait_ns"]["count"] > 0 and writer["wait_ns"]["total"] > 0
    parts = writer["offcpu_components_ns"]
    assert sum(parts.values()) == writer["wait_ns"]["total"]
    assert set(parts) <= {"grace_period", "reader_drain", "writer_wait"}
    assert "cgmove" in writer["tasks"]


def test_sampling_finds_percpu_counter_sum_or_says_why(tmp_path):
    if not doctor.mechanism_works("perf_event"):
        pytest.skip("doctor: perf_event sampling does not work here")
    # Exiting processes free their mm: __mmdrop sums the rss percpu counters.
    forks = ["sh", "-c", "i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done"]
    done = _run(tmp_path, "--sample", "--sample-hz", "9999", "--cpus", "64", "--", *forks)
    assert done.returncode == 0, done.stderr
    summary = show_json(tmp_path / "rec.lpr")
    cost = summary["writer_cost"]
    assert cost is not None and cost["online_cpus"] == summary["cpus"]
    assert cost["kernel_samples"] > 0
    assert "sampling" in cost["method"]
    if cost["samples"] == 0:
        pytest.skip(
            f"__percpu_counter_sum took none of {cost['kernel_samples']} kernel samples "
            "at 9999 Hz: too short on this kernel to be sampled in this run"
        )
    assert cost["estimated_cpu_s"] > 0 and cost["top_callers"]
    # --cpus given at collection is kept in the recording's meta.
    assert cost["what_if"]["cpus"] == 64
    assert cost["what_if"]["estimated_cpu_s"] == pytest.approx(
        cost["estimated_cpu_s"] * 64 / cost["online_cpus"]
    )


def test_offcpu_keeps_no_start_for_exited_tasks(tmp_path, monkeypatch):
    """An exiting thread's last switch (TASK_DEAD) blocks it for good: its
    start time must not stay in the off-CPU start map, which then filled up
    (offcpu_map_full) after as many exits as it has entries, and every later
    task went untimed. 300 threads started and joined one after another, in
    a map capped at 64 entries: with the leak, 236 or more failures."""
    monkeypatch.setenv(bpf.MAX_ENTRIES_ENV, "64")
    threads = (
        "import threading\n"
        "for _ in range(300):\n"
        "    t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
    )
    done = _run(tmp_path, "--offcpu", "--", sys.executable, "-c", threads)
    assert done.returncode == 0, done.stderr
    summary = show_json(tmp_path / "rec.lpr")
    assert summary["errors"].get("offcpu_map_full", 0) == 0, summary["errors"]
    offcpu = profiler.load(tmp_path / "rec.lpr").table("offcpu")
    # The joins were traced: the main thread blocked on each thread's exit.
    assert offcpu["count"].sum() >= 300, "too few blocks seen: the test proves nothing"
