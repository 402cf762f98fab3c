"""The CloudWatch alarms: the original system's two, and one at each cost threshold's limits.

- ``BedrockAI-DailyCostHigh``: all AI spend over 24 hours above ``[alarms.daily_cost]
  threshold_usd`` of ``reconciler.toml`` ($50, as the original);
- ``BedrockAI-HighErrorRate``: the share of failed AI calls above ``[alarms.error_rate]
  threshold_percent`` (10%) in 2 of 2 periods of 5 minutes;
- ``BedrockAI-Cost-<threshold_name>-Throttle`` and ``-Emergency``: the spend a ``costs.d/``
  threshold counts, as the cost guard counts it, at its throttle and its emergency amount: when
  the guard should have acted. The guard alerts earlier itself (``alert_at_percentage``); these
  are the independent second line, for a guard that is not running or not counting.

They read the metrics whose Sum is exact in both of the runtime's sinks
(``reconciler.runtime.metrics``): the roll-ups of ``Spend``, ``ErrorCount`` and
``OutcomeCount``, and for a scope ``Spend`` by ``RequestType`` summed by metric math (at most 10
metrics an alarm). An alarm sums a one-day period, a rolling 24 hours, not the calendar day in
the threshold's time zone the guard counts, and no period covers a calendar month: a monthly
threshold gets no alarm. ``alarm_problems`` says so, as it says of every alarm that cannot be
made or cannot help. Money stays Decimal or micro-dollars up to the resource's threshold, the
double CloudWatch takes: the double nearest an amount of at most 15 significant digits reads
back as that amount, so a cent amount is exact to the cent.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from reconciler.codec import encode_threshold
from reconciler.config import AlarmSettings, ErrorRateAlarm, RepoConfig
from reconciler.diagnostics import Diagnostic, Severity
from reconciler.loader import Source, Tree
from reconciler.manifests import CostThreshold, Flag
from reconciler.runtime.budgets import Budget, budgets_from_items, format_usd, to_micros
from reconciler.runtime.budgets import usd as exact_usd
from reconciler.runtime.metrics import (
    COSTS_NAMESPACE,
    ERROR_COUNT,
    OPERATIONS_NAMESPACE,
    OUTCOME_COUNT,
    REQUEST_TYPE,
    SPEND,
)

Resource = dict[str, object]
DAILY_COST_ALARM = "BedrockAI-DailyCostHigh"
ERROR_RATE_ALARM = "BedrockAI-HighErrorRate"
MAX_METRICS = 10  # metrics one metric-math alarm can read
MAX_DESCRIPTION = 1024
DAY = 86_400
RULE = "alarms"
WINDOW = (
    "CloudWatch sums the spend it received over the last 24 hours (a one-day period), not the "
    "calendar day in {zone} that the cost guard counts, so the two can differ; the guard's "
    "ledger is the cost-metrics table (controller cost), this alarm an independent second line."
)


@dataclass(frozen=True)
class Inputs:
    """What the deployment reads of the manifests: the cost thresholds, with their files, and
    each flag's name and request type (all the alarms read of a flag)."""

    thresholds: tuple[tuple[CostThreshold, Source], ...]
    flags: tuple[tuple[str, str | None], ...]

    @classmethod
    def of(cls, manifests: Tree | Inputs) -> Inputs:
        if isinstance(manifests, Inputs):
            return manifests
        thresholds = tuple(manifests.of(CostThreshold))
        flags = tuple((f.flag_name, f.request_type) for f, _ in manifests.of(Flag))
        return cls(thresholds, flags if thresholds else ())


def alarm_resources(
    tree: Tree | Inputs, config: RepoConfig, topic: dict[str, object]
) -> dict[str, dict[str, object]]:
    """Every alarm as a CloudFormation ``AWS::CloudWatch::Alarm`` by logical id, in a fixed
    order, each alarming and recovering to ``topic`` (e.g. ``{"Ref": "AlertsTopic"}``). Alarms
    that cannot be made are left out; ``alarm_problems`` names them."""
    settings = config.alarms
    alarms: dict[str, Resource] = {}
    if settings.daily_cost.enabled:
        alarms["DailyCostHighAlarm"] = _daily_cost(settings)
    if settings.error_rate.enabled:
        alarms["HighErrorRateAlarm"] = _error_rate(settings.error_rate)
    if settings.cost_thresholds:
        thresholds = [(b, s) for b, s in _thresholds(tree) if _refusal(b) is None]
        ids = _logical_ids([budget.name for budget, _ in thresholds])
        for budget, source in thresholds:
            for limit, micros in _limits(budget):
                alarms[f"Cost{ids[budget.name]}{limit}Alarm"] = _limit_alarm(
                    budget, source, limit, micros
                )
    return {
        logical_id: {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                **properties,
                "TreatMissingData": "notBreaching",  # no spend, no calls: nothing is wrong
                "AlarmActions": [topic],
                "OKActions": [topic],
            },
        }
        for logical_id, properties in alarms.items()
    }


