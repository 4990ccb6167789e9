"""The page shell shared by the report (dashboards.html) and the comparison
(dashboards.compare): one self-contained HTML file.

plotly.js is inline once, in the head; every figure is a JSON document in a
`<script type="application/json">` element, made safe by escape.script_json(),
and drawn by one small script. A Content-Security-Policy allows no network
access and only the page's own scripts (by a per-page nonce). Pages are
written atomically with mode 0600: they hold command lines.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import plotly
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from dashboards.escape import html_text, script_json
from profiler import outputs
from profiler.errors import LockprofError

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}

# The CSS both pages share; each adds its own.
BASE_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header.top{background:#263238;color:#fff;padding:14px 24px}
header.top h1{margin:0;font-size:20px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 24px;
z-index:10;font-size:13px}
nav a{margin-right:14px;color:#1565c0;text-decoration:none}
main{padding:8px 24px 40px}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;margin:16px 0;
padding:10px 16px}
section h2{font-size:17px;margin:6px 0}
section p.desc{color:#555;font-size:13px;margin:2px 0 8px}
.note{color:#555;font-size:13px}
footer{color:#777;font-size:12px;padding:0 24px 24px}
"""

_DRAW = """
(function () {
  var specs = JSON.parse(document.getElementById("lockprof-figures").textContent);
  specs.figures.forEach(function (spec) {
    try {
      Plotly.newPlot(spec.div, spec.figure.data, spec.figure.layout, specs.config);
    } catch (err) {
      console.error("lockprof: figure " + spec.div + " failed: " + err);
      document.getElementById(spec.div).textContent = "This figure could not be drawn: " + err;
    }
  });
})();
"""


@dataclass
class Section:
    """One panel of a page: its figures (name, figure) are drawn below its
    markup, which must already be escaped."""

    anchor: str
    title: str
    description: str
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)
    html: str = ""


def figure_json(fig: go.Figure) -> dict:
    return json.loads(pio.to_json(fig, validate=False))


def _section_html(section: Section, specs: list[dict]) -> str:
    divs = []
    for name, fig in section.figures:
        div = f"plot-{name}"
        specs.append({"div": div, "figure": figure_json(fig)})
        divs.append(f'<div class="plot" id="{div}" data-panel="{html_text(section.anchor)}"></div>')
    return (
        f'<section id="{html_text(section.anchor)}"><h2>{html_text(section.title)}</h2>'
        f'<p class="desc">{html_text(section.description)}</p>'
        f"{section.html}{''.join(divs)}</section>"
    )


def render(
    title: str,
    header_html: str,
    sections: list[Section],
    footer_text: str,
    style: str = "",
    script: str = "",
) -> str:
    """A whole page as one string. title and footer_text are plain text;
    header_html is markup (escaped by the caller); script runs after the
    figures' JSON is in the page, before they are drawn. The footer reads
    "<footer_text> at <time>. Self-contained: ..."."""
    nonce = secrets.token_urlsafe(18)
    specs: list[dict] = []
    body = "".join(_section_html(section, specs) for section in sections)
    nav = "".join(f'<a href="#{html_text(s.anchor)}">{html_text(s.title)}</a>' for s in sections)
    document = json.dumps({"config": PLOT_CONFIG, "figures": specs}, separators=(",", ":"))
    csp = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; "
        "style-src 'unsafe-inline'; "
        "img-src data: blob:; font-src data:; "
        "base-uri 'none'; form-action 'none'"
    )
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html_text(title)}</title>",
            f"<style>{BASE_STYLE}{style}</style>",
            f'<script nonce="{nonce}">{get_plotlyjs()}</script>',
            "</head><body>",
            f'<header class="top">{header_html}</header>',
            f"<nav>{nav}</nav><main>{body}</main>",
            f"<footer>{html_text(footer_text)} at {generated}. Self-contained: "
            f"plotly.js {html_text(plotly.__version__)} (python) is embedded; the page "
            "loads nothing from the network.</footer>",
            '<script type="application/json" id="lockprof-figures">',
            script_json(document),
            "</script>",
            f'<script nonce="{nonce}">{script}{_DRAW}</script>',
            "</body></html>\n",
        ]
    )


def check_writable(path: str | Path, what: str = "output") -> None:
    """Fail before any work (a collection, a comparison) if the page could
    not be written."""
    outputs.check_directory(path, what)


def write_atomic(page: str, path: str | Path, what: str = "output") -> Path:
    """Write a page with outputs.write_file(): through a temporary file and
    a rename, mode 0600 (the invoking user's under sudo); through a
    symlink; into an existing device or FIFO (/dev/stdout). Errors are
    LockprofError with one line."""
    path = Path(path)
    data = page.encode("utf-8")
    try:
        outputs.write_file(path, lambda out: out.write(data))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LockprofError(f"cannot write {what} to {path} ({reason})") from None
    return path
