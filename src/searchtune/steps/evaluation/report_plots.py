"""Small inline SVG charts for the evaluation report: no JavaScript, no fonts, no network.

Each function returns one ``<svg>`` element as text, sized in CSS pixels, with its axes,
ticks and a legend, so the report renders the same in a browser from disk and in the
KFP UI's HTML viewer (which shows artifacts in a sandboxed frame). Hand-written rather
than matplotlib: the project does not depend on a plotting library, and these are a few
kinds of chart.
"""

from __future__ import annotations

import html

import numpy as np

WIDTH, HEIGHT = 360, 260
MARGIN = {"left": 54, "right": 12, "top": 12, "bottom": 38}
PALETTE = {"candidate": "#1f77b4", "production": "#d62728", "base": "#7f7f7f", "lexical": "#2ca02c",
           "relevant": "#1f77b4", "not relevant": "#ff7f0e"}
FALLBACK_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf")


def colour(name: str, position: int = 0) -> str:
    return PALETTE.get(name, FALLBACK_COLOURS[position % len(FALLBACK_COLOURS)])


class Frame:
    """A plotting area: data ranges mapped to pixels, with the axes drawn once."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], x_label: str, y_label: str,
                 width: int = WIDTH, height: int = HEIGHT, x_ticks=None, y_ticks=None):
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1.0
        self.width, self.height = width, height
        self.left, self.right = MARGIN["left"], width - MARGIN["right"]
        self.top, self.bottom = MARGIN["top"], height - MARGIN["bottom"]
        self.parts = [self._axes(x_label, y_label, x_ticks, y_ticks)]

    def x(self, value) -> np.ndarray:
        return self.left + (np.asarray(value, dtype=float) - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value) -> np.ndarray:
        return self.bottom - (np.asarray(value, dtype=float) - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def _axes(self, x_label: str, y_label: str, x_ticks=None, y_ticks=None) -> str:
        parts = [f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" height="{self.bottom - self.top}" '
                 'fill="#fff" stroke="#999"/>']
        x_ticks = nice_ticks(self.x0, self.x1) if x_ticks is None else np.asarray(x_ticks, dtype=float)
        for tick, text in zip(x_ticks, _tick_labels(x_ticks), strict=True):
            px = float(self.x(tick))
            parts.append(f'<line x1="{px:.1f}" y1="{self.bottom}" x2="{px:.1f}" y2="{self.bottom + 4}" stroke="#999"/>'
                         f'<text x="{px:.1f}" y="{self.bottom + 15}" text-anchor="middle">{text}</text>')
        y_ticks = nice_ticks(self.y0, self.y1) if y_ticks is None else np.asarray(y_ticks, dtype=float)
        for tick, text in zip(y_ticks, _tick_labels(y_ticks), strict=True):
            py = float(self.y(tick))
            parts.append(f'<line x1="{self.left - 4}" y1="{py:.1f}" x2="{self.right}" y2="{py:.1f}" stroke="#eee"/>'
                         f'<text x="{self.left - 6}" y="{py + 4:.1f}" text-anchor="end">{text}</text>')
        parts.append(f'<text x="{(self.left + self.right) / 2:.0f}" y="{self.height - 6}" text-anchor="middle">'
                     f'{html.escape(x_label)}</text>')
        parts.append(f'<text transform="translate(12,{(self.top + self.bottom) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                     f'{html.escape(y_label)}</text>')
        return "".join(parts)

    def line(self, xs, ys, stroke: str, width: float = 2.0, dash: str = "") -> None:
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(self.x(xs), self.y(ys), strict=True))
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline points="{points}" fill="none" stroke="{stroke}" stroke-width="{width}"{dashed}/>')

    def dots(self, xs, ys, fill: str, radius: float = 3.5) -> None:
        self.parts.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="{radius}" fill="{fill}"/>'
                          for a, b in zip(self.x(xs), self.y(ys), strict=True))

    def bars(self, edges, heights, fill: str, opacity: float = 0.55) -> None:
        left, right, top = self.x(edges[:-1]), self.x(edges[1:]), self.y(heights)
        self.parts.extend(f'<rect x="{a:.1f}" y="{t:.1f}" width="{max(b - a - 0.5, 0.5):.1f}" height="{self.bottom - t:.1f}" '
                          f'fill="{fill}" fill-opacity="{opacity}"/>' for a, b, t in zip(left, right, top, strict=True))

    def vertical(self, value: float, stroke: str = "#333", dash: str = "3,3") -> None:
        px = float(self.x(value))
        self.parts.append(f'<line x1="{px:.1f}" y1="{self.top}" x2="{px:.1f}" y2="{self.bottom}" stroke="{stroke}" '
                          f'stroke-dasharray="{dash}"/>')

    def legend(self, entries: list[tuple[str, str]], corner: str = "bottom-right") -> None:
        row, width = 15, max((len(label) for label, _ in entries), default=0) * 6.3 + 26
        x = self.right - width - 6 if corner.endswith("right") else self.left + 6
        y = self.bottom - row * len(entries) - 6 if corner.startswith("bottom") else self.top + 6
        self.parts.append(f'<rect x="{x:.0f}" y="{y:.0f}" width="{width:.0f}" height="{row * len(entries) + 4}" '
                          'fill="#fff" fill-opacity="0.85" stroke="#ddd"/>')
        for i, (label, stroke) in enumerate(entries):
            cy = y + 10 + i * row
            self.parts.append(f'<line x1="{x + 5:.0f}" y1="{cy:.0f}" x2="{x + 19:.0f}" y2="{cy:.0f}" stroke="{stroke}" '
                              f'stroke-width="3"/><text x="{x + 23:.0f}" y="{cy + 4:.0f}">{html.escape(label)}</text>')

    def text(self, x: float, y: float, text: str, anchor: str = "middle", dx: float = 0.0, dy: float = 0.0) -> None:
        """``text`` at data point (x, y), moved ``dx`` pixels right and ``dy`` down."""
        self.parts.append(f'<text x="{float(self.x(x)) + dx:.1f}" y="{float(self.y(y)) + dy:.1f}" text-anchor="{anchor}">'
                          f'{html.escape(text)}</text>')

    def svg(self, title: str) -> str:
        return (f'<svg class="chart" width="{self.width}" height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
                f'role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>{"".join(self.parts)}</svg>')


def nice_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """Round tick positions inside [low, high]: multiples of 1, 2, 2.5 or 5 times a power of ten."""
    raw = (high - low) / max(count - 1, 1)
    power = 10.0 ** np.floor(np.log10(raw))
    step = power * next(m for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = np.arange(np.ceil(low / step - 1e-9) * step, high + step * 1e-9, step)
    return np.round(ticks, 10)


def _tick_labels(ticks: np.ndarray) -> list[str]:
    """Labels with the decimals the spacing needs (0.25 -> 2, 0.002 -> 3)."""
    if len(ticks) < 2:
        return [f"{t:g}" for t in ticks]
    step = float(np.min(np.diff(ticks)))
    decimals = next((d for d in range(6) if abs(round(step, d) - step) < step * 1e-6), 6)
    return [f"{(0.0 if abs(t) < step * 1e-9 else t):.{decimals}f}" for t in ticks]


def curve_chart(title: str, series: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str], x_label: str,
                y_label: str, diagonal: bool = False, corner: str = "bottom-right") -> str:
    """Overlaid curves on [0, 1] x [0, 1] (ROC, precision-recall)."""
    frame = Frame((0.0, 1.0), (0.0, 1.0), x_label, y_label)
    if diagonal:
        frame.line([0, 1], [0, 1], "#bbb", width=1, dash="4,4")
    for i, (name, (xs, ys)) in enumerate(series.items()):
        frame.line(xs, ys, colour(name, i), width=2.4 if name == "candidate" else 1.6)
    frame.legend([(labels[name], colour(name, i)) for i, name in enumerate(series)], corner)
    return frame.svg(title)


def histogram_chart(title: str, edges: np.ndarray, shares: dict[str, np.ndarray], x_label: str) -> str:
    """Overlaid histograms of shares (e.g. relevant vs not relevant)."""
    top = max(float(max(values.max() for values in shares.values())), 1e-9) * 1.1
    frame = Frame((float(edges[0]), float(edges[-1])), (0.0, top), x_label, "share of rows")
    for i, (name, values) in enumerate(shares.items()):
        frame.bars(edges, values, colour(name, i))
    frame.legend([(name, colour(name, i)) for i, name in enumerate(shares)], "top-left")
    return frame.svg(title)


def reliability_chart(title: str, series: dict[str, dict], labels: dict[str, str]) -> str:
    """Observed relevant rate against mean predicted probability per bin, with the diagonal."""
    frame = Frame((0.0, 1.0), (0.0, 1.0), "predicted probability", "observed share relevant")
    frame.line([0, 1], [0, 1], "#bbb", width=1, dash="4,4")
    for i, (name, bins) in enumerate(series.items()):
        frame.line(bins["predicted"], bins["observed"], colour(name, i), width=1.6)
        frame.dots(bins["predicted"], bins["observed"], colour(name, i))
    frame.legend([(f"{labels[name]} (ECE {bins['ece']:.3f})", colour(name, i)) for i, (name, bins) in enumerate(series.items())],
                 "top-left")
    return frame.svg(title)


BETTER, SAME, WORSE = "#137333", "#9aa0a6", "#c5221f"


def agreement_scatter(title: str, reference: np.ndarray, candidate: np.ndarray, x_label: str, y_label: str) -> str:
    """One dot per distinct (reference, candidate) pair of per-query values on [0, 1]², its area the number of
    queries there, above the diagonal green (candidate better), on it grey, below red; with the diagonal."""
    frame = Frame((0.0, 1.0), (0.0, 1.0), x_label, y_label, width=340, height=320)
    frame.line([0, 1], [0, 1], "#bbb", width=1, dash="4,4")
    reference, candidate = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    side = np.sign(candidate - reference)  # from the exact values: a rounding never turns a change into "same"
    keys = np.column_stack([np.round(reference, 3), np.round(candidate, 3), side])
    points, counts = np.unique(keys, axis=0, return_counts=True) if len(keys) else (np.zeros((0, 3)), np.zeros(0, int))
    order = np.argsort(-counts, kind="stable")  # big dots first, so small ones stay visible on top
    labels = []  # drawn after every dot, so no dot hides a count
    for (x, y, sign), count in zip(points[order], counts[order], strict=True):
        fill = BETTER if sign > 0 else WORSE if sign < 0 else SAME
        radius = min(2.5 + 1.5 * np.sqrt(count - 1), 16.0)
        frame.parts.append(f'<circle cx="{float(frame.x(x)):.1f}" cy="{float(frame.y(y)):.1f}" r="{radius:.1f}" '
                           f'fill="{fill}" fill-opacity="0.45" stroke="{fill}" stroke-width="0.6"><title>{count} '
                           f'quer{"y" if count == 1 else "ies"} at {x:.2f} &#8594; {y:.2f}</title></circle>')
        if count >= max(5, 0.05 * len(keys)):  # a big cluster says how many queries it holds, not just by its area
            outward = 1 if x <= 0.5 else -1
            labels.append(f'<text x="{float(frame.x(x)) + outward * (radius + 3):.1f}" y="{float(frame.y(y)) + 4:.1f}" '
                               f'text-anchor="{"start" if outward > 0 else "end"}" font-weight="600" stroke="#fff" '
                               f'stroke-width="3" paint-order="stroke">{count}</text>')
    frame.parts.extend(labels)
    better, worse = int((side > 0).sum()), int((side < 0).sum())
    frame.legend([(f"candidate better ({better})", BETTER), (f"same ({len(side) - better - worse})", SAME),
                  (f"candidate worse ({worse})", WORSE)])
    return frame.svg(title)


def interval_chart(title: str, rows: list[tuple[str, float, float, float]], x_label: str) -> str:
    """Paired differences as points with their intervals, one row each (label, value, low, high), zero marked:
    an interval right of zero is a win beyond noise, one across it is not distinguishable from no change."""
    values = [v for _, value, low, high in rows for v in (value, low, high)] + [0.0]
    reach = max(abs(min(values)), abs(max(values)), 0.01) * 1.15
    height = 70 + 50 * max(len(rows), 1)
    frame = Frame((-reach, reach), (0.0, float(len(rows))), x_label, "", width=400, height=height, y_ticks=[])
    frame.vertical(0.0)
    for position, (label, value, low, high) in enumerate(rows):
        y = len(rows) - position - 0.68
        stroke = BETTER if low > 0 else WORSE if high < 0 else "#5f6368"
        frame.line([low, high], [y, y], stroke, width=3)
        for end in (low, high):
            frame.line([end, end], [y - 0.08, y + 0.08], stroke, width=2)
        frame.dots([value], [y], stroke, radius=5)
        frame.text(-reach, y + 0.42, f"minus {label}: {value:+.3f} [{low:+.3f}, {high:+.3f}]", anchor="start", dx=6)
    return frame.svg(title)


def count_bars(title: str, counts: list[tuple[str, int, str]], y_label: str) -> str:
    """Bars of counts by category (label, count, colour), each count written above its bar."""
    top = max((c for _, c, _ in counts), default=1) * 1.18 or 1.0
    frame = Frame((0.0, float(len(counts))), (0.0, top), "", y_label, width=370, x_ticks=[])
    for position, (label, count, fill) in enumerate(counts):
        frame.bars(np.array([position + 0.12, position + 0.88]), np.array([count]), fill, opacity=0.75)
        frame.text(position + 0.5, count, str(count), dy=-4)
        for line, text in enumerate(label.split("\n")):  # a two-line label stays clear of its neighbours
            frame.text(position + 0.5, 0.0, text, dy=14 + 12 * line)
    return frame.svg(title)


def epoch_chart(title: str, epochs: list[int], values: list[float | None], y_label: str, best: int | None = None) -> str:
    """One per-epoch curve with its values written at the points; the best epoch's line is dashed."""
    kept = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None and np.isfinite(v)]
    xs = np.array([e for e, _ in kept], dtype=float)
    ys = np.array([v for _, v in kept], dtype=float)
    low, high = (float(ys.min()), float(ys.max())) if len(ys) else (0.0, 1.0)
    pad = (high - low) * 0.25 or abs(high) * 0.05 or 0.05
    frame = Frame((min(epochs, default=1) - 0.3, max(epochs, default=1) + 0.3), (low - pad, high + pad), "epoch", y_label,
                  x_ticks=epochs or [1])
    if best:
        frame.vertical(best, stroke="#2ca02c")
    if len(xs):
        frame.line(xs, ys, "#1f77b4")
        frame.dots(xs, ys, "#1f77b4")
        frame.parts.extend(f'<text x="{a:.1f}" y="{b - 7:.1f}" text-anchor="middle">{v:.3f}</text>'
                           for a, b, v in zip(frame.x(xs), frame.y(ys), ys, strict=True))
    return frame.svg(title)
