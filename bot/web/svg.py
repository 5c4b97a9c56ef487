"""A small server-side SVG bar chart: no chart library, no script, readable without CSS.

Every text goes through ``html.escape``; the result is safe to put into a page as markup.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from markupsafe import Markup


def nice_ceiling(value: float) -> tuple[float, float]:
    """An axis maximum ≥ ``value`` and a tick step that read well: (5, 1), (10, 2), (40, 10), (250, 50)…"""
    if value <= 0:
        return 1.0, 1.0
    if value <= 5 and float(value).is_integer():
        return float(max(value, 1)), 1.0
    raw_step = value / 5
    magnitude = 10 ** math.floor(math.log10(raw_step))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if step >= raw_step:
            break
    return math.ceil(value / step) * step, step


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def bar_chart(
    values: Sequence[float],
    labels: Sequence[str],
    *,
    title: str,
    unit: str = "",
    width: int = 720,
    height: int = 240,
    label_every: int = 1,
) -> Markup:
    """Vertical bars, one per value, labelled below (every ``label_every``-th label shown); each bar has a
    tooltip ``"<label>: <value><unit>"`` and its value above it when not zero."""
    if len(values) != len(labels):
        raise ValueError("values and labels differ in length")
    if not values:
        raise ValueError("nothing to chart")
    left, right, top, bottom = 36, 8, 16, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value, step = nice_ceiling(max(values))
    slot = plot_w / len(values)
    bar_w = max(1.0, slot * 0.7)
    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
    ]
    ticks = round(top_value / step)
    for index in range(ticks + 1):
        tick = index * step
        y = top + plot_h - plot_h * tick / top_value
        parts.append(f'<line class="chart-grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                     f'stroke="#d9dde3" stroke-width="1"/>')
        parts.append(f'<text class="chart-axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#555">{_number(tick)}</text>')
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        x = left + index * slot + (slot - bar_w) / 2
        bar_h = plot_h * value / top_value
        y = top + plot_h - bar_h
        tip = esc(f"{label}: {_number(value)}{unit}")
        parts.append(f'<rect class="chart-bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                     f'height="{bar_h:.1f}" fill="#2f6fb3"><title>{tip}</title></rect>')
        if value:
            parts.append(f'<text class="chart-value" x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" '
                         f'text-anchor="middle" font-size="11" fill="#222">{_number(value)}</text>')
        if index % max(1, label_every) == 0:
            parts.append(f'<text class="chart-label" x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" '
                         f'text-anchor="middle" font-size="11" fill="#555">{esc(label)}</text>')
    parts.append(f'<line class="chart-base" x1="{left}" y1="{top + plot_h}" x2="{width - right}" '
                 f'y2="{top + plot_h}" stroke="#888" stroke-width="1"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
