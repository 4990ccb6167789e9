"""profiler.render: untrusted text never reaches the terminal raw; number formats."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from profiler import render, summary

SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colour/bold sequences

HOSTILE_COMMS = [
    "\x1b[31mevil",
    "[bold]x[/bold]",
    "\x1b]0;pwned\x07title",  # OSC: set the terminal title
    "a\rb\nc\x00d",
    "[link=http://x]y[/link]",
    "\x9b31m8bit-csi",
]


def test_safe_text_escapes_control_characters():
    assert render.safe_text("\x1b[31mevil") == "\\x1b[31mevil"
    assert render.safe_text("a\rb\nc\x00d\te") == "a\\x0db\\x0ac\\x00d\\x09e"
    assert render.safe_text("\x7f\x9b") == "\\x7f\\x9b"
    assert render.safe_text("\u2028") == "\\u2028"  # line separator


def test_safe_text_keeps_normal_text():
    for text in ("mmapcount", "kworker/u8:3-events", "[bold]x[/bold]", "Grüße 进程", "a b"):
        assert render.safe_text(text) == text
    assert render.safe_text(1234) == "1234"


@given(st.text())
def test_safe_text_output_is_printable(text):
    assert render.safe_text(text).isprintable()


def lock_row(comm: str) -> dict:
    return {
        "lock": "mmap_lock",
        "lock_class": "mmap_lock",
        "mode": "write",
        "lock_addr": "0xffff888100000100",
        "owner_pid": 4242,
        "owner_comm": comm,
        "acquisitions": 10,
        "contended": 1,
        "releases": 10,
        "downgrades": 0,
        "trylock_failures": 0,
        "wait_ns": {
            "count": 10,
            "total": 5000,
            "avg": 500.0,
            "p50": 400.0,
            "p99": 900.0,
            "max": 1000,
        },
        "hold_ns": {
            "count": 10,
            "total": 20000,
            "avg": 2000.0,
            "p50": 1500.0,
            "p99": 3000.0,
            "max": 3500,
        },
        "contended_wait_ns": None,
        "still_held": 0,
        "reader_writer_ratio": None,
        "per_cpu": [
            {
                "cpu": 0,
                "acquisitions": 10,
                "contended": 1,
                "wait_total_ns": 5000,
                "hold_total_ns": 20000,
            }
        ],
    }


def rendered(renderable) -> tuple[str, str]:
    """(raw terminal output with styling, plain text) of a renderable."""
    out = io.StringIO()
    console = Console(
        file=out,
        record=True,
        force_terminal=True,
        color_system="truecolor",
        width=300,
        height=100,  # with TERM=dumb and no height, rich falls back to 80x25
    )
    console.print(renderable)
    return out.getvalue(), console.export_text(styles=False)


@pytest.mark.parametrize("comm", HOSTILE_COMMS)
def test_hostile_comm_in_the_view(comm):
    header = f"lockprof  pid 4242 ({comm})  1.0s"
    raw, plain = rendered(render.view([lock_row(comm)], header, {}, 0))
    assert raw.count("\x1b") > 0  # the styling itself is there (bold header)
    without_styling = SGR.sub("", raw)
    assert "\x1b" not in without_styling and "\x07" not in without_styling
    assert "\x00" not in raw and "\r" not in raw and "\x9b" not in raw
    escaped = render.safe_text(comm)
    assert plain.count(escaped) == 2  # the header and the lock label, verbatim
    assert f"mmap_lock pid 4242 ({escaped})" in plain


def test_markup_in_a_comm_is_shown_as_text():
    raw, plain = rendered(render.summary_table([lock_row("[bold]x[/bold]")]))
    assert "[bold]x[/bold]" in plain
    assert "[bold]x[/bold]" in SGR.sub("", raw)


def test_escape_sequence_from_a_comm_is_not_emitted():
    raw, _plain = rendered(render.summary_table([lock_row("\x1b[31mevil")]))
    assert "\x1b[31mevil" not in raw
    assert "\\x1b[31mevil" in SGR.sub("", raw)


def test_text_from_a_recording_file_is_never_markup():
    """A crafted recording (not only a traced process) must not reach the
    terminal as rich markup: a [link=...] would emit an OSC 8 sequence."""
    row = dict(lock_row("x"), mode="[link=https://evil.example]read[/link]")
    raw, plain = rendered(render.summary_table([row]))
    assert "\x1b]8" not in raw and "[link=https://evil.example]read[/link]" in plain
    cost = {"function": "[link=https://evil.example]f[/link]", "samples": 1,
            "estimated_cpu_s": 0.001, "online_cpus": 2, "method": "m"}  # fmt: skip
    raw, plain = rendered(render.writer_cost_lines(cost)[0])
    assert "\x1b]8" not in raw and plain.startswith("[link=https://evil.example]f[/link]:")


def test_summary_table_figures():
    _raw, plain = rendered(render.summary_table([lock_row("mmapcount")]))
    line = next(x for x in plain.splitlines() if "mmap_lock pid 4242" in x)
    cells = [c.strip() for c in line.strip().strip("│").split("│")]
    lock_mode_acq_contended = ["mmap_lock pid 4242 (mmapcount)", "write", "10", "1"]
    wait_total_avg_p50_p99_max = ["5us", "500ns", "400ns", "900ns", "1us"]
    hold_avg_p99_max = ["2us", "3us", "3.5us"]
    ratio_downgrades_failures = ["-", "0", "0"]
    assert cells == (
        lock_mode_acq_contended
        + wait_total_avg_p50_p99_max
        + hold_avg_p99_max
        + ratio_downgrades_failures
    )


def test_summary_table_top_limits_rows():
    rows = [lock_row(f"c{i}") for i in range(5)]
    _raw, plain = rendered(render.summary_table(rows, top=2))
    assert "(c0)" in plain and "(c1)" in plain and "(c2)" not in plain


def test_plain_summary_lines_have_the_rich_tables_cells_aligned():
    rows = [lock_row("mmapcount"), dict(lock_row("x"), acquisitions=1234567, mode="read")]
    lines = list(render.plain_summary_lines(rows))
    _raw, plain = rendered(render.summary_table(rows))
    rich_cells = [
        [c.strip() for c in line.strip().strip("│").split("│")]
        for line in plain.splitlines()
        if "mmap_lock pid" in line
    ]
    assert len(lines) == 3 and lines[0].split()[:4] == ["lock", "mode", "acq", "contended"]
    for line, cells in zip(lines[1:], rich_cells, strict=True):
        assert line.startswith(cells[0]) and line.endswith(cells[-1])
        assert re.split(r"\s{2,}", line) == cells
    # right-justified numbers end in the same column, under their header
    acq_end = lines[0].index("acq") + len("acq")
    assert lines[1][:acq_end].endswith(" 10") and lines[2][:acq_end].endswith("1,234,567")


@pytest.mark.parametrize("comm", HOSTILE_COMMS)
def test_plain_summary_lines_escape_hostile_text(comm):
    row = dict(lock_row(comm), mode="[link=https://evil.example]read[/link]")
    lines = list(render.plain_summary_lines([row]))
    assert all(line.isprintable() for line in lines)
    assert f"mmap_lock pid 4242 ({render.safe_text(comm)})" in lines[1]


def test_view_mentions_hidden_rows_and_problems():
    rows = [lock_row(f"c{i}") for i in range(4)]
    _raw, plain = rendered(render.view(rows, "hdr", {"stack": 2, "ringbuf_full": 9}, 9, top=3))
    assert "(1 more row; `lockprof show FILE` lists all)" in plain
    assert "! lost events: 9; stack: 2" in plain


def test_problems_line():
    assert render.problems_line({"stack": 0, "ringbuf_full": 0}, 0) is None
    # ringbuf_full is reported as lost events, not twice
    assert render.problems_line({"ringbuf_full": 3}, 3).plain == "! lost events: 3"
    line = render.problems_line({"task_map_full": 1200, "held_overflow": 1}, 0)
    assert line.plain == "! held overflow: 1; task map full: 1,200"


# -- a realistic summary -----------------------------------------------------------------

SYMBOL_NAME = "irqentry_exit_to_user_mode+0x110 (0xffff888627d2ba80)"


def contention_row(name: str, waits: tuple[int, int], wait_ns: int) -> dict:
    """A lock seen through lock:contention_* only: no acquisitions, no holds."""
    row = dict(lock_row("x"), lock=name, owner_pid=None, mode="exclusive")
    row.update(acquisitions=None, releases=None, downgrades=None, trylock_failures=None)
    row.update(hold_ns=None, still_held=None, contended=sum(waits))
    row["wait_ns"] = dict(lock_row("x")["wait_ns"], count=sum(waits), total=wait_ns)
    row["per_cpu"] = [
        {"cpu": cpu, "acquisitions": None, "contended": n, "wait_total_ns": wait_ns // 2,
         "hold_total_ns": None}
        for cpu, n in enumerate(waits)
    ]  # fmt: skip
    return row


def bizzy_rows() -> list[dict]:
    """The busiest rows of `lockprof run -- lpbizzy -t 2 -S 3`: an
    mmap_lock's two modes, spinlocks and a lock named by its caller."""
    write = dict(lock_row("lpbizzy"), owner_pid=16525, acquisitions=35_336, contended=88)
    write.update(downgrades=17_649, trylock_failures=0)
    write["wait_ns"] = dict(write["wait_ns"], total=143_000_000, avg=4040.0, max=16_500_000)
    write["per_cpu"] = [
        {"cpu": 0, "acquisitions": 12_609, "contended": 44, "wait_total_ns": 63_557_611,
         "hold_total_ns": 24_692_510},
        {"cpu": 1, "acquisitions": 22_727, "contended": 44, "wait_total_ns": 79_035_206,
         "hold_total_ns": 45_513_306},
    ]  # fmt: skip
    read = dict(write, mode="read", acquisitions=2_805, contended=59, downgrades=0)
    read.update(trylock_failures=555, reader_writer_ratio=0.0794)
    read["per_cpu"] = [
        dict(cpu, acquisitions=n, contended=waits)
        for cpu, n, waits in zip(write["per_cpu"], (1_103, 1_702), (28, 31), strict=True)
    ]
    return [
        write,
        read,
        contention_row("spinlock 0xffff888627c2ba80", (230, 23), 5_450_000),
        contention_row(SYMBOL_NAME, (6, 94), 2_680_000),
        contention_row("spinlock 0xffffea0004e90168", (77, 76), 236_000),
    ]


