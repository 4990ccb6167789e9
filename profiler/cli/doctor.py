"""lockprof doctor: which kernel mechanisms work here."""

from __future__ import annotations

import json
import math
import os

import click
from rich.table import Table
from rich.text import Text

from profiler import doctor, render
from profiler.cli import common
from profiler.errors import MechanismUnavailable
from profiler.targets import check_pid


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@click.option(
    "--overhead",
    is_flag=True,
    help="Also measure, in about 10 s, what each probe lockprof would attach costs "
    "per event here (kernel run-time stats), what it adds to an mmap+munmap pair, "
    "and what the probes cost on this system as it runs.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.5, max=60),
    default=1.5,
    show_default=True,
    help="Length of each --overhead phase (bare, empty programs, lockprof, system).",
)
@click.option(
    "--cleanup",
    is_flag=True,
    help="First remove kprobe/uprobe events that killed BCC processes (lockprof "
    "included) left in tracefs; every collection does this too.",
)
@click.option(
    "-p",
    "--pid",
    type=click.IntRange(min=1),
    help="With --overhead: run the last phase's probes as `attach -p PID` would "
    "(other processes' events end at the pid check), to judge attaching to it.",
)
@common.probe_options
def command(as_json, overhead, seconds, cleanup, pid, **probe_choices) -> None:
    """Load and attach a tiny program per mechanism and report what works:
    tracepoints (raw and classic), kprobes, fentry, uprobes, perf sampling,
    BTF, and which kernel headers BCC uses. Exits 1 when the minimum
    (root, BTF and the lock tracepoints) is unusable.

    \b
    Examples:
      lockprof doctor
      lockprof doctor --json | jq '.checks[] | select(.ok | not)'
      lockprof doctor --overhead        per-event cost of each probe, ~10 s
      lockprof doctor --overhead --offcpu -t 1ms   as `record -a --offcpu -t 1ms` would
      lockprof doctor --overhead -p 1234   and what `attach -p 1234` costs now
      lockprof doctor --cleanup         remove probe events of killed BCC tools

    With --overhead (and only with it), the probe options (-t, --stack-rate,
    --offcpu, ...) set the probes up as `lockprof record -a` with the same
    options would, system-wide: they decide how often the costliest paths
    run (an event record, a kernel stack walk). `attach -p` costs less where
    other processes take locks: their events end at the pid check; -p PID
    runs the last phase (the system as it runs) that way.
    """
    options = _overhead_options(overhead, {**probe_choices, "pid": pid, "seconds": seconds})
    target_tgid = check_pid(pid) if pid is not None else 0
    removed = _cleanup(as_json) if cleanup else None
    checks = doctor.run_checks()
    usable = all(c.ok for c in checks if c.required)
    cost, unmeasured = None, None
    if overhead and usable:
        try:
            cost = _measure_overhead(
                seconds, options, doctor.working_mechanisms(checks), target_tgid
            )
        except MechanismUnavailable as exc:
            unmeasured = exc  # the checks say why; then this, in one line

    if as_json:
        click.echo(
            json.dumps(
                {
                    "usable": usable,
                    "mechanisms": sorted(doctor.working_mechanisms(checks)),
                    "checks": doctor.as_dicts(checks),
                    "overhead": cost.as_dict() if cost else None,
                    "removed_probe_events": removed,
                },
                indent=2,
            )
        )
    else:
        out = render.console()
        for check in checks:
            mark, style = (
                ("ok  ", "green")
                if check.ok
                else (("FAIL", "red") if check.required else ("no  ", "yellow"))
            )
            line = Text(f"{mark} ", style=style)
            line.append(f"{check.name:<45} {render.safe_text(check.detail)}")
            out.print(line, soft_wrap=True)
        out.print(
            f"usable: {'yes' if usable else 'no'}; working mechanisms: "
            f"{', '.join(sorted(doctor.working_mechanisms(checks))) or 'none'}"
        )
        if cost:
            _print_overhead(out, cost)
    if unmeasured is not None:
        raise unmeasured
    if not usable:
        raise SystemExit(1)


def _cleanup(as_json: bool) -> list[str]:
    removed = doctor.cleanup_stale_probes()
    if not as_json:
        what = ", ".join(removed) if removed else "none found"
        click.echo(render.safe_text(f"stale probe events removed: {what}"), err=True)
    return removed


