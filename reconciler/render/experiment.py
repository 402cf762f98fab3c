"""An experiment's analysis for a terminal (a table), for a pull request (markdown), for
machines (JSON) and as a plot of the intervals (``experiment_plot``). All from one Analysis."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from reconciler.controllers.experiment_analysis import Analysis, MetricResult
from reconciler.render.experiment_plot import IntervalRow, MetricPanel, render_svg
from reconciler.runtime.experiment_state import OperatorAction

TONE = {"better": "good", "worse": "bad", "breached": "bad", "within limit": "good"}
DECISION = {
    "conclude": "CONCLUDE",
    "stop": "STOP (guardrail breached)",
    "continue": "keep running",
}


def _num(value: float, digits: int = 4, scale: float = 1.0) -> str:
    if not math.isfinite(value):
        return "n/a"
    if abs(value) < 1e-9 * max(abs(scale), 1e-300):
        value = 0.0  # rounding noise of a constant metric, not a difference
    return f"{value:.{digits}g}"


def _pct(value: float) -> str:
    return f"{value * 100:+.1f}%" if math.isfinite(value) else "n/a"


def _interval(pair: tuple[float, float], percent: bool = True, scale: float = 1.0) -> str:
    if percent:
        return f"[{_pct(pair[0])}, {_pct(pair[1])}]"
    return f"[{_num(pair[0], scale=scale)}, {_num(pair[1], scale=scale)}]"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return "<0.0001" if value < 0.0001 else f"{value:.4f}"


def headline(
    analysis: Analysis, verdict: Mapping[str, Any] | None, operator: OperatorAction | None = None
) -> list[str]:
    lines = [
        f"Experiment {analysis.experiment_id} ({analysis.status} in git), recorded as "
        f"{analysis.key}, since {analysis.since}: {analysis.days_running:.1f} days; "
        f"read {analysis.read_at}",
        "Unit of analysis: the user. Means are per recorded value; intervals at "
        f"{analysis.level:.0%} confidence; decisions use the anytime-valid interval.",
    ]
    users = ", ".join(
        f"{v}{' (control)' if v == analysis.control else ''} {analysis.users.get(v, 0):,} users "
        f"/ {analysis.exposures.get(v, 0):,} exposures"
        for v in analysis.variants
    )
    lines.append(f"Variants: {users}")
    srm = analysis.srm
    if not sum(analysis.users.values()):
        lines.append("Sample ratio: n/a (no users recorded yet)")
    else:
        status = "MISMATCH" if srm.mismatch else "ok"
        lines.append(f"Sample ratio: {status} (chi-square {srm.chi2:.2f}, p = {_p(srm.p_value)})")
    if operator is not None and operator.stopped:
        lines.append(
            f"Operator stop: STOPPED by {operator.by} at {operator.at} ({operator.reason}): "
            f"serving {analysis.control} to everyone until `controller experiment-resume "
            f"{analysis.experiment_id}`"
        )
    elif verdict and verdict.get("state") in ("concluded", "stopped"):
        who = verdict.get("winner") or analysis.control
        lines.append(
            f"Analyser verdict: {str(verdict['state']).upper()} since {verdict.get('since')}: "
            f"serving {who} to everyone ({verdict.get('reason', '')})"
        )
    return lines


def _row(result: MetricResult) -> list[str]:
    c = result.comparison
    return [
        result.metric.name,
        result.metric.role,
        result.variant,
        _num(result.control_mean),
        _num(result.mean),
        _num(c.difference, scale=result.control_mean),
        _interval(c.ci, percent=False, scale=result.control_mean),
        _pct(c.relative),
        _interval(c.relative_ci),
        _interval(result.anytime_relative),
        _p(c.p_value),
        _p(result.p_adjusted),
        result.verdict,
    ]


HEADER = [
    "metric",
    "role",
    "variant",
    "control mean",
    "mean",
    "difference",
    "interval",
    "relative",
    "relative interval",
    "anytime-valid",
    "p",
    "p (Holm)",
    "verdict",
]


def render_text(
    analysis: Analysis,
    verdict: Mapping[str, Any] | None = None,
    operator: OperatorAction | None = None,
) -> Iterator[str]:
    yield from headline(analysis, verdict, operator)
    yield ""
    rows = [HEADER, *(_row(r) for r in analysis.results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    for row in rows:
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
    yield ""
    yield from _decision_lines(analysis, verdict, operator)


def _decision_lines(
    analysis: Analysis, verdict: Mapping[str, Any] | None, operator: OperatorAction | None
) -> Iterator[str]:
    if operator is not None and operator.stopped:
        yield (
            "Stopped by an operator: the analyser decides nothing until "
            f"`controller experiment-resume {analysis.experiment_id}`"
        )
        return
    if verdict and verdict.get("state") in ("concluded", "stopped"):
        winner = verdict.get("winner")
        if winner:
            yield (
                f"Make it permanent in git: experiments.d/{analysis.experiment_id}.yaml "
                f"status: concluded, winner: {winner}"
            )
        else:
            yield (
                f"Make it permanent in git: experiments.d/{analysis.experiment_id}.yaml "
                f"status: concluded, winner: {analysis.control}"
            )
        return
    yield f"Decision now: {DECISION[analysis.decision]}" + (
        f": {analysis.winner} ({analysis.why})" if analysis.winner else ""
    )
    if analysis.why and not analysis.winner:
        yield f"Evidence so far: {analysis.why}"
    for waiting in analysis.waiting_for:
        yield f"  waiting for {waiting}"


def render_markdown(
    analysis: Analysis,
    verdict: Mapping[str, Any] | None = None,
    operator: OperatorAction | None = None,
) -> str:
    lines = [f"### Experiment `{analysis.experiment_id}`", ""]
    lines += [f"{line}  " for line in headline(analysis, verdict, operator)]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for result in analysis.results:
        cells = [cell.replace("|", "\\|") for cell in _row(result)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {line.strip()}" for line in _decision_lines(analysis, verdict, operator)]
    return "\n".join(lines) + "\n"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def as_json(
    analysis: Analysis,
    verdict: Mapping[str, Any] | None = None,
    operator: OperatorAction | None = None,
) -> dict[str, Any]:
    srm = analysis.srm
    stop = operator if operator is not None and operator.stopped else None
    return {
        "format_version": 1,
        "experiment_id": analysis.experiment_id,
        "recording_key": analysis.key,
        "status": analysis.status,
        "control": analysis.control,
        "since": analysis.since,
        "days_running": round(analysis.days_running, 3),
        "read_at": analysis.read_at,
        "confidence_level": analysis.level,
        "unit_of_analysis": "user",
        "users": dict(analysis.users),
        "exposures": dict(analysis.exposures),
        "sample_ratio": {
            "chi2": srm.chi2,
            "p_value": srm.p_value,
            "mismatch": srm.mismatch,
            "expected": dict(srm.expected),
        },
        "metrics": [
            {
                "metric": r.metric.name,
                "role": r.metric.role,
                "type": r.metric.metric_type,
                "direction": r.metric.direction,
                "variant": r.variant,
                "control_mean": _finite(r.control_mean),
                "mean": _finite(r.mean),
                "observations": r.observations,
                "control_observations": r.control_observations,
                "difference": _finite(r.comparison.difference),
                "ci": [_finite(v) for v in r.comparison.ci],
                "relative": _finite(r.comparison.relative),
                "relative_ci": [_finite(v) for v in r.comparison.relative_ci],
                "anytime_ci": [_finite(v) for v in r.anytime],
                "anytime_relative_ci": [_finite(v) for v in r.anytime_relative],
                "p_value": _finite(r.comparison.p_value),
                "p_holm": _finite(r.p_adjusted),
                "anytime_p_value": _finite(r.anytime_p),
                "degrees_of_freedom": _finite(r.comparison.df),
                "tolerance": _finite(r.metric.limit) if r.metric.limit is not None else None,
                "verdict": r.verdict,
            }
            for r in analysis.results
        ],
        "decision": analysis.decision,
        "winner": analysis.winner,
        "why": analysis.why,
        "waiting_for": list(analysis.waiting_for),
        "verdict": dict(verdict) if verdict else None,
        "operator_stop": (
            {"by": stop.by, "reason": stop.reason, "at": stop.at} if stop is not None else None
        ),
    }


def render_plot(analysis: Analysis) -> str:
    """The relative difference of every variant, per metric, as SVG."""
    panels = []
    by_metric: dict[str, list[MetricResult]] = {}
    for result in analysis.results:
        by_metric.setdefault(result.metric.name, []).append(result)
    for name, results in by_metric.items():
        spec = results[0].metric
        rows = tuple(
            IntervalRow(
                label=f"{r.variant} vs {analysis.control}",
                estimate=r.comparison.relative,
                ci=r.comparison.relative_ci,
                anytime=r.anytime_relative,
                verdict=r.verdict,
                tone=TONE.get(r.verdict, "neutral"),
            )
            for r in results
        )
        panels.append(MetricPanel(name, spec.role, spec.direction, rows, spec.limit))
    subtitle = (
        f"{analysis.days_running:.1f} days, "
        + ", ".join(f"{v} {analysis.users.get(v, 0):,} users" for v in analysis.variants)
        + f"; decision: {DECISION[analysis.decision]}"
    )
    return render_svg(f"Experiment {analysis.experiment_id}", subtitle, panels, analysis.level)
