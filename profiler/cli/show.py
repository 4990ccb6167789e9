"""lockprof show: summarise a recording (no root needed)."""

from __future__ import annotations

from pathlib import Path

import click

from profiler.cli.common import (
    COMBINE_OPTION,
    load_recording,
    print_summary,
    warn_cpus_without_samples,
)
from profiler.options import MAX_CPUS, SORT_ALIASES, SORT_KEYS


class _SortKey(click.Choice):
    """A SORT_KEYS name, or perf lock's name for one (SORT_ALIASES)."""

    def convert(self, value, param, ctx):
        if value == "wait_min":
            self.fail(
                "wait_min is not kept (the histograms keep no minimum); try wait_avg", param, ctx
            )
        return super().convert(SORT_ALIASES.get(value, value), param, ctx)


@click.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary (stable).")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=None,
    help="Only the first N rows of each table (with --json, of locks and of foreign_tasks).",
)
@click.option(
    "--cpus",
    "what_if_cpus",
    type=click.IntRange(min=1, max=MAX_CPUS),
    help="What-if: scale the sampled cost of the writer's sum to N CPUs (a linear model).",
)
@click.option(
    "-k",
    "--sort",
    type=_SortKey(SORT_KEYS),
    default="wait_total",
    show_default=True,
    help="Order the rows by this figure, the largest first (with --json, the locks "
    "list too); rows that do not know it (a '-' in its column) come last. perf lock's "
    "avg_wait and acquired are taken too.",
)
@COMBINE_OPTION
def command(path, as_json, top, what_if_cpus, sort, combine) -> None:
    """Print the summary of a recording: one row per lock and mode.

    \b
    Examples:
      lockprof show demo.lpr
      lockprof show demo.lpr -k wait_max --top 10     the 10 longest single waits
      lockprof show sys.lpr -c --top 20               by caller, as perf lock contention
      lockprof show demo.lpr --json | jq '.locks[] | select(.lock == "mmap_lock")'
    """
    rec = load_recording(path, summary_only=True)
    warn_cpus_without_samples(rec.meta, what_if_cpus, path)
    print_summary(rec, as_json, top, what_if_cpus, path, sort, combine=combine)
