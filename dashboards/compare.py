"""The before/after comparison page (`lockprof compare -o compare.html`).

One self-contained, offline file, built like the single-recording report
(dashboards.html): plotly.js inline in the head, every figure a JSON document
in one inline data script, escaped with escape.script_json(), and a
Content-Security-Policy that allows no network access and only the page's own
nonce-tagged scripts. Untrusted text (comm names, symbols, command lines)
goes through escape.text() in figures and escape.html_text() in markup.

Panels:
* the profiled process: user, sys, elapsed, minor faults, throughput as
  side-by-side bars (mean of runs, error bars one standard deviation of the
  runs) with each run as a dot;
* key lock figures: acquisitions, contended, wait total, wait p99, hold p99
  for the top locks and modes, the same way;
* distributions: before and after log2 histograms of wait and hold overlaid,
  per lock and mode (mean count per run in each bucket);
* the verdict table: every metric, with delta, interval and verdict.

build is pure (Comparison in, HTML text out); write() writes atomically.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards import page
from dashboards.escape import html_text, text
from dashboards.figures import TIME_AXIS
from profiler import compare as cmp
from profiler.hist import slot_bounds
from profiler.render import fmt_ns

COLORS = {"before": "#78909c", "after": "#1e88e5"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}
BAR_METRICS = ["acquisitions", "contended", "wait_total_ns", "wait_p99_ns", "hold_p99_ns"]
TOP_LOCKS = 8
TOP_DISTRIBUTIONS = 8
MAX_TABLE_ROWS = 3000


def _lock_mode(entry: dict) -> str:
    return f"{entry['lock']} {entry['mode']}"


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def _axis_title(unit: str) -> str:
    return {"ns": "time", "s": "seconds", "count": "count", "ratio": "ratio"}.get(unit, unit)


def _plotted(values: list[float], unit: str) -> list[float]:
    """Nanoseconds are plotted as seconds: on a raw ns axis plotly labels a
    wait total of 1.5 s "1.5B" (billion), which reads as anything but time."""
    return [v / 1e9 for v in values] if unit == "ns" else values


def _value_axis(unit: str) -> dict:
    """Tick format of a value axis: times in SI seconds (10ms, 1.5s)."""
    return dict(TIME_AXIS) if unit == "ns" else {}


def _hover(unit: str) -> str:
    return "%{y:.3s}s" if unit == "ns" else "%{y:,.4g}"


def _error_bars(means: list[float | None], runs: list[list[float]]) -> dict:
    """One standard deviation of the runs, the lower arm cut at 0: every
    plotted figure is a count or a time, and an arm below 0 (a lock that 1 run
    of 3 saw) drew count and time axes down to -1000 and -1s."""
    sds = [_sd(r) for r in runs]
    lower = [min(sd, max(mean or 0.0, 0.0)) for sd, mean in zip(sds, means, strict=True)]
    return {"type": "data", "symmetric": False, "array": sds, "arrayminus": lower, "visible": True}


def _side_bars(fig: go.Figure, entries: list[dict], labels: list[str], row: int, col: int):
    """Before and after bars (means, sd error bars) and each run as a dot."""
    unit = entries[0].get("unit", "count") if entries else "count"
    for side in ("before", "after"):
        means = [None if e[side] is None else _plotted([e[side]], unit)[0] for e in entries]
        runs = [_plotted(e[f"{side}_values"], unit) for e in entries]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=means,
                name=side,
                legendgroup=side,
                showlegend=row == 1 and col == 1,
                marker_color=COLORS[side],
                offsetgroup=side,
                error_y=_error_bars(means, runs),
                hovertemplate="%{x}<br>" + side + f" mean {_hover(unit)}<extra></extra>",
            ),
            row=row,
            col=col,
        )
        xs, ys = [], []
        for label, values in zip(labels, runs, strict=True):
            xs += [label] * len(values)
            ys += values
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=f"{side} runs",
                legendgroup=side,
                showlegend=False,
                offsetgroup=side,
                marker={"color": "#263238", "size": 6, "symbol": "circle-open"},
                hovertemplate="%{x}<br>" + side + f" run {_hover(unit)}<extra></extra>",
            ),
            row=row,
            col=col,
        )


def process_figure(document: dict) -> go.Figure:
    entries = [e for e in document["rusage"] if e["before"] is not None or e["after"] is not None]
    if not entries:
        return _empty("No rusage was recorded on either side.")
    fig = make_subplots(
        rows=1,
        cols=len(entries),
        subplot_titles=[text(f"{e['name']} ({_axis_title(e['unit'])})") for e in entries],
    )
    for i, entry in enumerate(entries, start=1):
        _side_bars(fig, [entry], [text(entry["name"])], 1, i)
    fig.update_layout(
        barmode="group",
        scattermode="group",
        height=360,
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def top_lock_modes(document: dict, limit: int) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for entry in document["verdicts"]:
        key = (entry["lock"], entry["mode"])
        if key not in seen:
            seen.append(key)
    return seen[:limit]


def locks_figure(document: dict, limit: int = TOP_LOCKS) -> go.Figure:
    chosen = top_lock_modes(document, limit)
    if not chosen:
        return _empty("No lock activity on either side.")
    by_key = {(e["lock"], e["mode"], e["metric"]): e for e in document["verdicts"]}
    metrics = [m for m in BAR_METRICS if any((lock, mode, m) in by_key for lock, mode in chosen)]
    fig = make_subplots(
        rows=len(metrics),
        cols=1,
        shared_xaxes=True,  # lock names once, under the last row
        subplot_titles=[text(cmp.metric_label("", m)) for m in metrics],
        vertical_spacing=0.2 / max(len(metrics), 1),
    )
    for row, metric in enumerate(metrics, start=1):
        entries, labels = [], []
        for lock, mode in chosen:
            entry = by_key.get((lock, mode, metric))
            if entry is not None:
                entries.append(entry)
                labels.append(text(f"{lock} {mode}"))
        _side_bars(fig, entries, labels, row, 1)
        unit = entries[0]["unit"] if entries else "count"
        fig.update_yaxes(title_text=_axis_title(unit), row=row, col=1, **_value_axis(unit))
    fig.update_xaxes(
        type="category",
        categoryorder="array",
        categoryarray=[text(f"{lock} {mode}") for lock, mode in chosen],
    )
    fig.update_layout(
        barmode="group",
        scattermode="group",
        height=220 * len(metrics) + 160,
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def _slot_label(slot: int) -> str:
    low, _high = slot_bounds(slot)
    return "0" if slot == 0 else f"≥{fmt_ns(low)}"


def distribution_figure(key: cmp.LockKey, sides: dict[str, dict[str, np.ndarray]]) -> go.Figure:
    label, _lock_class, mode = key
    kinds = [k for k in ("wait", "hold") if any(k in sides.get(s, {}) for s in sides)]
    fig = make_subplots(
        rows=1,
        cols=max(len(kinds), 1),
        subplot_titles=[text(f"{k} time") for k in kinds],
    )
    for col, kind in enumerate(kinds, start=1):
        present = [sides[s][kind] for s in ("before", "after") if kind in sides.get(s, {})]
        total = np.sum(present, axis=0)
        nonzero = np.nonzero(total)[0]
        low, high = (int(nonzero[0]), int(nonzero[-1])) if len(nonzero) else (0, 0)
        slots = list(range(low, high + 1))
        x = [_slot_label(s) for s in slots]
        for side in ("before", "after"):
            hist = sides.get(side, {}).get(kind)
            if hist is None:
                continue
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=[float(hist[s]) for s in slots],
                    name=side,
                    legendgroup=side,
                    showlegend=col == 1,
                    marker_color=COLORS[side],
                    opacity=0.6,
                    hovertemplate=f"{side}: %{{y:,.1f}} per run in %{{x}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="bucket (log2 ns)", type="category", row=1, col=col)
        # Log: a patch that removes most of the contention leaves an after
        # side 1000 times smaller, flat on a linear axis, its shape unseen.
        fig.update_yaxes(title_text="count per run (log)", type="log", row=1, col=col)
    fig.update_layout(
        barmode="overlay",
        height=330,
        title={"text": text(f"{label} {mode}"), "font": {"size": 14}},
        margin={"l": 60, "r": 20, "t": 70, "b": 50},
        legend={"orientation": "h", "y": -0.3},
    )
    return fig


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=text(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
    )
    fig.update_layout(height=160, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


# -- markup -------------------------------------------------------------------------


def _fmt(entry: dict, key: str) -> str:
    return cmp.fmt_value(entry[key], entry.get("unit", "count"))


def process_row_label(document: dict) -> str:
    """The lock column of the process rows: 'lpbizzy (process)', 'the whole
    system', or each side's when they differ: 'the whole system -> lpbizzy
    (process)'."""
    before = cmp.target_shown(document["before"], "(process)")
    after = cmp.target_shown(document["after"], "(process)")
    return before if before == after else f"{before} -> {after}"


