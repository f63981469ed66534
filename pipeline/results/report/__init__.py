"""``yolo-batch report``: one self-contained HTML page describing a run.

The page holds the run summary, charts (inline SVG drawn here, no scripts), the error table and
a gallery of sample images with their boxes drawn (embedded JPEG data URIs). Every figure is
aggregated in DuckDB over the committed results (``GROUP BY``), so a report over millions of
images holds only a few hundred rows and the sample thumbnails in memory.

- :mod:`pipeline.results.report.data` gathers the figures (:func:`collect`).
- :mod:`pipeline.results.report.gallery` picks and draws the sample thumbnails.
- :mod:`pipeline.results.report.charts` draws the SVG charts.
- :mod:`pipeline.results.report.render` writes the HTML.
"""

from __future__ import annotations

from pipeline.results.report.data import ReportData, collect
from pipeline.results.report.render import render_html, write_report

__all__ = ["ReportData", "collect", "render_html", "write_report"]
