"""`lockprof doctor`'s probe options: what --overhead measures (no root)."""

from __future__ import annotations

import pytest

from profiler.cli import doctor as doctor_cli
from profiler.options import CollectOptions

from .helpers import one_error_line, run_main


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["-t", "1ms"], "--threshold"),
        (["--stack-threshold", "1ms"], "--stack-threshold"),
        (["--stack-rate", "0"], "--stack-rate"),
        (["--no-mmap-lock"], "--no-mmap-lock"),
        (["--no-contention"], "--no-contention"),
        (["--lock-types", "spinlock"], "--lock-types"),
        (["--offcpu"], "--offcpu"),
        (["--sample"], "--sample"),
        (["--sample-hz", "49"], "--sample-hz"),
        (["-p", "1"], "--pid"),
        (["--seconds", "5"], "--seconds"),
    ],
)
def test_probe_options_without_overhead_are_refused(capsys, argv, named):
    code, _out, err = run_main(capsys, "doctor", *argv)
    line = one_error_line(code, err)
    assert code == 2
    assert f"{named} only applies with --overhead" in line


def test_sample_hz_without_sample_is_refused(capsys):
    code, _out, err = run_main(capsys, "doctor", "--overhead", "--sample-hz", "50")
    assert "--sample-hz needs --sample" in one_error_line(code, err)


def test_nothing_to_trace_is_refused(capsys):
    code, _out, err = run_main(capsys, "doctor", "--overhead", "--no-mmap-lock", "--no-contention")
    assert "leave nothing to trace" in one_error_line(code, err)


def _measured_options(monkeypatch, capsys, *argv) -> CollectOptions:
    """The options doctor hands the measurement, the checks and the
    measurement itself replaced (they need root)."""
    seen = {}

    def measure(seconds, options, working, target_tgid):
        seen["options"] = options
        seen["target_tgid"] = target_tgid
        return None

    monkeypatch.setattr(doctor_cli, "_measure_overhead", measure)
    monkeypatch.setattr(doctor_cli.doctor, "run_checks", lambda: [])
    run_main(capsys, "doctor", "--overhead", *argv)
    return seen["options"]


def test_overhead_measures_attach_defaults(monkeypatch, capsys):
    options = _measured_options(monkeypatch, capsys)
    defaults = CollectOptions()
    assert options.families == defaults.families
    assert options.threshold_ns == defaults.threshold_ns == 100_000
    assert options.stack_rate == defaults.stack_rate
    assert options.stack_threshold_ns == defaults.stack_threshold_ns
    assert options.lock_types is None


def test_overhead_takes_attach_options(monkeypatch, capsys):
    options = _measured_options(
        monkeypatch,
        capsys,
        "-t",
        "2ms",
        "--stack-rate",
        "0",
        "--no-mmap-lock",
        "--lock-types",
        "spinlock,mutex",
        "--offcpu",
        "--sample",
        "--sample-hz",
        "49",
    )
    assert options.families == ("contention", "offcpu", "sample")
    assert options.threshold_ns == 2_000_000
    assert options.stack_rate == 0
    assert options.lock_types == ("spinlock", "mutex")
    assert options.sample_hz == 49


def test_settings_line_names_what_was_measured():
    from profiler.overhead import measured_settings

    options = CollectOptions(families=("mmap_lock", "contention", "sample"))
    options.lock_types = ("spinlock",)
    line = doctor_cli._settings_line(measured_settings(options))
    assert line == (
        "measured system-wide with probes of mmap_lock, contention, sample; "
        "events kept from 100us; stacks of waits from 10us, at most 200 per CPU per second "
        "(and as many naming stacks); "
        "lock types spinlock; sampling at 99 Hz"
    )
    options.stack_rate = 0
    assert "stacks of waits from 10us, every one;" in doctor_cli._settings_line(
        measured_settings(options)
    )


def test_system_line_sums_the_probes_run_time_over_the_phase():
    from profiler.overhead import OverheadResult, ProbeCost

    probes = [
        ProbeCost(
            "a", "x:a", "raw_tracepoint", 10, 80.0, 30.0, system_runs=3000, system_run_ns=240_000
        ),
        ProbeCost(
            "b", "x:b", "raw_tracepoint", 10, 300.0, 40.0, system_runs=1000, system_run_ns=360_000
        ),
    ]
    cost = OverheadResult(2.0, probes, {}, {}, {}, system_seconds=2.0)
    # 600 us of program time over 2 s: 300 us a second, 0.015% of 2 CPUs.
    assert cost.system_ns_per_s() == 300_000
    assert cost.as_dict()["system_ns_per_s"] == 300_000
    line = doctor_cli._system_line(cost, cpus=2)
    assert line.startswith(
        "this system without the load (2 s, the last column): 2,000 events/s; "
        "lockprof's programs ran 300us a second, 0.015% of 2 CPUs"
    ), line


def test_system_line_on_a_quiet_machine():
    from profiler.overhead import OverheadResult, ProbeCost

    probes = [ProbeCost("a", "x:a", "raw_tracepoint", 10, 80.0, 30.0, 2, 3_320)]
    line = doctor_cli._system_line(OverheadResult(2.0, probes, {}, {}, {}, 2.0), cpus=2)
    assert "1 event/s; lockprof's programs ran 1.66us a second, 0.000083% of 2 CPUs" in line


def test_a_mechanism_the_measurement_lacks_is_one_line_after_the_checks(monkeypatch, capsys):
    """--overhead --sample where perf sampling fails: the checks are printed
    (they say why), then one line naming what cannot be attached."""
    monkeypatch.setattr(doctor_cli.doctor, "run_checks", lambda: [])
    monkeypatch.setattr(doctor_cli.doctor, "working_mechanisms", lambda checks: {"raw_tracepoint"})
    code, out, err = run_main(capsys, "doctor", "--overhead", "--sample")
    assert "usable: yes" in out
    assert code == 3
    assert "cannot attach sample.cpu: this kernel lacks perf_event cpu-clock" in one_error_line(
        code, err
    )


def test_pid_must_exist(capsys):
    code, _out, err = run_main(capsys, "doctor", "--overhead", "-p", "999999999")
    assert one_error_line(code, err) == "lockprof: no such process: 999999999"
    assert code == 2


def test_system_line_names_the_target():
    from profiler.overhead import OverheadResult, ProbeCost

    probes = [ProbeCost("a", "x:a", "raw_tracepoint", 10, 80.0, 30.0, 4, 400)]
    cost = OverheadResult(2.0, probes, {}, {}, {"target_pid": 4321}, 2.0)
    line = doctor_cli._system_line(cost, cpus=2)
    assert line.startswith(
        "this system without the load (2 s, probes as `attach -p 4321` runs them, the last "
        "column): 2 events/s;"
    ), line
