"""A rollout's health checks, judged: a pure function of what the users with the feature (and,
for comparison, those without it) recorded over each check's window.

Every check has three outcomes, not two: ``pass``, ``fail``, and ``insufficient`` when fewer
than its minimum of requests were seen in the window, so that a quiet hour neither promotes a
rollout nor rolls it back on noise. Error rates are in percent of requests; latencies are read
from a histogram of response times (``latency_p50``/``p95``/``p99``: the upper edge of the bin
holding that quantile, so never below the true value); cost is USD per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.runtime.telemetry import LATENCY_BINS, latency_bin

__all__ = ["BINS", "Check", "CheckResult", "Window", "bin_edge", "judge", "latency_bin"]

MIN_SAMPLES = 100  # requests in a window before a check counts
PASS = "pass"
FAIL = "fail"
INSUFFICIENT = "insufficient"
DISABLED = "disabled"
BINS = LATENCY_BINS


def bin_edge(k: int) -> float:
    return float(2 ** (k / 4))


@dataclass(frozen=True)
class Window:
    """One cohort's outcomes over a window: requests, failures, response-time histogram
    (bin -> count), spend in micro-dollars over the requests that recorded cost."""

    requests: int = 0
    failures: int = 0
    latency: Mapping[int, int] = field(default_factory=dict)
    cost_micros: int = 0
    costed: int = 0
    scored: int = 0  # requests that recorded a quality score
    quality: float = 0.0  # the sum of their scores

    def measure(self, check_type: str) -> float | None:
        """The check's measurement, or None when there is nothing to measure."""
        if check_type == "error_rate":
            return 100.0 * self.failures / self.requests if self.requests else None
        if check_type.startswith("latency_p"):
            return _quantile(self.latency, int(check_type.removeprefix("latency_p")) / 100)
        if check_type == "cost_per_request":
            return self.cost_micros / self.costed / 1_000_000 if self.costed else None
        if check_type == "quality_score":
            return self.quality / self.scored if self.scored else None
        return None

    def samples(self, check_type: str) -> int:
        if check_type.startswith("latency_p"):
            return sum(self.latency.values())
        if check_type == "cost_per_request":
            return self.costed
        if check_type == "quality_score":
            return self.scored
        return self.requests


def _quantile(histogram: Mapping[int, int], q: float) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    wanted, seen = q * total, 0
    for k in sorted(histogram):
        seen += histogram[k]
        if seen >= wanted:
            return bin_edge(k)
    return bin_edge(max(histogram))


@dataclass(frozen=True)
class Metric:
    """A CloudWatch metric a ``custom_metric`` check reads, and the statistic it compares."""

    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...] = ()
    statistic: str = "Average"


@dataclass(frozen=True)
class Check:
    """A health check or a rollback condition, as the manifest states it."""

    name: str
    check_type: str
    threshold: float
    comparison: str  # how a healthy (checks) or a triggering (conditions) value compares
    window_minutes: int
    enabled: bool = True
    action: str | None = None  # for rollback conditions: rollback | pause
    min_samples: int = MIN_SAMPLES
    metric: Metric | None = None  # for custom_metric: where it is read


@dataclass(frozen=True)
class CheckResult:
    check: Check
    outcome: str  # pass | fail | insufficient | disabled (conditions: fail = triggered)
    value: float | None
    baseline: float | None  # the same measurement on the users without the feature
    samples: int
    note: str = ""  # why there is no measurement (the metric could not be read)

    def describe(self) -> str:
        unit = _unit(self.check.check_type)
        value = f"{self.value:.4g}{unit}" if self.value is not None else ""
        base = "" if self.baseline is None else f", users without it {self.baseline:.4g}{unit}"
        need = f" (needs {self.check.min_samples})" if self.outcome == INSUFFICIENT else ""
        bound = f"{_words(self.check.comparison)} {self.check.threshold:g}{unit}"
        if self.value is not None and not compares(
            self.value, self.check.comparison, self.check.threshold
        ):
            bound = f"not {bound}"  # "error_rate 8% not < 5%": the comparison does not hold
        what, counted = self.check.check_type, "requests"
        metric = self.check.metric
        if metric is not None:
            what, counted = f"{metric.namespace}/{metric.name} {metric.statistic}", "samples"
        note = f" ({self.note})" if self.note else ""
        if self.check.action is not None:  # a rollback condition: met (acts) or not met
            state = {PASS: "not met", FAIL: "met"}.get(self.outcome, self.outcome)
            measured = f"{what} {value}" if self.value is not None else f"no {what}"
            trigger = f"{_words(self.check.comparison)} {self.check.threshold:g}{unit}"
            return (
                f"{self.check.name}: {state}: {measured} over {self.check.window_minutes} min, "
                f"{self.samples} {counted}{need}{base}{note} (triggers when {trigger})"
            )
        measured = f"{what} {value} {bound}" if self.value is not None else f"no {what}"
        return (
            f"{self.check.name}: {self.outcome}: {measured} over "
            f"{self.check.window_minutes} min, {self.samples} {counted}{need}{base}{note}"
        )


def _unit(check_type: str) -> str:
    if check_type == "error_rate":
        return "%"
    if check_type.startswith("latency"):
        return " ms"
    if check_type == "cost_per_request":
        return " USD"
    return ""


def _words(comparison: str) -> str:
    return {
        "less_than": "<",
        "less_than_or_equal": "<=",
        "greater_than": ">",
        "greater_than_or_equal": ">=",
    }.get(comparison, comparison)


def compares(value: float, comparison: str, threshold: float) -> bool:
    if comparison == "less_than":
        return value < threshold
    if comparison == "less_than_or_equal":
        return value <= threshold
    if comparison == "greater_than":
        return value > threshold
    return value >= threshold


def judge(check: Check, treated: Window, untreated: Window | None = None) -> CheckResult:
    """A health check passes when the treated users' measurement compares as stated; a
    rollback condition fails (triggers) when it does; below the minimum sample, insufficient."""
    value = treated.measure(check.check_type)
    baseline = untreated.measure(check.check_type) if untreated is not None else None
    return judge_value(check, value, treated.samples(check.check_type), baseline)


def judge_value(
    check: Check,
    value: float | None,
    samples: int,
    baseline: float | None = None,
    note: str = "",
) -> CheckResult:
    """A check judged on a measurement however it was made (recorded outcomes, CloudWatch)."""
    if not check.enabled:
        return CheckResult(check, DISABLED, None, None, 0)
    if value is None or samples < check.min_samples:
        return CheckResult(check, INSUFFICIENT, value, baseline, samples, note)
    holds = compares(value, check.comparison, check.threshold)
    if check.action is not None:  # a rollback condition: met means act
        return CheckResult(check, FAIL if holds else PASS, value, baseline, samples)
    return CheckResult(check, PASS if holds else FAIL, value, baseline, samples)
