"""lockprof report: a self-contained HTML dashboard of a recording (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from profiler import outputs, recording
from profiler.cli.common import load_recording, warn_cpus_without_samples
from profiler.errors import LockprofError
from profiler.options import MAX_CPUS


def default_output(path: Path) -> Path:
    """rec.lpr -> rec.html, next to the recording."""
    return path.with_suffix(".html")


def check_output(path: Path) -> None:
    """Fail before any work (or collection) if the report cannot be written."""
    from dashboards.html import check_writable

    check_writable(path)


def write_html(
    rec: recording.Recording, output: Path, source: str | None = None, **options
) -> Path:
    """Build and write the report. Every failure is a LockprofError with one
    line: a recording whose tables do not have the expected content cannot
    crash with a traceback (LOCKPROF_DEBUG=1 shows one)."""
    from dashboards.html import write_report

    try:
        return write_report(rec, output, source=source, **options)
    except LockprofError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        if os.environ.get("LOCKPROF_DEBUG"):
            raise
        where = f"{source}: " if source else ""
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise LockprofError(
            f"{where}cannot build a report: the recording has unexpected content "
            f"({type(exc).__name__}{': ' + reason if reason else ''})"
        ) from None


@click.command("report")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=outputs.OutputFile(),
    help="HTML file to write (default: the recording's name with .html; - for stdout).",
)
@click.option(
    "--max-points",
    "--max-events",  # its first name: collecting's --max-events is what is kept, not drawn
    "max_events",
    type=click.IntRange(min=0),
    default=5000,
    show_default=True,
    help="Most individual waits/holds drawn on the timeline (the page says when it samples; "
    "the recording keeps them all). --max-events is an older name for it.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=15,
    show_default=True,
    help="Locks and callers in the top-N charts.",
)
@click.option(
    "--cpus",
    "what_if_cpus",
    type=click.IntRange(min=1, max=MAX_CPUS),
    help="What-if: scale the sampled cost of the writer's sum to N CPUs (a linear model; "
    "default: the --cpus given when recording).",
)
def command(path, output, max_events, top, what_if_cpus) -> None:
    """Write a self-contained HTML report of a recording.

    The page works offline (plotly.js is embedded): a sortable summary,
    readers vs writers, wait and hold distributions, per-CPU heatmap,
    timeline of long waits, top locks and callers, kernel stacks, the
    tasks that waited, and the writer's price (--offcpu, --sample).

    \b
    Examples:
      lockprof report demo.lpr                  writes demo.html
      lockprof report demo.lpr -o /tmp/r.html
    """
    flag = "-o" if output is not None else "report path"
    recording.check_regular_file(path)  # `report .`: said before naming the output
    output = output or default_output(path)
    outputs.refuse_clobbering(output, [path], flag, "the HTML report")
    check_output(output)
    # Histograms summed as the intervals are read; the per-interval ones are
    # never all in memory (a 2-hour recording: 0.96 GB read whole).
    rec = load_recording(path, summary_only=True)
    if what_if_cpus and not warn_cpus_without_samples(rec.meta, what_if_cpus, path):
        rec.meta["what_if_cpus"] = what_if_cpus
    write_html(rec, output, source=str(path), max_events=max_events, top=top)
    click.echo(f"lockprof: report written to {output}", err=True)
