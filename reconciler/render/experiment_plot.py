"""A forest plot of an A/B experiment's intervals as a standalone SVG 1.1 document.

One panel per metric, one row per comparison: a thick light bar for the anytime-valid interval,
a thin bar for the fixed-horizon interval and a dot for the estimate, against a zero line and
percent ticks. Pure and dependency-free: the same input gives the same bytes. Non-finite numbers
never reach the markup: they are clipped to the axis with an arrow, or the row says "no data".
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

Attr = tuple[str, str | float]  # an attribute: floats are written with at most two decimals
SVG_NS = "http://www.w3.org/2000/svg"
TONES = {"good": "#1a7f37", "bad": "#cf222e", "neutral": "#57606a"}
LIGHT = {"good": "#aceebb", "bad": "#ffcecb", "neutral": "#d0d7de"}
INK, MUTED, GRID = "#24292f", "#57606a", "#eaeef2"

WIDTH = 800
LABEL_X, PLOT_LEFT, PLOT_RIGHT, ESTIMATE_X, VERDICT_X = 16, 220, 580, 592, 660
LABEL_CHARS, VERDICT_CHARS = 30, 20
TOP = 72  # below the title and subtitle
HEADER, ROW, AXIS, GAP = 32, 26, 40, 14
MAX_EXTENT = 10.0  # the axis never goes past +-1000%; values beyond it are clipped
MIN_SPAN, PAD = 0.02, 0.08
PLOT_MIDDLE = (PLOT_LEFT + PLOT_RIGHT) / 2
HINTS = {
    "increase": (PLOT_RIGHT, "end", "better \u2192"),
    "decrease": (PLOT_LEFT, "start", "\u2190 better"),
}
DASH = ("stroke-dasharray", "4 3")
LEGEND = (
    "thin: {level}confidence interval \u00b7 "
    "thick: anytime-valid interval (what auto-conclusion uses)"
)


@dataclass(frozen=True)
class IntervalRow:
    label: str
    estimate: float
    ci: tuple[float, float]
    anytime: tuple[float, float] | None
    verdict: str
    tone: str


@dataclass(frozen=True)
class MetricPanel:
    metric: str
    role: str
    direction: str
    rows: tuple[IntervalRow, ...]
    limit: float | None = None


@dataclass(frozen=True)
class _Axis:
    lo: float
    hi: float
    step: float

    def x(self, value: float) -> float:
        share = (value - self.lo) / (self.hi - self.lo)
        return PLOT_LEFT + share * (PLOT_RIGHT - PLOT_LEFT)

    def ticks(self) -> tuple[float, ...]:
        first, last = round(self.lo / self.step), round(self.hi / self.step)
        return tuple(round(k * self.step, 12) for k in range(first, last + 1))

    def place(self, value: float) -> tuple[float, int]:
        """The x of ``value`` and -1/0/+1 when it was clipped at the left/not/right end."""
        if value < self.lo:
            return self.x(self.lo), -1
        if value > self.hi:
            return self.x(self.hi), 1
        return self.x(value), 0


EMPTY_AXIS = _Axis(-0.1, 0.1, 0.05)


def _finite(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _nice_step(span: float) -> float:
    raw = span / 5
    base = 10.0 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw * (1 - 1e-9))


def _axis(panel: MetricPanel) -> _Axis:
    values = [0.0, *_finite([panel.limit])]
    for row in panel.rows:
        values += _finite([row.estimate, *row.ci, *(row.anytime or ())])
    if len(values) == 1:  # nothing to show but zero
        return EMPTY_AXIS
    clamped = [min(max(v, -MAX_EXTENT), MAX_EXTENT) for v in values]
    lo, hi = min(clamped), max(clamped)
    if hi - lo < MIN_SPAN:
        middle = (lo + hi) / 2
        lo, hi = middle - MIN_SPAN / 2, middle + MIN_SPAN / 2
    pad = (hi - lo) * PAD
    lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo)
    return _Axis(math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step, step)


def _num(value: float) -> str:
    """A coordinate with at most two decimals; a non-finite one (never expected) becomes 0."""
    if not math.isfinite(value):
        return "0"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _pct(value: float, decimals: int = 2, *, trim: bool = True) -> str:
    """``-10%``, ``0%``, ``+2.5%``; ``n/a`` for NaN, ``>+1000%`` past the axis' reach."""
    if math.isnan(value):
        return "n/a"
    if abs(value) > MAX_EXTENT:
        return f"{'>+' if value > 0 else '<-'}{MAX_EXTENT:.0%}"
    text = f"{abs(value) * 100:.{decimals}f}"
    text = text.rstrip("0").rstrip(".") if trim else text
    if not text.strip("0."):
        return "0%"
    return f"{'+' if value > 0 else '-'}{text}%"


def _clean(text: str, limit: int | None = None) -> str:
    """``text`` without control, surrogate or non-XML characters, cut to ``limit`` characters."""
    text = "".join(
        " " if ch in "\t\n\r" else ch
        for ch in text
        if ch in "\t\n\r"
        or (unicodedata.category(ch) not in ("Cc", "Cs") and ch not in "\ufffe\uffff")
    )
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "\u2026"
    return text


