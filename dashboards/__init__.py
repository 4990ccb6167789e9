"""HTML contention reports.

* dashboards.frames: Recording -> the tidy frames the panels plot (labels,
  no double counting, folded stacks);
* dashboards.figures: one pure builder per panel, frames -> plotly Figure;
* dashboards.html: the self-contained offline page (render, write_report).
"""

from dashboards.html import render, write_report

__all__ = ["render", "write_report"]
