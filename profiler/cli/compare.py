"""lockprof compare: before/after verdicts from two run sets (no root needed)."""

from __future__ import annotations

import json
import sys
from itertools import groupby
from pathlib import Path

import click
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from profiler import compare as cmp
from profiler import outputs, render, runset
from profiler.errors import LockprofError

VERDICT_STYLE = {
    "significant increase": "bold",
    "significant decrease": "bold",
    "no significant change": "dim",
}


def _lock_title(entry: dict) -> str:
    return render.safe_text(entry["lock"])


def shown_verdicts(verdicts: list[dict], top: int | None, everything: bool) -> list[dict]:
    """The verdicts of the top locks, key metrics only unless everything."""
    shown: list[dict] = []
    locks: list[str] = []
    for entry in verdicts:
        if entry["lock"] not in locks:
            locks.append(entry["lock"])
        if top is not None and len(locks) > top:
            break
        if everything or entry["metric"] in cmp.KEY_METRICS:
            shown.append(entry)
    return shown


# The columns of a verdict from its metric on (_figure_cells), after the
# lock and mode of the one table.
_FIGURE_COLUMNS = (
    ("metric", "left"),
    ("before", "right"),
    ("after", "right"),
    ("delta", "right"),
    ("95% CI", "right"),
    ("verdict", "left"),
)


def verdict_table(shown: list[dict]) -> Table:
    """The shown verdicts (shown_verdicts) as the terminal's table."""
    table = Table(header_style="bold", pad_edge=False)
    for header, justify in (("lock", "left"), ("mode", "left"), *_FIGURE_COLUMNS):
        table.add_column(header, justify=justify, no_wrap=header != "lock")  # type: ignore[arg-type]
    previous = None
    for entry in shown:
        ident = (entry["lock"], entry["mode"])
        table.add_row(
            Text(_lock_title(entry)) if ident != previous else Text(""),
            entry["mode"] if ident != previous else "",
            *_figure_cells(entry),
        )
        previous = ident
    return table


def verdict_tables(shown: list[dict], console: Console | None = None) -> list[Table]:
    """The shown verdicts as one table, or, on a terminal too narrow for
    it (console), one per lock and mode, titled with them: on 80 columns
    the one table squeezed the lock column to nothing and cut the figures
    and verdicts ("acquisi…", "significant decrease (bet…")."""
    table = verdict_table(shown)
    if console is None or _natural_width(console, table) <= console.width:
        return [table]
    tables: list[Table] = []
    for (lock, mode), entries in groupby(shown, key=lambda e: (e["lock"], e["mode"])):
        narrow = Table(
            title=Text(render.safe_text(f"{lock} ({mode})"), style="bold"),
            title_justify="left",
            header_style="bold",
            pad_edge=False,
        )
        for header, justify in _FIGURE_COLUMNS:
            # The figures stay whole; the interval and the verdict wrap.
            narrow.add_column(header, justify=justify, no_wrap=header not in ("95% CI", "verdict"))  # type: ignore[arg-type]
        for entry in entries:
            narrow.add_row(*_figure_cells(entry))
        tables.append(narrow)
    return tables


def _natural_width(console: Console, table: Table) -> int:
    """The width the table takes when nothing limits it."""
    unlimited = console.options.update_width(1_000_000)
    return Measurement.get(console, unlimited, table).maximum


def _figure_cells(entry: dict) -> list:
    """A verdict's cells from its metric on (the lock and mode aside)."""
    return [
        cmp.entry_label(entry),
        cmp.fmt_value(entry["before"], entry["unit"]),
        cmp.fmt_value(entry["after"], entry["unit"]),
        cmp.fmt_delta(entry),
        cmp.fmt_ci(entry),
        Text(cmp.shown_verdict(entry), style=VERDICT_STYLE.get(entry["verdict"], "")),
    ]


def _side_line(name: str, side: dict) -> str:
    command = cmp.side_command(side)
    return render.safe_text(
        f"{name}: {side['label']} ({side['runs']} run{'s' if side['runs'] != 1 else ''}, "
        f"kernel {side['kernel']}, {side['cpus']} CPUs) {command}"
    )


def terminal_view(
    document: dict,
    top: int | None,
    everything: bool,
    warnings: bool = True,
    console: Console | None = None,
) -> Group:
    """The report on stdout; with warnings, the document's warnings under
    its side lines (see command: not when stderr has them on the terminal).
    console: the terminal it is for, whose width may call for a table per
    lock (verdict_tables)."""
    method = document["method"]
    parts: list = [
        Text(_side_line("before", document["before"]), style="bold"),
        Text(_side_line("after", document["after"]), style="bold"),
    ]
    for warning in document["warnings"] if warnings else []:
        parts.append(Text("warning: " + render.safe_text(warning), style="yellow"))
    for pair in document.get("paired_classes") or []:
        parts.append(
            Text(
                render.safe_text(
                    f"paired: the before side's {pair['before']} locks and the after side's "
                    f"{pair['after']} locks are compared as {pair['as']}, mode by mode"
                )
            )
        )
    parts.append(
        Text(
            f"noise: {document['confidence']} ({method['name']}, {method['resamples']:,} "
            f"resamples, seed {method['seed']}; significant = interval excludes 0)"
        )
    )
    parts.append(Text(""))
    parts.append(Text(render.safe_text(f"{cmp.process_heading(document)}:"), style="bold"))
    for line in document["headline"]:
        parts.append(Text("  " + render.safe_text(line)))
    parts.append(Text(""))
    if document["verdicts"]:
        shown = shown_verdicts(document["verdicts"], top, everything)
        parts.extend(verdict_tables(shown, console))
        locks = len({(v["lock"], v["lock_class"]) for v in document["verdicts"]})
        notes = []
        if top is not None and locks > top:
            notes.append(f"{locks - top} more locks")
        if not everything:
            notes.append("key metrics only")
        if notes:
            parts.append(
                Text(f"({'; '.join(notes)}: --all shows every lock and metric, --json all)")
            )
        if any(map(cmp.ci_missing_percent, shown)):
            parts.append(Text(cmp.NO_PERCENT_CI_NOTE))
    else:
        parts.append(Text("no lock activity on either side"))
    return Group(*parts)