def verdict_table(document: dict, limit: int = MAX_TABLE_ROWS) -> str:
    rows = []
    process = process_row_label(document)
    entries = [{**e, "lock": process, "mode": ""} for e in document["rusage"]] + document[
        "verdicts"
    ]
    for entry in entries[:limit]:
        ci = cmp.fmt_ci(entry)
        verdict = cmp.shown_verdict(entry)
        cls = "sig" if entry["significant"] else ("none" if entry["significant"] is None else "")
        cls += f" {entry['direction']}" if entry.get("direction") else ""
        rows.append(
            "<tr>"
            f"<td>{html_text(entry['lock'])}</td><td>{html_text(entry['mode'])}</td>"
            f"<td>{html_text(cmp.entry_label(entry))}</td>"
            f'<td class="num">{html_text(_fmt(entry, "before"))}</td>'
            f'<td class="num">{html_text(_fmt(entry, "after"))}</td>'
            f'<td class="num">{html_text(cmp.fmt_delta(entry))}</td>'
            f'<td class="num">{html_text(ci)}</td>'
            f'<td class="{cls}">{html_text(verdict)}</td>'
            "</tr>"
        )
    note = ""
    if len(entries) > limit:
        note = (
            f'<p class="note">Showing {limit:,} of {len(entries):,} rows; '
            "<code>lockprof compare --json</code> lists all.</p>"
        )
    if any(map(cmp.ci_missing_percent, entries[:limit])):
        note += f'<p class="note">{html_text(cmp.NO_PERCENT_CI_NOTE.strip("()"))}.</p>'
    head = "".join(
        f"<th>{h}</th>"
        for h in ("lock", "mode", "metric", "before", "after", "delta", "95% CI", "verdict")
    )
    return (
        f'{note}<div class="table-wrap"><table id="verdict-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _side_html(name: str, side: dict) -> str:
    command = cmp.side_command(side)
    runs = side["runs"]
    return (
        f"<li><b>{html_text(name)}</b>: {html_text(side['label'])}, {runs} run"
        f"{'s' if runs != 1 else ''}, kernel {html_text(side['kernel'])}, "
        f"{html_text(side['cpus'])} CPUs: <code>{html_text(command)}</code></li>"
    )


def header_html(document: dict) -> str:
    method = document["method"]
    warnings = "".join(f"<li>{html_text(w)}</li>" for w in document["warnings"])
    headline = "".join(f"<li>{html_text(line)}</li>" for line in document["headline"])
    return (
        f"<ul>{_side_html('before', document['before'])}"
        f"{_side_html('after', document['after'])}</ul>"
        + (
            f'<div class="warn" role="alert"><b>The sides differ:</b><ul>{warnings}</ul></div>'
            if warnings
            else ""
        )
        + "".join(
            f"<p>Paired lock classes: the before side's <code>{html_text(p['before'])}</code> "
            f"locks and the after side's <code>{html_text(p['after'])}</code> locks are "
            f"compared as <code>{html_text(p['as'])}</code>, mode by mode (a spec's "
            "<code>sum</code> mode: calls of its sum function and the time in them).</p>"
            for p in document.get("paired_classes") or []
        )
        + f"<p>Noise: {html_text(document['confidence'])}. Method: "
        f"{html_text(method['name'])} ({html_text(method['resampling'])}; "
        f"{int(method['resamples']):,} resamples; seed {int(method['seed'])}); a change is "
        "significant when its interval excludes 0. Error bars: one standard deviation "
        "of the runs; dots: the runs.</p>"
        f'<ul class="headline">{headline}</ul>'
    )


# -- the page -----------------------------------------------------------------------

_STYLE = """
code{word-break:break-all}
ul.headline{font-family:ui-monospace,monospace;font-size:14px}
.warn{background:#fff8e1;border:1px solid #ffcc80;padding:6px 12px;border-radius:4px}
.table-wrap{max-height:640px;overflow:auto}
table{border-collapse:collapse;font-size:12px;white-space:nowrap}
th{position:sticky;top:0;background:#eceff1;padding:4px 8px;text-align:left}
td{padding:3px 8px;border-bottom:1px solid #eee}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.sig{font-weight:bold}
td.better{color:#2e7d32}
td.worse{color:#c62828}
td.none{color:#888}
"""


def process_title(document: dict) -> str:
    """The process panel's title: of the whole system when both sides
    profiled it, of the targets when the sides profiled different kinds."""
    modes = {document["before"].get("target_mode"), document["after"].get("target_mode")}
    if modes == {"system"}:
        return "The whole system"
    return "The profiled targets" if "system" in modes else "The profiled process"


def sections(
    result: cmp.Comparison,
) -> list[tuple[str, str, str, list[tuple[str, go.Figure]], str]]:
    """(anchor, title, description, figures, extra markup) per panel."""
    document = result.document
    order = {key: i for i, key in enumerate(top_lock_modes(document, 10**6))}
    dist_keys = sorted(
        (k for k in result.hists if (k[0], k[2]) in order),
        key=lambda k: order[(k[0], k[2])],
    )[:TOP_DISTRIBUTIONS]
    return [
        (
            "summary",
            "Summary",
            "What was compared, and the process-level verdicts.",
            [],
            header_html(document),
        ),
        (
            "process",
            process_title(document),
            f"{cmp.process_heading(document)}: the mean of the runs per side; error bars one "
            "standard deviation; dots the runs.",
            [("process", process_figure(document))],
            "",
        ),
        (
            "locks",
            "Key lock figures",
            f"The top {TOP_LOCKS} locks and modes by wait time, matched across runs by "
            "class, name and owner.",
            [("locks", locks_figure(document))],
            "",
        ),
        (
            "distributions",
            "Distributions",
            "Before and after log2 histograms overlaid (mean count per run in each "
            "bucket, on a log axis so that a much smaller side keeps its shape), from "
            "the exact in-kernel histograms.",
            [
                (f"dist-{i}", distribution_figure(k, result.hists[k]))
                for i, k in enumerate(dist_keys)
            ],
            "" if dist_keys else '<p class="note">No wait or hold samples on either side.</p>',
        ),
        (
            "verdicts",
            "Verdicts",
            "Every metric: means over runs, percent change, 95% interval and verdict.",
            [],
            verdict_table(document),
        ),
    ]


def build(result: cmp.Comparison) -> str:
    """The whole comparison page as one string."""
    document = result.document
    title = f"{document['before']['label']} vs {document['after']['label']}"
    return page.render(
        title=f"lockprof compare: {title}",
        header_html=f"<h1>lockprof compare: {html_text(title)}</h1>",
        sections=[page.Section(*panel) for panel in sections(result)],
        footer_text="Generated by lockprof",
        style=_STYLE,
    )


def check_writable(path: str | Path) -> None:
    """Fail before any work if the page could not be written."""
    page.check_writable(path, "output")


def write(result: cmp.Comparison, path: str | Path) -> Path:
    """Build the page and write it atomically, mode 0600 (it holds command lines)."""
    check_writable(path)
    return page.write_atomic(build(result), path, "output")
