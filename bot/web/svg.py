"""Small server-side SVG charts (bars, a ranking, a two-axis trend): no chart library, no script, readable
without CSS.

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


def ranking_chart(
    values: Sequence[float],
    labels: Sequence[str],
    *,
    title: str,
    unit: str = "",
    links: Sequence[str | None] | None = None,
    width: int = 720,
    row_height: int = 24,
    label_width: int = 180,
) -> Markup:
    """Horizontal bars, one row per value in the order given (rank them first), the label on the left and the
    value at the bar's end; with ``links`` each label and bar leads to that (local) page."""
    if len(values) != len(labels) or (links is not None and len(links) != len(values)):
        raise ValueError("values, labels and links differ in length")
    if not values:
        raise ValueError("nothing to chart")
    top, bottom, right = 8, 8, 56
    height = top + bottom + row_height * len(values)
    plot_w = width - label_width - right
    top_value, _ = nice_ceiling(max(values))
    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-ranking" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
    ]
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        y = top + index * row_height
        bar_w = plot_w * value / top_value
        tip = esc(f"{label}: {_number(value)}{unit}")
        shown = label if len(label) <= 14 else label[:13] + "…"
        row = (f'<text class="chart-label" x="{label_width - 8}" y="{y + row_height * 0.65:.1f}" '
               f'text-anchor="end" font-size="12" fill="#333">{esc(shown)}</text>'
               f'<rect class="chart-bar" x="{label_width}" y="{y + 4:.1f}" '
               f'width="{max(bar_w, 1 if value else 0):.1f}" '
               f'height="{row_height - 8}" fill="#2f6fb3"><title>{tip}</title></rect>'
               f'<text class="chart-value" x="{label_width + bar_w + 4:.1f}" y="{y + row_height * 0.65:.1f}" '
               f'font-size="11" fill="#222">{_number(value)}{esc(unit)}</text>')
        link = links[index] if links is not None else None
        if link:
            row = f'<a href="{esc(link)}" class="chart-link">{row}</a>'
        parts.append(f'<g class="chart-row" data-label="{esc(label)}" data-value="{_number(value)}">'
                     f"{row}</g>")
    parts.append(f'<line class="chart-base" x1="{label_width}" y1="{top}" x2="{label_width}" '
                 f'y2="{height - bottom}" stroke="#888" stroke-width="1"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def trend_chart(
    labels: Sequence[str],
    bars: Sequence[float],
    line: Sequence[float],
    *,
    title: str,
    bar_name: str,
    line_name: str,
    bar_unit: str = "",
    line_unit: str = "",
    width: int = 720,
    height: int = 260,
) -> Markup:
    """Bars on the left axis and a line with points on the right axis over the same labels (e.g. messages
    and reports per week, whose scales differ), with a legend above."""
    if not (len(labels) == len(bars) == len(line)):
        raise ValueError("labels, bars and line differ in length")
    if not labels:
        raise ValueError("nothing to chart")
    left, right, top, bottom = 40, 40, 30, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    bar_top, bar_step = nice_ceiling(max(bars))
    line_top, line_step = nice_ceiling(max(line))
    slot = plot_w / len(labels)
    bar_w = max(1.0, slot * 0.5)
    esc = html.escape
    bar_color, line_color = "#9ab8da", "#c0362c"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-trend" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
        f'<rect x="{left}" y="6" width="12" height="10" fill="{bar_color}"/>'
        f'<text class="chart-legend" x="{left + 16}" y="15" font-size="12" fill="#333">'
        f'{esc(bar_name)}（{esc(bar_unit)}，左轴）</text>'
        f'<line x1="{left + 200}" y1="11" x2="{left + 218}" y2="11" stroke="{line_color}" stroke-width="2"/>'
        f'<circle cx="{left + 209}" cy="11" r="3" fill="{line_color}"/>'
        f'<text class="chart-legend" x="{left + 224}" y="15" font-size="12" fill="#333">'
        f'{esc(line_name)}（{esc(line_unit)}，右轴）</text>',
    ]
    for index in range(round(bar_top / bar_step) + 1):
        tick = index * bar_step
        y = top + plot_h - plot_h * tick / bar_top
        parts.append(f'<line class="chart-grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                     f'stroke="#d9dde3" stroke-width="1"/>')
        parts.append(f'<text class="chart-axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#555">{_number(tick)}</text>')
    for index in range(round(line_top / line_step) + 1):
        tick = index * line_step
        y = top + plot_h - plot_h * tick / line_top
        parts.append(f'<text class="chart-axis chart-axis-right" x="{width - right + 6}" y="{y + 4:.1f}" '
                     f'font-size="11" fill="{line_color}">{_number(tick)}</text>')
    points = []
    for index, (label, bar, value) in enumerate(zip(labels, bars, line, strict=True)):
        centre = left + index * slot + slot / 2
        bar_h = plot_h * bar / bar_top
        y = top + plot_h - bar_h
        tip = esc(f"{label} {bar_name}: {_number(bar)}{bar_unit}")
        parts.append(f'<rect class="chart-bar" x="{centre - bar_w / 2:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                     f'height="{bar_h:.1f}" fill="{bar_color}"><title>{tip}</title></rect>')
        if bar:
            parts.append(f'<text class="chart-value" x="{centre:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                         f'font-size="10" fill="#555">{_number(bar)}</text>')
        parts.append(f'<text class="chart-label" x="{centre:.1f}" y="{height - bottom + 16}" '
                     f'text-anchor="middle" font-size="11" fill="#555">{esc(label)}</text>')
        points.append((centre, top + plot_h - plot_h * value / line_top, label, value))
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
    parts.append(f'<polyline class="chart-line" points="{path}" fill="none" stroke="{line_color}" '
                 'stroke-width="2"/>')
    for x, y, label, value in points:
        parts.append(f'<circle class="chart-point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{line_color}">'
                     f'<title>{esc(f"{label} {line_name}: {_number(value)}{line_unit}")}</title></circle>')
    parts.append(f'<line class="chart-base" x1="{left}" y1="{top + plot_h}" x2="{width - right}" '
                 f'y2="{top + plot_h}" stroke="#888" stroke-width="1"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
