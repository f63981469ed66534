"""Inline SVG charts: horizontal bars (categories), columns (histograms, time series) and a
precision-recall curve.

Plain SVG markup made here, no scripts or external resources. Every piece of text that ends up
in the markup — labels, titles, tooltips — passes through :func:`esc`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

FONT_PX = 12
BAR_HEIGHT = 18
BAR_GAP = 4
LABEL_WIDTH = 220
"""Horizontal bars: room for the category labels on the left."""

VALUE_WIDTH = 70
"""Horizontal bars: room for the value printed after each bar."""

CHART_WIDTH = 720
COLUMN_CHART_HEIGHT = 220
MARGIN_LEFT = 56
MARGIN_BOTTOM = 44
MARGIN_TOP = 12
MARGIN_RIGHT = 12
Y_TICKS = 4
"""Gridlines above zero on a column chart's value axis (at most, for counts)."""

PR_CHART_SIZE = 360
"""Width and height of the precision-recall chart."""

PR_TICKS = 5
"""Gridlines above zero on each axis of the precision-recall chart (0.2 apart)."""

POINT_RADIUS = 3
MAX_LABEL_CHARS = 34
"""Longer category labels are cut with an ellipsis; the tooltip has the whole text."""

DEFAULT_COLOUR = "#4e79a7"
AXIS_COLOUR = "#888"
TEXT_COLOUR = "#222"


def esc(value: object) -> str:
    """``value`` as text safe in HTML and SVG content and in quoted attributes."""
    return html.escape(str(value), quote=True)


def hbar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    colours: Sequence[str] | None = None,
    value_format: str = "{:,}",
) -> str:
    """Horizontal bars, one per label, longest first as given."""
    count = len(labels)
    height = MARGIN_TOP + count * (BAR_HEIGHT + BAR_GAP) + MARGIN_TOP
    plot_width = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    top = max(values, default=0) or 1
    parts = [_svg_open(CHART_WIDTH, height, title)]
    for i, (label, value) in enumerate(zip(labels, values)):
        y = MARGIN_TOP + i * (BAR_HEIGHT + BAR_GAP)
        width = max(plot_width * value / top, 1 if value else 0)
        colour = (colours[i] if colours else None) or DEFAULT_COLOUR
        text = value_format.format(value)
        parts.append(
            f"<g><title>{esc(label)}: {esc(text)}</title>"
            f'<text x="{LABEL_WIDTH - 6}" y="{y + BAR_HEIGHT - 5}" text-anchor="end" '
            f'class="label">{esc(_cut(label))}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" '
            f'fill="{esc(colour)}"/>'
            f'<text x="{LABEL_WIDTH + width + 4:.1f}" y="{y + BAR_HEIGHT - 5}" '
            f'class="value">{esc(text)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def column_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    x_title: str,
    y_title: str,
    label_every: int = 1,
    value_format: str = "{:,}",
    colour: str = DEFAULT_COLOUR,
    counts: bool = False,
) -> str:
    """Vertical columns (a histogram or a time series), with a y axis and x labels.

    ``counts``: the values are whole numbers (images, detections), so the y axis has whole
    ticks only (:func:`count_ticks`); else :data:`Y_TICKS` even steps up to a round number."""
    count = max(len(values), 1)
    plot_width = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = COLUMN_CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_width / count
    highest = max(values, default=0)
    if counts:
        ticks = count_ticks(highest)
    else:
        ceiling = _nice_ceiling(highest)
        ticks = [ceiling * tick / Y_TICKS for tick in range(Y_TICKS + 1)]
    top = ticks[-1]
    bottom = MARGIN_TOP + plot_height
    parts = [_svg_open(CHART_WIDTH, COLUMN_CHART_HEIGHT, title)]
    for value in ticks:
        y = bottom - plot_height * value / top
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{CHART_WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{esc(_short_number(value))}</text>"
        )
    for i, (label, value) in enumerate(zip(labels, values)):
        x = MARGIN_LEFT + i * slot
        height = plot_height * value / top if top else 0
        parts.append(
            f"<g><title>{esc(label)}: {esc(value_format.format(value))}</title>"
            f'<rect x="{x + 1:.1f}" y="{bottom - height:.1f}" width="{max(slot - 2, 1):.1f}" '
            f'height="{height:.1f}" fill="{esc(colour)}"/></g>'
        )
        if i % max(label_every, 1) == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{bottom + 14}" text-anchor="middle" '
                f'class="tick">{esc(label)}</text>'
            )
    parts.append(
        f'<line x1="{MARGIN_LEFT}" x2="{CHART_WIDTH - MARGIN_RIGHT}" y1="{bottom}" '
        f'y2="{bottom}" stroke="{AXIS_COLOUR}"/>'
        f'<text x="{MARGIN_LEFT + plot_width / 2:.1f}" y="{COLUMN_CHART_HEIGHT - 6}" '
        f'text-anchor="middle" class="axis">{esc(x_title)}</text>'
        f'<text x="12" y="{MARGIN_TOP + plot_height / 2:.1f}" text-anchor="middle" '
        f'class="axis" transform="rotate(-90 12 {MARGIN_TOP + plot_height / 2:.1f})">'
        f"{esc(y_title)}</text></svg>"
    )
    return "".join(parts)


