"""lockprof bench: run a command N times under the profiler, keep every run."""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import signal
import statistics
import sys
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from profiler import outputs, recording, render, runset, summary
from profiler.capture import (
    CapturedCommand,
    OutputCapture,
    adopt_orphans,
    compile_throughput,
    parse_throughput,
)
from profiler.cli.common import (
    NO_CONTENTION_OPTION,
    NO_MMAP_LOCK_OPTION,
    THRESHOLD_OPTION,
    FiniteFloatRange,
    build_options,
    checked_spec,
    locks_option,
    refuse_unknown_option,
    spec_files,
    stack_options,
)
from profiler.errors import LockprofError
from profiler.runset import Run, RunSet
from profiler.session import CollectOptions, collect, require_privileges
from profiler.targets import check_command

MAX_RUNS = 1000


def one_run(
    argv: list[str],
    options: CollectOptions,
    working: set[str],
    regex,
    echo: bool,
) -> Run:
    """One collection of the command, its stdout captured (and echoed on stderr)."""
    capture = OutputCapture(sys.stderr.buffer if echo else None, runset.STDOUT_CAP)
    try:
        target = CapturedCommand(argv, capture.write_fd)
    except BaseException:
        capture.finish(timeout=0)
        raise
    capture.start()
    try:
        rec = collect(options, target, working)
    except BaseException:
        _stop_after_failure(target)
        raise
    finally:
        output = capture.finish()
    throughput = parse_throughput(regex, output.decode(errors="replace")) if regex else None
    return Run(
        recording=rec,
        throughput=throughput,
        stdout=output,
        stdout_truncated=capture.truncated,
    )


def _stop_after_failure(target: CapturedCommand) -> None:
    """Collection failed: a command it had released must not run on (into
    the next run, or after lockprof exits); one it never released was
    killed and reaped already (CommandTarget.abandon)."""
    with contextlib.suppress(ChildProcessError, ProcessLookupError):
        target.end()  # stops it, and the orphans it left


def _totals(rec: recording.Recording) -> tuple[int, int]:
    """Acquisitions and contended acquisitions over every lock and mode (a
    lock spec's "sum" rows count calls of its sum function: left out)."""
    rows = [r for r in summary.lock_rows(rec) if r.get("mode") != "sum"]
    return (
        sum(r.get("acquisitions") or 0 for r in rows),
        sum(r.get("contended") or 0 for r in rows),
    )


def run_line(index: int, total: int, run: Run) -> str:
    rusage = run.rusage
    acquisitions, contended = _totals(run.recording)
    parts = [f"run {index}/{total}: exit {_exit_text(run)}"]
    for key, name in (("elapsed_s", "elapsed"), ("user_s", "user"), ("sys_s", "sys")):
        if rusage.get(key) is not None:
            parts.append(f"{name} {rusage[key]:.3f}s")
    if rusage.get("minor_faults") is not None:
        parts.append(f"minor faults {rusage['minor_faults']:,}")
    parts.append(f"{acquisitions:,} acquisitions, {contended:,} contended")
    if run.throughput is not None:
        parts.append(f"throughput {run.throughput:,.6g}")
    return ", ".join(parts)


def _exit_text(run: Run) -> str:
    """143 (stopped): lockprof stopped the command when collection did (-d)."""
    return f"{run.exit_status} (stopped)" if run.ended_by_lockprof else str(run.exit_status)


_COLUMNS = [
    # (header, format of one value)
    ("elapsed s", "{:.3f}"),
    ("user s", "{:.3f}"),
    ("sys s", "{:.3f}"),
    ("minor faults", "{:,.0f}"),
    ("acquisitions", "{:,.0f}"),
    ("throughput", "{:,.6g}"),
]
# Figures of any scale (a command's own throughput): their mean row is shown
# to the precision of their spread (_by_spread), not by their format.
_BY_SPREAD = {"throughput"}


def _stat(values: list[float], fmt: str, by_spread: bool = False) -> str:
    if not values:
        return "-"
    if by_spread:
        return _by_spread(values)
    mean = fmt.format(statistics.fmean(values))
    if len(values) < 2:
        return mean
    return f"{mean} ± {fmt.format(statistics.stdev(values))}"