def _overhead_options(overhead: bool, choices: dict):
    """The collection options --overhead measures: attach's defaults, changed
    by the probe options given. Without --overhead, those options would do
    nothing: refused, as click refuses an unknown option."""
    ctx = click.get_current_context()
    given = [
        name
        for name in choices
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    ]
    if given and not overhead:
        option = next(p for p in ctx.command.params if p.name == given[0]).opts[-1]
        raise common.usage_error(
            f"{option} only applies with --overhead (it sets up what it measures)"
        )
    options = common.build_options(
        None, 1.0, choices["threshold"], choices["no_mmap_lock"], choices["no_contention"]
    )
    common.refuse_sampling_options_alone(choices["sample"], None)
    return common.probe_settings(
        options,
        choices["stack_threshold"],
        choices["stack_rate"],
        choices["lock_types"],
        choices["no_contention"],
        choices["offcpu"],
        choices["sample"],
        choices["sample_hz"],
    )


def _measure_overhead(seconds: float, options, working: set[str], target_tgid: int):
    from profiler import overhead

    def announce() -> None:
        click.echo(f"measuring overhead: 4 phases of {seconds:g} s ...", err=True)

    return overhead.measure(
        seconds, options, frozenset(working), on_start=announce, target_tgid=target_tgid
    )


def _print_overhead(out, cost) -> None:
    table = Table(
        title="probe cost per event (kernel run-time stats; both columns include the "
        "stats' own clock reads)",
        title_justify="left",
        header_style="bold",
    )
    headers = (
        "probe",
        "event",
        "events/s, load",
        "lockprof ns",
        "empty program ns",
        "added ns",
        "events/s, system",
    )
    for header in headers:
        table.add_column(header, justify="left" if header in ("probe", "event") else "right")
    for probe in cost.probes:
        rate = probe.runs / cost.seconds_per_phase
        ns = probe.ns_per_run
        floor = probe.floor_ns_per_run
        table.add_row(
            probe.probe,
            probe.event,
            f"{rate:,.0f}",
            f"{ns:,.0f}" if ns is not None else "no events",
            f"{floor:,.0f}" if floor is not None else "-",
            f"{ns - floor:,.0f}" if ns is not None and floor is not None else "-",
            f"{probe.system_runs / cost.system_seconds:,.0f}",
        )
    out.print(table)
    out.print(_settings_line(cost.settings))
    out.print(_system_line(cost, os.cpu_count() or 1))
    us = cost.us_per_pair
    out.print(
        f"mmap+munmap pair, 2 contending threads: bare {us['bare']:.2f} us, "
        f"empty programs {us['floor']:.2f} us (x{us['floor'] / us['bare']:.2f}), "
        f"lockprof {us['lockprof']:.2f} us (x{us['lockprof'] / us['bare']:.2f})"
    )


def _system_line(cost, cpus: int) -> str:
    """What the programs cost on this system without the load: the figure
    to judge attaching in production by."""
    events = sum(p.system_runs for p in cost.probes) / cost.system_seconds
    ns_per_s = cost.system_ns_per_s()
    percent = 100 * ns_per_s / (1e9 * cpus)
    # Two significant digits below 0.001%: a quiet machine's share is millionths.
    digits = 3 if percent >= 0.001 or percent <= 0 else 1 - math.floor(math.log10(percent))
    shown = f"{percent:.{digits}f}%"
    target = cost.settings.get("target_pid")
    how = f", probes as `attach -p {target}` runs them" if target else ""
    return (
        f"this system without the load ({cost.system_seconds:g} s{how}, the last column): "
        f"{render.counted(round(events), 'event')}/s; lockprof's programs ran "
        f"{render.fmt_ns(ns_per_s)} a second, {shown} of {render.counted(cpus, 'CPU')} "
        "(their own run time, not the tracepoints' dispatch to them: the empty program column)"
    )


def _settings_line(settings: dict) -> str:
    """What the measured probes did: the settings that decide how often
    their costly paths run."""
    types = settings["lock_types"]
    parts = [
        f"probes of {', '.join(settings['families'])}",
        f"events kept from {render.fmt_ns(settings['threshold_ns'])}",
        f"stacks of waits from {render.fmt_ns(settings['stack_threshold_ns'])}, "
        + (
            f"at most {settings['stack_rate']} per CPU per second (and as many naming stacks)"
            if settings["stack_rate"]
            else "every one"
        ),
    ]
    if types is not None:
        parts.append(f"lock types {', '.join(types)}")
    if settings["sample_hz"]:
        parts.append(f"sampling at {settings['sample_hz']} Hz")
    return "measured system-wide with " + "; ".join(parts)
