"""The HTML page both reports share: inline CSS, figures as base64 PNG, escaped tables.

Nothing in a page refers to anything outside it (no scripts, fonts, styles or images
from elsewhere), so it renders the same offline, from a mail attachment or a share.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# Colour-blind-safe categorical palette (Okabe-Ito), extended for k > 8.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
           "#999999", "#882255", "#44AA99", "#117733")
LEVEL_COLOURS = {"ok": "#009E73", "warning": "#E69F00", "alert": "#D55E00"}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.25em;margin-top:28px;border-bottom:1px solid #ddd;
padding-bottom:4px}.meta{color:#555;font-size:.92em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.88em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;max-width:560px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.ok{background:#009E73}.warning{background:#E69F00}.alert{background:#D55E00}
.scroll{overflow-x:auto}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: numbers rounded, None as a dash, ints with thousands separators."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10 ** -digits):
            return f"{value:.{digits - 1}e}"
        return f"{value:,.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 1,
          digits: int = 4, css_id: str | None = None) -> str:
    """An HTML table; the first ``left`` columns are left-aligned labels."""
    ident = f' id="{esc(css_id)}"' if css_id else ""
    head = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{esc(fmt(v, digits))}</td>'
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


@contextmanager
def pyplot() -> Iterator[Any]:
    """matplotlib's pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
                         "axes.spines.right": False, "figure.dpi": 100,
                         # Constrained layout fits labels in one draw; bbox_inches="tight" costs a second.
                         "figure.constrained_layout.use": True}):
        yield plt


def figure(fig: Any, caption: str, alt: str, *, dpi: int = 90) -> str:
    """Render a matplotlib figure as an embedded PNG inside a <figure>, and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _diverging(t: float) -> str:
    """A colour for ``t`` in [-1, 1]: blue below 0, near-white at 0, red above (RdBu's ends)."""
    t = max(-1.0, min(1.0, t))
    end = (178, 24, 43) if t > 0 else (33, 102, 172)
    mid = (247, 247, 247)
    r, g, b = (round(m + (e - m) * abs(t)) for m, e in zip(mid, end))
    return f"#{r:02x}{g:02x}{b:02x}"


def svg_heatmap(values: Sequence[Sequence[float | None]], labels: Sequence[str], *, centre: float, top: float,
                caption: str, alt: str, what: str = "value", cell: int = 16) -> str:
    """A square heat map as inline SVG (no plotting library: the report costs no matplotlib start).

    ``values[i][j]`` (None or NaN: a blank cell) is coloured on a log scale around ``centre``:
    ``centre`` white, ``top`` (and above) full red, ``centre**2 / top`` (and below) full blue.
    Every label and tooltip is escaped.
    """
    n = len(labels)
    pad = 8 + 6 * max((len(str(x)) for x in labels), default=1)
    size = pad + n * cell
    span = math.log(top / centre) if top > centre > 0 else 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(alt)}" '
             f'width="{size + 8}" height="{size + 8}" font-size="10" font-family="sans-serif">']
    for i, name in enumerate(labels):
        y = pad + i * cell + cell * 0.7
        x = pad + i * cell + cell * 0.7
        parts.append(f'<text x="{pad - 4}" y="{y:.1f}" text-anchor="end">{esc(name)}</text>')
        parts.append(f'<text transform="translate({x:.1f},{pad - 4}) rotate(-90)">{esc(name)}</text>')
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v is None or not math.isfinite(float(v)) or float(v) <= 0:
                continue
            colour = _diverging(math.log(float(v) / centre) / span)
            parts.append(f'<rect x="{pad + j * cell}" y="{pad + i * cell}" width="{cell - 1}" height="{cell - 1}" '
                         f'fill="{colour}"><title>{esc(labels[i])} + {esc(labels[j])}: {what} '
                         f'{float(v):.3g}</title></rect>')
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{esc(caption)}</figcaption></figure>"