def alarm_problems(tree: Tree | Inputs, config: RepoConfig) -> list[Diagnostic]:
    """Warnings, at the cost threshold's file and field, for each alarm that cannot be made (a
    monthly threshold, a scope of no or more than 10 request types) and for a daily-cost alarm
    at or above a daily ``applies_to: all`` emergency amount (it would fire only after the
    shutdown). Pure: for ``reconcile --validate``."""
    settings = config.alarms
    problems = []
    daily_cost = settings.daily_cost
    above = format_usd(to_micros(daily_cost.threshold_usd))
    for budget, source in _thresholds(tree):
        refusal = _refusal(budget) if settings.cost_thresholds and _limits(budget) else None
        if refusal is not None:
            field, reason = refusal
            if field == ("period",) and daily_cost.enabled:
                reason += f" ({DAILY_COST_ALARM} still watches all AI spend)"
            problems.append(_warning(source, field, f"no CloudWatch alarm: {reason}"))
        emergency = budget.emergency_micros
        if (
            daily_cost.enabled
            and budget.every_feature
            and budget.period == "daily"
            and emergency is not None
            and daily_cost.threshold_usd >= exact_usd(emergency)
        ):
            problems.append(
                _warning(
                    source,
                    ("emergency", "amount_usd"),
                    f"{DAILY_COST_ALARM} fires above {above} (reconciler.toml, "
                    "[alarms.daily_cost] threshold_usd), after this threshold "
                    f"shuts every AI feature down at {format_usd(emergency)}: set it lower",
                )
            )
    return problems


def _thresholds(tree: Tree | Inputs) -> list[tuple[Budget, Source]]:
    """The enabled cost thresholds as the guard reads them (by its own code), with their
    files, by name."""
    inputs = Inputs.of(tree)
    thresholds = inputs.thresholds
    if not thresholds:
        return []
    # What the guard reads of flags for a threshold: each AI flag's request type (only that:
    # encoding every flag of a large tree would cost more than the rest of the check).
    flags = [
        {"flag_name": name, "request_type": request_type}
        for name, request_type in inputs.flags
        if request_type
    ]
    budgets = budgets_from_items([encode_threshold(t) for t, _ in thresholds], flags)
    sources = {t.threshold_name: source for t, source in thresholds}
    found = [(b, sources[b.name]) for b in budgets if b.name in sources]
    return sorted(found, key=lambda pair: pair[0].name)


def _refusal(budget: Budget) -> tuple[tuple[str, ...], str] | None:
    """Why a threshold can have no alarm (the field to point at, the reason), if it cannot."""
    if budget.period != "daily":
        return ("period",), (
            "CloudWatch cannot sum a calendar month (an alarm's period is at most a day here); "
            "the cost guard alone enforces this threshold"
        )
    if budget.counts is not None and not budget.counts:
        return ("applies_to",), "its scope counts no request type's spend"
    if budget.counts is not None and len(budget.counts) > MAX_METRICS:
        return ("applies_to",), (
            f"its scope counts {len(budget.counts)} request types; an alarm sums at most "
            f"{MAX_METRICS} metrics: split the threshold, or use 'applies_to: all'"
        )
    return None


def _limits(budget: Budget) -> list[tuple[str, int]]:
    limits = [("Throttle", budget.throttle_micros), ("Emergency", budget.emergency_micros)]
    return [(limit, micros) for limit, micros in limits if micros is not None]


def _limit_alarm(budget: Budget, source: Source, limit: str, micros: int) -> Resource:
    types = sorted(budget.counts) if budget.counts is not None else None
    if limit == "Throttle":
        acts = (
            f"the cost guard reduces the rollouts in scope (rollout factor "
            f"{budget.rollout_factor:g}) at this spend; if `controller cost` shows it has not, "
            "the guard is not running or not counting."
        )
    else:
        command = "--all" if budget.every_feature else "--flag NAME (each flag in scope)"
        acts = (
            "the cost guard shuts the features in scope down at this spend; if `breakglass "
            f'status` shows they still run, run `breakglass shutdown {command} --reason "..."`.'
        )
    description = (
        f"{_scope(types)} reached {format_usd(micros)}, the {limit.lower()} amount of cost "
        f"threshold {budget.name} ({source.path}): {acts} " + WINDOW.format(zone=budget.time_zone)
    )
    name = f"BedrockAI-Cost-{budget.name}-{limit}"
    # At the amount, as the guard acts; the double reads back as the amount (see above).
    return _spend_alarm(name, description, types, exact_usd(micros), "GreaterThanOrEqualTo")


