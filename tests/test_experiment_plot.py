"""The experiment forest plot: a standalone SVG that parses, puts every mark where the numbers say,
escapes all text and never lets a non-finite number into the markup."""

from __future__ import annotations

import itertools
import math
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.render.experiment_plot import IntervalRow, MetricPanel, render_svg

NS = "{http://www.w3.org/2000/svg}"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
TICK = re.compile(r"^(?:0|[+-]\d+(?:\.\d{1,2})?)%$")
LEGEND = (
    "thin: 95% confidence interval \u00b7 thick: anytime-valid interval (what auto-conclusion uses)"
)

BETTER = IntervalRow("gemini vs claude", 0.052, (0.018, 0.086), (-0.004, 0.108), "better", "good")
FLAT = IntervalRow("gpt vs claude", -0.011, (-0.046, 0.024), (-0.071, 0.049), "inconclusive", "")
SLOWER = IntervalRow(
    "gemini vs claude", 0.24, (0.17, 0.31), (0.12, 0.37), "guardrail breached", "bad"
)


def quality(*rows: IntervalRow) -> MetricPanel:
    return MetricPanel("response_quality", "primary", "increase", rows or (BETTER, FLAT))


def latency(*rows: IntervalRow, limit: float | None = 0.20) -> MetricPanel:
    return MetricPanel("p95_latency_ms", "guardrail", "decrease", rows or (SLOWER,), limit)


def render(*panels: MetricPanel, level: float = 0.95) -> str:
    return render_svg("assistant-model", "gemini, gpt vs claude", panels or (quality(),), level)


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def of_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [el for el in root.iter() if el.get("class") == cls]


def text_of(el: ET.Element) -> str:
    return "".join(el.itertext())


def scale(panel: ET.Element) -> dict[float, float]:
    """The panel's ticks: value (a fraction) -> x."""
    ticks = [el for el in of_class(panel, "tick") if el.tag == f"{NS}text"]
    return {float(text_of(el).rstrip("%")) / 100: float(el.get("x", "")) for el in ticks}


def x_of(panel: ET.Element, value: float) -> float:
    """Where ``value`` lies on the panel's axis, from two of its ticks."""
    (v1, x1), (v2, x2) = sorted(scale(panel).items())[:2]
    return x1 + (value - v1) * (x2 - x1) / (v2 - v1)


def line_ends(el: ET.Element) -> tuple[float, float]:
    return float(el.get("x1", "")), float(el.get("x2", ""))


def attribute_values(root: ET.Element) -> list[str]:
    return [value for el in root.iter() for value in el.attrib.values()]


def test_a_standalone_svg_document() -> None:
    svg = render(quality(), latency())
    root = parse(svg)
    assert root.tag == f"{NS}svg"
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" version="1.1" ')
    assert svg.endswith("</svg>\n")
    assert svg.isascii()  # other characters as references, whatever encoding the file is saved in
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    assert root.get("font-family") == "sans-serif"
    assert root[0].tag == f"{NS}title"
    assert root[0].text == "assistant-model"
    assert len(of_class(root, "panel")) == 2


def test_the_dot_sits_inside_its_interval_right_of_zero_for_a_gain() -> None:
    panel = of_class(parse(render()), "panel")[0]
    row = of_class(panel, "row")[0]
    (dot,) = of_class(row, "estimate")
    (ci,) = of_class(row, "ci")
    (anytime,) = of_class(row, "anytime")
    (zero,) = of_class(panel, "zero")
    x = float(dot.get("cx", ""))
    low, high = line_ends(ci)
    assert low < x < high
    assert line_ends(anytime)[0] < low
    assert high < line_ends(anytime)[1]
    assert x > float(zero.get("x1", ""))
    assert x == pytest.approx(x_of(panel, BETTER.estimate), abs=0.02)
    assert low == pytest.approx(x_of(panel, BETTER.ci[0]), abs=0.02)


