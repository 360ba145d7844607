"""Charts as inline SVG, drawn on the server: no chart library, no script, nothing to download.

Each function returns one <svg> element sized by a viewBox, so it scales with the page. Values
are escaped; labels are the only text.
"""

from __future__ import annotations

from html import escape

import numpy as np

from zerodefect.quality.spc import PChart

W, H = 640, 240
PAD_L, PAD_R, PAD_T, PAD_B = 48, 16, 24, 40
RED, BLUE, GREY, GREEN = "#c62828", "#1565c0", "#9e9e9e", "#2e7d32"


def _frame(title: str, body: list[str], kind: str, height: int = H) -> str:
    return (
        f'<svg class="chart" data-chart="{kind}" viewBox="0 0 {W} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="{PAD_L}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def _axes(ymax: float, fmt: str = "{:.2f}") -> list[str]:
    x0, y0, y1 = PAD_L, H - PAD_B, PAD_T
    out = [
        f'<line x1="{x0}" y1="{y0}" x2="{W - PAD_R}" y2="{y0}" stroke="{GREY}"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="{GREY}"/>',
    ]
    for frac in (0, 0.5, 1):
        y = y0 - frac * (y0 - y1)
        out.append(
            f'<text x="{x0 - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{fmt.format(frac * ymax)}</text>'
        )
    return out


def _x(i: int, n: int) -> float:
    return PAD_L + (i + 0.5) * (W - PAD_L - PAD_R) / max(n, 1)


def _y(value: float, ymax: float) -> float:
    return H - PAD_B - (value / ymax if ymax else 0) * (H - PAD_T - PAD_B)


def _labels(labels: list[str]) -> list[str]:
    """Every step-th label under its point, cut to the room it has (about 6 px a character);
    a bar's full name is in its tooltip."""
    step = max(1, len(labels) // 8)
    room = max(3, int((W - PAD_L - PAD_R) / max(len(labels), 1) * step / 6))
    return [
        f'<text x="{_x(i, len(labels)):.1f}" y="{H - PAD_B + 14}" font-size="10" text-anchor="middle">'
        f"{escape(label if len(label) <= room else label[: room - 1] + '…')}</text>"
        for i, label in enumerate(labels)
        if i % step == 0
    ]


def short_labels(labels: list[str]) -> list[str]:
    """Bucket labels (2026-11-25T14:00Z, or a part's time) as the axis shows them: the time of
    day for hours and parts, the date for days and weeks (every label at midnight)."""
    if labels and all(label[11:16] == "00:00" for label in labels):
        return [label[:10] for label in labels]
    return [label[11:16] or label for label in labels]


# Series this short get a marker on every point: one point has no line to show it (a p-chart
# marks every subgroup, smaller beyond this).
MARKERS_UP_TO = 24


def empty(title: str, kind: str, waiting: str = "no data yet") -> str:
    """A chart with nothing to draw says what it is waiting for."""
    return _frame(
        title,
        [
            f'<text class="waiting" x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="{GREY}">{escape(waiting)}</text>'
        ],
        kind,
    )


def p_chart_svg(chart: PChart, title: str, waiting: str = "waiting for the first subgroup of parts") -> str:
    """Reject rate per subgroup with the centre line and each point's 3-sigma limits (a step
    per subgroup, so a single subgroup shows its limits too); points above the upper limit are red."""
    points = chart.points
    if not points:
        return empty(title, "p-chart", waiting)
    ymax = max(max(p.ucl for p in points), max(p.p for p in points), 0.01) * 1.1
    n = len(points)
    half = (W - PAD_L - PAD_R) / n / 2
    body = _axes(ymax, "{:.3f}")

    def steps(values: list[float]) -> str:
        return " ".join(
            f"{_x(i, n) - half:.1f},{_y(v, ymax):.1f} {_x(i, n) + half:.1f},{_y(v, ymax):.1f}"
            for i, v in enumerate(values)
        )

    body += [
        f'<polyline class="ucl" points="{steps([p.ucl for p in points])}" fill="none" stroke="{RED}" stroke-dasharray="4 3"/>',
        f'<polyline class="lcl" points="{steps([p.lcl for p in points])}" fill="none" stroke="{RED}" stroke-dasharray="4 3"/>',
        f'<line class="center" x1="{PAD_L}" x2="{W - PAD_R}" y1="{_y(chart.center, ymax):.1f}" '
        f'y2="{_y(chart.center, ymax):.1f}" stroke="{GREEN}"/>',
        f'<polyline points="{" ".join(f"{_x(i, n):.1f},{_y(p.p, ymax):.1f}" for i, p in enumerate(points))}" '
        f'fill="none" stroke="{BLUE}"/>',
    ]
    radius = 3.5 if n <= MARKERS_UP_TO else 2
    for i, p in enumerate(points):
        colour = RED if p.above_ucl else BLUE
        body.append(
            f'<circle class="point{" out" if p.above_ucl else ""}" cx="{_x(i, n):.1f}" cy="{_y(p.p, ymax):.1f}" '
            f'r="{radius}" fill="{colour}"><title>{escape(p.label)}: {p.defects}/{p.n} = {p.p:.3f} '
            f"(UCL {p.ucl:.3f})</title></circle>"
        )
    return _frame(title, body + _labels(short_labels([p.label for p in points])), "p-chart")


def pareto_svg(counts: dict[str, int], title: str, waiting: str = "no defective parts in the window") -> str:
    """Defect classes as bars, largest first, with the cumulative share as a line."""
    if not counts:
        return empty(title, "pareto", waiting)
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total, ymax, n = sum(counts.values()), max(counts.values()) * 1.1, len(items)
    body = _axes(ymax, "{:.0f}")
    width = (W - PAD_L - PAD_R) / n * 0.7
    cumulative, line = 0, []
    for i, (name, count) in enumerate(items):
        x, y = _x(i, n), _y(count, ymax)
        body.append(
            f'<rect class="bar" x="{x - width / 2:.1f}" y="{y:.1f}" width="{width:.1f}" '
            f'height="{H - PAD_B - y:.1f}" fill="{BLUE}"><title>{escape(name)}: {count}</title></rect>'
        )
        cumulative += count
        line.append(f"{x:.1f},{_y(cumulative / total * ymax, ymax):.1f}")
    body.append(f'<polyline class="cumulative" points="{" ".join(line)}" fill="none" stroke="{RED}"/>')
    return _frame(title, body + _labels([name for name, _ in items]), "pareto")


def bars_svg(values: dict[str, float], title: str, fmt: str = "{:.3f}", waiting: str = "no data yet") -> str:
    """Labelled horizontal-axis bars (e.g. false-reject and estimated escape rates)."""
    if not values:
        return empty(title, "bars", waiting)
    items = list(values.items())
    ymax, n = max(max(v for _, v in items), 1e-9) * 1.2, len(items)
    body = _axes(ymax, fmt)
    width = (W - PAD_L - PAD_R) / n * 0.5
    for i, (name, value) in enumerate(items):
        x, y = _x(i, n), _y(value, ymax)
        body += [
            f'<rect class="bar" x="{x - width / 2:.1f}" y="{y:.1f}" width="{width:.1f}" '
            f'height="{H - PAD_B - y:.1f}" fill="{BLUE}"><title>{escape(name)}: {fmt.format(value)}</title></rect>',
            f'<text x="{x:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle">{fmt.format(value)}</text>',
        ]
    return _frame(title, body + _labels([name for name, _ in items]), "bars")


def lines_svg(
    series: dict[str, list[tuple[str, float]]], title: str, fmt: str = "{:.0f}", waiting: str = "no data yet"
) -> str:
    """One line per series over shared x labels (e.g. parts per hour, p95 latency per hour);
    short series get a marker on every point, so a single hour is a visible dot."""
    labels = sorted({x for points in series.values() for x, _ in points})
    if not labels:
        return empty(title, "lines", waiting)
    index = {x: i for i, x in enumerate(labels)}
    ymax = max(v for points in series.values() for _, v in points) * 1.1 or 1.0
    body = _axes(ymax, fmt)
    colours = [BLUE, RED, GREEN, "#6a1b9a", "#ef6c00"]
    named = sorted(series.items())
    for k, (name, points) in enumerate(named):
        colour = colours[k % len(colours)]
        xy = [(_x(index[x], len(labels)), _y(v, ymax)) for x, v in sorted(points)]
        body.append(
            f'<polyline class="series" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in xy)}" '
            f'fill="none" stroke="{colour}"><title>{escape(name)}</title></polyline>'
        )
        if len(labels) <= MARKERS_UP_TO or len(xy) == 1:
            body += [
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in xy
            ]
    # A legend line per series while they fit; a plant's 20 stations are named in one line.
    if len(named) <= 8:
        body += [
            f'<text x="{W - PAD_R}" y="{PAD_T + 12 * (k + 1)}" font-size="10" text-anchor="end" '
            f'fill="{colours[k % len(colours)]}">{escape(name)}</text>'
            for k, (name, _) in enumerate(named)
        ]
    else:
        body.append(
            f'<text x="{W - PAD_R}" y="{PAD_T + 12}" font-size="10" text-anchor="end" fill="{GREY}">'
            f"{len(named)} stations (hover a line)</text>"
        )
    return _frame(title, body + _labels(short_labels(labels)), "lines")


def _points(values: list[float], ymax: float) -> str:
    """SVG points of a long series (a CUSUM per part, 500 a chart), computed with numpy: the
    dashboard draws 80 of them for 20 stations."""
    n = len(values)
    xs = PAD_L + (np.arange(n) + 0.5) * (W - PAD_L - PAD_R) / max(n, 1)
    ys = H - PAD_B - (np.asarray(values, float) / ymax if ymax else np.zeros(n)) * (H - PAD_T - PAD_B)
    return " ".join(map("{:.1f},{:.1f}".format, xs.tolist(), ys.tolist()))


def limit_svg(values: list[float], limit: float, title: str, waiting: str = "no data yet") -> str:
    """A statistic per part against its alarm limit (a drift CUSUM against h); points at or
    above the limit are red."""
    if not values:
        return empty(title, "limit", waiting)
    ymax = max(max(values), limit) * 1.1 or 1.0
    n = len(values)
    body = _axes(ymax, "{:.1f}")
    body += [
        f'<line class="limit" x1="{PAD_L}" x2="{W - PAD_R}" y1="{_y(limit, ymax):.1f}" '
        f'y2="{_y(limit, ymax):.1f}" stroke="{RED}" stroke-dasharray="4 3"/>',
        f'<polyline class="series" points="{_points(values, ymax)}" fill="none" stroke="{BLUE}"/>',
    ]
    body += [
        f'<circle class="point{" out" if v >= limit else ""}" cx="{_x(i, n):.1f}" cy="{_y(v, ymax):.1f}" '
        f'r="{2 if n > MARKERS_UP_TO else 3}" fill="{RED if v >= limit else BLUE}"/>'
        for i, v in enumerate(values)
        if v >= limit or n <= MARKERS_UP_TO
    ]
    return _frame(title, body, "limit")


def timeline_svg(
    spans: dict[str, list[tuple[str, str, str]]], title: str, waiting: str = "no data yet"
) -> str:
    """Model versions per station over time: one row per station, one segment per version
    (from its first to its last inspection)."""
    rows = sorted(spans)
    if not rows:
        return empty(title, "timeline", waiting)
    times = sorted({t for segs in spans.values() for _, a, b in segs for t in (a, b)})
    start, end = times[0], times[-1]
    tmin, tmax = _seconds(start), max(_seconds(end), _seconds(start) + 1)
    body: list[str] = []
    # Rows of at least 14 px: a plant's 20 stations make the chart taller, not the rows unreadable.
    height = max(H, int(PAD_T + PAD_B + 8 + 14 * len(rows)))
    row_h = min(28, (height - PAD_T - PAD_B - 8) / len(rows))
    colours = [BLUE, GREEN, RED, "#6a1b9a", "#ef6c00"]
    versions = sorted({v for segs in spans.values() for v, _, _ in segs})
    for r, station in enumerate(rows):
        y = PAD_T + 8 + r * row_h
        body.append(
            f'<text x="{PAD_L - 4}" y="{y + row_h / 2:.1f}" font-size="10" text-anchor="end">{escape(station)}</text>'
        )
        for version, a, b in spans[station]:
            x0 = PAD_L + (_seconds(a) - tmin) / (tmax - tmin) * (W - PAD_L - PAD_R)
            x1 = PAD_L + (_seconds(b) - tmin) / (tmax - tmin) * (W - PAD_L - PAD_R)
            colour = colours[versions.index(version) % len(colours)]
            body.append(
                f'<rect class="version" x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 3):.1f}" '
                f'height="{row_h * 0.7:.1f}" fill="{colour}"><title>{escape(station)}: v{escape(version)} '
                f"{escape(a)} - {escape(b)}</title></rect>"
                f'<text x="{x0 + 3:.1f}" y="{y + row_h * 0.5:.1f}" font-size="10" fill="white">v{escape(version)}</text>'
            )
    body += [
        f'<text x="{PAD_L}" y="{height - 8}" font-size="10">{escape(start[:16])}</text>',
        f'<text x="{W - PAD_R}" y="{height - 8}" font-size="10" text-anchor="end">{escape(end[:16])}</text>',
    ]
    return _frame(title, body, "timeline", height)


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