def _el(tag: str, attrs: Sequence[Attr], text: str | None = None, markup: str = "") -> str:
    """An element; ``text`` is escaped, ``markup`` (already built elements) goes in first."""
    parts = "".join(
        f" {name}={quoteattr(_num(value) if isinstance(value, float | int) else value)}"
        for name, value in attrs
    )
    if text is None and not markup:
        return f"<{tag}{parts}/>"
    return f"<{tag}{parts}>{markup}{escape(text or '')}</{tag}>"


def _line(cls: str, x1: float, y1: float, x2: float, y2: float, *style: Attr) -> str:
    attrs: list[Attr] = [("class", cls), ("x1", x1), ("y1", y1)]
    return _el("line", [*attrs, ("x2", x2), ("y2", y2), *style])


def _text(x: float, y: float, text: str, *attrs: Attr, cls: str = "", full: str = "") -> str:
    """A text element; when ``text`` was cut short of ``full`` the whole is its tooltip."""
    base: list[Attr] = [("class", cls)] if cls else []
    tooltip = _el("title", [], full) if full and full != text else ""
    return _el("text", [*base, ("x", x), ("y", y), *attrs], text, tooltip)


def _arrow(cls: str, x: float, y: float, side: int, colour: str) -> str:
    """A small triangle at the axis end, pointing out of the plot."""
    tip, back = x + 6 * side, x
    points = f"{_num(back)},{_num(y - 5)} {_num(tip)},{_num(y)} {_num(back)},{_num(y + 5)}"
    return _el("polygon", [("class", cls), ("points", points), ("fill", colour)])


def _interval(pair: tuple[float, float] | None) -> tuple[float, float] | None:
    if pair is None or any(math.isnan(v) for v in pair):
        return None
    return min(pair), max(pair)


def _bar(cls: str, axis: _Axis, pair: tuple[float, float], y: float, *style: Attr) -> str:
    (x1, _), (x2, _) = axis.place(pair[0]), axis.place(pair[1])
    return _line(cls, x1, y, x2, y, *style)


def _no_data(y: float) -> list[str]:
    """The words "no data" across the plot, on a white patch that hides the zero line."""
    patch: list[Attr] = [("x", PLOT_MIDDLE - 32), ("y", y - 8), ("width", "64"), ("height", "16")]
    return [
        _el("rect", [*patch, ("fill", "#fff")]),
        _text(
            PLOT_MIDDLE, y + 4, "no data", ("text-anchor", "middle"), ("fill", MUTED), cls="no-data"
        ),
    ]


def _row(axis: _Axis, row: IntervalRow, y: float) -> list[str]:
    tone = row.tone if row.tone in TONES else "neutral"
    colour, light = TONES[tone], LIGHT[tone]
    label = _clean(row.label)
    out = ['<g class="row">', _text(LABEL_X, y + 4, _clean(label, LABEL_CHARS), full=label)]
    anytime, ci = _interval(row.anytime), _interval(row.ci)
    if anytime is None and ci is None and math.isnan(row.estimate):
        out += _no_data(y)
    bars = [("anytime", anytime, light, "10"), ("ci", ci, colour, "2.5")]
    clipped: set[int] = set()
    for cls, pair, stroke, width in bars:
        if pair is not None:
            out.append(_bar(cls, axis, pair, y, ("stroke", stroke), ("stroke-width", width)))
            clipped |= {side for _, side in map(axis.place, pair) if side}
    out += [
        _arrow("clipped", axis.x(axis.hi if side > 0 else axis.lo), y, side, colour)
        for side in sorted(clipped)
    ]
    if not math.isnan(row.estimate):
        x, side = axis.place(row.estimate)
        dot: list[Attr] = [("class", "estimate"), ("cx", x), ("cy", y), ("r", "4.5")]
        circle = _el("circle", [*dot, ("fill", colour), ("stroke", "#fff")])
        out.append(_arrow("estimate-clipped", x, y, side, colour) if side else circle)
    out.append(_text(ESTIMATE_X, y + 4, _pct(row.estimate, 1, trim=False), cls="value"))
    verdict = _clean(row.verdict)
    short = _clean(verdict, VERDICT_CHARS)
    out.append(_text(VERDICT_X, y + 4, short, ("fill", colour), cls="verdict", full=verdict))
    return [*out, "</g>"]


def _heading(panel: MetricPanel, top: float) -> str:
    """The metric in bold, then its role."""
    markup = _el("tspan", [("font-weight", "bold")], _clean(panel.metric, 60))
    if role := _clean(panel.role, 20):
        markup += _el("tspan", [("dx", "6"), ("fill", MUTED)], f"\u00b7 {role}")
    return _el("text", [("class", "metric"), ("x", LABEL_X), ("y", top + 16)], "", markup)


