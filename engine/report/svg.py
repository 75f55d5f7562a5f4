"""Small bar charts drawn directly as SVG: the run report renders in milliseconds.

The scoring run's report is drawn on every nightly run, right before publishing, so it
must cost next to nothing; matplotlib would take seconds. These charts are plain SVG
documents embedded as ``<img src="data:image/svg+xml;base64,...">``, so the page still
has no external resources.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from engine.report.html import esc

_FONT = 'font-family="Helvetica,Arial,sans-serif"'


def _svg(width: int, height: int, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {_FONT} font-size="11">'
            f'<rect width="100%" height="100%" fill="#fff"/>{"".join(body)}</svg>')


def hbars(items: Sequence[tuple[str, float, str]], *, title: str, xlabel: str,
          lines: Sequence[tuple[float, str, str]] = (), x_max: float | None = None) -> str:
    """Horizontal bars ``(label, value, colour)`` with vertical reference ``lines``."""
    label_w, plot_w, row_h, top = 170, 440, 18, 30
    height = top + row_h * len(items) + 54
    vmax = x_max or max([v for _, v, _ in items] + [x for x, _, _ in lines] + [1e-9]) * 1.15

    def x(v: float) -> float:
        return label_w + plot_w * min(max(v, 0.0), vmax) / vmax

    body = [f'<text x="{label_w}" y="18" font-size="13" font-weight="bold">{esc(title)}</text>']
    for i, (label, value, colour) in enumerate(items):
        y = top + i * row_h
        body.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{esc(label)}</text>')
        body.append(f'<rect x="{label_w}" y="{y + 3}" width="{x(value) - label_w:.1f}" height="{row_h - 6}" '
                    f'fill="{colour}"/>')
        body.append(f'<text x="{x(value) + 4:.1f}" y="{y + 13}" font-size="10">{value:.3f}</text>')
    bottom = top + row_h * len(items)
    for i, (value, colour, name) in enumerate(lines):
        body.append(f'<line x1="{x(value):.1f}" y1="{top}" x2="{x(value):.1f}" y2="{bottom}" stroke="{colour}" '
                    f'stroke-dasharray="5,3" stroke-width="1.5"/>')
        # Labels on alternating rows: close reference lines must not print over each other.
        body.append(f'<text x="{x(value) + 3:.1f}" y="{bottom + 12 + 11 * (i % 2)}" fill="{colour}" '
                    f'font-size="10">{esc(name)}</text>')
    body.append(f'<line x1="{label_w}" y1="{bottom}" x2="{label_w + plot_w}" y2="{bottom}" stroke="#444"/>')
    body.append(f'<text x="{label_w + plot_w / 2}" y="{bottom + 40}" text-anchor="middle">{esc(xlabel)}</text>')
    return _svg(label_w + plot_w + 60, height, body)


def grouped_bars(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]], *,
                 title: str, xlabel: str, ylabel: str, width: int = 420, height: int = 260) -> str:
    """Vertical bars, one group per category, one bar per ``(name, values, colour)`` series."""
    left, right, top, bottom = 52, 12, 30 + 14 * len(series), 46
    plot_w, plot_h = width - left - right, height - top - bottom
    vmax = max([v for _, values, _ in series for v in values] + [1e-9]) * 1.1
    group_w = plot_w / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(series))
    body = [f'<text x="{left}" y="18" font-size="13" font-weight="bold">{esc(title)}</text>']
    for tick in range(5):
        v = vmax * tick / 4
        y = top + plot_h - plot_h * tick / 4
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="9">{v:.2f}</text>')
    for i, category in enumerate(categories):
        gx = left + i * group_w + group_w * 0.1
        for s, (_, values, colour) in enumerate(series):
            v = values[i] if i < len(values) else 0.0
            h = plot_h * max(v, 0.0) / vmax
            body.append(f'<rect x="{gx + s * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                        f'height="{h:.1f}" fill="{colour}"/>')
        body.append(f'<text x="{left + (i + 0.5) * group_w:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                    f'font-size="9">{esc(category)}</text>')
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>')
    body.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{esc(xlabel)}</text>')
    body.append(f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
                f'transform="rotate(-90 12 {top + plot_h / 2})">{esc(ylabel)}</text>')
    for s, (name, _, colour) in enumerate(series):
        lx = left + 4
        ly = 26 + s * 14
        body.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{colour}"/>')
        body.append(f'<text x="{lx + 14}" y="{ly + 9}" font-size="10">{esc(name)}</text>')
    return _svg(width, height, body)


def svg_figure(svg: str, caption: str, alt: str) -> str:
    """An SVG chart as an embedded image inside a <figure>."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (f'<figure><img alt="{esc(alt)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")