def pr_chart(points: Sequence[tuple[float, float, float]], *, title: str) -> str:
    """A precision-recall curve: ``points`` are ``(score threshold, precision, recall)``, drawn
    as dots joined in order of score, recall across and precision up, both from 0 to 1; each
    dot's tooltip gives its three numbers. Points without a precision (nothing kept) are left
    out."""
    size = PR_CHART_SIZE
    plot = size - MARGIN_LEFT - MARGIN_RIGHT
    bottom = MARGIN_TOP + plot
    height = bottom + MARGIN_BOTTOM

    def x_of(recall: float) -> float:
        return MARGIN_LEFT + plot * recall

    def y_of(precision: float) -> float:
        return bottom - plot * precision

    parts = [_svg_open(size, height, title)]
    for tick in range(PR_TICKS + 1):
        value = tick / PR_TICKS
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot}" y1="{y_of(value):.1f}" '
            f'y2="{y_of(value):.1f}" stroke="#e4e4e4"/>'
            f'<line x1="{x_of(value):.1f}" x2="{x_of(value):.1f}" y1="{MARGIN_TOP}" '
            f'y2="{bottom}" stroke="#e4e4e4"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y_of(value) + 4:.1f}" text-anchor="end" '
            f'class="tick">{value:.1f}</text>'
            f'<text x="{x_of(value):.1f}" y="{bottom + 14}" text-anchor="middle" '
            f'class="tick">{value:.1f}</text>'
        )
    shown = [(s, p, r) for s, p, r in points if math.isfinite(p) and math.isfinite(r)]
    for (_, p0, r0), (_, p1, r1) in zip(shown, shown[1:]):
        parts.append(
            f'<line x1="{x_of(r0):.1f}" y1="{y_of(p0):.1f}" x2="{x_of(r1):.1f}" '
            f'y2="{y_of(p1):.1f}" stroke="{DEFAULT_COLOUR}" stroke-width="2"/>'
        )
    for score, precision, recall in shown:
        parts.append(
            f"<g><title>score {score:g}: precision {precision:.3f}, recall {recall:.3f}</title>"
            f'<circle cx="{x_of(recall):.1f}" cy="{y_of(precision):.1f}" r="{POINT_RADIUS}" '
            f'fill="{DEFAULT_COLOUR}"/></g>'
        )
    parts.append(
        f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot}" y1="{bottom}" y2="{bottom}" '
        f'stroke="{AXIS_COLOUR}"/>'
        f'<text x="{MARGIN_LEFT + plot / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'class="axis">recall</text>'
        f'<text x="12" y="{MARGIN_TOP + plot / 2:.1f}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 12 {MARGIN_TOP + plot / 2:.1f})">precision</text></svg>'
    )
    return "".join(parts)


def count_ticks(highest: float) -> list[int]:
    """Whole-number ticks from 0 for a count axis reaching ``highest``: a step of 1, 2 or 5
    × 10^k, at most :data:`Y_TICKS` steps, the last tick at or above ``highest``."""
    step = 1
    while step * Y_TICKS < highest:
        magnitude = 10 ** int(math.floor(math.log10(step)))
        for factor in (2, 5, 10):
            if factor * magnitude > step:
                step = factor * magnitude
                break
    steps = max(1, math.ceil(highest / step))
    return [step * k for k in range(steps + 1)]


def _svg_open(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}" '
        f'font-size="{FONT_PX}" font-family="sans-serif" fill="{TEXT_COLOUR}">'
        f"<title>{esc(title)}</title>"
    )


def _cut(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value * (1 - 1e-9):
            return step * magnitude
    return 10 * magnitude


def _short_number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if value >= 1_000:
        return f"{value / 1_000:.3g}k"
    return f"{value:.3g}"