def test_per_cpu_line():
    rows = [lock_row("a"), lock_row("b")]
    rows[1]["per_cpu"] = [
        {
            "cpu": 1,
            "acquisitions": None,
            "contended": 3,
            "wait_total_ns": 2_000_000,
            "hold_total_ns": None,
        }
    ]
    # cpu1's 3 contended waits are on a contention-only lock: no acquisitions
    assert render.per_cpu_line(rows).plain == (
        "per CPU  cpu0: 10 acq, 1 contended wait, wait 5us  |  "
        "cpu1: 0 acq, 3 contended waits, wait 2ms"
    )
    assert render.per_cpu_line([]).plain == "per CPU  no activity"


PER_CPU = re.compile(r"cpu(\d+): ([\d,]+) acq, ([\d,]+) contended waits?, wait ")


def per_cpu_figures(line: str) -> dict[int, tuple[int, int]]:
    """cpu -> (acq, contended waits) as a per-CPU line says them."""
    return {
        int(cpu): (int(acq.replace(",", "")), int(waits.replace(",", "")))
        for cpu, acq, waits in PER_CPU.findall(line)
    }


def test_the_per_cpu_acquisitions_add_up_to_the_tables():
    """Contention-only locks' contended waits are not acquisitions: the
    per-CPU line counted them as `acq` (195,923 for a table of 97,015)."""
    rows = bizzy_rows()
    figures = per_cpu_figures(render.per_cpu_line(rows).plain)
    assert sorted(figures) == [0, 1]
    assert sum(acq for acq, _waits in figures.values()) == sum(
        row["acquisitions"] or 0 for row in rows
    )
    every_wait = sum(cpu["contended"] for row in rows for cpu in row["per_cpu"])
    assert sum(waits for _acq, waits in figures.values()) == every_wait
    assert any(row["acquisitions"] is None and row["contended"] for row in rows)  # not vacuous