def _by_spread(values: list[float]) -> str:
    """Mean ± sd of a figure of any scale (a command's own throughput): the
    sd to 3 significant digits and the mean to the same decimal place, not
    "11,783 ± 2,381.92"."""
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    scale = sd if sd > 0 else abs(mean)
    decimals = max(0, 2 - math.floor(math.log10(scale))) if scale > 0 else 0
    text = f"{mean:,.{decimals}f}"
    return text if len(values) < 2 else f"{text} ± {sd:,.{decimals}f}"


def summary_table(result: RunSet) -> Table:
    table = Table(
        title=render.safe_text(f"{result.label}: {shlex.join(result.command)}"),
        title_justify="left",
        header_style="bold",
        pad_edge=False,
    )
    table.add_column("run")
    table.add_column("exit", justify="right")
    for header, _fmt in _COLUMNS:
        table.add_column(header, justify="right")
    columns: dict[str, list[float]] = {h: [] for h, _f in _COLUMNS}
    for i, run in enumerate(result.runs, start=1):
        rusage = run.rusage
        values = {
            "elapsed s": rusage.get("elapsed_s"),
            "user s": rusage.get("user_s"),
            "sys s": rusage.get("sys_s"),
            "minor faults": rusage.get("minor_faults"),
            "acquisitions": _totals(run.recording)[0],
            "throughput": run.throughput,
        }
        for name, value in values.items():
            if value is not None:
                columns[name].append(float(value))
        table.add_row(
            str(i),
            _exit_text(run),
            *("-" if values[h] is None else f.format(values[h]) for h, f in _COLUMNS),
        )
    means = (_stat(columns[h], f, h in _BY_SPREAD) for h, f in _COLUMNS)
    table.add_row("mean ± sd", "", *means, style="bold")
    return table