def parse_pairs(values: tuple[str, ...]) -> dict[str, str]:
    """--pair-class BEFORE=AFTER values -> {BEFORE: AFTER}."""
    pairs: dict[str, str] = {}
    for value in values:
        before, sep, after = value.partition("=")
        before, after = before.strip(), after.strip()
        if not sep or not before or not after:
            raise LockprofError(
                f"--pair-class {value!r}: expected BEFORE=AFTER, two lock classes "
                "(e.g. pthread_rwlock=rw_mutex)",
                exit_code=2,
            )
        if before in pairs:
            raise LockprofError(f"--pair-class names {before!r} twice", exit_code=2)
        pairs[before] = after
    return pairs


@click.command("compare")
@click.argument("before", type=click.Path(path_type=Path))
@click.argument("after", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=outputs.OutputFile(stdout_dash=False),
    help="Also write a self-contained HTML page (plots, verdict table).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON (stable).")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Locks shown in the terminal.",
)
@click.option("--all", "everything", is_flag=True, help="Every lock and metric in the terminal.")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=cmp.SEED,
    show_default=True,
    help="Seed of the bootstrap (results are reproducible for a given seed).",
)
@click.option(
    "--pair-class",
    "pair_class",
    metavar="BEFORE=AFTER",
    multiple=True,
    help="Compare the before side's BEFORE-class locks with the after side's AFTER-class "
    "locks as one lock, mode by mode (a patch that swaps lock implementations, e.g. "
    "pthread_rwlock=rw_mutex). Repeatable.",
)
def command(before, after, output, as_json, top, everything, seed, pair_class) -> None:
    """Compare BEFORE and AFTER: each a run set from `lockprof bench` (.lpset)
    or a single recording (.lpr).

    Per lock and mode (matched by class, name and owner, never by address),
    and for the profiled process (user, sys, elapsed, minor faults,
    throughput): before, after and the change in percent ("new" from 0,
    "unchanged" for 0 on both sides). With at least 3 runs per side each
    change has a 95% bootstrap confidence interval, in percent (fewer: the
    change, and "too few runs to judge"); changes within the noise read "no
    significant change". Differences in what was profiled (the whole
    system, a running process, a command), kernel, CPU count, command line
    or probe mechanisms are warned about, on stderr (and in the report when
    stdout is not a terminal).

    \b
    Examples:
      lockprof compare before.lpset after.lpset
      lockprof compare before.lpset after.lpset -o compare.html
      lockprof compare before.lpset after.lpset --json | jq '.verdicts[] | select(.significant)'
      lockprof compare --pair-class pthread_rwlock=rw_mutex pthread.lpset rw_mutex.lpset
    """
    pairs = parse_pairs(pair_class)
    if output is not None:
        from dashboards import compare as page

        outputs.refuse_clobbering(output, [before, after], "-o", "the comparison page")
        page.check_writable(output)
    sides = [runset.load_side(before), runset.load_side(after)]
    for path, side in zip((before, after), sides, strict=True):
        _refuse_failed_side(path, side)
    result = cmp.compare(sides[0], sides[1], seed=seed, pairs=pairs)
    document = result.document
    # Each warning once where it is read: always on stderr, as every
    # diagnostic; in the report too only when stdout is not the terminal
    # (a file or pipe, which then keeps its caveats; --json has them in
    # "warnings"), since on a terminal both streams are one screen.
    for warning in document["warnings"]:
        click.echo(f"lockprof: warning: {render.safe_text(warning)}", err=True)
    if as_json:
        json.dump(document, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        console = render.console()
        view = terminal_view(
            document,
            None if everything else top,
            everything,
            warnings=not console.is_terminal,
            console=console if console.is_terminal else None,
        )
        console.print(view)
    if output is not None:
        page.write(result, output)
        click.echo(f"lockprof: comparison page written to {output}", err=True)


def _refuse_failed_side(path, side) -> None:
    """A set of runs (`bench`) whose every command exited with an error
    measured a failure (a bad option exits in a millisecond): compared, it
    made "significant" verdicts of it; `bench` itself exits 1 for it. A
    single recording (too few runs for verdicts), runs a signal ended (a
    `run` stopped by Ctrl-C exits 130) and some failed runs are a warning
    (mismatch_warnings)."""

    def exited_with_an_error(run) -> bool:
        return run.failed and run.exit_status is not None and 0 < run.exit_status < 128

    if len(side.runs) > 1 and all(exited_with_an_error(run) for run in side.runs):
        statuses = ", ".join(str(run.exit_status) for run in side.runs)
        raise LockprofError(
            f"{path}: the command failed in every run (exit status {statuses}): nothing to compare"
        )
