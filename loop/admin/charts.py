"""Charts as SVG text, drawn on the server (pure functions: no script, no CDN, works offline).

A line chart draws each series as a polyline with one `<circle class="point">` per value (its
`<title>` is the tooltip); a missing value (None) breaks the line.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#9b2c2c", "#6b46c1", "#b7791f", "#2c7a7b", "#4a5568")
VERDICT_COLOURS = {"Success": "#2f855a", "Reflection": "#b7791f", "Failed": "#c53030"}


@dataclass(frozen=True)
class Series:
    """One line: a name for the legend, one value per x (None: no value there)."""

    name: str
    values: Sequence[float | None]
    colour: str | None = None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2, 2.5 or 5 × 10^k) covering low..high."""
    if high <= low:
        return [low]
    raw = (high - low) / (count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    return [first + i * step for i in range(round((last - first) / step) + 1)]


def _fmt(value: float) -> str:
    if abs(value - round(value)) < 1e-9 and abs(value) < 1e6:
        return str(round(value))
    return f"{value:.3g}"


def line_chart(
    title: str,
    xs: Sequence[float],
    series: Sequence[Series],
    *,
    x_label: str = "round",
    y_min: float | None = None,
    y_max: float | None = None,
    width: int = 460,
    height: int = 220,
) -> str:
    """An SVG line chart of `series` over `xs`; the y range covers the data unless given."""
    values = [v for s in series for v in s.values if v is not None]
    left, right, top, bottom = 44, 12, 26, 40
    legend_rows = (len(series) + 2) // 3
    bottom += 14 * legend_rows
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" data-points="{len(values)}">',
        f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
    ]
    if not values or not xs:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">'
            "no data yet</text></svg>"
        )
        return "".join(parts)
    low = min(values) if y_min is None else y_min
    high = max(values) if y_max is None else y_max
    if high <= low:
        low, high = low - 1, high + 1
    ticks = nice_ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])
    x_low, x_high = min(xs), max(xs)
    x_span = x_high - x_low or 1.0

    def px(x: float) -> float:
        return left + (x - x_low) / x_span * plot_w if len(xs) > 1 else left + plot_w / 2

    def py(y: float) -> float:
        return top + plot_h - (y - low) / (high - low) * plot_h

    for tick in ticks:
        y = py(tick)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="tick">'
            f"{_fmt(tick)}</text>"
        )
    x_ticks = (
        list(xs)
        if len(xs) <= 12
        else [x for x in nice_ticks(x_low, x_high, 7) if x_low <= x <= x_high]
    )
    for x in x_ticks:
        parts.append(
            f'<text x="{px(x):.1f}" y="{top + plot_h + 14}" text-anchor="middle" class="tick">'
            f"{_fmt(x)}</text>"
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{top + plot_h + 28}" text-anchor="middle" '
        f'class="axis-label">{escape(x_label)}</text>'
    )
    radius = 3 if len(xs) <= 60 else 1.5
    for index, line in enumerate(series):
        colour = line.colour or PALETTE[index % len(PALETTE)]
        segments: list[list[str]] = [[]]
        for x, y in zip(xs, line.values, strict=False):
            if y is None:
                segments.append([])
                continue
            segments[-1].append(f"{px(x):.1f},{py(y):.1f}")
        for segment in segments:
            if len(segment) > 1:
                parts.append(
                    f'<polyline points="{" ".join(segment)}" fill="none" stroke="{colour}" '
                    'stroke-width="1.8"/>'
                )
        for x, y in zip(xs, line.values, strict=False):
            if y is not None:
                parts.append(
                    f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="{radius}" '
                    f'fill="{colour}"><title>{escape(line.name)} at {_fmt(x)}: '
                    f"{y:.4g}</title></circle>"
                )
        row, column = divmod(index, 3)
        lx, ly = left + column * (plot_w / 3), top + plot_h + 44 + row * 14
        parts.append(
            f'<rect x="{lx:.1f}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14:.1f}" y="{ly + 1}" class="legend">{escape(line.name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def metric_series(
    rounds: Sequence[dict[str, float]], keys: Sequence[tuple[str, str]]
) -> list[Series]:
    """Series of `(legend, metrics key)` over rounds' metric dicts; a missing key is no value."""
    return [
        Series(name, [m.get(key) for m in rounds], VERDICT_COLOURS.get(name))
        for name, key in keys
        if any(key in m for m in rounds)
    ]