@click.command(
    "bench",
    # Options end at CMD, as for run.
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--runs",
    type=click.IntRange(1, MAX_RUNS),
    default=3,
    show_default=True,
    help="How many times to run the command.",
)
@click.option("--label", help="Name of this side, e.g. before or after (default: FILE's stem).")
@click.option(
    "-o",
    "--output",
    type=outputs.OutputFile(stdout_dash=False),
    required=True,
    help="The run set file to write (.lpset).",
)
@click.option(
    "--throughput-regex",
    metavar="RE",
    help="Throughput from the command's stdout: the last match's first group "
    r"(else its first number), e.g. '(\d+) records/s'.",
)
@click.option(
    "-d",
    "--duration",
    type=FiniteFloatRange(min=0.1, max=7 * 86400),
    metavar="SECONDS",
    help="Stop each run's collection after SECONDS (default: the command's exit), "
    "and the command if still running (SIGTERM, then SIGKILL after 1 s).",
)
@click.option(
    "-i",
    "--interval",
    type=FiniteFloatRange(min=0.1, max=3600),
    metavar="SECONDS",
    default=1.0,
    show_default=True,
    help="Seconds between aggregate snapshots.",
)
@THRESHOLD_OPTION
@stack_options
@NO_MMAP_LOCK_OPTION
@NO_CONTENTION_OPTION
@locks_option(
    "Also probe a lock's own functions in every run, as `lockprof run --locks`: "
    "a built-in spec (rw_mutex, rwsem, percpu_counter_sum, pthread_rwlock), NAME@BINARY, "
    "or a TOML file."
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Do not echo the command's stdout (it is still kept in the set).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the set's manifest (runs, rusage) as JSON."
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, required=True, metavar="CMD...")
def command(
    argv,
    runs,
    label,
    output,
    throughput_regex,
    duration,
    interval,
    threshold,
    stack_threshold,
    stack_rate,
    no_mmap_lock,
    no_contention,
    lock_spec,
    quiet,
    as_json,
) -> None:
    """Run CMD --runs times, each under the profiler as `lockprof run` does,
    and write every run's recording, exit status, rusage, stdout and
    throughput to one run set file for `lockprof compare`.

    The command's stdout is echoed on lockprof's stderr as it runs (-q: not
    echoed) and kept in the set.

    \b
    Examples:
      lockprof bench --runs 3 --label before -o before.lpset \\
          --throughput-regex '(\\d+) records/s' -- workloads/bin/lpbizzy -S 3
      lockprof bench --runs 3 --label after -o after.lpset \\
          --throughput-regex '(\\d+) records/s' -- workloads/bin/lpbizzy -S 3 -R
      lockprof compare before.lpset after.lpset -o compare.html
    """
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LockprofError("no command given: lockprof bench ... -- CMD [ARGS...]", exit_code=2)
    refuse_unknown_option(argv)
    regex = compile_throughput(throughput_regex)
    outputs.refuse_clobbering(
        output, spec_files(lock_spec), "-o", "a run set", kind=outputs.RUN_SET
    )
    check_command(argv[0])
    if output.is_dir():
        raise LockprofError(f"output path {output} is a directory", exit_code=2)
    outputs.check_writable(output)
    options = build_options(duration, interval, threshold, no_mmap_lock, no_contention)
    options.stack_threshold_ns = stack_threshold
    options.stack_rate = stack_rate
    require_privileges()
    adopt_orphans()  # a command's background children are stopped with its run
    if lock_spec:
        options.locks = (checked_spec(lock_spec),)
    from profiler.doctor import cheap_mechanisms

    result = RunSet(
        label=label or output.stem,
        command=argv,
        throughput_regex=throughput_regex,
    )
    err = render.console(stderr=True)
    try:
        interrupted = _run_all(result, runs, options, cheap_mechanisms(), regex, quiet, err)
    except KeyboardInterrupt:
        interrupted = "interrupted"
    except LockprofError as exc:
        kept = _save_partial(result, output)
        raise LockprofError(f"{exc}{kept}", exit_code=exc.exit_code) from None
    if interrupted:
        kept = _save_partial(result, output) or "; no run completed, nothing written"
        raise LockprofError(
            f"{interrupted}: the interrupted run is not kept{kept}",
            exit_code=_signal_status(interrupted),
        )
    runset.save(result, output)
    if as_json:
        json.dump(runset.manifest(result), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        render.console().print(summary_table(result))
    if regex is not None and all(run.throughput is None for run in result.runs):
        err.print(
            Text(
                render.safe_text(
                    f"lockprof: --throughput-regex {shlex.quote(throughput_regex)} matched no "
                    "number in the command's stdout"
                ),
                style="yellow",
            )
        )
    err.print(
        Text(
            render.safe_text(
                f"lockprof: run set {result.label!r} with "
                f"{render.counted(len(result.runs), 'run')} written to {output}"
            )
        )
    )
    _refuse_all_failed(result)


def _refuse_all_failed(result: RunSet) -> None:
    """Status 1 when the command failed in every run (the set is written):
    a script would otherwise compare sets of failures unawares. Runs that
    lockprof ended (-d) are not failures."""
    if result.runs and all(run.failed for run in result.runs):
        statuses = sorted({int(run.exit_status or 0) for run in result.runs})
        raise LockprofError(
            f"the command failed in every run (exit status {', '.join(map(str, statuses))}); "
            "the run set is written all the same"
        )


def _run_all(result: RunSet, runs: int, options, working, regex, quiet: bool, err) -> str | None:
    """Run and keep every run; the stop reason if a signal cut a run short
    (that run is incomplete and not kept, and no further run starts)."""
    for i in range(1, runs + 1):
        started = f"lockprof bench: run {i}/{runs}: {shlex.join(result.command)}"
        err.print(Text(render.safe_text(started)))
        run = one_run(result.command, options, working, regex, echo=not quiet)
        reason = str(run.recording.meta.get("stop_reason") or "")
        if "received" in reason:  # Ctrl-C, SIGTERM, SIGHUP during the run
            return reason
        result.runs.append(run)
        err.print(Text(render.safe_text(run_line(i, runs, run))))
        if run.failed:
            failed = f"lockprof: run {i} exited with status {run.exit_status}"
            err.print(Text(failed, style="yellow"))
    return None


def _signal_status(reason: str) -> int:
    """128 + N for "SIGTERM received" and the like, as a signal between two
    runs gives (signals.Interrupted); 130 for a KeyboardInterrupt."""
    try:
        return 128 + signal.Signals[reason.split()[0]].value
    except (KeyError, IndexError):
        return 130


def _save_partial(result: RunSet, output: Path) -> str:
    """Keep the runs that completed; a note for the error message."""
    if not result.runs:
        return ""
    runset.save(result, output)
    return f" ({render.counted(len(result.runs), 'completed run')} written to {output})"