def test_a_loss_sits_left_of_zero() -> None:
    panel = of_class(parse(render()), "panel")[0]
    (dot,) = of_class(of_class(panel, "row")[1], "estimate")
    (zero,) = of_class(panel, "zero")
    assert float(dot.get("cx", "")) < float(zero.get("x1", ""))


def test_every_panel_has_a_zero_line_at_the_zero_tick() -> None:
    root = parse(render(quality(), latency()))
    for panel in of_class(root, "panel"):
        (zero,) = of_class(panel, "zero")
        assert zero.get("x1") == zero.get("x2")
        assert float(zero.get("x1", "")) == pytest.approx(scale(panel)[0.0])


@pytest.mark.parametrize(
    "rows",
    [
        (BETTER, FLAT),
        (SLOWER,),
        (IntervalRow("a", 0.001, (0.0005, 0.0015), None, "better", "good"),),
        (IntervalRow("a", -0.4, (-0.7, -0.1), (-0.95, 0.2), "worse", "bad"),),
        (IntervalRow("a", 3.0, (1.5, 4.5), (0.5, 6.0), "better", "good"),),
        (IntervalRow("a", 0.0, (0.0, 0.0), (0.0, 0.0), "inconclusive", "neutral"),),
    ],
)
def test_ticks_are_round_percent_steps_covering_every_interval_and_zero(
    rows: tuple[IntervalRow, ...],
) -> None:
    panel = of_class(parse(render(quality(*rows))), "panel")[0]
    labels = [text_of(el) for el in of_class(panel, "tick") if el.tag == f"{NS}text"]
    assert all(TICK.match(label) for label in labels), labels
    assert "0%" in labels
    values = sorted(scale(panel))
    steps = {round(b - a, 9) for a, b in itertools.pairwise(values)}
    assert len(steps) == 1
    (step,) = steps
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 5)
    assert 3 <= len(values) <= 12
    ends = [v for row in rows for v in (*row.ci, *(row.anytime or ()), row.estimate)]
    assert values[0] <= min(ends)
    assert max(ends) <= values[-1]
    xs = [float(x) for x in scale(panel).values()]
    assert min(xs) == 220
    assert max(xs) == 580


def test_text_is_escaped_and_renders_as_text() -> None:
    nasty = '<script>alert("x")</script> & co'
    row = IntervalRow(nasty, 0.05, (0.01, 0.09), None, f"better {nasty}", "good")
    panel = MetricPanel(nasty, f"<b>{nasty}", "increase", (row,))
    svg = render_svg(nasty, nasty, [panel], 0.95)
    root = parse(svg)
    assert "<script" not in svg
    assert "&lt;script&gt;" in svg
    assert not [el for el in root.iter() if "script" in el.tag]
    texts = [text_of(el) for el in root.iter(f"{NS}text")]
    assert texts[0] == nasty
    assert nasty in texts[1]
    assert any(nasty in text for text in texts[2:])
    assert root[0].text == nasty


def test_control_characters_are_stripped() -> None:
    label = "gem\x00ini\x1b vs\x07 clau\x7fde\x85\ud800\ufffe\tnew\nline"
    row = IntervalRow(label, 0.05, (0.01, 0.09), None, "better\x0c", "good")
    root = parse(render(quality(row)))
    (row_el,) = of_class(root, "row")
    assert text_of(row_el[0]) == "gemini vs claude new line"
    assert text_of(of_class(root, "verdict")[0]) == "better"


def test_a_long_label_is_cut_with_the_whole_as_a_tooltip() -> None:
    label = "gemini-2.5-pro-with-a-very-long-prompt-variant vs claude"
    root = parse(render(quality(IntervalRow(label, 0.05, (0.01, 0.09), None, "better", "good"))))
    text = of_class(root, "row")[0][0]
    (tooltip,) = text
    assert tooltip.tag == f"{NS}title"
    assert tooltip.text == label
    shown = tooltip.tail or ""
    assert len(shown) == 30
    assert shown == label[:29] + "\u2026"