# -- the summary table at a terminal's width ----------------------------------------------

MM_NAME = "mmap_lock pid 16525 (lpbizzy)"


def rendered_at(renderable, width: int) -> str:
    out = io.StringIO()
    console = Console(file=out, record=True, width=width, height=100)
    console.print(renderable)
    return console.export_text(styles=False)


def boxed_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip()[1:-1].split(line.strip()[0])]


def table_of(plain: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows' cells) of the summary table in plain text: a header's
    two lines joined, a lock name wrapped over lines joined with a space."""
    lines = plain.splitlines()
    top, bottom = (boxed_cells(line) for line in lines if line.startswith("┃"))
    headers = [f"{a} {b}".strip() for a, b in zip(top, bottom, strict=True)]
    rows: list[list[str]] = []
    for line in lines:
        if not line.startswith("│"):
            continue
        cells = boxed_cells(line)
        if cells[1]:  # a row's first line (the mode is never empty)
            rows.append(cells)
        else:  # the lock name goes on
            rows[-1][0] += " " + cells[0]
    return headers, rows


@pytest.mark.parametrize("width", [80, 100, 120, 160])
def test_the_summary_fits_the_terminal_without_cutting_a_figure(width):
    rows = bizzy_rows()
    plain = rendered_at(render.view(rows, "hdr", {}, 0), width)
    assert "…" not in plain
    assert max(len(line) for line in plain.splitlines()) <= width
    headers, cells = table_of(plain)
    # The most important columns stay, in table order; the others are left
    # out from the end of the priority list.
    essential = ["lock", "mode", "acq", "contended", "wait total", "wait avg", "wait max"]
    assert headers == [h for h in render.SUMMARY_HEADERS if h in headers]
    assert set(essential) <= set(headers) and len(headers) > (7 if width >= 100 else 6)
    assert len(headers) < len(render.SUMMARY_HEADERS) or width >= 160
    kept = [h for h in render.COLUMN_PRIORITY if h in headers]
    assert kept == list(render.COLUMN_PRIORITY[: len(kept)])
    # Every shown cell in full; lock names whole (when wrapped, at a space or folded).
    columns = [render.SUMMARY_HEADERS.index(h) for h in headers]
    for shown, row in zip(cells, rows, strict=True):
        full = render.summary_cells(row)
        assert shown[1:] == [full[i] for i in columns[1:]]
        assert shown[0].replace(" ", "") == full[0].replace(" ", "")
    assert "35,336" in plain
    left_out = [h for h in render.SUMMARY_HEADERS if h not in headers]
    hint = " ".join(line for line in plain.splitlines() if line[:1] not in "┏┃┡│└")
    if left_out:
        assert f"columns left out to fit the terminal: {', '.join(left_out)};" in hint
        assert "`lockprof show FILE | less -S`" in hint
    else:
        assert "left out" not in hint


def test_the_lock_name_is_never_squeezed_out():
    """rich squeezed the lock column to nothing at 120 columns. It keeps
    at least a kernel address's width (18): a name wraps, whole."""
    for width in (80, 100, 120):
        plain = rendered_at(render.summary_table(bizzy_rows()), width)
        headers, cells = table_of(plain)
        assert headers[0] == "lock" and cells[0][0] == MM_NAME
        top_rule = next(line for line in plain.splitlines() if line.startswith("┏"))
        assert len(top_rule[1:].split("┳")[0]) >= 18
        lock_column = [boxed_cells(line)[0] for line in plain.splitlines() if line[:1] == "│"]
        assert any("0xffff888627c2ba80" in lock for lock in lock_column)  # unbroken
    assert cells[0][0] in plain  # at 120 on one line


def test_every_column_at_a_wide_terminal():
    headers, _cells = table_of(rendered_at(render.view(bizzy_rows(), "hdr", {}, 0), 200))
    assert headers == list(render.SUMMARY_HEADERS)


def test_output_that_is_not_a_terminal_gets_every_column_in_full(capsys):
    """A pipe or file gets the whole table (scripts, `less -S`), however
    long its lock names: not a 240-column one cut to fit."""
    long_name = "a_very_long_lock_function_name_from_a_lock_spec_" * 5 + "+0x10"
    rows = [*bizzy_rows(), dict(contention_row(long_name, (1, 1), 2000))]
    out = render.console()
    assert not out.is_terminal
    out.print(render.view(rows, "hdr", {}, 0))
    plain = capsys.readouterr().out
    assert "…" not in plain and long_name in plain
    headers, cells = table_of(plain)
    assert headers == list(render.SUMMARY_HEADERS)
    assert [row[0] for row in cells] == [render.lock_label(row) for row in rows]
    assert "left out" not in plain


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (None, "-"),
        (0, "0ns"),
        (1, "1ns"),
        (999, "999ns"),
        (1000, "1us"),
        (1500, "1.5us"),
        (12_345, "12.3us"),
        (999_000, "999us"),
        (1_000_000, "1ms"),
        (2_500_000, "2.5ms"),
        (1_000_000_000, "1s"),
        (61_500_000_000, "61.5s"),
        (0.4, "0ns"),
    ],
)
def test_fmt_ns(ns, text):
    assert render.fmt_ns(ns) == text