def _daily_cost(settings: AlarmSettings) -> Resource:
    amount = settings.daily_cost.threshold_usd
    description = (
        f"All AI spend over the last 24 hours exceeds {format_usd(to_micros(amount))} "
        "(reconciler.toml, [alarms.daily_cost] threshold_usd): an early warning below the cost "
        "thresholds' limits. CloudWatch sums what the services published (BedrockAI/Costs "
        "Spend) over a one-day period evaluated as a rolling 24 hours, not a calendar day; the "
        "cost guard's ledger is the cost-metrics table (controller cost)."
    )
    return _spend_alarm(DAILY_COST_ALARM, description, None, amount, "GreaterThan")


def _spend_alarm(
    name: str, description: str, types: Sequence[str] | None, amount: Decimal, comparison: str
) -> Resource:
    """An alarm on one day's Sum of Spend: the roll-up (``None``: every request type), or the
    sum of the series of ``types`` by metric math."""
    if types is None:
        spend: Resource = {
            "Namespace": COSTS_NAMESPACE,
            "MetricName": SPEND,
            "Statistic": "Sum",
            "Period": DAY,
        }
    else:
        total = "SUM([" + ", ".join(f"FILL(m{n}, 0)" for n in range(len(types))) + "])"
        stats = [_metric_stat(f"m{n}", COSTS_NAMESPACE, SPEND, t, DAY) for n, t in enumerate(types)]
        label = {"Id": "spend", "Expression": total, "Label": "Spend (USD)", "ReturnData": True}
        spend = {"Metrics": [*stats, label]}
    fitted = description if len(description) <= MAX_DESCRIPTION else description[:1021] + "..."
    return {
        "AlarmName": name,
        "AlarmDescription": fitted,
        **spend,
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "Threshold": float(amount),
        "ComparisonOperator": f"{comparison}Threshold",
    }


def _error_rate(settings: ErrorRateAlarm) -> Resource:
    period = settings.period_seconds
    percent = settings.threshold_percent
    least = settings.min_outcomes
    floor = f"; a period of fewer than {least} calls does not count" if least > 1 else ""
    description = (
        f"More than {percent:f}% of AI calls failed (BedrockAI/Operations ErrorCount / "
        f"OutcomeCount, all request types) in {settings.datapoints_to_alarm} of "
        f"{settings.evaluation_periods} periods of {_duration(period)}{floor} (reconciler.toml, "
        "[alarms.error_rate]). See the services' logs; `controller rollout` shows a rollout "
        "to pause or abort."
    )
    expression = f"IF(outcomes >= {least}, 100 * FILL(errors, 0) / outcomes, 0)"
    return {
        "AlarmName": ERROR_RATE_ALARM,
        "AlarmDescription": description,
        "Metrics": [
            _metric_stat("errors", OPERATIONS_NAMESPACE, ERROR_COUNT, None, period),
            _metric_stat("outcomes", OPERATIONS_NAMESPACE, OUTCOME_COUNT, None, period),
            {"Id": "rate", "Expression": expression, "Label": "Error rate (%)", "ReturnData": True},
        ],
        "EvaluationPeriods": settings.evaluation_periods,
        "DatapointsToAlarm": settings.datapoints_to_alarm,
        "Threshold": float(percent),
        "ComparisonOperator": "GreaterThanThreshold",
    }


def _metric_stat(
    query_id: str, namespace: str, metric: str, request_type: str | None, period: int
) -> Resource:
    stat: Resource = {"Namespace": namespace, "MetricName": metric}
    if request_type is not None:
        stat["Dimensions"] = [{"Name": REQUEST_TYPE, "Value": request_type}]
    return {
        "Id": query_id,
        "MetricStat": {"Metric": stat, "Period": period, "Stat": "Sum"},
        "ReturnData": False,
    }


def _logical_ids(names: Sequence[str]) -> dict[str, str]:
    """``ai_daily_budget`` is ``AiDailyBudget``; names that would share one (``a_b``, ``a-b``)
    each get their own hash after it."""
    camel = {n: "".join(p[:1].upper() + p[1:] for p in re.split(r"[_-]", n)) for n in names}
    shared = Counter(camel.values())
    return {
        name: c if shared[c] == 1 else c + hashlib.sha256(name.encode()).hexdigest()[:8].upper()
        for name, c in camel.items()
    }


def _scope(types: Sequence[str] | None) -> str:
    if types is None:
        return "AI spend (all request types)"
    listed = ", ".join(types)
    return f"AI spend of {listed}" if len(listed) <= 300 else f"AI spend of {len(types)} types"


def _duration(seconds: int) -> str:
    hours, minutes = divmod(seconds // 60, 60)
    count, unit = (hours, "hour") if minutes == 0 else (seconds // 60, "minute")
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def _warning(source: Source, field: tuple[str, ...], message: str) -> Diagnostic:
    return source.diagnostic(field, message, RULE, severity=Severity.WARNING, key=True)