NAN, INF = math.nan, math.inf
NON_FINITE = [
    IntervalRow("nan estimate", NAN, (0.01, 0.09), (-0.02, 0.12), "better", "good"),
    IntervalRow("nan interval", 0.05, (NAN, 0.09), (NAN, NAN), "better", "good"),
    IntervalRow("open interval", 0.05, (-INF, INF), (-INF, INF), "inconclusive", "neutral"),
    IntervalRow("inf estimate", INF, (0.01, INF), None, "better", "good"),
    IntervalRow("-inf estimate", -INF, (-INF, -0.2), None, "worse", "bad"),
    IntervalRow("huge", 1e300, (-1e300, 1e308), (-1e308, 1e308), "inconclusive", "neutral"),
    IntervalRow("tiny", 1e-300, (-1e-300, 1e-300), None, "inconclusive", "neutral"),
    IntervalRow("reversed", 0.05, (0.09, 0.01), (0.12, -0.02), "better", "good"),
]


def assert_clean(svg: str) -> ET.Element:
    root = parse(svg)
    for value in attribute_values(root):
        assert "nan" not in value.lower(), value
        assert "inf" not in value.lower(), value
        for number in NUMBER.findall(value):
            assert math.isfinite(float(number))
            assert len(number.partition(".")[2]) <= 2, value
    return root


@pytest.mark.parametrize("row", NON_FINITE, ids=lambda row: row.label)
def test_non_finite_numbers_never_reach_the_markup(row: IntervalRow) -> None:
    for limit in (None, 0.2, NAN, INF, -1e300):
        root = assert_clean(render(quality(row), latency(row, limit=limit), level=0.95))
        assert len(of_class(root, "row")) == 2


def test_every_non_finite_row_together() -> None:
    assert_clean(render(quality(*NON_FINITE), level=NAN))


def test_an_infinite_end_is_clipped_to_the_axis_with_an_arrow() -> None:
    row = IntervalRow("open", 0.03, (0.01, 0.06), (-INF, 0.09), "inconclusive", "neutral")
    panel = of_class(parse(render(quality(row))), "panel")[0]
    (anytime,) = of_class(panel, "anytime")
    assert line_ends(anytime)[0] == min(scale(panel).values())
    (arrow,) = of_class(panel, "clipped")
    points = [float(n) for n in NUMBER.findall(arrow.get("points", ""))]
    assert min(points[0::2]) < line_ends(anytime)[0]  # pointing off the left end
    assert min(scale(panel)) < 0  # the axis still reaches past zero, from the finite numbers


def test_an_infinite_estimate_is_an_arrow_not_a_dot() -> None:
    row = IntervalRow("inf", INF, (0.01, INF), None, "better", "good")
    root = parse(render(quality(row)))
    assert not of_class(root, "estimate")
    assert len(of_class(root, "estimate-clipped")) == 1
    assert text_of(of_class(root, "value")[0]) == ">+1000%"


def test_a_row_without_numbers_says_no_data() -> None:
    row = IntervalRow("gpt vs claude", NAN, (NAN, NAN), None, "no data yet", "neutral")
    root = parse(render(quality(BETTER, row)))
    (second,) = of_class(of_class(root, "row")[1], "no-data")
    assert text_of(second) == "no data"
    assert not of_class(of_class(root, "row")[1], "estimate")
    assert text_of(of_class(root, "value")[1]) == "n/a"


def test_a_panel_without_rows_says_no_data() -> None:
    empty = MetricPanel("cost_per_request", "guardrail", "decrease", ())
    root = parse(render(quality(), empty))
    panel = of_class(root, "panel")[1]
    assert [text_of(el) for el in of_class(panel, "no-data")] == ["no data"]
    assert of_class(panel, "zero")
    assert sorted(scale(panel)) == pytest.approx([-0.1, -0.05, 0, 0.05, 0.1])


def test_no_panels_still_render() -> None:
    root = parse(render_svg("nothing", "", [], 0.95))
    assert text_of(of_class(root, "legend")[0]) == LEGEND


