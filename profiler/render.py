"""Terminal output: the summary table, the per-CPU line and error counters.

Untrusted text (process names, symbols) goes through safe_text(): control
characters are shown escaped and rich never parses it as markup, so a traced
process cannot send escape sequences to the user's terminal.
"""

from __future__ import annotations

import errno
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from profiler import schema
from profiler.lockids import distinct_labels
from profiler.options import CpuFigures, in_cpu_totals


def safe_text(value: object) -> str:
    """Printable form of untrusted text: control chars as \\xNN escapes."""
    out = []
    for ch in str(value):
        if ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return "".join(out)


def fmt_ns(ns: float | int | None) -> str:
    if ns is None:
        return "-"
    ns = float(ns)
    # Pick the unit after rounding to 3 significant digits, so 999_999 ns is
    # "1ms", never "1e+03us"; seconds keep every integer digit.
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if float(f"{ns:.3g}") >= scale:
            value = ns / scale
            return f"{value:.0f}{unit}" if value >= 1000 else f"{float(f'{value:.3g}'):g}{unit}"
    return f"{ns:.0f}ns"


def fmt_count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def counted(count: int, noun: str) -> str:
    """'1 event', '2 events'."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def lock_label(row: dict) -> str:
    label = row["lock"]
    combined = row.get("locks_combined") or 1
    if combined > 1:  # show --combine-locks
        locks = counted(combined, "lock")
        if label.endswith(")"):  # "spinlock (unnamed)"
            return safe_text(f"{label[:-1]}, {locks})")
        if label != "mmap_lock":
            return safe_text(f"{label} ({locks})")
        pid = row.get("owner_pid")
        owner = row.get("owner_comm") or "owner unknown"
        return safe_text(f"mmap_lock ({owner}{f', pid {pid}' if pid else ''}, {locks})")
    if row.get("owner_pid") is not None:
        label += f" pid {row['owner_pid']} ({row.get('owner_comm') or '?'})"
    elif label == "mmap_lock":
        # Most often a child's new mm, written by the fork that copies the
        # parent's mappings into it, replaced by the child's exec before
        # its owner was learned.
        label += " (owner unknown)"
    return safe_text(label)


def row_labels(rows: list[dict]) -> list[str]:
    """lock_label() of each row, told apart where different locks would
    read the same (lockids.distinct_labels: the mms of a process that execs
    one program again and again). Rows of one lock (its modes) share it."""
    labels: dict[int, str] = {}
    addresses: dict[int, int] = {}
    ids = []
    for row in rows:
        lock_id = _hex_or_none(row.get("lock_id"))
        ids.append(lock_id)
        if lock_id is not None and lock_id not in labels:
            labels[lock_id] = lock_label(row)
            address = _hex_or_none(row.get("lock_addr"))
            if address is not None:
                addresses[lock_id] = address
    distinct = distinct_labels(labels, addresses)
    return [
        lock_label(row) if lock_id is None else distinct[lock_id]
        for row, lock_id in zip(rows, ids, strict=True)
    ]


def _hex_or_none(value) -> int | None:
    try:
        return int(value, 16)
    except (TypeError, ValueError):
        return None


# The summary table's columns: (header, justify). The rich table stacks a
# two-word header on two lines ("wait" over "p99"), so that a column is as
# narrow as its figures and the wait and hold columns stay told apart.
SUMMARY_COLUMNS = (
    ("lock", "left"),
    ("mode", "left"),
    ("acq", "right"),
    ("contended", "right"),
    ("wait total", "right"),
    ("wait avg", "right"),
    ("wait p50", "right"),
    ("wait p99", "right"),
    ("wait max", "right"),
    ("hold avg", "right"),
    ("hold p99", "right"),
    ("hold max", "right"),
    ("r:w", "right"),
    ("downgr", "right"),
    ("fail", "right"),
)
SUMMARY_HEADERS = tuple(header for header, _justify in SUMMARY_COLUMNS)

# On a terminal too narrow for every column, columns get room in this order
# and the last ones are left out (as top and perf do), never cut short with
# an ellipsis: which lock, how often and how long it was waited for come
# first; distributions, holds and the rarely nonzero counts after.
COLUMN_PRIORITY = (
    "lock",
    "mode",
    "acq",
    "contended",
    "wait total",
    "wait avg",
    "wait max",
    "wait p99",
    "hold avg",
    "wait p50",
    "hold p99",
    "hold max",
    "r:w",
    "fail",
    "downgr",
)
# The first ESSENTIAL_COLUMNS of COLUMN_PRIORITY may narrow the lock column
# (its names then wrap) down to LOCK_MIN_WIDTH, a kernel address unbroken;
# the others come in only while it keeps the width of 9 in 10 of its names,
# at most LOCK_WRAP_WIDTH (`mmap_lock pid N (comm)` on one line): one long
# name wraps rather than hide a column.
ESSENTIAL_COLUMNS = 7
LOCK_MIN_WIDTH = len("0xffff888100000100")
LOCK_WRAP_WIDTH = 32

# Above this many rows the summary is printed as plain aligned text: rich
# measures every cell (~50 us each), and `show` of a 2-hour system-wide
# recording (78k rows) took 56 s and 1.4 GB as a rich table.
PLAIN_TABLE_ROWS = 2_000


def summary_cells(row: dict, label: str | None = None) -> list[str]:
    """One summary row's cells, as both tables print them (terminal-safe).
    label: the lock's, where row_labels() told it apart from another's."""
    wait = row.get("wait_ns") or {}
    hold = row.get("hold_ns") or {}
    ratio = row.get("reader_writer_ratio")
    return [
        lock_label(row) if label is None else label,
        safe_text(row["mode"]),  # a recording's text
        fmt_count(row.get("acquisitions")),
        fmt_count(row.get("contended")),
        fmt_ns(wait.get("total")),
        fmt_ns(wait.get("avg")),
        fmt_ns(wait.get("p50")),
        fmt_ns(wait.get("p99")),
        fmt_ns(wait.get("max")),
        fmt_ns(hold.get("avg")),
        fmt_ns(hold.get("p99")),
        fmt_ns(hold.get("max")),
        "-" if ratio is None else f"{ratio:.3g}",
        fmt_count(row.get("downgrades")),
        fmt_count(row.get("trylock_failures")),
    ]


def stacked_header(header: str) -> tuple[str, str]:
    """A header's two lines in the rich table: "wait total" -> ("wait",
    "total"); a one-word header goes on the second line, by the others'."""
    first, _space, second = header.rpartition(" ")
    return first, second


