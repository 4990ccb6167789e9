"""Escaping of untrusted text (comm names, kernel symbols, command lines).

Two contexts:

* ``text()`` for strings put into plotly figures (trace names, tick labels,
  hover text, table cells, titles). plotly.js parses a small HTML subset in
  those strings (``<b>``, ``<br>``, ``<a href>``...), but only after splitting
  on tags, and it decodes entities into text nodes. So ``&lt;b&gt;`` is shown
  as the literal text ``<b>`` and never becomes an element.
* ``attr()``/``html_text()`` for the report's own HTML.

Control characters are shown as ``\\xNN`` first (as on the terminal).
The JSON of a figure, which sits inside a <script> element, is escaped
separately by ``script_json()``.
"""

from __future__ import annotations

import html

from profiler.render import safe_text


def text(value: object) -> str:
    """Untrusted text for a plotly string."""
    return html.escape(safe_text(value), quote=False)


def html_text(value: object) -> str:
    """Untrusted text for HTML element content or a quoted attribute value."""
    return html.escape(safe_text(value), quote=True)


attr = html_text

_SCRIPT_SAFE = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def script_json(document: str) -> str:
    """A JSON document made safe to embed in a <script> element: '<', '>'
    and '&' (which only occur inside JSON strings) become \\u escapes, so no
    '</script>' or '<!--' can end or alter the script."""
    return document.translate(_SCRIPT_SAFE)