def test_the_same_input_gives_the_same_bytes() -> None:
    first = render(quality(), latency(), quality(*NON_FINITE))
    again = render(quality(), latency(), quality(*NON_FINITE))
    assert first == again


def test_a_guardrail_limit_is_a_dashed_line_inside_the_axis() -> None:
    small = IntervalRow("gemini vs claude", 0.01, (-0.02, 0.04), (-0.05, 0.07), "ok", "good")
    root = parse(render(quality(), latency(small, limit=0.20)))
    quality_panel, latency_panel = of_class(root, "panel")
    assert not of_class(quality_panel, "limit")
    (line,) = of_class(latency_panel, "limit")
    assert line.get("stroke-dasharray")
    assert line.get("stroke") == "#cf222e"
    assert line_ends(line)[0] == pytest.approx(x_of(latency_panel, 0.20), abs=0.02)
    assert max(scale(latency_panel)) >= 0.20
    assert text_of(of_class(latency_panel, "limit-label")[0]) == "limit +20%"
    assert "dashed: guardrail limit" in [text_of(el) for el in of_class(root, "legend")]


def test_no_limit_no_dashed_legend() -> None:
    root = parse(render(quality(), latency(limit=None)))
    assert not of_class(root, "limit")
    assert [text_of(el) for el in of_class(root, "legend")] == [LEGEND]


@pytest.mark.parametrize(
    ("level", "shown"), [(0.95, "95%"), (0.9, "90%"), (0.975, "97.5%"), (NAN, ""), (2.0, "")]
)
def test_the_legend_names_the_level(level: float, shown: str) -> None:
    legend = text_of(of_class(parse(render(level=level)), "legend")[0])
    assert legend == LEGEND.replace("95% ", f"{shown} " if shown else "")


@pytest.mark.parametrize(
    ("tone", "colour"),
    [("good", "#1a7f37"), ("bad", "#cf222e"), ("neutral", "#57606a"), ("shiny", "#57606a")],
)
def test_the_tone_picks_an_accessible_colour(tone: str, colour: str) -> None:
    row = IntervalRow("a vs b", 0.05, (0.01, 0.09), (-0.01, 0.11), "verdict", tone)
    root = parse(render(quality(row)))
    assert of_class(root, "verdict")[0].get("fill") == colour
    assert of_class(root, "ci")[0].get("stroke") == colour
    assert of_class(root, "estimate")[0].get("fill") == colour


def test_the_better_hint_follows_the_direction() -> None:
    root = parse(render(quality(), latency()))
    hints = [text_of(el) for el in of_class(root, "direction")]
    assert hints == ["better \u2192", "\u2190 better"]
    assert "better \u2192" in render(quality()).replace("&#8594;", "\u2192")


def test_the_value_column_prints_the_estimate() -> None:
    root = parse(render(quality(), latency()))
    assert [text_of(el) for el in of_class(root, "value")] == ["+5.2%", "-1.1%", "+24.0%"]


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(max_size=40)
rows = st.builds(
    IntervalRow,
    label=texts,
    estimate=finite_or_not,
    ci=st.tuples(finite_or_not, finite_or_not),
    anytime=st.none() | st.tuples(finite_or_not, finite_or_not),
    verdict=texts,
    tone=st.sampled_from(["good", "bad", "neutral", "other"]),
)
panels = st.builds(
    MetricPanel,
    metric=texts,
    role=texts,
    direction=st.sampled_from(["increase", "decrease", "sideways"]),
    rows=st.lists(rows, max_size=4).map(tuple),
    limit=st.none() | finite_or_not,
)


@settings(max_examples=150, deadline=None)
@given(title=texts, panels=st.lists(panels, max_size=3), level=finite_or_not)
def test_any_input_renders_a_clean_document(
    title: str, panels: list[MetricPanel], level: float
) -> None:
    svg = render_svg(title, title, panels, level)
    root = assert_clean(svg)
    assert len(of_class(root, "panel")) == len(panels)
    assert svg == render_svg(title, title, panels, level)
