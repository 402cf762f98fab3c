"""An experiment's analysis: a pure function of its manifest, its recorded data and the time.

The unit of analysis is the user (assignment is by user). Per-request metrics (numeric, binary)
are the mean over recorded values, with their uncertainty computed over clusters of users by
the delta method, so that a user's correlated requests count once; count metrics are values per
exposed user. Each variant is compared with the control: Welch's t-test with Welch-Satterthwaite
degrees of freedom (binary metrics: the two-proportion z-test's large-sample form), the
relative lift with its delta-method interval, Holm-adjusted p-values when there are several
comparisons, and an anytime-valid confidence sequence (``reconciler.stats.sequential``), the
only interval automatic decisions use, so that looking every few minutes does not inflate false
conclusions the way re-checking a fixed-horizon p-value does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from reconciler.controllers.experiment_data import ExperimentData, cluster_pairs
from reconciler.stats import (
    Comparison,
    SampleRatio,
    anytime_p_value,
    confidence_sequence,
    from_clusters,
    holm,
    sample_ratio,
    tuning,
    welch,
)

CONCLUDE = "conclude"
STOP = "stop"
CONTINUE = "continue"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    role: str  # primary | success | guardrail
    metric_type: str  # numeric | binary | count
    direction: str  # increase | decrease
    max_degradation: float | None = None  # a guardrail's tolerance, in percent

    @property
    def limit(self) -> float | None:
        """A guardrail's tolerance as a signed relative change: the wrong way, as a fraction."""
        if self.max_degradation is None:
            return None
        share = self.max_degradation / 100
        return share if self.direction == "decrease" else -share


@dataclass(frozen=True)
class MetricResult:
    """One metric of one variant against the control."""

    metric: MetricSpec
    variant: str
    control_mean: float
    mean: float
    observations: int
    control_observations: int
    comparison: Comparison
    anytime: tuple[float, float]  # the difference's anytime-valid interval
    anytime_relative: tuple[float, float]
    anytime_p: float
    p_adjusted: float = math.nan
    # better | worse | inconclusive | no data; for guardrails also breached | within limit
    verdict: str = "inconclusive"


@dataclass(frozen=True)
class Analysis:
    experiment_id: str
    key: str
    status: str  # the manifest's
    control: str
    variants: tuple[str, ...]
    level: float
    since: str
    days_running: float
    minimum_duration_days: int
    minimum_sample_size: int
    users: Mapping[str, int]
    exposures: Mapping[str, int]
    srm: SampleRatio
    results: tuple[MetricResult, ...]
    decision: str  # conclude | stop | continue
    winner: str | None
    why: str
    waiting_for: tuple[str, ...] = ()
    read_at: str = ""
    days: tuple[str, ...] = field(default=())

    def of(self, metric: str) -> list[MetricResult]:
        return [r for r in self.results if r.metric.name == metric]


def metric_specs(experiment: Mapping[str, Any]) -> list[MetricSpec]:
    specs = [
        MetricSpec(
            str(m["metric_name"]),
            "primary" if m.get("primary") else "success",
            str(m.get("metric_type", "numeric")),
            str(m.get("direction", "increase")),
        )
        for m in experiment.get("success_metrics") or []
    ]
    specs += [
        MetricSpec(
            str(m["metric_name"]),
            "guardrail",
            str(m.get("metric_type", "numeric")),
            str(m.get("direction", "decrease")),
            float(m["max_degradation"]),
        )
        for m in experiment.get("guardrail_metrics") or []
    ]
    return specs


