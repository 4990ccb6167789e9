"""bench/toggle.py's figures over several workload processes, on made-up
windows (no root: nothing is attached)."""

import importlib.util
from pathlib import Path

import pytest

from .conftest import no_bpf_import

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toggle():
    """bench/toggle.py, loaded once: the BPF side it imports where it is
    used stays out (conftest's guard, per test, would not see a module
    fixture's imports)."""
    spec = importlib.util.spec_from_file_location("toggle", REPO / "bench" / "toggle.py")
    module = importlib.util.module_from_spec(spec)
    with no_bpf_import("bench/toggle.py"):
        spec.loader.exec_module(module)
    return module


def test_cycles_are_shared_out_as_evenly_as_can_be(toggle):
    assert toggle.process_blocks(40, 5) == [8] * 5
    assert toggle.process_blocks(7, 3) == [3, 2, 2]
    assert sum(toggle.process_blocks(31, 4)) == 31


def results_of(toggle, process_losses: list[list[float]]):
    """Results whose lp windows lose the given fractions, per process."""
    results = toggle.Results(["bare", "lp"])
    for process, losses in enumerate(process_losses):
        for loss in losses:
            results.add("bare", 1000, 1.0, {}, {}, [0] * len(toggle.CPU_TIMES))
            results.add("lp", round(1000 * (1 - loss)), 1.0, {}, {}, [0] * len(toggle.CPU_TIMES))
            results.process_of_cycle.append(process)
        results.waits_by_lock["lp"] = [{1: 10, 2: 30}] * (process + 1)
    return results


def test_the_interval_is_over_the_processes_means(toggle):
    # Two processes, each steady within itself: windows alone would give a
    # narrow interval around 3%; over two processes' means it is wide.
    results = results_of(toggle, [[0.01] * 6, [0.05] * 6])
    table = "\n".join(toggle.per_process_table(results))
    assert "| 1 | 6 | 1,000 | +1.00% |" in table
    assert "| 2 | 6 | 1,000 | +5.00% |" in table
    mean, low, high = toggle.mean_interval([0.01, 0.05])
    assert mean == pytest.approx(0.03)
    # t(1 dof) = 12.706, sd of (1%, 5%) = 2.83%, over sqrt(2)
    assert high - mean == pytest.approx(12.706 * 0.02828427 / 2**0.5, rel=1e-4)
    assert f"| lp | +3.00% | {low:+.2%} to {high:+.2%} |" in table


def test_each_process_has_its_own_mode(toggle):
    results = results_of(toggle, [[0.0] * 2, [0.0] * 2])
    results.waits_by_lock["lp"] = [{1: 100, 2: 300}, {3: 40}]
    # 400 waits over the first process's two lp windows of 1000 operations each
    assert toggle.mode_figures(results, "lp", [0]) == (0.2, 2, 0.75, 0.15)
    # both: 440 waits over 4000 operations, the busiest 300 + 40
    per_op, locks, share, _ = toggle.mode_figures(results, "lp", [0, 1])
    assert (per_op, locks) == (0.11, 3)
    assert share == pytest.approx(340 / 440)


def test_cpu_time_is_shared_out_by_kind_over_each_states_windows(toggle):
    results = toggle.Results(["bare", "lp"])
    # ticks: user nice system idle iowait irq softirq steal
    results.add("bare", 1000, 1.0, {}, {}, [10, 0, 140, 40, 0, 0, 0, 10])
    results.add("bare", 1000, 1.0, {}, {}, [10, 0, 140, 40, 0, 0, 0, 10])
    results.add("lp", 900, 1.0, {}, {}, [5, 5, 120, 50, 10, 4, 2, 4])
    table = toggle._cpu_times_table(results)
    assert "| bare | 5.0% | 70.0% | 0.0% | 20.0% | 5.0% |" in table
    assert "| lp | 5.0% | 60.0% | 3.0% | 30.0% | 2.0% |" in table


def test_cpu_times_reads_the_machines_line(toggle):
    times = toggle.cpu_times()
    assert len(times) == len(toggle.CPU_TIMES) and sum(times) > 0