def table_width(widths: list[int]) -> int:
    """The width of a summary table whose columns hold `widths` columns of
    text: a space each side of a cell but at the edges (pad_edge=False),
    and a rule between columns and at either edge."""
    return sum(widths) + 3 * len(widths) - 1


@dataclass(frozen=True)
class ColumnFit:
    """Which summary columns a width has room for."""

    shown: tuple[int, ...]  # indexes into SUMMARY_COLUMNS, in table order
    lock_width: int  # the lock column's; longer names wrap
    left_out: tuple[str, ...]  # headers, in table order


def fit_columns(widths: list[int], max_width: int, lock_wrap: int) -> ColumnFit:
    """The columns (SUMMARY_COLUMNS' natural widths: widths) to show in
    max_width terminal columns, each at its natural width: COLUMN_PRIORITY's
    longest prefix that fits, the lock column taking what is left.
    lock_wrap: the lock column's width that non-essential columns leave."""
    lock_natural = widths[0]
    kept = [0]
    for rank, header in enumerate(COLUMN_PRIORITY[1:], start=1):
        column = SUMMARY_HEADERS.index(header)
        lock_room = min(lock_natural, LOCK_MIN_WIDTH if rank < ESSENTIAL_COLUMNS else lock_wrap)
        if table_width([lock_room] + [widths[i] for i in (*kept[1:], column)]) > max_width:
            break
        kept.append(column)
    others = [widths[i] for i in kept[1:]]
    lock_width = max(1, min(lock_natural, max_width - table_width([0, *others])))
    shown = tuple(sorted(kept))
    left_out = tuple(h for i, h in enumerate(SUMMARY_HEADERS) if i not in shown)
    return ColumnFit(shown, lock_width, left_out)


