"""The HTML report in a real browser: headless Chromium, offline.

Loads a report built from tests/data/hostile-comm.lpr (threads named
`</script><b>x`), with more hostile names and a hostile kernel symbol mixed
in, and off-CPU time and CPU samples added (a hostile-named writer blocked
in percpu_down_write, __percpu_counter_sum samples) so that the writer's
price panel has something to draw, and checks that every panel's plot rendered, that there were no
JavaScript errors, that the page asked for nothing but itself, that hostile
names appear only as text, and that the summary table sorts. Screenshots
are kept under artifacts/browser/ (gitignored; LOCKPROF_ARTIFACTS overrides).

Chromium runs in a network namespace with no interfaces when root, with
network emulation offline and an unresolvable proxy in any case.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

import profiler
from dashboards import html

from .cdp import REPO, artifacts, element_screenshot, needs_chromium, rendered

RECORDING = REPO / "tests" / "data" / "hostile-comm.lpr"
COMM = "</script><b>x"
SYMBOL = "<img src=x onerror=console.error('xss-symbol')>"
TARGET = "pid 1 (<script>console.error('xss-target')</script>)"

pytestmark = needs_chromium


def add_writer_cost(rec: profiler.Recording) -> None:
    """Off-CPU time of a writer named COMM in percpu_down_write (grace period
    and reader drain), and CPU samples in __percpu_counter_sum, one of them
    called from a hostile symbol; --cpus 64."""
    cgroup = ["cgroup_procs_write_start+0x1f8", "__cgroup_procs_write+0x57"]
    stacks = [
        ["__schedule+0x618", "schedule+0x23", "percpu_down_write+0xde", *cgroup],
        ["__schedule+0x618", "rcu_sync_enter+0x52", "percpu_down_write+0x1b", *cgroup],
        ["__percpu_counter_sum+0x3f", "__mmdrop+0xb4"],
        ["__percpu_counter_sum+0x3f", f"{SYMBOL}+0x10"],
    ]
    first = int(rec.stacks["stack_id"].max()) + 1
    ids = list(range(first, first + len(stacks)))
    added = pd.DataFrame({"stack_id": ids, "frames": stacks})
    rec.stacks = pd.concat([rec.stacks, added], ignore_index=True)
    rec.offcpu = pd.DataFrame(
        {
            "tgid": [10, 10],
            "comm": [COMM, COMM],
            "stack_id": ids[:2],
            "count": [40, 5],
            "total_ns": [300_000_000, 100_000_000],
            "max_ns": [9_000_000, 30_000_000],
        }
    )
    rec.samples = pd.DataFrame({"stack_id": ids[2:], "cpu": [0, 1], "count": [30, 10]})
    rec.meta.update(
        families=[*rec.meta.get("families", []), "offcpu", "sample"],
        sample_hz=100,
        what_if_cpus=64,
    )


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> tuple[Path, list[str]]:
    rec = profiler.load(RECORDING)
    spin = rec.locks.index[rec.locks["lock_class"] == "spinlock"][0]
    rec.locks.loc[spin, "name"] = SYMBOL
    rec.meta["target"] = TARGET
    add_writer_cost(rec)
    path = tmp_path_factory.mktemp("report") / "report.html"
    html.write_report(rec, path, source="hostile-comm.lpr")
    plots = [f"plot-{name}" for panel in html.panels(rec) for name, _ in panel.figures]
    shutil.copy(path, artifacts() / "report.html")
    return path, plots


@pytest.fixture(scope="module")
def browser(report_page, tmp_path_factory):
    path, _ = report_page
    with rendered(path, tmp_path_factory.mktemp("profile"), "report.png") as chromium:
        yield chromium


def test_every_panel_rendered(browser, report_page):
    _path, plots = report_page
    rendered = browser.evaluate(
        "Array.from(document.querySelectorAll('div.plot')).map(d => [d.id,"
        " d.classList.contains('js-plotly-plot'), d.querySelectorAll('svg.main-svg').length,"
        " d.getBoundingClientRect().height])"
    )
    assert [r[0] for r in rendered] == plots
    for div, plotted, svgs, height in rendered:
        assert plotted and svgs >= 1 and height > 100, div
    traces = browser.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('div.plot'))"
        ".map(d => [d.id, d.querySelectorAll('.trace, .cartesianlayer .bars .point,"
        " .heatmaplayer image, .iciclelayer .slice, .table .cell-rect').length]))"
    )
    for div, count in traces.items():
        assert count > 0, f"{div} drew nothing"


def test_no_javascript_errors(browser):
    assert browser.console_errors() == []


def test_nothing_but_the_file_was_requested(browser, report_page):
    path, _plots = report_page
    urls = browser.requested_urls()
    assert path.as_uri() in urls
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in urls), urls


def test_hostile_names_are_text(browser):
    checks = browser.evaluate(
        """(() => {
        const text = document.body.textContent;
        const svgText = Array.from(document.querySelectorAll('text, tspan'));
        return {
          scripts: document.scripts.length,
          imgs: document.querySelectorAll('img').length,
          bold_x: Array.from(document.querySelectorAll('b'))
               .filter(b => b.textContent === 'x').length,
          bold_tspans: svgText.filter(t => t.textContent === 'x'
               && /bold/.test(t.getAttribute('style') || '')).length,
          comm_in_table: Array.from(document.querySelectorAll('#summary-table td'))
               .some(td => td.textContent.includes('(</script><b>x)')),
          comm_in_svg: svgText.some(t => t.textContent.includes('</script><b>x')),
          symbol_in_table: text.includes("<img src=x onerror=console.error('xss-symbol')>"),
          target_in_header: document.querySelector('header h1').textContent,
          title: document.title,
        };
        })()"""
    )
    assert checks["scripts"] == 3
    assert checks["imgs"] == 0
    assert checks["bold_x"] == 0 and checks["bold_tspans"] == 0
    assert checks["comm_in_table"] and checks["comm_in_svg"] and checks["symbol_in_table"]
    assert checks["target_in_header"] == f"lockprof report: {TARGET}"
    assert checks["title"] == f"lockprof: {TARGET}"


def test_hover_shows_hostile_names_as_text(browser):
    """Plotly renders a subset of HTML in hover labels: the comm must come out literal."""
    hover = browser.evaluate(
        """(() => {
        const div = document.getElementById('plot-tasks');
        const trace = div.data.findIndex(t => t.name === 'target process');
        const point = div.data[trace].y.findIndex(y => y.startsWith('&lt;/script&gt;'));
        Plotly.Fx.hover(div, [{curveNumber: trace, pointNumber: point}]);
        const layer = div.querySelector('.hoverlayer');
        return {text: layer.textContent,
                bold: Array.from(layer.querySelectorAll('tspan')).filter(
                  t => t.textContent === 'x' && /bold/.test(t.getAttribute('style') || '')).length};
        })()"""
    )
    assert "</script><b>x (" in hover["text"]
    assert hover["bold"] == 0


def test_writer_cost_hover_shows_hostile_tasks_and_symbols_as_text(browser):
    hover = browser.evaluate(
        """(() => {
        const out = {};
        for (const [id, curve] of [['plot-offcpu', 1], ['plot-sum-cost', 0]]) {
          const div = document.getElementById(id);
          Plotly.Fx.hover(div, [{curveNumber: curve, pointNumber: id === 'plot-offcpu' ? 0 : 1}]);
          const layer = div.querySelector('.hoverlayer');
          out[id] = {text: layer.textContent,
                     bold: Array.from(layer.querySelectorAll('tspan')).filter(
                       t => t.textContent === 'x' && /bold/.test(t.getAttribute('style') || '')
                     ).length};
        }
        out.model = Array.from(document.querySelectorAll('#plot-sum-cost .x2tick text'))
          .map(t => t.textContent);
        out.imgs = document.querySelectorAll('img').length;
        return out;
        })()"""
    )
    offcpu = hover["plot-offcpu"]
    assert "percpu_down_write <- cgroup_procs_write_start" in offcpu["text"]
    assert "readers draining" in offcpu["text"] and f"tasks: {COMM}" in offcpu["text"]
    assert offcpu["bold"] == 0
    assert f"from {SYMBOL}+0x10" in hover["plot-sum-cost"]["text"]
    assert "MODEL: 64 CPUs (what-if)" in hover["model"]
    assert hover["imgs"] == 0


def test_summary_table_sorts(browser):
    def column(index: int) -> list[float]:
        return browser.evaluate(
            "Array.from(document.querySelectorAll('#summary-table tbody tr')).map(r => {"
            f" const v = r.cells[{index}].getAttribute('data-v');"
            " return v === '' ? null : parseFloat(v); })"
        )

    index = browser.evaluate(
        "Array.from(document.querySelectorAll('#summary-table th'))"
        ".findIndex(th => th.textContent === 'contended')"
    )
    assert index > 0
    browser.evaluate(f"document.querySelectorAll('#summary-table th')[{index}].click()")
    values = [v for v in column(index) if v is not None]
    assert values == sorted(values, reverse=True) and len(set(values)) > 1
    assert column(index)[-1] is None or None not in column(index)[: len(values)]
    browser.evaluate(f"document.querySelectorAll('#summary-table th')[{index}].click()")
    values = [v for v in column(index) if v is not None]
    assert values == sorted(values)
    sort = browser.evaluate(
        f"document.querySelectorAll('#summary-table th')[{index}].getAttribute('aria-sort')"
    )
    assert sort == "ascending"


def test_panel_screenshots(browser):
    for section in ("summary", "distributions", "timeline", "tasks", "writer-cost"):
        path = artifacts() / f"{section}.png"
        element_screenshot(browser, f"#{section}", path)
        assert path.stat().st_size > 5000
    assert (artifacts() / "report.png").stat().st_size > 50_000
