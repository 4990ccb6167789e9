"""lockprof export: folded stacks (FlameGraph, speedscope) and CSV tables."""

from __future__ import annotations

import functools
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

import click
import pandas as pd

from profiler import outputs, recording, summary, writer_cost
from profiler.cli.common import load_recording
from profiler.errors import LockprofError


def folded_lines(rec: recording.Recording) -> list[str]:
    """`frame;frame;frame value` lines, root first, value = contended wait ns."""
    from dashboards import frames

    folded = frames.folded_stacks(frames.lock_callers(rec), frames.stack_frames(rec))
    return [f"{path} {value}" for path, value in folded.items() if value > 0]


def _is_list(value) -> bool:
    return isinstance(value, list | tuple) or hasattr(value, "tolist")


def _csv_value(value):
    """Lists (histogram slots, stack frames) as one cell."""
    if _is_list(value):
        items = value.tolist() if hasattr(value, "tolist") else list(value)
        return ";".join(str(v) for v in items)
    return value


# A spreadsheet runs a cell that starts with one of these as a formula
# (CSV injection): comm names come from untrusted processes.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value):
    """Text that a spreadsheet would run as a formula, prefixed with ' (the
    spreadsheet convention for "this is text"); anything else unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A table made CSV-friendly: list cells joined with ';', text cells
    that would start a spreadsheet formula neutralised."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if values.dtype == object and values.map(_is_list).any():
            values = values.map(_csv_value)
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            values = values.map(neutralise_formula)
        out[column] = values
    return out


# The summary's distributions (count, total, avg, p50, p99, max): flattened
# as wait_count, wait_total_ns, wait_p99_ns, ...
_DISTRIBUTIONS = ("wait_ns", "hold_ns", "contended_wait_ns")


def _flat_row(row: dict) -> dict:
    """One `show --json` row as flat CSV columns."""
    flat: dict = {}
    for key, value in row.items():
        if key == "per_cpu":
            continue
        if key in _DISTRIBUTIONS:
            prefix = key.removesuffix("_ns")
            for stat in ("count", "total", "avg", "p50", "p99", "max"):
                name = f"{prefix}_count" if stat == "count" else f"{prefix}_{stat}_ns"
                flat[name] = (value or {}).get(stat)
        elif key == "offcpu_components_ns":
            # Off-CPU time by what the writer waited for: not a distribution
            # (read as one, its grace_period and reader_drain were lost).
            for component in writer_cost.COMPONENTS:
                flat[f"offcpu_{component}_ns"] = (value or {}).get(component)
        else:
            flat[key] = value
    return flat


def summary_table(rec: recording.Recording) -> pd.DataFrame:
    """The `show` rows, flattened: wait_ns.p99 becomes wait_p99_ns, and so on."""
    frame = pd.DataFrame([_flat_row(row) for row in summary.lock_rows(rec)])
    # Counts stay integers where some rows have none (nullable Int64, not 1.0).
    for column in frame.columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        known = values.dropna()
        integral = len(known) > 0 and bool((known % 1 == 0).all())
        estimate = column.endswith(("_avg_ns", "_p50_ns", "_p99_ns", "_ratio"))
        if integral and not estimate and frame[column].notna().sum() == len(known):
            frame[column] = values.astype("Int64")
    return frame


def _text_writer(fill: Callable[[TextIO], object]) -> Callable[[BinaryIO], None]:
    """A write() for outputs.write_file() and write_files() of text: mode
    0600 as recordings and reports are (the tables and meta.json hold
    command lines, comm names and kernel addresses, which a umask of 022
    would make readable by every user), the invoking user's under sudo,
    through a temporary file and a rename; a symlink followed, a device or
    FIFO written into."""

    def write(out: BinaryIO) -> None:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="")
        fill(text)
        text.flush()
        text.detach()  # out is write_file's to close

    return write


def _write_csv_table(frame: pd.DataFrame, out: TextIO) -> None:
    csv_frame(frame).to_csv(out, index=False)


def csv_files(directory: Path) -> list[Path]:
    """The files --csv DIR writes."""
    tables = [directory / f"{name}.csv" for name in (*recording.TABLES, "summary")]
    return [*tables, directory / "meta.json"]


def write_csv(rec: recording.Recording, directory: Path) -> list[Path]:
    try:
        outputs.make_directory(directory)
    except OSError as exc:
        raise LockprofError(f"cannot create {directory} ({exc.strerror})") from None
    if not directory.is_dir():
        raise LockprofError(f"{directory} is not a directory")
    tables = {name: rec.table(name) for name in recording.TABLES}
    tables["summary"] = summary_table(rec)
    *table_files, meta = csv_files(directory)
    # Each table converted as its file is written, not all of them at once.
    items = [
        (path, _text_writer(functools.partial(_write_csv_table, frame)))
        for frame, path in zip(tables.values(), table_files, strict=True)
    ]
    document = json.dumps(rec.meta, indent=2, default=str) + "\n"
    items.append((meta, _text_writer(lambda out: out.write(document))))
    try:
        return outputs.write_files(items)
    except OSError as exc:
        raise LockprofError(
            f"cannot write {directory} ({exc.strerror or exc}); the files in it are as they were"
        ) from None


def write_folded(rec: recording.Recording, output: Path) -> int:
    lines = folded_lines(rec)
    text = "".join(f"{line}\n" for line in lines)
    if str(output) == "-":
        sys.stdout.write(text)
        return len(lines)
    if output.is_dir():
        raise LockprofError(f"cannot write {output}: it is a directory")
    data = text.encode("utf-8")
    try:
        outputs.write_file(output, lambda out: out.write(data))
    except OSError as exc:
        raise LockprofError(f"cannot write {output} ({exc.strerror})") from None
    return len(lines)


@click.command("export")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--folded",
    type=outputs.OutputFile(allow_dash=True),
    help="Write folded stacks (`frame;frame value`, root first, value = contended "
    "wait ns) for FlameGraph or speedscope; - for stdout.",
)
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(path_type=Path),
    help="Write every table (and the summary) as CSV into this directory.",
)
def command(path, folded, csv_dir) -> None:
    """Export a recording for other tools.

    Folded stacks have one line per kernel stack of contended waits, root
    first, offsets dropped so that call sites merge; waits taken without a
    stack (shorter than --stack-threshold and not a lock's naming stack, over
    the --stack-rate limit, or
    whose capture failed) are the single frame [no_stack].
    CSV cells holding lists (histogram slots, stack frames) are joined by ';'.

    \b
    Examples:
      lockprof export demo.lpr --folded demo.folded
      flamegraph.pl demo.folded > demo.svg        (or open it in speedscope)
      lockprof export demo.lpr --csv demo-csv/
    """
    if folded is None and csv_dir is None:
        raise LockprofError("nothing to export: give --folded FILE and/or --csv DIR", exit_code=2)
    if folded is not None:
        outputs.refuse_clobbering(folded, [path], "--folded", "folded stacks")
    if csv_dir is not None and str(csv_dir) == "-":  # made a directory named -
        raise LockprofError("--csv takes a directory (one file a table), not -", exit_code=2)
    if csv_dir is not None and csv_dir.exists() and not csv_dir.is_dir():
        # Before the recording is read, as the other outputs' refusals are.
        raise LockprofError(f"--csv {csv_dir} is not a directory", exit_code=2)
    for csv_file in csv_files(csv_dir) if csv_dir is not None else []:
        outputs.refuse_clobbering(csv_file, [path], "--csv", "a CSV table")
    rec = load_recording(path)
    if folded is not None:
        count = write_folded(rec, folded)
        if str(folded) != "-":
            click.echo(f"lockprof: {count} folded stacks written to {folded}", err=True)
    if csv_dir is not None:
        written = write_csv(rec, csv_dir)
        click.echo(f"lockprof: {len(written)} files written to {csv_dir}", err=True)
