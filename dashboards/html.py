"""The HTML report: one self-contained, offline file.

plotly.js is embedded inline once, in the page head; every figure is a JSON
document inside the page's one inline script, escaped with
escape.script_json(). The page carries a Content-Security-Policy that allows
no network access at all and only the page's own (nonce-tagged) scripts, so
even a string that escaped escaping could neither run script nor load
anything.

build_report() is pure (Recording in, HTML text out); write_report() writes
the file atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dashboards import figures, frames, page
from dashboards.escape import html_text
from profiler.recording import Recording, damage_text
from profiler.render import fmt_ns

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}


Panel = page.Section  # one panel of the report


def panels(
    rec: Recording,
    max_events: int = 5000,
    top: int = 15,
    max_table_rows: int = 500,
) -> list[Panel]:
    """Every panel of the report, figures built."""
    locks = frames.lock_table(rec)
    intervals = frames.lock_intervals(rec, locks, histograms=False)
    events = frames.lock_events(rec, locks)
    tasks = frames.lock_tasks(rec, locks)
    callers = frames.lock_callers(rec, locks)
    summary = frames.summary_frame(rec, locks, max_locks=max_table_rows)
    folded = frames.folded_stacks(callers, frames.stack_frames(rec))
    meta = rec.meta
    cpus = meta.get("cpus")
    # Recordings without `families` (the oldest) traced contention.
    contention_traced = "contention" in (meta.get("families") or ["contention"])
    return [
        Panel(
            "header",
            "Recording",
            "What was profiled, where and how, and what it cost.",
            [("header", figures.build_header(meta, rec.event_count))],
            html=lost_banner(meta) + damage_banner(rec.damaged),
        ),
        Panel(
            "summary",
            "Summary",
            "One row per lock and mode. Click a column header to sort. "
            "'-' means the attached probes cannot know the figure (locks seen "
            "only through lock:contention_* have no acquisition or hold counts). "
            "A lock spec's (--locks) class is the spec's name; its mode 'sum' row "
            "counts calls of the spec's sum function (acq) and their duration "
            "(wait columns), which the writer spends inside its write wait, so "
            "the other panels leave it out.",
            html=summary_table(summary, max_table_rows),
        ),
        Panel(
            "readers-writers",
            "Readers and writers",
            "Read vs write acquisitions and contended acquisitions per reader/writer lock.",
            [("readers-writers", figures.build_reader_writer(summary, top))],
        ),
        Panel(
            "distributions",
            "Distributions",
            "From the exact in-kernel log2 histograms: every acquisition for "
            "mmap_lock, every contended wait for other locks.",
            [("distributions", figures.build_distributions(frames.lock_totals(rec, locks)))],
        ),
        Panel(
            "cpus",
            "Per CPU",
            "Where waiting happened: wait time per CPU over time (ms of waiting per "
            "second of each interval), and per CPU in total.",
            [
                (
                    "cpu-heatmap",
                    figures.build_cpu_heatmap(intervals, cpus, interval_s=meta.get("interval_s")),
                ),
                ("cpu-totals", figures.build_cpu_totals(intervals, cpus)),
            ],
        ),
        Panel(
            "timeline",
            "Timeline",
            "When: counts and wait time per second of each interval, and each wait or hold over "
            "the threshold with its task and lock (hover a point).",
            [
                (
                    "timeline",
                    figures.build_timeline(
                        intervals,
                        events,
                        meta.get("threshold_ns"),
                        max_events,
                        interval_s=meta.get("interval_s"),
                    ),
                )
            ],
        ),
        Panel(
            "top",
            "Top locks and callers",
            "Which locks hurt most, by identity, and the kernel call sites that waited for them.",
            [
                ("top-locks", figures.build_top_locks(summary, top)),
                ("top-callers", figures.build_top_callers(callers, top, contention_traced)),
            ],
        ),
        Panel(
            "stacks",
            "Stacks",
            "Contended wait time by kernel stack, outermost frame on top. Click a "
            "frame to zoom. `lockprof export REC --folded FILE` writes the same "
            "stacks for FlameGraph or speedscope.",
            [("stacks", figures.build_stacks(folded, traced=contention_traced))],
        ),
        Panel(
            "tasks",
            "Tasks",
            "The tasks that waited longest, including tasks of other processes "
            "that took the target's locks.",
            [("tasks", figures.build_tasks(tasks, events, meta.get("target_pid"), top + 5))],
        ),
        Panel(
            "writer-cost",
            "Writer's price",
            "What a writer pays that lock:contention_* does not show. Off-CPU "
            "time (--offcpu, from sched_switch with kernel stacks) in the percpu "
            "rw-semaphore and rwsem lock functions, per lock function and the "
            "caller that took the lock, split by what the stack waited for: an "
            "RCU grace period, readers draining, another writer. It is time off "
            "CPU, so it includes time spent runnable before running again. And "
            "the CPU time of __percpu_counter_sum (--sample), estimated from CPU "
            "samples; the --cpus what-if scales it linearly: a model, not a "
            "measurement.",
            [
                (
                    "offcpu",
                    figures.build_offcpu(
                        frames.offcpu_frame(rec), "offcpu" in (meta.get("families") or [])
                    ),
                ),
                ("sum-cost", figures.build_sum_cost(frames.sum_cost(rec))),
            ],
            html=spec_sum_table(frames.spec_sum_frame(summary)),
        ),
    ]


def lost_banner(meta: dict) -> str:
    lost = int(meta.get("lost_events") or 0)
    if not lost:
        return ""
    return (
        f'<p class="lost" role="alert"><b>{lost:,} events were lost</b> (the ring buffer '
        "was full): the timeline and the event counts miss them. The aggregates "
        "(summary, distributions, per CPU) are exact.</p>"
    )


def damage_banner(damaged: dict[str, str]) -> str:
    """A line per table of the recording found damaged (left out)."""
    return "".join(
        f'<p class="lost" role="alert"><b>Recording damaged</b>: '
        f"{html_text(damage_text(name, why))}.</p>"
        for name, why in damaged.items()
    )


SPEC_SUM_HEADERS = [
    "lock",
    "spec",
    "sum calls",
    "time in sum",
    "avg",
    "p99",
    "max",
    "share of write wait",
]


def spec_sum_table(sums: pd.DataFrame) -> str:
    """A lock spec's sum function (measured by its uprobe or kprobe): calls,
    time in it and its share of the lock's write wait. Empty markup when no
    spec has a sum function."""
    if sums.empty:
        return ""
    rows = []
    for row in sums.to_dict("records"):
        share = "-"
        if row["write_wait_total"] and not math.isnan(row["write_wait_total"]):
            share = f"{row['wait_total'] / row['write_wait_total']:.1%}"
        cells = [
            _cell(row["label"], "text"),
            _cell(row["lock_class"], "text"),
            _cell(row["acquisitions"], "count"),
            _cell(row["wait_total"], "ns"),
            _cell(row["wait_avg"], "ns"),
            _cell(row["wait_p99"], "ns"),
            _cell(row["wait_max"], "ns"),
            f'<td class="num">{html_text(share)}</td>',
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f'<th scope="col">{html_text(h)}</th>' for h in SPEC_SUM_HEADERS)
    return (
        '<p class="note">The lock spec\'s sum function (the writer summing the '
        "readers' counters until they drain), measured on every call:</p>"
        f'<div class="table-wrap"><table id="spec-sum-table" class="sortable plain">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


# -- the sortable summary table ---------------------------------------------------------

SUMMARY_HEADERS = [
    ("label", "lock", "text"),
    ("lock_class", "class", "text"),
    ("mode", "mode", "text"),
    ("acquisitions", "acq", "count"),
    ("contended", "contended", "count"),
    ("wait_total", "wait total", "ns"),
    ("wait_avg", "avg", "ns"),
    ("wait_p50", "p50", "ns"),
    ("wait_p99", "p99", "ns"),
    ("wait_max", "max", "ns"),
    ("hold_avg", "hold avg", "ns"),
    ("hold_p99", "hold p99", "ns"),
    ("hold_max", "hold max", "ns"),
    ("reader_writer_ratio", "r:w", "ratio"),
    ("downgrades", "downgr", "count"),
    ("trylock_failures", "fail", "count"),
    ("still_held", "still held", "count"),
]


def _cell(value, kind: str) -> str:
    if kind == "text":
        shown = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else value
        return f"<td>{html_text(shown)}</td>"
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if missing:
        return '<td class="num" data-v="">-</td>'
    if kind == "ns":
        shown = fmt_ns(value)
    elif kind == "ratio":
        shown = f"{value:.3g}"
    else:
        shown = f"{value:,.0f}"
    return f'<td class="num" data-v="{float(value)!r}">{html_text(shown)}</td>'


def summary_table(summary: pd.DataFrame, limit: int = 500) -> str:
    """The summary as an HTML table that sorts on a header click (the
    script is in the page). At most `limit` rows, by total wait time."""
    if summary.empty:
        return '<p class="empty">No lock activity was recorded.</p>'
    ordered = summary.sort_values("wait_total", ascending=False, na_position="last")
    shown = ordered.head(limit)
    head = "".join(
        f'<th scope="col" tabindex="0" data-type="{"text" if kind == "text" else "num"}">'
        f"{html_text(title)}</th>"
        for _column, title, kind in SUMMARY_HEADERS
    )
    body = []
    for values in shown.to_dict("records"):
        body.append(
            "<tr>" + "".join(_cell(values[c], kind) for c, _t, kind in SUMMARY_HEADERS) + "</tr>"
        )
    note = ""
    total = max(int(summary.attrs.get("total_rows", len(summary))), len(summary))
    if len(shown) < total:
        note = (
            f'<p class="note">Showing the {len(shown):,} rows with the most wait time '
            f"of {total:,}; <code>lockprof show REC</code> or "
            "<code>lockprof export REC --csv DIR</code> list all.</p>"
        )
    return (
        f'{note}<div class="table-wrap"><table id="summary-table" class="sortable">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


# -- the page ----------------------------------------------------------------------------

_STYLE = """
header.top p{margin:4px 0 0;color:#cfd8dc;font-size:13px;word-break:break-all}
.lost{background:#fde0dd;color:#900;border:1px solid #f5a3a3;padding:8px 12px;
border-radius:4px;font-size:15px}
.table-wrap{max-height:620px;overflow:auto}
table.sortable{border-collapse:collapse;font-size:12px;white-space:nowrap}
table.sortable th{position:sticky;top:0;background:#eceff1;cursor:pointer;padding:4px 8px;
text-align:left;user-select:none}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable td{padding:3px 8px;border-bottom:1px solid #eee}
table.sortable td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable tbody tr:hover{background:#f5f5f5}
table.plain th{cursor:default}
"""

_SORTER = """
(function () {
  var table = document.getElementById("summary-table");
  if (!table) return;
  var heads = table.tHead.rows[0].cells, body = table.tBodies[0];
  function key(cell, numeric) {
    if (!numeric) return cell.textContent.toLowerCase();
    var v = cell.getAttribute("data-v");
    return v === "" || v === null ? NaN : parseFloat(v);
  }
  function sortBy(index) {
    var head = heads[index], numeric = head.getAttribute("data-type") === "num";
    var current = head.getAttribute("aria-sort");
    var dir = current ? (current === "descending" ? "ascending" : "descending")
                      : (numeric ? "descending" : "ascending");
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    head.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index], numeric), y = key(b.cells[index], numeric);
      if (numeric) {
        if (isNaN(x)) return isNaN(y) ? 0 : 1;  /* missing values last */
        if (isNaN(y)) return -1;
      }
      return x < y ? -sign : x > y ? sign : 0;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(heads, function (head, index) {
    head.addEventListener("click", function () { sortBy(index); });
    head.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(index); }
    });
  });
})();
"""


def render(
    rec: Recording,
    source: str | None = None,
    max_events: int = 5000,
    top: int = 15,
    max_table_rows: int = 500,
) -> str:
    """The whole report page as one string."""
    built = panels(rec, max_events=max_events, top=top, max_table_rows=max_table_rows)
    meta = rec.meta
    target = meta.get("target") or "recording"
    subtitle = (
        f"{meta.get('kernel', '?')}, {meta.get('cpus', '?')} CPUs, "
        f"{float(meta.get('duration_s') or 0):.1f} s, started {meta.get('start_time', '?')}"
    )
    return page.render(
        title=f"lockprof: {target}",
        header_html=f"<h1>lockprof report: {html_text(target)}</h1><p>{html_text(subtitle)}</p>",
        sections=built,
        footer_text=(
            f"Generated by lockprof {meta.get('lockprof_version', '')} "
            f"from {source or 'a recording'}"
        ),
        style=_STYLE,
        script=_SORTER,
    )


def write_report(rec: Recording, path: str | Path, source: str | None = None, **options) -> Path:
    """Build the report and write it atomically (mode 0600, like recordings:
    it holds command lines). Errors are LockprofError with one line."""
    check_writable(path)
    return page.write_atomic(render(rec, source=source, **options), path, "report")


def check_writable(path: str | Path) -> None:
    """Fail early (before a collection) if the report could not be written."""
    page.check_writable(path, "report")