def analyse(
    experiment: Mapping[str, Any], data: ExperimentData, *, since: datetime, now: datetime
) -> Analysis:
    """The analysis, and what the analyser should do about it."""
    variants = tuple(str(v["name"]) for v in experiment["variants"])
    weights = {str(v["name"]): float(v["weight"]) for v in experiment["variants"]}
    control = str(experiment.get("control") or variants[0])
    level = float(experiment.get("confidence_level", 0.95))
    treatments = [v for v in variants if v != control]
    # Automatic decisions hold their level over all treatments (Bonferroni on the sequence).
    decision_level = 1 - (1 - level) / max(1, len(treatments))
    minimum = int(experiment.get("minimum_sample_size", 1000))
    rho = tuning(minimum * 2, decision_level)
    users = {v: data.users_of(v) for v in variants}
    results = []
    for spec in metric_specs(experiment):
        for variant in treatments:
            results.append(
                _compare(
                    spec,
                    variant,
                    control,
                    data,
                    level=level,
                    decision_level=decision_level,
                    rho=rho,
                )
            )
    results = _adjusted(results)
    srm = sample_ratio(users, weights)
    end = parse_moment(experiment.get("end_time"))
    ended_at = end if end is not None and end <= now else None
    days = ((ended_at or now) - since).total_seconds() / 86400
    decision, winner, why, waiting = _decide(
        experiment,
        results,
        srm,
        users=users,
        days=days,
        ended_at=ended_at,
        control=control,
        treatments=treatments,
    )
    return Analysis(
        experiment_id=str(experiment["experiment_id"]),
        key=data.key,
        status=str(experiment.get("status", "draft")),
        control=control,
        variants=variants,
        level=level,
        since=since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        days_running=max(0.0, days),
        minimum_duration_days=int(experiment.get("minimum_duration_days", 7)),
        minimum_sample_size=minimum,
        users=users,
        exposures={v: data.exposures.get(v, 0) for v in variants},
        srm=srm,
        results=tuple(results),
        decision=decision,
        winner=winner,
        why=why,
        waiting_for=tuple(waiting),
        read_at=data.read_at,
        days=tuple(data.days),
    )


def _compare(
    spec: MetricSpec,
    variant: str,
    control: str,
    data: ExperimentData,
    *,
    level: float,
    decision_level: float,
    rho: float,
) -> MetricResult:
    per_user = spec.metric_type == "count"
    normal = spec.metric_type == "binary"
    treated = from_clusters(
        cluster_pairs(data, variant, spec.name, per_user=per_user), normal=normal
    )
    base = from_clusters(cluster_pairs(data, control, spec.name, per_user=per_user), normal=normal)
    comparison = welch(treated, base, level)
    se = math.sqrt(treated.se**2 + base.se**2) if _finite(treated.se, base.se) else math.nan
    units = data.users_of(variant) + data.users_of(control)
    difference = comparison.difference
    if units > 0 and math.isfinite(se) and se > 0:
        low, high = confidence_sequence(difference, se, units, decision_level, rho)
        p_any = anytime_p_value(difference, se, units, rho)
        rel_se = _relative_se(treated.mean, base.mean, treated.se, base.se)
        scale = (high - low) / 2 / se
        relative = (comparison.relative - scale * rel_se, comparison.relative + scale * rel_se)
    elif units > 0 and se == 0 and math.isfinite(difference):
        # Every value the same in each arm (a fixed price): the difference is known exactly.
        low = high = difference
        p_any = 1.0 if difference == 0 else 0.0
        relative = (comparison.relative, comparison.relative)
    else:
        low = high = p_any = math.nan
        relative = (math.nan, math.nan)
    count = data.metrics.get((variant, spec.name))
    control_count = data.metrics.get((control, spec.name))
    return MetricResult(
        metric=spec,
        variant=variant,
        control_mean=base.mean,
        mean=treated.mean,
        observations=count.totals.count if count else 0,
        control_observations=control_count.totals.count if control_count else 0,
        comparison=comparison,
        anytime=(low, high),
        anytime_relative=relative,
        anytime_p=p_any,
        verdict=_verdict(spec, (low, high), base.mean),
    )


def _relative_se(mean_t: float, mean_c: float, se_t: float, se_c: float) -> float:
    """The delta method's standard error of mean_t / mean_c (arms independent)."""
    if not mean_c or not _finite(mean_t, mean_c, se_t, se_c):
        return math.nan
    return math.sqrt(se_t**2 / mean_c**2 + mean_t**2 * se_c**2 / mean_c**4)


def _verdict(spec: MetricSpec, anytime: tuple[float, float], control_mean: float) -> str:
    """better, worse or inconclusive by the anytime-valid interval; for a guardrail, breached
    (confidently worse than its tolerance) or within limit (confidently inside it). The
    tolerance is applied to the difference as a share of the control's mean: a control at 0
    (no errors at all) tolerates no confident increase."""
    low, high = anytime
    if not _finite(low, high):
        return "no data"
    better_up = spec.direction == "increase"
    limit = spec.limit if spec.role == "guardrail" else None
    if limit is not None and math.isfinite(control_mean):
        allowed = abs(limit) * abs(control_mean)  # the worst tolerated difference, the bad way
        worse_by = (-high, -low) if better_up else (low, high)  # how much worse: (least, most)
        if worse_by[0] > allowed or (allowed == 0 and worse_by[0] > 0):
            return "breached"
        if worse_by[1] < allowed or (allowed == 0 and worse_by[1] <= 0):
            return "within limit"
    if low > 0:
        return "better" if better_up else "worse"
    if high < 0:
        return "worse" if better_up else "better"
    return "inconclusive"


