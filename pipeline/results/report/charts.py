"""Inline SVG charts: horizontal bars (categories) and columns (histograms, time series).

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
) -> str:
    """Vertical columns (a histogram or a time series), with a y axis and x labels."""
    count = max(len(values), 1)
    plot_width = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = COLUMN_CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_width / count
    top = _nice_ceiling(max(values, default=0))
    bottom = MARGIN_TOP + plot_height
    parts = [_svg_open(CHART_WIDTH, COLUMN_CHART_HEIGHT, title)]
    for tick in range(Y_TICKS + 1):
        value = top * tick / Y_TICKS
        y = bottom - plot_height * tick / Y_TICKS
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