def svg_hbars(names: Sequence[str], series: Sequence[tuple[str, Sequence[float | None], Sequence[str]]], *,
              top: float, title: str, xlabel: str, lines: Sequence[tuple[float, str, str]] = (),
              percent: bool = False, show_names: bool = True) -> str:
    """A horizontal bar chart as inline SVG: one row per name, one bar per series
    (``(label, values, colours)``; a None or NaN value draws no bar), bars capped at ``top``,
    dashed vertical ``lines`` ``(x, colour, label)``. Every text is escaped.
    """
    row, bar_w = 18, 300
    left = (10 + 6 * max((len(str(n)) for n in names), default=4)) if show_names else 8
    height = 40 + row * max(1, len(names)) + 34
    x = lambda v: left + bar_w * max(0.0, min(float(v), top)) / top  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(title)}" width="{left + bar_w + 20}" '
             f'height="{height}" font-size="10" font-family="sans-serif">',
             f'<text x="{left}" y="14" font-size="11" font-weight="bold">{esc(title)}</text>']
    k = max(1, len(series))
    for i, name in enumerate(names):
        y0 = 24 + i * row
        if show_names:
            parts.append(f'<text x="{left - 4}" y="{y0 + row * 0.65:.1f}" text-anchor="end">{esc(name)}</text>')
        for s_i, (label, values, colours) in enumerate(series):
            v = values[i]
            if v is None or not math.isfinite(float(v)):
                continue
            h = (row - 4) / k
            shown = f"{float(v):.1%}" if percent else f"{float(v):.3g}"
            parts.append(f'<rect x="{left}" y="{y0 + 2 + s_i * h:.1f}" width="{x(v) - left:.1f}" height="{h - 1:.1f}" '
                         f'fill="{colours[i]}"><title>{esc(name)}, {esc(label)}: {shown}</title></rect>')
    base = 24 + row * max(1, len(names))
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + bar_w}" y2="{base}" stroke="#333"/>')
    for j in range(5):
        v = top * j / 4
        parts.append(f'<text x="{x(v):.1f}" y="{base + 12}" text-anchor="middle">'
                     f'{f"{v:.0%}" if percent and top >= 0.04 else f"{v:.1%}" if percent else f"{v:.2g}"}</text>')
    for value, colour, label in lines:
        if 0 <= value <= top:
            parts.append(f'<line x1="{x(value):.1f}" y1="22" x2="{x(value):.1f}" y2="{base}" stroke="{colour}" '
                         f'stroke-dasharray="4 3" stroke-width="1.2"><title>{esc(label)}</title></line>')
    legend = [(lab, col) for lab, col in ((lab, cols[0]) for lab, _, cols in series if cols) if len(series) > 1]
    legend += [(lab, col) for _, col, lab in lines]
    x0 = left
    for label, colour in legend:
        parts.append(f'<rect x="{x0}" y="{base + 18}" width="10" height="8" fill="{colour}"/>'
                     f'<text x="{x0 + 13}" y="{base + 26}">{esc(label)}</text>')
        x0 += 22 + 6 * len(label)
    parts.append(f'<text x="{left + bar_w / 2}" y="{height - 2}" text-anchor="middle">{esc(xlabel)}</text></svg>')
    return "".join(parts)


def page(title: str, subtitle: str, body: Sequence[str], data: dict[str, Any]) -> str:
    """The whole document; ``data`` is embedded as JSON (not executed) for tools and tests."""
    payload = json.dumps(data, allow_nan=False, default=str).replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="meta">{esc(subtitle)}</p>'
        + "\n".join(body)
        + f'<script type="application/json" id="report-data">{payload}</script>'
        + "</body></html>\n"
    )


def read_report_data(text: str) -> dict[str, Any]:
    """The JSON data block of a report written by :func:`page`."""
    start = text.index('<script type="application/json" id="report-data">')
    start = text.index(">", start) + 1
    end = text.index("</script>", start)
    return json.loads(text[start:end].replace("<\\/", "</"))