@pytest.mark.parametrize(("value", "text"), [(None, "-"), (0, "0"), (1234567, "1,234,567")])
def test_fmt_count(value, text):
    assert render.fmt_count(value) == text


FMT = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s)$")
SCALE = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}


@pytest.mark.parametrize("ns", [999_999, 999_600, 999_999_999, 1_500_000_000_000])
def test_fmt_ns_never_uses_scientific_notation(ns):
    text = render.fmt_ns(ns)
    match = FMT.match(text)
    assert match, text
    assert float(match.group(1)) * SCALE[match.group(2)] == pytest.approx(ns, rel=0.01)


def test_lock_label():
    assert render.lock_label({"lock": "x", "owner_pid": None}) == "x"
    assert render.lock_label({"lock": "mmap_lock", "owner_pid": 7, "owner_comm": None}) == (
        "mmap_lock pid 7 (?)"
    )
    assert render.lock_label({"lock": "m\x1b", "owner_pid": 7, "owner_comm": "a\nb"}) == (
        "m\\x1b pid 7 (a\\x0ab)"
    )
    # an mm whose process was never learned (a child's new mm, its fork's)
    assert render.lock_label({"lock": "mmap_lock", "owner_pid": None}) == (
        "mmap_lock (owner unknown)"
    )


def test_view_of_the_real_recording(rec):
    doc = summary.summary_json(rec)
    _raw, plain = rendered(render.view(doc["locks"], "header", rec.meta["errors"], 0, top=None))
    assert "mmap_lock pid 4560 (mmapcount)" in plain
    assert "2,030" in plain and "1,002" in plain  # write acquisitions, downgrades
    assert "!" not in plain  # no lost events or errors in this run


