"""Small inline SVG charts, so the report needs no plotting library and no network.

Every piece of text is escaped; numbers are formatted here. Not here: page layout (templates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#6b7280", "#ca8a04")


def _same(v: float) -> float:
    return v


def line_chart(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    y_range: tuple[float, float] | None = None,
    width: int = 600,
    height: int = 280,
) -> Markup:
    """One or more lines over shared x values; a point's tooltip shows its value. `y_range`
    fixes the y axis (linear only), e.g. (0.5, 1) for AUROC, so charts compare at a glance."""
    left, right, top, bottom = 64, 16, 30, 44
    legend_rows = len(series) if len(series) > 1 else 0
    height += 16 * legend_rows
    bottom += 16 * legend_rows
    values = [v for ys in series.values() for v in ys if v is not None and (v > 0 or not log_y)]
    if not xs or not values:
        return Markup("<p class='muted'>(no data for {})</p>").format(title)
    f: Callable[[float], float] = math.log10 if log_y else _same
    lo, hi = f(min(values)), f(max(values))
    if y_range and not log_y:
        lo, hi = min(lo, y_range[0]), max(hi, y_range[1])
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(v: float) -> float:
        return top + (1 - (f(v) - lo) / (hi - lo)) * (height - top - bottom)

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" class="ct">{escape(title)}</text>',
        f'<text x="{width / 2}" y="{height - bottom + 32}" text-anchor="middle" class="ax">{escape(xlabel)}</text>',
        f'<text x="14" y="{height / 2}" text-anchor="middle" class="ax" '
        f'transform="rotate(-90 14 {height / 2})">{escape(ylabel)}</text>',
    ]
    for i in range(5):  # y grid and ticks
        t = lo + (hi - lo) * i / 4
        v = 10**t if log_y else t
        y = py(v)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tk">{tick_text(v)}</text>'
        )
    for x in ticks(x0, x1):
        parts.append(
            f'<text x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="middle" class="tk">{tick_text(x)}</text>'
        )
    for k, (name, ys) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        pts = [
            (px(x), py(v), x, v)
            for x, v in zip(xs, ys, strict=True)
            if v is not None and (v > 0 or not log_y)
        ]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b, _, _ in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for a, b, x, v in pts:
            tip = escape(f"{name}: x={tick_text(x)}, y={tick_text(v)}")
            parts.append(
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{color}"><title>{tip}</title></circle>'
            )
        if legend_rows:
            ly = height - bottom + 44 + 16 * k
            parts.append(f'<rect x="{left}" y="{ly}" width="10" height="10" fill="{color}"/>')
            parts.append(f'<text x="{left + 15}" y="{ly + 9}" class="tk">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    width: int = 600,
    height: int = 280,
) -> Markup:
    """Grouped vertical bars: one group per category, one bar per series, from a zero line
    (values may be negative). A bar's tooltip shows its series, category and value."""
    left, right, top, bottom = 64, 16, 30, 56
    legend_rows = len(series) if len(series) > 1 else 0
    height += 16 * legend_rows
    bottom += 16 * legend_rows
    values = [v for ys in series.values() for v in ys if v is not None and math.isfinite(v)]
    if not categories or not values:
        return Markup("<p class='muted'>(no data for {})</p>").format(title)
    lo, hi = min(0.0, min(values)), max(0.0, max(values))
    if hi - lo < 1e-12:
        hi = lo + 1

    def py(v: float) -> float:
        return top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom)

    group = (width - left - right) / len(categories)
    bar = group * 0.8 / max(1, len(series))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" class="ct">{escape(title)}</text>',
        f'<text x="14" y="{height / 2}" text-anchor="middle" class="ax" '
        f'transform="rotate(-90 14 {height / 2})">{escape(ylabel)}</text>',
    ]
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{py(v):.1f}" y2="{py(v):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end" class="tk">{tick_text(v)}</text>'
        )
    for c, name in enumerate(categories):
        cx = left + group * (c + 0.5)
        parts.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 16}" text-anchor="middle" class="tk">'
            f"{escape(name)}</text>"
        )
        for k, (sname, ys) in enumerate(series.items()):
            v = ys[c]
            if v is None or not math.isfinite(v):
                continue
            x = left + group * c + group * 0.1 + bar * k
            y0, y1 = sorted((py(0.0), py(v)))
            tip = escape(f"{sname} · {name}: {tick_text(v)}")
            parts.append(
                f'<rect x="{x:.1f}" y="{y0:.1f}" width="{bar * 0.92:.1f}" height="{max(y1 - y0, 0.5):.1f}" '
                f'fill="{PALETTE[k % len(PALETTE)]}"><title>{tip}</title></rect>'
            )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{py(0.0):.1f}" y2="{py(0.0):.1f}" stroke="#9ca3af"/>'
    )
    for k, sname in enumerate(series if legend_rows else ()):
        ly = height - bottom + 30 + 16 * k
        parts.append(
            f'<rect x="{left}" y="{ly}" width="10" height="10" fill="{PALETTE[k % len(PALETTE)]}"/>'
            f'<text x="{left + 15}" y="{ly + 9}" class="tk">{escape(sname)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def ticks(x0: float, x1: float, n: int = 6) -> list[float]:
    """About n ticks at a round step (1, 2 or 5 times a power of ten), within [x0, x1]."""
    raw = (x1 - x0) / n
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.ceil(x0 / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((x1 - first) / step + 1e-9) + 1)]


def tick_text(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.3g}"
