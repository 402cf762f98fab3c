"""Charts as SVG, drawn on the server from the cost report's figures (pure; no script).

Amounts stay integer micro-dollars: a bar's length is an integer fraction of the chart's
width, and the labels are the report's exact dollars.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from reconciler.runtime.budgets import format_usd

WIDTH = 560  # pixels of the scale
LABEL = 160  # pixels left of it for the names


def _x(micros: int, top: int) -> int:
    return LABEL + (WIDTH * max(0, micros)) // max(1, top)


def spend_bars(
    rows: Sequence[tuple[str, int]], lines: Sequence[tuple[str, int]], title: str
) -> str:
    """One bar per (name, micros), against vertical lines at each (limit name, micros)."""
    top = max([*(m for _, m in rows), *(m for _, m in lines), 1]) * 11 // 10
    height = 24 * len(rows) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{LABEL + WIDTH + 90}" '
        f'height="{height}" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for index, (name, micros) in enumerate(rows):
        y = 20 + 24 * index
        parts.append(
            f'<text x="0" y="{y + 13}" font-size="12">{escape(name)}</text>'
            f'<rect class="bar" data-name="{escape(name)}" x="{LABEL}" y="{y}" '
            f'width="{_x(micros, top) - LABEL}" height="16"/>'
            f'<text x="{_x(micros, top) + 4}" y="{y + 13}" font-size="12">'
            f"{escape(format_usd(micros))}</text>"
        )
    for name, micros in lines:
        x = _x(micros, top)
        parts.append(
            f'<line class="limit" x1="{x}" x2="{x}" y1="12" y2="{height - 8}" stroke="#c00" '
            f'stroke-dasharray="4 3"/><text x="{x + 3}" y="11" font-size="11" fill="#c00">'
            f"{escape(name)} {escape(format_usd(micros))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def spend_line(days: Sequence[tuple[str, int]], title: str) -> str:
    """Spend per day (date, micros), oldest first, as a line with its points."""
    if not days:
        return ""
    top = max([m for _, m in days] + [1]) * 11 // 10
    step = WIDTH // max(1, len(days) - 1)
    points = [(LABEL + step * i, 110 - (100 * m) // top) for i, (_, m) in enumerate(days)]
    path = " ".join(f"{x},{y}" for x, y in points)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{LABEL + WIDTH + 90}" '
        f'height="140" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<polyline fill="none" stroke="#36c" stroke-width="2" points="{path}"/>'
    ]
    for (x, y), (day, micros) in zip(points, days, strict=True):
        parts.append(
            f'<circle class="day" data-day="{escape(day)}" cx="{x}" cy="{y}" r="3" fill="#36c"/>'
            f'<text x="{x - 20}" y="132" font-size="10">{escape(day[5:])}</text>'
            f'<text x="{x - 20}" y="{y - 6}" font-size="10">{escape(format_usd(micros))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def share_over_time(points: Sequence[tuple[str, float]], title: str) -> str:
    """A rollout's share (time, percentage), oldest first, as steps on a 0-100% scale: each
    share holds until the next point."""
    if not points:
        return ""
    step = WIDTH // max(1, len(points))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{LABEL + WIDTH + 90}" '
        f'height="145" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<line x1="{LABEL}" x2="{LABEL + WIDTH}" y1="110" y2="110" stroke="#999"/>'
    ]
    for index, (moment, percentage) in enumerate(points):
        x, y = LABEL + step * index, 110 - int(percentage)
        parts.append(
            f'<rect class="share" data-at="{escape(moment)}" data-percentage="{percentage:g}" '
            f'x="{x}" y="{y}" width="{step - 2}" height="{110 - y}" fill="#36c" opacity="0.7"/>'
            f'<text x="{x}" y="{y - 4}" font-size="10">{percentage:g}%</text>'
            f'<text x="{x}" y="124" font-size="9">{escape(moment[:10])}</text>'  # the day
            f'<text x="{x}" y="135" font-size="9">{escape(moment[11:16])}</text>'  # UTC time
        )
    parts.append("</svg>")
    return "".join(parts)
