"""The report's panels: pure functions from frames (see dashboards.frames) to
plotly figures.

Every builder returns a figure that stands on its own: when its input has
nothing to show (an empty table, no lock of a class, no stacks), it returns a
figure with no traces and an annotation saying what is absent. Every string
that comes from the recording goes through escape.text().

Times are plotted in seconds with SI tick labels (1µs, 10ms), so log axes
read naturally.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards import frames
from dashboards.escape import text
from profiler import hist, schema
from profiler.options import FIRST_TICK_S
from profiler.render import fmt_ns
from profiler.targets import recorded_exit

MODE_COLORS = {"read": "#1f77b4", "write": "#d62728", "exclusive": "#7f7f7f"}
HOLD_COLORS = {"read": "#6baed6", "write": "#fc9272", "exclusive": "#bdbdbd"}
MODES = ("read", "write", "exclusive")
RW_CLASSES = {"mmap_lock", "rwsem", "percpu-rwsem", "rwlock", "rwlock-rt"}
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12}
TIME_AXIS = {"exponentformat": "SI", "ticksuffix": "s", "minexponent": 1}


def _layout(fig: go.Figure, title: str, height: int, **extra) -> go.Figure:
    settings = {
        "title": {"text": title, "x": 0.01, "xanchor": "left"},
        "height": height,
        "template": "plotly_white",
        "font": FONT,
        "margin": {"l": 60, "r": 30, "t": 60, "b": 50},
        "hoverlabel": {"align": "left"},
    }
    fig.update_layout(**{**settings, **extra})
    return fig


def empty_figure(title: str, message: str, height: int = 220) -> go.Figure:
    """A figure with no traces and one centred note saying what is absent."""
    fig = go.Figure()
    _layout(fig, title, height)
    fig.update_layout(
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[
            {
                "text": message,
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "font": {"size": 15, "color": "#555"},
            }
        ],
        meta={"empty": True},
    )
    return fig


def _count(value) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:,.0f}"
    )


def _ns(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt_ns(value)


# -- 1. header ------------------------------------------------------------------------


def header_rows(meta: dict, events: int | None) -> list[tuple[str, str]]:
    """(field, value) pairs of the header, values unescaped."""
    rusage = meta.get("rusage") or {}
    mechanisms = meta.get("mechanisms") or []
    by_mechanism: dict[str, list[str]] = {}
    for item in mechanisms:
        if isinstance(item, dict):
            by_mechanism.setdefault(str(item.get("mechanism")), []).append(str(item.get("target")))
    command = meta.get("command")
    rows = [
        ("target", str(meta.get("target") or "-")),
        ("command", " ".join(map(str, command)) if isinstance(command, list) else "-"),
        ("kernel", f"{meta.get('kernel', '-')} ({meta.get('machine', '-')})"),
        ("CPUs", str(meta.get("cpus", "-"))),
        ("started", str(meta.get("start_time", "-"))),
        (
            "duration",
            f"{float(meta.get('duration_s') or 0):.3f} s ({meta.get('stop_reason', '-')})",
        ),
        (
            "mechanisms",
            "; ".join(f"{m}: {', '.join(t)}" for m, t in by_mechanism.items()) or "-",
        ),
        (
            "events",
            "unknown: the events table is damaged"
            if events is None
            else f"{events:,} waits and holds of at least {fmt_ns(meta.get('threshold_ns'))}",
        ),
        ("lost events", f"{int(meta.get('lost_events') or 0):,}"),
    ]
    errors = schema.failures(meta.get("errors") or {})
    if errors:
        rows.append(("kernel-side errors", ", ".join(f"{k}: {v:,}" for k, v in errors.items())))
    stack_note = schema.stack_rate_note(meta)
    if stack_note:
        rows.append(("stacks", stack_note))
    if meta.get("lock_types") is not None:
        rows.append(("lock types", "contention of " + ", ".join(meta["lock_types"]) + " only"))
    if rusage.get("user_s") is not None:
        rows.append(
            (
                "rusage",
                f"user {rusage['user_s']:.2f} s, sys {rusage.get('sys_s', 0):.2f} s, "
                f"elapsed {rusage.get('elapsed_s', 0):.2f} s, "
                f"minor faults {int(rusage.get('minor_faults') or 0):,}",
            )
        )
    status, signame = recorded_exit(meta)
    if status is not None:
        rows.append(("exit status", f"{status} (killed by {signame})" if signame else str(status)))
    return rows


def build_header(meta: dict, events: int | None) -> go.Figure:
    """Kernel, CPUs, command, duration, mechanisms, lost events (red when
    nonzero) and rusage, as a two-column table."""
    rows = header_rows(meta, events)
    lost = int(meta.get("lost_events") or 0)
    fill = ["#fde0dd" if field == "lost events" and lost else "white" for field, _ in rows]
    fig = go.Figure(
        go.Table(
            columnwidth=[1, 5],
            header={"values": ["<b>recording</b>", ""], "align": "left", "fill_color": "#eee"},
            cells={
                "values": [[text(f) for f, _ in rows], [text(v) for _, v in rows]],
                "align": "left",
                "fill_color": [fill, fill],
                "height": 24,
            },
        )
    )
    title = "Recording"
    if lost:
        title += f' — <span style="color:#c00"><b>{lost:,} events lost</b></span>'
    return _layout(fig, title, 90 + 26 * len(rows), margin={"l": 10, "r": 10, "t": 50, "b": 10})


# -- 3. readers and writers -----------------------------------------------------------


def build_reader_writer(summary: pd.DataFrame, top: int = 15) -> go.Figure:
    """Read vs write acquisitions and contended counts per lock, and the
    reader:writer ratio (acquisitions where every acquisition is seen,
    contended waits otherwise)."""
    title = "Readers and writers"
    # Every lock with a read or write mode: the kernel's reader/writer
    # classes (RW_CLASSES) and any lock spec's class (--locks).
    rw = summary[summary["mode"].isin(["read", "write"])]
    if rw.empty:
        return empty_figure(
            title, "No reader/writer locks (rwsem, mmap_lock, rwlock, lock specs) in this recording"
        )
    sums = rw.groupby(["label", "mode"])[["acquisitions", "contended"]].sum(min_count=1)
    per_lock = rw.groupby("label")[["acquisitions", "contended"]].sum()
    order = [
        str(label)
        for label in per_lock.sort_values(["contended", "acquisitions"], ascending=False).index[
            :top
        ]
    ]
    labels = [text(label) for label in order]
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        column_widths=[0.72, 0.28],
        horizontal_spacing=0.02,
        subplot_titles=["acquisitions and contended acquisitions", "reader:writer ratio"],
    )

    def column(metric: str, mode: str) -> list[float | None]:
        values = [sums[metric].get((label, mode)) for label in order]
        return [None if v is None or pd.isna(v) or v == 0 else float(v) for v in values]

    for metric, pattern in (("acquisitions", ""), ("contended", "/")):
        for mode in ("read", "write"):
            values = column(metric, mode)
            if all(v is None for v in values):
                continue
            fig.add_trace(
                go.Bar(
                    name=f"{mode} {metric}",
                    y=labels,
                    x=values,
                    orientation="h",
                    marker={"color": MODE_COLORS[mode], "pattern": {"shape": pattern}},
                    opacity=1.0 if metric == "acquisitions" else 0.7,
                    hovertemplate=f"%{{y}}<br>{mode} {metric}: %{{x:,}}<extra></extra>",
                ),
                row=1,
                col=1,
            )
    ratios = rw.drop_duplicates("label").set_index("label")["reader_writer_ratio"].reindex(order)
    fig.add_trace(
        go.Bar(
            name="reads per write",
            y=labels,
            x=[None if pd.isna(v) or v <= 0 else float(v) for v in ratios],
            orientation="h",
            marker={"color": "#9467bd"},
            hovertemplate="%{y}<br>%{x:.3g} reads per write<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(type="log", title_text="count (log)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="reads per write (log)", row=1, col=2)
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=labels)
    _layout(
        fig,
        title,
        max(320, 120 + 34 * len(order)),
        barmode="group",
    )
    fig.update_layout(margin={"l": 300})
    return fig


# -- 4. distributions -----------------------------------------------------------------


def _step(slots: np.ndarray) -> tuple[list[float], list[float], list[list[str]]] | None:
    """x (seconds, slot lower bounds plus the last upper bound), y (% of
    samples) and hover data of a log2 histogram drawn as a step line."""
    counts = slots.astype(np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    nonzero = np.nonzero(counts)[0]
    first, last = int(nonzero[0]), int(nonzero[-1])
    xs, ys, custom = [], [], []
    for slot in range(first, last + 1):
        low, high = hist.slot_bounds(slot)
        low = max(low, 0.5)  # slot 0 (0 ns) drawn at [0.5, 1) ns on the log axis
        xs.append(low / 1e9)
        ys.append(100.0 * counts[slot] / total)
        span = "0ns" if slot == 0 else f"{fmt_ns(low)} to {fmt_ns(high)}"
        custom.append([span, f"{int(counts[slot]):,}"])
    last_high = hist.slot_bounds(last)[1]
    xs.append(last_high / 1e9)
    ys.append(ys[-1])
    custom.append(custom[-1])
    return xs, ys, custom


def build_distributions(intervals: pd.DataFrame) -> go.Figure:
    """Wait-time and hold-time distributions (from the exact log2
    histograms), read vs write vs exclusive overlaid, on a log time axis."""
    title = "Wait and hold time distributions"
    if intervals.empty:
        return empty_figure(title, "No lock activity in this recording")
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["wait time (all waits)", "hold time"],
        horizontal_spacing=0.08,
    )
    shown = {"wait": 0, "hold": 0}
    for col, which, colors in ((1, "wait", MODE_COLORS), (2, "hold", HOLD_COLORS)):
        for mode in MODES:
            rows = intervals[(intervals["mode"] == mode) & (intervals[f"{which}_count"] > 0)]
            slots = frames.slot_sums(rows, f"{which}_slots")
            step = _step(slots) if slots is not None else None
            if step is None:
                continue
            xs, ys, custom = step
            samples = int(rows[f"{which}_count"].sum())
            fig.add_trace(
                go.Scatter(
                    name=f"{which} {mode} ({samples:,})",
                    x=xs,
                    y=ys,
                    customdata=custom,
                    mode="lines",
                    line={"shape": "hv", "color": colors[mode], "width": 2},
                    fill="tozeroy",
                    opacity=0.6,
                    hovertemplate=f"{which} {mode}<br>%{{customdata[0]}}: %{{customdata[1]}} "
                    "samples (%{y:.2f}%)<extra></extra>",
                ),
                row=1,
                col=col,
            )
            shown[which] += 1
    for col, which, missing in (
        (1, "wait", "no waits recorded"),
        (2, "hold", "no hold times: only the mmap_lock tracepoints measure holds"),
    ):
        fig.update_xaxes(type="log", title_text=f"{which} time (log)", row=1, col=col, **TIME_AXIS)
        fig.update_yaxes(title_text="% of samples", rangemode="tozero", row=1, col=col)
        if not shown[which]:
            fig.add_annotation(
                text=missing,
                showarrow=False,
                xref=f"x{'' if col == 1 else col} domain",
                yref=f"y{'' if col == 1 else col} domain",
                x=0.5,
                y=0.5,
                font={"size": 13, "color": "#555"},
            )
    return _layout(fig, title, 420, legend={"orientation": "h", "y": -0.2})


# -- 5. per CPU ------------------------------------------------------------------------


def _cpu_list(intervals: pd.DataFrame, cpus: int | None) -> list[int]:
    seen = set(intervals["cpu"].astype(int).tolist()) if not intervals.empty else set()
    return sorted(seen | set(range(int(cpus or 0))))


def _per_second(values, seconds):
    """values / seconds, NaN where an interval has no length."""
    seconds = np.asarray(seconds, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(seconds > 0, np.asarray(values, dtype=float) / seconds, np.nan)


def _nominal_end(interval: int, interval_s: float) -> float:
    """When snapshot `interval` is due (profiler/session.py _collect_loop):
    the first after FIRST_TICK_S (or the interval, if shorter), the next ones
    on the interval grid from the start."""
    if interval <= 0:
        return 0.0
    first = min(interval_s, FIRST_TICK_S)
    if interval == 1:
        return first
    return interval_s * (math.floor(first / interval_s + 1e-9) + interval - 1)


def _complete_ends(ends: pd.Series, interval_s: float | None = None) -> pd.Series:
    """The snapshot times of every interval from 1 to the last (ends: those
    of the intervals with rows, indexed by interval number, ascending). The
    intervals table has rows only where something happened, and an interval
    after quiet ones started at its own previous snapshot, not at the last
    one with rows: measured from there, a burst's rate was diluted over the
    quiet seconds before it, and its heatmap cell drawn across them. A quiet
    snapshot's time is not recorded: it is when it was due (interval_s: the
    run's --interval), kept between its neighbours. Without interval_s,
    ends as they are."""
    if not interval_s or interval_s <= 0 or ends.empty:
        return ends
    numbers = range(1, int(ends.index.max()) + 1)
    known = ends.reindex(numbers)
    after = known.bfill().to_numpy(dtype=float)
    times = known.to_numpy(dtype=float, copy=True)
    last = 0.0
    for i, number in enumerate(numbers):
        if np.isnan(times[i]):
            times[i] = min(max(_nominal_end(number, interval_s), last), after[i])
        last = times[i]
    return pd.Series(times, index=pd.Index(numbers, name=ends.index.name))


def _lengths(ends: pd.Series, interval_s: float | None = None) -> pd.Series:
    """Each interval's length in seconds, from the snapshot times (the first
    from the start; a quiet one's as _complete_ends puts it)."""
    complete = _complete_ends(ends, interval_s)
    return (complete - complete.shift(1).fillna(0.0)).reindex(ends.index)