def _scale(panel: MetricPanel, axis: _Axis, rows_top: float, rows_bottom: float) -> list[str]:
    """Grid, ticks, zero line, the guardrail's limit and the "better" hint."""
    out = []
    middle, muted = ("text-anchor", "middle"), ("fill", MUTED)
    for tick in axis.ticks():
        x = axis.x(tick)
        out.append(_line("grid", x, rows_top, x, rows_bottom, ("stroke", GRID)))
        out.append(_line("tick", x, rows_bottom, x, rows_bottom + 4, ("stroke", MUTED)))
        out.append(_text(x, rows_bottom + 16, _pct(tick), middle, muted, cls="tick"))
    out.append(_line("axis", PLOT_LEFT, rows_bottom, PLOT_RIGHT, rows_bottom, ("stroke", MUTED)))
    zero = axis.x(0.0)
    out.append(
        _line("zero", zero, rows_top, zero, rows_bottom, ("stroke", INK), ("stroke-width", "1.5"))
    )
    if panel.limit is not None and math.isfinite(panel.limit):
        x, _ = axis.place(panel.limit)
        red = ("stroke", TONES["bad"])
        out.append(_line("limit", x, rows_top, x, rows_bottom, red, ("stroke-width", "1.5"), DASH))
        label = f"limit {_pct(panel.limit)}"
        out.append(_text(x, rows_top - 3, label, middle, ("fill", TONES["bad"]), cls="limit-label"))
    if panel.direction in HINTS:
        x, anchor, hint = HINTS[panel.direction]
        out.append(
            _text(x, rows_bottom + 32, hint, ("text-anchor", anchor), muted, cls="direction")
        )
    return out


def _panel(panel: MetricPanel, top: float) -> tuple[list[str], float]:
    """The panel's markup and the y where the next one starts."""
    axis = _axis(panel)
    rows_top = top + HEADER
    rows_bottom = rows_top + ROW * max(len(panel.rows), 1)
    out = ['<g class="panel">', _heading(panel, top), *_scale(panel, axis, rows_top, rows_bottom)]
    if not panel.rows:
        out += _no_data(rows_top + ROW / 2)
    for index, row in enumerate(panel.rows):
        out += _row(axis, row, rows_top + ROW * index + ROW / 2)
    return [*out, "</g>"], rows_bottom + AXIS + GAP


def _level(level: float) -> str:
    if not (math.isfinite(level) and 0 < level < 1):
        return ""
    return f"{level:.0%} " if round(level * 100, 6).is_integer() else f"{level:.1%} "


def _legend(panels: Sequence[MetricPanel], level: float, y: float) -> tuple[list[str], float]:
    """What the bars mean (and the dashed line, when one is drawn); the y below it."""
    grey, light = ("stroke", TONES["neutral"]), ("stroke", LIGHT["neutral"])
    out = [
        _line("legend-anytime", LABEL_X, y, LABEL_X + 36, y, light, ("stroke-width", "10")),
        _line("legend-ci", LABEL_X + 6, y, LABEL_X + 30, y, grey, ("stroke-width", "2.5")),
        _el("circle", [("cx", LABEL_X + 18), ("cy", y), ("r", "4.5"), ("fill", TONES["neutral"])]),
        _text(
            LABEL_X + 46, y + 4, LEGEND.format(level=_level(level)), ("fill", MUTED), cls="legend"
        ),
    ]
    if any(p.limit is not None and math.isfinite(p.limit) for p in panels):
        y += 20
        red = ("stroke", TONES["bad"])
        out.append(
            _line("legend-limit", LABEL_X, y, LABEL_X + 36, y, red, ("stroke-width", "1.5"), DASH)
        )
        out.append(
            _text(LABEL_X + 46, y + 4, "dashed: guardrail limit", ("fill", MUTED), cls="legend")
        )
    return out, y + 24


def render_svg(title: str, subtitle: str, panels: Sequence[MetricPanel], level: float) -> str:
    """The whole document, ASCII only (other characters as references), ending in a newline."""
    body = [
        _text(LABEL_X, 30, _clean(title, 90), ("font-size", "18"), ("font-weight", "bold")),
        _text(LABEL_X, 52, _clean(subtitle, 110), ("fill", MUTED), cls="subtitle"),
    ]
    top: float = TOP
    for panel in panels:
        lines, top = _panel(panel, top)
        body += lines
    legend, height = _legend(panels, level, top + 8)
    root: list[Attr] = [
        ("xmlns", SVG_NS),
        ("version", "1.1"),
        ("width", WIDTH),
        ("height", height),
        ("viewBox", f"0 0 {WIDTH} {_num(height)}"),
        ("font-family", "sans-serif"),
        ("font-size", "12"),
        ("fill", INK),
    ]
    background = _el("rect", [("width", "100%"), ("height", "100%"), ("fill", "#fff")])
    whole = _el("title", [], _clean(title))  # first, for screen readers and tooltips
    markup = "\n" + "\n".join([whole, background, *body, *legend]) + "\n"
    return (_el("svg", root, markup=markup) + "\n").encode("ascii", "xmlcharrefreplace").decode()