def _adjusted(results: list[MetricResult]) -> list[MetricResult]:
    """Holm-adjusted fixed-horizon p-values over the decision metrics (success metrics, every
    treatment); guardrails keep their own."""
    deciding = [i for i, r in enumerate(results) if r.metric.role != "guardrail"]
    raw = [results[i].comparison.p_value for i in deciding]
    usable = [i for i, p in zip(deciding, raw, strict=True) if math.isfinite(p)]
    adjusted = holm([results[i].comparison.p_value for i in usable]) if usable else []
    out = list(results)
    for index, value in zip(usable, adjusted, strict=True):
        out[index] = replace(out[index], p_adjusted=value)
    for index, result in enumerate(out):
        if result.metric.role == "guardrail":
            out[index] = replace(result, p_adjusted=result.comparison.p_value)
    return out


def _decide(
    experiment: Mapping[str, Any],
    results: Sequence[MetricResult],
    srm: SampleRatio,
    *,
    users: Mapping[str, int],
    days: float,
    ended_at: datetime | None,
    control: str,
    treatments: Sequence[str],
) -> tuple[str, str | None, str, list[str]]:
    """conclude (with a winner), stop (serve control) or continue, why, and what is missing."""
    breached = [r for r in results if r.verdict == "breached"]
    if breached:
        first = breached[0]
        return (
            STOP,
            None,
            f"guardrail {first.metric.name} breached by {first.variant}: "
            f"{_percent(first.comparison.relative)} against a tolerance of "
            f"{_percent(first.metric.limit or 0.0)} (anytime-valid interval "
            f"{_percent(first.anytime_relative[0])} to {_percent(first.anytime_relative[1])})",
            [],
        )
    waiting = []
    minimum_days = int(experiment.get("minimum_duration_days", 7))
    if days < minimum_days:
        ended = " (it ended before: no conclusion)" if ended_at else ""
        waiting.append(f"minimum duration: {days:.1f} of {minimum_days} days{ended}")
    for result in results:
        if result.metric.role == "guardrail" and result.verdict not in ("within limit", "better"):
            waiting.append(
                f"guardrail {result.metric.name} ({result.variant}): not yet shown within its "
                f"tolerance of {_percent(result.metric.limit or 0.0)}"
                + (" (no data)" if result.verdict == "no data" else "")
            )
    minimum = int(experiment.get("minimum_sample_size", 1000))
    for variant in [control, *treatments]:
        if users.get(variant, 0) < minimum:
            waiting.append(f"sample size: {variant} has {users.get(variant, 0)} of {minimum} users")
    if srm.mismatch:
        waiting.append(
            f"sample ratio mismatch (p = {srm.p_value:.2g} < 0.001): assignment or recording is "
            "broken; fix it before trusting any result"
        )
    primary = [r for r in results if r.metric.role == "primary"]
    better = [r for r in primary if r.verdict == "better"]
    worse = [r for r in primary if r.verdict == "worse"]
    winner: str | None = None
    why = ""
    if better:
        best = max(better, key=lambda r: r.comparison.relative * _sign(r.metric))
        winner = best.variant
        why = (
            f"{best.variant} {best.metric.name} {_percent(best.comparison.relative)} against "
            f"{control} (anytime-valid {_percent(best.anytime_relative[0])} to "
            f"{_percent(best.anytime_relative[1])})"
        )
    elif primary and len(worse) == len(primary):
        winner = control
        why = f"every variant is worse than {control} on {primary[0].metric.name}"
    else:
        waiting.append(
            "evidence: the primary metric's anytime-valid interval still includes no change"
        )
    if winner is None or waiting:
        return CONTINUE, None, why, waiting  # why: the evidence so far
    return CONCLUDE, winner, why, []


def parse_moment(text: Any) -> datetime | None:
    """A stored time as an aware datetime (UTC when it names no zone); None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _sign(spec: MetricSpec) -> float:
    return 1.0 if spec.direction == "increase" else -1.0


def _percent(value: float) -> str:
    return f"{value * 100:+.1f}%" if math.isfinite(value) else "n/a"


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)