def left_out_hint(left_out: tuple[str, ...]) -> Text:
    columns = "1 column" if len(left_out) == 1 else f"{len(left_out)} columns"
    return Text(
        f"({columns} left out to fit the terminal: {', '.join(left_out)}; "
        "a wider terminal shows them, as does `lockprof show FILE | less -S`)",
        style="dim",
    )


class SummaryTable:
    """The summary table, laid out when printed, for the width it is printed
    at (a live view's follows the terminal's): every column it shows at its
    natural width, the least important left out (and said so) when they do
    not all fit. rich would instead squeeze the lock column to nothing and
    cut figures to "4.0…". Untrusted text goes in as Text, never as markup."""

    def __init__(self, rows: list[dict], title: str | None = None, labels: list[str] | None = None):
        self.title = title
        self.cells = labelled_cells(rows, labels)
        self.widths = [
            max(
                *(cell_len(line) for line in stacked_header(header)),
                *(cell_len(cells[i]) for cells in self.cells),
            )
            for i, header in enumerate(SUMMARY_HEADERS)
        ]
        names = sorted(cell_len(cells[0]) for cells in self.cells) or [0]
        self.lock_wrap = min(LOCK_WRAP_WIDTH, names[(len(names) - 1) * 9 // 10])

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        fit = fit_columns(self.widths, options.max_width, self.lock_wrap)
        yield self.table(fit)
        if fit.left_out:
            yield left_out_hint(fit.left_out)

    def table(self, fit: ColumnFit) -> Table:
        table = Table(title=self.title, title_justify="left", header_style="bold", pad_edge=False)
        for i in fit.shown:
            header, justify = SUMMARY_COLUMNS[i]
            table.add_column(
                "\n".join(stacked_header(header)),
                justify=justify,  # type: ignore[arg-type]
                width=fit.lock_width if i == 0 else self.widths[i],
                no_wrap=i != 0,
                overflow="fold",  # a lock name with no space to wrap at
            )
        for cells in self.cells:
            table.add_row(*(Text(cells[i]) for i in fit.shown))
        return table


def summary_table(
    rows: list[dict],
    top: int | None = None,
    title: str | None = None,
    labels: list[str] | None = None,
) -> SummaryTable:
    shown = slice(None, top or None)
    return SummaryTable(rows[shown], title, labels[shown] if labels is not None else None)


def labelled_cells(rows: list[dict], labels: list[str] | None = None) -> list[list[str]]:
    """summary_cells() of each row, its lock named by labels (row_labels()
    of rows where not given: one list for a table and the lines under it)."""
    labels = row_labels(rows) if labels is None else labels
    return [summary_cells(row, label) for row, label in zip(rows, labels, strict=True)]


def plain_summary_lines(rows: list[dict], labels: list[str] | None = None) -> Iterator[str]:
    """The summary table as aligned plain-text lines (header first), for
    tables too long for rich: the same cells, two spaces between columns."""
    cells = labelled_cells(rows, labels)
    headers = list(SUMMARY_HEADERS)
    # Terminal columns, not characters: a comm may hold wide (CJK) ones.
    widths = [cell_len(h) for h in headers]
    for line in cells:
        widths = [max(w, cell_len(cell)) for w, cell in zip(widths, line, strict=True)]

    def aligned(line: list[str]) -> str:
        padded = []
        for cell, width, (_h, justify) in zip(line, widths, SUMMARY_COLUMNS, strict=True):
            pad = " " * (width - cell_len(cell))
            padded.append(cell + pad if justify == "left" else pad + cell)
        return "  ".join(padded).rstrip()

    yield aligned(headers)
    for line in cells:
        yield aligned(line)


def offcpu_table(rows: list[dict], top: int | None = None) -> Table:
    """Blocked time in lock functions (--offcpu), split by what was waited for."""
    table = Table(
        title="blocked in lock functions (off-CPU, sched_switch)",
        title_justify="left",
        header_style="bold",
        pad_edge=False,
    )
    shown = rows[:top] if top else rows
    # The parts of the split some row has (most locks have two or three),
    # headers on two lines, names wrapping within their column: the table
    # fits 80 columns, its names never cut short with an ellipsis.
    parts = [
        (component, header)
        for component, header in OFFCPU_COLUMNS
        if any((row.get("offcpu_components_ns") or {}).get(component) for row in shown)
    ]
    table.add_column("lock <- caller", justify="left", overflow="fold")
    for header in ("mode", "blocked", "total", "max", *(header for _c, header in parts)):
        table.add_column(
            "\n".join(stacked_header(header)), justify="right" if header != "mode" else "left"
        )
    table.add_column("tasks", justify="left", overflow="fold")
    for row in shown:
        wait = row["wait_ns"]
        split = row.get("offcpu_components_ns") or {}
        table.add_row(
            Text(safe_text(row["lock"])),
            row["mode"],
            f"{wait['count']:,}",
            fmt_ns(wait["total"]),
            fmt_ns(wait["max"]),
            *(fmt_ns(split.get(component)) for component, _header in parts),
            Text(safe_text(_some(row.get("tasks") or [], OFFCPU_TASKS))),
        )
    return table


# The off-CPU split (writer_cost.COMPONENTS), one column each, as the report
# names them: a reader blocked by a writer is not the writer's own wait.
OFFCPU_COLUMNS = (
    ("grace_period", "grace period"),
    ("reader_drain", "reader drain"),
    ("writer_wait", "writer wait"),
    ("blocked_by_writer", "reader blocked"),
    ("wait", "other wait"),
)
OFFCPU_TASKS = 4  # task names shown per off-CPU row, then "+N more"


def _some(names: list[str], shown: int) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" +{more} more" if more > 0 else "")


def writer_cost_lines(cost: dict) -> list[Text]:
    """The writer's sum over CPUs, estimated from samples, and the what-if."""
    share = cost.get("share_of_cpu")
    lines = [
        Text(
            f"{safe_text(cost['function'])}: {cost['samples']:,} of "
            f"{int(cost.get('kernel_samples') or 0):,} kernel samples, about "
            f"{cost['estimated_cpu_s'] * 1000:.1f} ms of CPU"
            + (f" ({share * 100:.3f}% of all CPU time)" if share is not None else "")
            + f" on {cost.get('online_cpus')} online CPUs [{cost['method']}]"
        )
    ]
    for caller in cost.get("top_callers", [])[:3]:
        lines.append(
            Text(
                safe_text(
                    f"  from {caller['caller']}: {caller['samples']:,} samples, "
                    f"~{caller['estimated_cpu_s'] * 1000:.1f} ms"
                )
            )
        )
    what_if = cost.get("what_if")
    if what_if:
        lines.append(
            Text(
                f"what-if {what_if['cpus']} CPUs: ~{what_if['estimated_cpu_s'] * 1000:.1f} ms "
                f"of CPU (MODEL: {what_if['model']})",
                style="italic",
            )
        )
    return lines


# Tasks of other processes listed under the summary table (show --json has all).
FOREIGN_TASK_LINES = 10


def foreign_task_lines(rows: list[dict], limit: int = FOREIGN_TASK_LINES) -> list[Text]:
    """Who else took a process's mmap_lock: one line per comm, lock and
    mode (profiler/foreign_tasks.py), the busiest first."""
    if not rows:
        return []
    lines = [Text("tasks of other processes on mmap_locks (by wait + hold time):", style="bold")]
    lines += [Text(safe_text(_foreign_task_line(row))) for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(Text(f"  ({len(rows) - limit:,} more: `show --json` lists them)", style="dim"))
    return lines


def _foreign_task_line(row: dict) -> str:
    figures = [f"wait {fmt_ns(row['wait_ns']['total'])}"]
    if row["contended"]:
        figures.insert(0, f"{fmt_count(row['contended'])} contended")
    if row["acquisitions"] is not None:
        figures.insert(0, f"{fmt_count(row['acquisitions'])} acq")
    if row["hold_ns"]["total"] is not None:
        figures.append(f"hold {fmt_ns(row['hold_ns']['total'])}")
    who = f"{row['comm']} ({_pids_text(row['pids'])})"
    lock = f"mmap_lock pid {row['owner_pid']} ({row['owner_comm'] or '?'})"
    return f"  {who} on {lock} {row['mode']}: " + ", ".join(figures)


def _pids_text(pids: list[int]) -> str:
    if len(pids) == 1:
        return f"pid {pids[0]}"
    return f"{len(pids):,} processes"


def per_cpu_line(rows: list[dict], cpu_totals: dict[int, CpuFigures] | None = None) -> Text:
    """Acquisitions, contended waits and wait time per CPU: from cpu_totals
    when given (over every lock, where rows holds only the first), else
    summed over rows."""
    if cpu_totals is None:
        cpu_totals = cpu_totals_of(rows)
    parts = [f"cpu{cpu}: {activity(figures)}" for cpu, figures in sorted(cpu_totals.items())]
    return Text("per CPU  " + ("  |  ".join(parts) if parts else "no activity"))


def activity(figures: CpuFigures) -> str:
    """What the per-CPU line and the live progress line say of some
    CPUs' figures. Contended waits are not a part of `acq`: they include
    the waits on locks traced only when contended (spinlocks, mutexes, ...),
    whose acquisitions are never seen. Not known (lock:contention_* not
    traced), they are not mentioned."""
    parts = [f"{figures.acquisitions:,} acq"]
    if figures.contended is not None:
        parts.append(counted(figures.contended, "contended wait"))
    return ", ".join([*parts, f"wait {fmt_ns(figures.wait_ns)}"])


def cpu_totals_of(rows: list[dict]) -> dict[int, CpuFigures]:
    totals: dict[int, CpuFigures] = {}
    for row in rows:
        add_cpu_totals(totals, row)
    return totals


def add_cpu_totals(totals: dict[int, CpuFigures], row: dict) -> None:
    """Add a summary row's per_cpu entries (those of `show --json`) into
    totals: acquisitions where the row has them (null: a contention-only
    lock), contended waits and wait time (in_cpu_totals: which rows)."""
    if not in_cpu_totals(row.get("mode")):
        return
    for cpu in row.get("per_cpu") or []:
        # Contended waits stay None (not known) until some row knows them.
        before = totals.get(cpu["cpu"], CpuFigures(contended=None))
        totals[cpu["cpu"]] = CpuFigures(
            before.acquisitions + (cpu.get("acquisitions") or 0),
            _known_sum(before.contended, cpu.get("contended")),
            before.wait_ns + (cpu.get("wait_total_ns") or 0),
        )


def _known_sum(a: int | None, b: int | None) -> int | None:
    """a + b, where None is a figure not known: None only if both are."""
    return None if a is None and b is None else (a or 0) + (b or 0)


def all_cpus(totals: dict[int, CpuFigures]) -> CpuFigures:
    figures = list(totals.values())
    contended: int | None = None if figures else 0
    for cpu in figures:
        contended = _known_sum(contended, cpu.contended)
    return CpuFigures(
        sum(cpu.acquisitions for cpu in figures), contended, sum(cpu.wait_ns for cpu in figures)
    )


def problems_line(errors: dict[str, int], lost_events: int) -> Text | None:
    """Lost events and kernel-side failures, or None when there were none."""
    shown = schema.failures(errors)
    if not lost_events and not shown:
        return None
    parts = [f"lost events: {lost_events:,}"] if lost_events else []
    parts += [f"{k.replace('_', ' ')}: {v:,}" for k, v in sorted(shown.items())]
    return Text("! " + "; ".join(parts), style="yellow")


NOTES = {
    "release_without_acquire": "held since before attach",
    "end_without_begin": "waits begun before attach",
}


def view(
    rows: list[dict],
    header: str,
    errors: dict[str, int],
    lost: int,
    top: int | None = 15,
    more_locks: int = 0,
    cpu_totals: dict[int, CpuFigures] | None = None,
    row_count: int | None = None,
    source: str | None = None,
    labels: list[str] | None = None,
    show_flags: str = "",
) -> Group:
    return Group(
        Text(safe_text(header), style="bold"),
        summary_table(rows, top, labels=labels),
        *view_footer(
            rows, errors, lost, top, more_locks, cpu_totals, row_count, source, show_flags
        ),
    )


@dataclass(eq=False)  # a frame is compared (and hashed) by identity, not field by field
class LiveFrame:
    """The live view's frame: view() with as many table rows as the
    terminal's height has room for, the others counted in the footer's
    "(N more rows ...)". rich's Live cut a frame taller than the terminal
    at its bottom: on 24 lines the per-CPU line, the problems line (lost
    events) and the more-rows line were never seen. A terminal too short for
    even one row gets one, and the bottom is cut as before.

    The fields up to cpu_totals are view()'s arguments."""

    rows: list[dict]
    header: str
    errors: dict[str, int]
    lost: int
    top: int | None = 15
    more_locks: int = 0
    cpu_totals: dict[int, CpuFigures] | None = None
    guess: int | None = None  # how many rows the last frame had room for
    offcpu_rows: list[dict] | None = None  # --offcpu: a table of their own
    shown: int | None = field(default=None, init=False)  # how many rows this one showed

    def frame(self, top: int | None) -> Group:
        shown = view(
            self.rows, self.header, self.errors, self.lost, top, self.more_locks, self.cpu_totals
        )
        if not self.offcpu_rows:
            return shown
        # Blocked time is not a lock wait: under the footer, as the summary has it.
        return Group(shown, offcpu_table(self.offcpu_rows, self.top))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height or options.size.height
        most = max(1, min(self.top or len(self.rows), len(self.rows)))

        def lines_of(top: int) -> list:
            return console.render_lines(self.frame(top), options, pad=False)

        # From the last frame's row count (guess): a frame a refresh costs
        # two renders, not a search's five or six (a few ms each).
        shown = max(1, min(self.guess or most, most))
        lines = lines_of(shown)
        if len(lines) <= height:
            while shown < most and len(more := lines_of(shown + 1)) <= height:
                shown, lines = shown + 1, more
        else:
            low, high = 1, shown - 1  # the most rows that fit, at least one
            lines = lines_of(low) if shown > 1 else lines
            if len(lines) > height:
                high = low  # not even one row: rich's Live cuts the bottom off
            while low < high:
                middle = (low + high + 1) // 2
                tried = lines_of(middle)
                if len(tried) <= height:
                    low, lines = middle, tried
                else:
                    high = middle - 1
            shown = low
        self.shown = shown
        for line in lines:
            yield from line
            yield Segment.line()


def view_footer(
    rows: list[dict],
    errors: dict[str, int],
    lost: int,
    top: int | None = 15,
    more_locks: int = 0,
    cpu_totals: dict[int, CpuFigures] | None = None,
    row_count: int | None = None,
    source: str | None = None,
    show_flags: str = "",
) -> list:
    """What the view prints under its table: the per-CPU line, the problems
    and how many rows were left out (row_count: how many there are, when
    rows holds only the first; source: the recording, named in the hint,
    with show_flags: the options that made these rows, `-c `)."""
    parts: list = [per_cpu_line(rows, cpu_totals)]
    problems = problems_line(errors, lost)
    if problems is not None:
        parts.append(problems)
    hidden = max(0, (len(rows) if row_count is None else row_count) - top) if top else 0
    if hidden or more_locks:
        what = f"{hidden} more {'row' if hidden == 1 else 'rows'}" if hidden else ""
        if more_locks:
            locks = "lock" if more_locks == 1 else "locks"
            what += f"{', and ' if what else ''}{more_locks} quieter {locks}"
        recording = shlex.quote(source) if source else "FILE"
        hint = f"`lockprof show {show_flags}{recording}` lists all"
        parts.append(Text(safe_text(f"({what}; {hint})")))
    return parts


class _Console(Console):
    """rich's Console, but a closed pipe raises BrokenPipeError for the
    caller to handle. rich's own handling points stdout at /dev/null and
    raises SystemExit(1): from a live view's progress line on a closed
    stderr pipe, that ended the collection before its recording was written."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


# The width of a console that is not a terminal: wider than any line, so
# that a pipe or file gets every table column in full (scripts and
# `less -S` expect them all), where a terminal's width leaves some out.
UNBOUNDED_WIDTH = 100_000


def console(stderr: bool = False) -> Console:
    """A console at the terminal's width; when output is not a terminal
    (pipes, files, CI logs), lines are as wide as they need."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else UNBOUNDED_WIDTH
    return _Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)