def build_cpu_heatmap(
    intervals: pd.DataFrame,
    cpus: int | None = None,
    max_columns: int = 400,
    interval_s: float | None = None,
) -> go.Figure:
    """Wait time per CPU and interval (all locks). Long recordings are
    binned into at most max_columns time columns (said in the title).
    interval_s: the run's --interval (where quiet intervals start)."""
    title = "Wait time per CPU over time"
    waits = intervals[intervals["wait_total_ns"] > 0] if not intervals.empty else intervals
    if waits.empty:
        return empty_figure(title, "No lock waits in this recording")
    cpu_ids = _cpu_list(intervals, cpus)
    times = _complete_ends(intervals.groupby("interval")["t_s"].max().sort_index(), interval_s)
    per = waits.groupby(["interval", "cpu"])["wait_total_ns"].sum().unstack("cpu")
    per = per.reindex(index=times.index, columns=cpu_ids).fillna(0.0)
    ends = times.to_numpy(dtype=float)
    starts = np.concatenate([[0.0], ends[:-1]])
    z = per.to_numpy(dtype=float)
    if len(ends) > max_columns:
        edges = np.linspace(0, len(ends), max_columns + 1).astype(int)
        z = np.add.reduceat(z, edges[:-1], axis=0)
        starts, ends = starts[edges[:-1]], ends[edges[1:] - 1]
        title += f" (binned: {len(times):,} intervals shown as {max_columns:,} columns)"
    # Cell edges, not centres: the intervals are not all as long (the first
    # snapshot comes after FIRST_TICK_S, the last at the stop), and from
    # centres plotly puts each edge halfway between them, off the intervals.
    # For the same reason the colour is a rate (wait ms per second), or a
    # half-length interval would look half as contended.
    edges_s = np.concatenate([starts[:1], ends])
    spans = [f"{a:.2f} to {b:.2f} s" for a, b in zip(starts, ends, strict=True)]
    fig = go.Figure(
        go.Heatmap(
            x=edges_s,
            y=[f"cpu {c}" for c in cpu_ids],
            z=_per_second(z.T / 1e6, ends - starts),
            customdata=np.dstack([[spans] * len(cpu_ids), np.round(z.T / 1e6, 3)]),
            colorscale="YlOrRd",
            colorbar={"title": {"text": "wait ms/s"}},
            hovertemplate="%{y}, %{customdata[0]}<br>wait %{customdata[1]} ms "
            "(%{z:.3f} ms per s)<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="time (s)")
    return _layout(fig, title, max(260, 140 + 22 * len(cpu_ids)))


def build_cpu_totals(intervals: pd.DataFrame, cpus: int | None = None) -> go.Figure:
    """Total wait time per CPU, stacked by lock class."""
    title = "Wait time per CPU"
    waits = intervals[intervals["wait_total_ns"] > 0] if not intervals.empty else intervals
    if waits.empty:
        return empty_figure(title, "No lock waits in this recording")
    cpu_ids = _cpu_list(intervals, cpus)
    x = [f"cpu {c}" for c in cpu_ids]
    fig = go.Figure()
    grouped = waits.groupby(["lock_class", "cpu"])[["wait_total_ns", "contended"]].sum()
    classes = grouped.groupby(level=0)["wait_total_ns"].sum().sort_values(ascending=False).index
    for lock_class in classes:
        part = grouped.loc[lock_class].reindex(cpu_ids).fillna(0)
        fig.add_trace(
            go.Bar(
                name=text(lock_class),
                x=x,
                y=part["wait_total_ns"].to_numpy() / 1e9,
                customdata=part["contended"].to_numpy(),
                hovertemplate=f"%{{x}} {text(lock_class)}<br>wait %{{y:.3s}}s"
                "<br>contended %{customdata:,}<extra></extra>",
            )
        )
    fig.update_yaxes(title_text="total wait", **TIME_AXIS)
    return _layout(fig, title, 340, barmode="stack")


# -- 6. timeline -------------------------------------------------------------------------


def sample_events(events: pd.DataFrame, limit: int, slices: int = 200) -> pd.DataFrame:
    """At most `limit` events: the longest in each of `slices` time slices,
    topped up with the longest of the rest, so that both when and how bad
    stay visible."""
    if len(events) <= limit:
        return events
    t = events["t_s"].to_numpy(dtype=float)
    span = (t.max() - t.min()) or 1.0
    slice_of = np.minimum(((t - t.min()) / span * slices).astype(int), slices - 1)
    ranked = events.assign(_slice=slice_of)
    ranked["_rank"] = ranked.groupby("_slice")["duration_ns"].rank(method="first", ascending=False)
    per_slice = max(1, limit // slices)
    chosen = ranked["_rank"] <= per_slice
    kept = ranked[chosen]
    if len(kept) < limit:
        rest = ranked[~chosen].nlargest(limit - len(kept), "duration_ns")
        kept = pd.concat([kept, rest])
    return kept.nlargest(limit, "duration_ns").drop(columns=["_slice", "_rank"]).sort_values("t_s")


def build_timeline(
    intervals: pd.DataFrame,
    events: pd.DataFrame,
    threshold_ns: int | None = None,
    max_events: int = 5000,
    interval_s: float | None = None,
) -> go.Figure:
    """Acquisitions and contention per interval, wait time per interval by
    mode, and the individual long waits and holds from the event stream
    (task and lock on hover), downsampled to max_events points. interval_s:
    the run's --interval (where quiet intervals start)."""
    title = "Timeline"
    if intervals.empty and events.empty:
        return empty_figure(title, "No lock activity in this recording")
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.07,
        row_heights=[0.25, 0.25, 0.5],
        subplot_titles=[
            "acquisitions and contended acquisitions per second",
            "wait time per second (the average number of tasks waiting)",
            "individual waits and holds over the threshold",
        ],
    )
    if not intervals.empty:
        _add_interval_rates(fig, intervals, interval_s)
    fig.update_yaxes(type="log", title_text="per second", row=1, col=1)
    fig.update_yaxes(title_text="tasks waiting", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(type="log", title_text="duration", row=3, col=1, **TIME_AXIS)
    fig.update_xaxes(title_text="time since start (s)", row=3, col=1)
    total = len(events)
    if total == 0:
        over = f" of at least {fmt_ns(threshold_ns)}" if threshold_ns else ""
        fig.add_annotation(
            text=f"no individual waits or holds{over} were streamed",
            showarrow=False,
            xref="x3 domain",
            yref="y3 domain",
            x=0.5,
            y=0.5,
            font={"size": 13, "color": "#555"},
        )
    else:
        shown = sample_events(events, max_events)
        notes = []
        if len(shown) < total:
            notes.append(
                f"showing {len(shown):,} of {total:,} events: "
                "the longest in each time slice, then the longest overall"
            )
        double = int(events.attrs.get("double_counted", 0))
        if double:
            # `show` counts them: its event count is the recording's rows.
            waits, are = ("wait", "is") if double == 1 else ("waits", "are")
            notes.append(
                f"{double:,} contended mmap_lock {waits} also streamed by lock:contention "
                f"{are} drawn once"
            )
        if notes:
            title += f" ({'; '.join(notes)})"
        for key, group in shown.groupby(["kind", "mode"], sort=True):
            kind, mode = str(key[0]), str(key[1])
            colors = MODE_COLORS if kind == "wait" else HOLD_COLORS
            custom = np.column_stack(
                [
                    [text(c) for c in group["comm"]],
                    group["tid"].astype(str),
                    group["tgid"].astype(str),
                    [text(label) for label in group["label"].fillna("?")],
                    group["cpu"].astype(str),
                    [fmt_ns(d) for d in group["duration_ns"]],
                ]
            )
            fig.add_trace(
                go.Scatter(
                    name=f"{kind}s, {mode} (events)",
                    x=group["t_s"],
                    y=group["duration_ns"] / 1e9,
                    customdata=custom,
                    mode="markers",
                    marker={
                        "color": colors.get(str(mode), "#333"),
                        "size": 5,
                        "symbol": "circle" if kind == "wait" else "diamond",
                        "opacity": 0.7,
                    },
                    hovertemplate=(
                        f"{kind} {mode} of %{{customdata[5]}} at %{{x:.4f}} s<br>"
                        "task %{customdata[0]} (tid %{customdata[1]}, pid %{customdata[2]})"
                        "<br>lock %{customdata[3]}<br>cpu %{customdata[4]}<extra></extra>"
                    ),
                ),
                row=3,
                col=1,
            )
    return _layout(fig, title, 760, legend={"orientation": "h", "y": -0.08})


def _add_interval_rates(
    fig: go.Figure, intervals: pd.DataFrame, interval_s: float | None = None
) -> None:
    """Rows 1 and 2 of the timeline: counts and wait time per second of each
    interval. Per second, not per interval: the intervals are not all as long
    (the first two last FIRST_TICK_S, 0.5 s), and totals per interval drew a
    ramp-up over the first second that never happened."""
    per = intervals.groupby("interval").agg(
        t_s=("t_s", "max"), acquisitions=("acquisitions", "sum"), contended=("contended", "sum")
    )
    seconds = _lengths(per["t_s"], interval_s)
    for column, color in (("acquisitions", "#2ca02c"), ("contended", "#ff7f0e")):
        values = per[column].astype(float).where(per[column] > 0)
        fig.add_trace(
            go.Scatter(
                name=column,
                x=per["t_s"],
                y=_per_second(values, seconds),
                customdata=np.column_stack([per[column], seconds]),
                mode="lines+markers",
                line={"color": color},
                hovertemplate=f"%{{x:.2f}} s: %{{y:,.0f}} {column} per s<br>"
                f"%{{customdata[0]:,}} in the %{{customdata[1]:.2f}} s interval<extra></extra>",
            ),
            row=1,
            col=1,
        )
    waits = intervals.groupby(["interval", "mode"])["wait_total_ns"].sum().unstack("mode")
    for mode in MODES:
        if mode not in waits.columns or not waits[mode].any():
            continue
        total_s = waits[mode].fillna(0) / 1e9
        fig.add_trace(
            go.Scatter(
                name=f"wait {mode}",
                x=per["t_s"].reindex(waits.index),
                y=_per_second(total_s, seconds.reindex(waits.index)),
                customdata=np.column_stack([total_s, seconds.reindex(waits.index)]),
                mode="lines",
                line={"color": MODE_COLORS[mode]},
                hovertemplate=f"%{{x:.2f}} s: {mode} wait %{{customdata[0]:.3s}}s in the "
                "%{customdata[1]:.2f} s interval<br>%{y:.3g} tasks waiting on average"
                "<extra></extra>",
            ),
            row=2,
            col=1,
        )


# -- 7. top locks and callers -------------------------------------------------------


def build_top_locks(summary: pd.DataFrame, top: int = 15) -> go.Figure:
    """The locks with the most wait time, stacked by mode, by identity."""
    title = "Most contended locks (total wait time)"
    # A lock spec's sum rows time calls inside the write wait: not waits.
    waited = summary[(summary["wait_total"].fillna(0) > 0) & summary["mode"].isin(MODES)]
    if waited.empty:
        return empty_figure(title, "No lock waits in this recording")
    totals = waited.groupby("label")["wait_total"].sum().sort_values(ascending=False)
    order = totals.index[:top].tolist()
    labels = [text(label) for label in order]
    fig = go.Figure()
    for mode in MODES:
        rows = waited[(waited["mode"] == mode) & waited["label"].isin(order)]
        if rows.empty:
            continue
        rows = rows.set_index("label").reindex(order)
        custom = np.column_stack(
            [
                [text(c) if isinstance(c, str) else "-" for c in rows["lock_class"]],
                [_count(v) for v in rows["acquisitions"]],
                [_count(v) for v in rows["contended"]],
                [_ns(v) for v in rows["wait_avg"]],
                [_ns(v) for v in rows["wait_p99"]],
                [_ns(v) for v in rows["wait_max"]],
                [_ns(v) for v in rows["wait_total"]],
            ]
        )
        fig.add_trace(
            go.Bar(
                name=mode,
                y=labels,
                x=rows["wait_total"].to_numpy() / 1e9,
                orientation="h",
                customdata=custom,
                marker={"color": MODE_COLORS[mode]},
                hovertemplate=(
                    f"%{{y}} ({mode}, %{{customdata[0]}})<br>wait total %{{customdata[6]}}"
                    "<br>acquisitions %{customdata[1]}, contended %{customdata[2]}"
                    "<br>avg %{customdata[3]}, p99 %{customdata[4]}, max %{customdata[5]}"
                    "<extra></extra>"
                ),
            )
        )
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=labels)
    fig.update_xaxes(title_text="total wait", **TIME_AXIS)
    _layout(fig, title, max(300, 110 + 28 * len(order)), barmode="stack")
    fig.update_layout(margin={"l": 320})
    return fig


# What an empty callers or stacks panel says when lock:contention_* was not
# traced at all, rather than that nothing contended.
NOT_TRACED = "lock:contention_* was not traced (recorded with --no-contention)"


def build_top_callers(callers: pd.DataFrame, top: int = 15, traced: bool = True) -> go.Figure:
    """The kernel call sites with the most contended wait time, with their lock.
    traced: whether the recording traced lock:contention_* at all."""
    title = "Top contending callers (contended wait time by call site)"
    if callers.empty or not (callers["total_ns"] > 0).any():
        message = "No contended waits with a call site in this recording"
        return empty_figure(title, message if traced else NOT_TRACED)
    grouped = (
        callers.groupby(["caller", "label"])
        .agg(total_ns=("total_ns", "sum"), count=("count", "sum"), max_ns=("max_ns", "max"))
        .sort_values("total_ns", ascending=False)
        .head(top)
        .reset_index()
    )
    names = [
        f"{text(c)}  →  {text(label)}"
        for c, label in grouped[["caller", "label"]].itertuples(index=False)
    ]
    custom = np.column_stack(
        [
            [f"{int(v):,}" for v in grouped["count"]],
            [fmt_ns(v) for v in grouped["total_ns"]],
            [fmt_ns(v) for v in grouped["max_ns"]],
        ]
    )
    fig = go.Figure(
        go.Bar(
            y=names,
            x=grouped["total_ns"].to_numpy() / 1e9,
            orientation="h",
            customdata=custom,
            marker={"color": "#8c564b"},
            hovertemplate="%{y}<br>%{customdata[0]} contended waits, total %{customdata[1]}"
            ", max %{customdata[2]}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=names)
    fig.update_xaxes(title_text="contended wait", **TIME_AXIS)
    _layout(fig, title, max(300, 110 + 28 * len(grouped)))
    fig.update_layout(margin={"l": 420})
    return fig


# -- 8. stacks --------------------------------------------------------------------------


def build_stacks(
    folded: dict[str, int], max_nodes: int = 2500, min_share: float = 0.001, traced: bool = True
) -> go.Figure:
    """An icicle of contended wait time by kernel stack (root: all waits;
    below it the outermost frames, down to the lock primitive). Subtrees
    under min_share of the total are folded into their parent. traced: as
    for build_top_callers."""
    title = "Contended wait time by kernel stack"
    total = sum(folded.values())
    if not folded or total <= 0:
        message = "No contended waits with kernel stacks in this recording"
        return empty_figure(title, message if traced else NOT_TRACED)
    children: dict[str, dict[str, int]] = {}
    value: dict[str, int] = {"": total}
    for path, ns in folded.items():
        prefix = ""
        for frame in path.split(";"):
            node = f"{prefix};{frame}" if prefix else frame
            value[node] = value.get(node, 0) + ns
            children.setdefault(prefix, {})[node] = 1
            prefix = node
    floor = total * min_share
    ids, labels, parents, values = ["n0"], ["all contended waits"], [""], [total]
    number = {"": "n0"}
    queue = [""]
    pruned = 0
    while queue:
        node = queue.pop(0)
        kids = sorted(children.get(node, {}), key=lambda k: -value[k])
        for kid in kids:
            if value[kid] < floor or len(ids) >= max_nodes:
                pruned += 1
                continue
            number[kid] = f"n{len(ids)}"
            ids.append(number[kid])
            labels.append(text(kid.rsplit(";", 1)[-1]))
            parents.append(number[node])
            values.append(value[kid])
            queue.append(kid)
    if pruned:
        title += f" (stacks under {min_share:.1%} of the total are folded into their caller)"
    fig = go.Figure(
        go.Icicle(
            ids=ids,
            labels=labels,
            parents=parents,
            values=values,
            branchvalues="total",
            customdata=[fmt_ns(v) for v in values],
            hovertemplate="%{label}<br>%{customdata} (%{percentRoot:.1%} of all)<extra></extra>",
            tiling={"orientation": "v"},
            root={"color": "#ddd"},
            maxdepth=12,
        )
    )
    return _layout(fig, title, 620, margin={"l": 10, "r": 10, "t": 50, "b": 10})


# -- 9. tasks ---------------------------------------------------------------------------


def build_tasks(
    tasks: pd.DataFrame,
    events: pd.DataFrame,
    target_pid: int | None = None,
    top: int = 20,
) -> go.Figure:
    """The tasks that waited longest (comm and tid), with tasks of other
    processes (such as readers of the target's /proc/PID/maps taking its
    mmap_lock) in their own colour. From the per-task table, else from the
    streamed waits."""
    title = "Top waiting tasks"
    source = "per-task totals"
    if not tasks.empty and (tasks["wait_ns"] > 0).any():
        per = (
            tasks.groupby(["tid", "tgid", "comm"])
            .agg(waits=("waits", "sum"), wait_ns=("wait_ns", "sum"), locks=("label", "nunique"))
            .reset_index()
        )
        top_lock = (
            tasks.sort_values("wait_ns", ascending=False)
            .drop_duplicates("tid")
            .set_index("tid")["label"]
        )
    elif not events.empty and (events["kind"] == "wait").any():
        source = "streamed waits over the threshold only"
        waits = events[events["kind"] == "wait"]
        per = (
            waits.groupby(["tid", "tgid", "comm"])
            .agg(
                waits=("duration_ns", "size"),
                wait_ns=("duration_ns", "sum"),
                locks=("label", "nunique"),
            )
            .reset_index()
        )
        top_lock = (
            waits.groupby(["tid", "label"])["duration_ns"]
            .sum()
            .sort_values(ascending=False)
            .reset_index()
            .drop_duplicates("tid")
            .set_index("tid")["label"]
        )
    else:
        return empty_figure(title, "No per-task waits in this recording")
    per = per[per["wait_ns"] > 0].sort_values("wait_ns", ascending=False).head(top)
    title += f" ({source})"
    names = [f"{text(comm)} ({tid})" for comm, tid in per[["comm", "tid"]].itertuples(index=False)]
    if target_pid:
        groups = np.where(per["tgid"] == int(target_pid), "target process", "other processes")
    else:
        groups = np.full(len(per), "tasks")
    fig = go.Figure()
    for group, color in (
        ("target process", "#1f77b4"),
        ("other processes", "#ff7f0e"),
        ("tasks", "#1f77b4"),
    ):
        mask = groups == group
        if not mask.any():
            continue
        part = per[mask]
        custom = np.column_stack(
            [
                part["tgid"].astype(str),
                [f"{int(v):,}" for v in part["waits"]],
                [fmt_ns(v) for v in part["wait_ns"]],
                [text(top_lock.get(t, "?")) for t in part["tid"]],
                part["locks"].astype(str),
            ]
        )
        fig.add_trace(
            go.Bar(
                name=group,
                y=[n for n, m in zip(names, mask, strict=True) if m],
                x=part["wait_ns"].to_numpy() / 1e9,
                orientation="h",
                customdata=custom,
                marker={"color": color},
                hovertemplate="%{y}, pid %{customdata[0]}<br>%{customdata[1]} waits, total "
                "%{customdata[2]}<br>mostly on %{customdata[3]} (%{customdata[4]} locks)"
                "<extra></extra>",
            )
        )
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=names)
    fig.update_xaxes(type="log", title_text="total wait (log)", **TIME_AXIS)
    _layout(fig, title, max(300, 110 + 26 * len(per)), barmode="overlay")
    fig.update_layout(margin={"l": 240})
    return fig


# -- 10. the writer's price ---------------------------------------------------------------

# What a blocked stack waited for (profiler.writer_cost.classify_stack), in
# stacking order: (component, legend name, colour).
OFFCPU_COMPONENTS = [
    ("grace_period", "RCU grace period (rcu_sync_enter)", "#9467bd"),
    ("reader_drain", "readers draining", "#d62728"),
    ("writer_wait", "behind another writer", "#ff7f0e"),
    ("blocked_by_writer", "reader blocked by a writer", "#1f77b4"),
    ("wait", "rwsem slow path", "#7f7f7f"),
]
MAX_TASKS_SHOWN = 8


def _task_list(tasks: list[str]) -> str:
    """Escaped comms for a hover, at most MAX_TASKS_SHOWN of them."""
    shown = ", ".join(text(t) for t in tasks[:MAX_TASKS_SHOWN])
    more = len(tasks) - MAX_TASKS_SHOWN
    return shown + (f" and {more:,} more" if more > 0 else "") if tasks else "-"


def build_offcpu(offcpu: pd.DataFrame, recorded: bool = True, top: int = 15) -> go.Figure:
    """Off-CPU time in lock functions per lock function <- caller and mode,
    stacked by what the stack waited for (frames.offcpu_frame), with the
    tasks that blocked there on hover."""
    title = "Blocked in lock functions (off-CPU time by caller)"
    if offcpu.empty:
        if not recorded:
            return empty_figure(title, "No off-CPU data: record with --offcpu")
        return empty_figure(
            title,
            "No off-CPU time in percpu_down_write, __percpu_down_read or the rwsem slow paths",
        )
    keys = offcpu.drop_duplicates(["label", "mode"]).sort_values("total_ns", ascending=False)
    keys = keys.head(top)
    names = [f"{text(label)} ({mode})" for label, mode in keys[["label", "mode"]].values]
    index = {(label, mode): i for i, (label, mode) in enumerate(keys[["label", "mode"]].values)}
    fig = go.Figure()
    for component, legend, color in OFFCPU_COMPONENTS:
        part = offcpu[offcpu["component"] == component]
        if part.empty:
            continue
        x: list[float | None] = [None] * len(names)
        custom = [["", "", "", "", "", ""] for _ in names]
        for row in part.to_dict("records"):
            at = index.get((row["label"], row["mode"]))
            if at is None:
                continue
            x[at] = row["component_ns"] / 1e9
            custom[at] = [
                fmt_ns(row["component_ns"]),
                f"{row['component_ns'] / row['total_ns']:.1%}" if row["total_ns"] else "-",
                f"{row['blocked']:,}",
                fmt_ns(row["total_ns"]),
                fmt_ns(row["max_ns"]),
                _task_list(row["tasks"]),
            ]
        if all(v is None for v in x):
            continue
        fig.add_trace(
            go.Bar(
                name=legend,
                y=names,
                x=x,
                orientation="h",
                customdata=custom,
                marker={"color": color},
                hovertemplate=(
                    f"%{{y}}<br>{legend}: %{{customdata[0]}} (%{{customdata[1]}})"
                    "<br>%{customdata[2]} blocks, %{customdata[3]} off CPU in all, "
                    "longest %{customdata[4]}<br>tasks: %{customdata[5]}<extra></extra>"
                ),
            )
        )
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=names)
    fig.update_xaxes(title_text="off-CPU time (includes time runnable before running)", **TIME_AXIS)
    _layout(
        fig,
        title,
        max(300, 150 + 34 * len(names)),
        barmode="stack",
        legend={"orientation": "h", "y": -0.25, "traceorder": "normal"},
    )
    fig.update_layout(margin={"l": 380})
    return fig


def build_sum_cost(cost: dict | None) -> go.Figure:
    """The CPU time of __percpu_counter_sum estimated from CPU samples
    (frames.sum_cost): its top callers and, beside the estimate, the --cpus
    what-if, drawn hatched and named a model."""
    title = "The writer's sum over CPUs: __percpu_counter_sum"
    if not cost:
        return empty_figure(title, "No CPU samples: record with --sample")
    cpus = cost.get("online_cpus")
    kernel_samples = int(cost.get("kernel_samples") or 0)
    method = f"method: {text(cost.get('method'))}; {text(cpus)} online CPUs"
    if not cost.get("samples"):
        fig = empty_figure(
            f"{title}<br><sup>{method}</sup>",
            f"0 of {kernel_samples:,} kernel samples were in "
            f"{text(cost.get('function'))}: too little CPU time to be sampled",
        )
        fig.update_layout(margin={"t": 80})
        return fig
    share = cost.get("share_of_cpu")
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        horizontal_spacing=0.12,
        subplot_titles=["top callers (estimated CPU time)", "estimate vs what-if"],
    )
    callers = cost.get("top_callers") or []
    names = [text(c["caller"]) for c in callers]
    fig.add_trace(
        go.Bar(
            name="callers",
            y=names,
            x=[c["estimated_cpu_s"] for c in callers],
            orientation="h",
            customdata=[[f"{c['samples']:,}", fmt_ns(c["estimated_cpu_s"] * 1e9)] for c in callers],
            marker={"color": "#8c564b"},
            showlegend=False,
            hovertemplate="from %{y}<br>%{customdata[0]} samples, about %{customdata[1]} of CPU"
            "<extra></extra>",
        ),
        row=1,
        col=1,
    )
    measured = f"sampled: {cpus} CPUs (estimate)"
    fig.add_trace(
        go.Bar(
            name="estimated from samples",
            x=[measured],
            y=[cost["estimated_cpu_s"]],
            marker={"color": "#8c564b"},
            customdata=[[f"{cost['samples']:,}", fmt_ns(cost["estimated_cpu_s"] * 1e9)]],
            hovertemplate="%{x}<br>%{customdata[0]} samples: about %{customdata[1]} of CPU"
            "<extra></extra>",
        ),
        row=1,
        col=2,
    )
    what_if = cost.get("what_if")
    if what_if:
        label = f"MODEL: {what_if['cpus']} CPUs (what-if)"
        fig.add_trace(
            go.Bar(
                name=f"what-if {what_if['cpus']} CPUs: a linear model, not a measurement",
                x=[label],
                y=[what_if["estimated_cpu_s"]],
                marker={
                    "color": "rgba(0,0,0,0)",
                    "line": {"color": "#555", "width": 2},
                    "pattern": {"shape": "/", "fgcolor": "#999"},
                },
                customdata=[[fmt_ns(what_if["estimated_cpu_s"] * 1e9), text(what_if["model"])]],
                hovertemplate="%{x}<br>about %{customdata[0]} of CPU<br>%{customdata[1]}"
                "<extra></extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="CPU time", row=1, col=1, **TIME_AXIS)
    fig.update_yaxes(title_text="CPU time", row=1, col=2, **TIME_AXIS)
    summary = f"about {fmt_ns(cost['estimated_cpu_s'] * 1e9)} of CPU"
    if share is not None:
        summary += f" ({share:.3%} of all CPU time)"
    summary += f" from {int(cost['samples']):,} of {kernel_samples:,} kernel samples"
    _layout(
        fig,
        f"{title}<br><sup>{summary}; {method}</sup>",
        max(360, 170 + 30 * len(names)),
        legend={"orientation": "h", "y": -0.3, "traceorder": "normal"},
    )
    fig.update_layout(margin={"l": 220, "t": 90})
    return fig