def many_rows(n: int) -> list[dict]:
    """n rows of `record -a`: bizzy's, then spinlocks by address."""
    rows = bizzy_rows()
    for i in range(n - len(rows)):
        rows.append(contention_row(f"spinlock 0xffff8881000{i:05x}0", (3, 4), 1_000 - i))
    return rows[:n]


@pytest.mark.parametrize(("width", "height"), [(80, 24), (100, 24), (120, 20)])
def test_the_live_frame_fits_the_terminals_height(width, height):
    """rich's Live cut a frame taller than the terminal at its bottom: at
    80x24, 15 rows left out the per-CPU line, the problems line (lost
    events) and the more-rows line. The frame shows the rows that fit and
    counts the others."""
    rows = many_rows(30)
    frame = render.LiveFrame(rows, "lockprof  hdr", {"ringbuf_full": 7}, 7, top=15, more_locks=5)
    console = Console(file=io.StringIO(), width=width, height=height)
    lines = [
        "".join(s.text for s in line)
        for line in console.render_lines(frame, console.options, pad=False)
    ]
    assert len(lines) <= height
    assert lines[0] == "lockprof  hdr"
    assert any(line.startswith("per CPU  cpu0: ") for line in lines)
    assert "! lost events: 7" in lines
    shown = sum(1 for line in lines if re.match(r"│.*│ (exclusive|read|write) ", line))
    assert 1 <= shown < 15
    more = f"({30 - shown} more rows, and 5 quieter locks; `lockprof show FILE` lists all)"
    assert " ".join(lines).endswith(more)


