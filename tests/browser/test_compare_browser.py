"""The comparison page (`lockprof compare -o compare.html`) in headless Chromium.

Builds three "before" runs from tests/data/mmapcount-1000.lpr and three
"after" runs with half its mmap_lock traffic, with a hostile comm and
command line, and checks that every plot rendered, that there were no
JavaScript errors, that nothing but the file was requested, that hostile
names are text, and that the verdict table holds the expected verdict.
A screenshot is kept under artifacts/browser/compare.png.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import profiler
from dashboards import compare as page
from profiler import compare as cmp
from profiler import schema
from profiler.runset import Run, RunSet

from .cdp import REPO, artifacts, needs_chromium, rendered

RECORDING = REPO / "tests" / "data" / "mmapcount-1000.lpr"
COMM = "</script><b>x"
COMMAND = ["/bin/<img src=x onerror=console.error('xss-cmd')>", "-n", "1000"]
SCALED = [
    "acquisitions",
    "releases",
    "downgrades",
    "wait_count",
    "wait_total_ns",
    "hold_count",
    "hold_total_ns",
]

pytestmark = needs_chromium


def scaled_run(factor: float, sys_s: float, throughput: float) -> Run:
    rec = profiler.load(RECORDING)
    frame = rec.intervals
    mmap = frame["source"] == schema.const("LP_SRC_MMAP_LOCK")
    for column in SCALED:
        frame.loc[mmap, column] = (frame.loc[mmap, column] * factor).round().astype("int64")
    for column in ("wait_slots", "hold_slots"):
        frame[column] = [
            (np.asarray(slots) * factor).round().astype(int).tolist() if is_mmap else slots
            for slots, is_mmap in zip(frame[column], mmap, strict=True)
        ]
    rec.locks["owner_comm"] = rec.locks["owner_comm"].replace("mmapcount", COMM)
    rec.meta["command"] = COMMAND
    rec.meta["rusage"] = dict(rec.meta["rusage"], sys_s=sys_s)
    return Run(recording=rec, throughput=throughput)


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory) -> tuple[Path, cmp.Comparison]:
    before = RunSet(
        label="before",
        runs=[
            scaled_run(f, s, t)
            for f, s, t in ((1.0, 1.2, 100), (1.02, 1.25, 98), (0.98, 1.24, 103))
        ],
        command=COMMAND,
    )
    after = RunSet(
        label="after",
        runs=[
            scaled_run(f, s, t)
            for f, s, t in ((0.5, 1.1, 180), (0.51, 1.09, 190), (0.49, 1.11, 185))
        ],
        command=COMMAND,
    )
    result = cmp.compare(before, after)
    path = tmp_path_factory.mktemp("compare") / "compare.html"
    page.write(result, path)
    shutil.copy(path, artifacts() / "compare.html")
    return path, result


@pytest.fixture(scope="module")
def browser(compare_page, tmp_path_factory):
    path, _ = compare_page
    with rendered(path, tmp_path_factory.mktemp("profile"), "compare.png") as chromium:
        yield chromium


def test_every_plot_rendered(browser, compare_page):
    _path, result = compare_page
    expected = [
        f"plot-{name}" for *_head, figures, _html in page.sections(result) for name, _f in figures
    ]
    rendered = browser.evaluate(
        "Array.from(document.querySelectorAll('div.plot')).map(d => [d.id,"
        " d.classList.contains('js-plotly-plot'),"
        " d.querySelectorAll('.cartesianlayer .bars .point').length,"
        " d.getBoundingClientRect().height])"
    )
    assert [r[0] for r in rendered] == expected
    assert {"plot-process", "plot-locks", "plot-dist-0"} <= set(expected)
    for div, plotted, bars, height in rendered:
        assert plotted and bars > 0 and height > 100, div
    # Error bars drawn for the side-by-side bars.
    error_bars = browser.evaluate(
        "document.querySelectorAll('#plot-process .errorbar, #plot-locks .errorbar').length"
    )
    assert error_bars > 0


def test_no_javascript_errors(browser):
    assert browser.console_errors() == []


def test_nothing_but_the_file_was_requested(browser, compare_page):
    path, _result = compare_page
    urls = browser.requested_urls()
    assert path.as_uri() in urls
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in urls), urls


def test_hostile_names_are_text(browser):
    checks = browser.evaluate(
        """(() => {
        const cells = Array.from(document.querySelectorAll('#verdict-table td'));
        const svgText = Array.from(document.querySelectorAll('text, tspan'));
        return {
          scripts: document.scripts.length,
          imgs: document.querySelectorAll('img').length,
          bold_x: Array.from(document.querySelectorAll('b'))
               .filter(b => b.textContent === 'x').length,
          comm_in_table: cells.some(td => td.textContent === 'mmap_lock (target </script><b>x)'),
          comm_in_svg: svgText.some(t => t.textContent.includes('</script><b>x')),
          command_in_header: document.querySelector('#summary').textContent
               .includes("/bin/<img src=x onerror=console.error('xss-cmd')> -n 1000"),
        };
        })()"""
    )
    assert checks == {
        "scripts": 3,
        "imgs": 0,
        "bold_x": 0,
        "comm_in_table": True,
        "comm_in_svg": True,
        "command_in_header": True,
    }


def test_verdict_table_holds_the_verdicts(browser):
    rows = browser.evaluate(
        "Array.from(document.querySelectorAll('#verdict-table tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent))"
    )
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    acquisitions = by_key[("mmap_lock (target </script><b>x)", "write", "acquisitions")]
    assert acquisitions[5] == "-50.0%"
    assert acquisitions[7] == "significant decrease"
    # The process is named as its mmap_lock's owner (the hostile comm).
    sys_time = by_key[(f"{COMM} (process)", "", "sys time")]
    assert sys_time[3:6] == ["1.23 s", "1.1 s", "-10.6%"]
    assert sys_time[7] == "significant decrease"
    headline = browser.evaluate("document.querySelector('ul.headline').textContent")
    assert "sys time: 1.23 s -> 1.1 s (-10.6%, 95% CI" in headline