def test_the_live_frame_is_the_view_when_it_fits():
    rows = bizzy_rows()
    frame = render.LiveFrame(rows, "hdr", {}, 0, top=15)
    assert rendered_at(frame, 120) == rendered_at(render.view(rows, "hdr", {}, 0, 15), 120)


def test_the_live_frame_fits_from_the_last_frames_row_count(monkeypatch):
    """Fitting searches once (five or six renders at 80x24); later frames
    start from the last one's row count: two renders a refresh."""
    rows = many_rows(60)
    console = Console(file=io.StringIO(), width=80, height=24)
    first = render.LiveFrame(rows, "hdr", {}, 0, top=15)
    expected = console.render_lines(first, console.options, pad=False)
    assert first.shown is not None and 1 < first.shown < 15
    tops = []
    frame = render.LiveFrame.frame
    monkeypatch.setattr(
        render.LiveFrame, "frame", lambda self, top: tops.append(top) or frame(self, top)
    )
    later = render.LiveFrame(rows, "hdr", {}, 0, top=15, guess=first.shown)
    assert console.render_lines(later, console.options, pad=False) == expected
    assert tops == [first.shown, first.shown + 1] and later.shown == first.shown
    # A taller terminal: more rows; a shorter one: fewer.
    for height, more in ((40, True), (16, False)):
        console = Console(file=io.StringIO(), width=80, height=height)
        again = render.LiveFrame(rows, "hdr", {}, 0, top=15, guess=first.shown)
        assert len(console.render_lines(again, console.options, pad=False)) <= height
        assert again.shown is not None and (again.shown > first.shown) == more


def test_offcpu_table_gives_each_component_its_column_and_cuts_no_name():
    """A reader's time blocked by a writer showed under `writer wait`, and
    a plain wait (an rwsem writer's) in no column; names were cut with an
    ellipsis on an 80-column terminal."""
    from rich.console import Console

    from profiler import writer_cost

    assert [c for c, _h in render.OFFCPU_COLUMNS] == list(writer_cost.COMPONENTS)
    name = "rwsem_down_read_slowpath <- __x64_sys_mincore+0x12c"
    rows = [
        {
            "lock": name,
            "mode": "read",
            "wait_ns": {"count": 3, "total": 2_660_000_000, "max": 1_000_000_000},
            "offcpu_components_ns": {"blocked_by_writer": 2_660_000_000},
            "tasks": ["t1", "t2", "t3", "t4", "t5", "t6"],
        },
        {
            "lock": "rwsem_down_write_slowpath <- vm_mmap_pgoff+0x155",
            "mode": "write",
            "wait_ns": {"count": 2, "total": 1_580_000_000, "max": 900_000_000},
            "offcpu_components_ns": {"wait": 1_580_000_000},
            "tasks": ["w"],
        },
    ]
    console = Console(width=80, record=True, force_terminal=False)
    console.print(render.offcpu_table(rows))
    text = console.export_text()
    assert "…" not in text
    assert "+2 more" in text
    # The lock column, line by line: each name wraps within it, whole.
    column = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert name.replace(" ", "") in column.replace(" ", "")
    table = render.offcpu_table(rows)
    cells = {str(column.header).replace("\n", " "): list(column.cells) for column in table.columns}
    assert cells["reader blocked"] == ["2.66s", "-"]
    assert cells["other wait"] == ["-", "1.58s"]
    assert "writer wait" not in cells and "grace period" not in cells  # no row has them


def test_counted_says_one_in_the_singular():
    assert render.counted(1, "event") == "1 event"
    assert render.counted(0, "event") == "0 events"
    assert render.counted(1_196, "event") == "1,196 events"
