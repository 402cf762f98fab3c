"""Rules within one manifest that span several of its fields."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciler.config import RepoConfig
from reconciler.diagnostics import Diagnostic, FieldPath
from reconciler.loader import Source
from reconciler.manifests import CostThreshold, Experiment, Flag, Manifest, RolloutStrategy
from reconciler.manifests.cost import CostScope
from reconciler.manifests.rollout import MEASURED, HealthCheck, RollbackCondition
from reconciler.manifests.targeting import (
    AllCondition,
    AnyCondition,
    Condition,
    MatchCondition,
    NotCondition,
    Targeting,
)

VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "string": (str,),
    "number": (int, float),
    "json": (dict,),
}


def check_manifest(manifest: Manifest, source: Source, config: RepoConfig) -> Iterator[Diagnostic]:
    """The rules of the manifest's kind."""
    if isinstance(manifest, Flag):
        return check_flag(manifest, source)
    if isinstance(manifest, Experiment):
        return check_experiment(manifest, source)
    if isinstance(manifest, RolloutStrategy):
        return check_rollout(manifest, source)
    if isinstance(manifest, CostThreshold):
        return check_cost(manifest, source)
    return iter(())


def check_flag(flag: Flag, source: Source) -> Iterator[Diagnostic]:
    if flag.type != "boolean" and "value" not in flag.model_fields_set:
        yield source.diagnostic(
            ("type",),
            f"a {flag.type} flag needs a value: the value served while the flag is on",
            "value-type",
        )
    elif not _matches_type(flag.value, flag.type):
        yield source.diagnostic(
            ("value",),
            f"value must be {_type_word(flag.type)} because type is '{flag.type}'",
            "value-type",
        )
    if flag.targeting is not None:
        yield from _check_targeting(flag.targeting, source, ("targeting",))


def check_experiment(experiment: Experiment, source: Source) -> Iterator[Diagnostic]:
    total = math.fsum(v.weight for v in experiment.variants)
    if abs(total - 100) > 1e-6:
        yield source.diagnostic(
            ("variants",),
            f"variant weights sum to {total:g}; they must sum to 100",
            "weights",
        )
    names = [v.name for v in experiment.variants]
    yield from _duplicates(source, names, lambda i: ("variants", i, "name"), "variant name")
    for field in ("control", "winner"):
        chosen = getattr(experiment, field)
        if chosen is not None and chosen not in names:
            yield source.diagnostic(
                (field,),
                f"'{chosen}' is not a variant of this experiment ({', '.join(names)})",
                "reference",
            )
    if experiment.status == "concluded" and experiment.winner is None:
        yield source.diagnostic(
            ("status",), "a concluded experiment needs a winner: the variant to serve", "winner"
        )
    if experiment.winner is not None and experiment.status != "concluded":
        yield source.diagnostic(
            ("winner",),
            f"winner is only set when status is concluded (status is {experiment.status})",
            "winner",
        )
    primaries = [i for i, m in enumerate(experiment.success_metrics) if m.primary]
    if not primaries:
        yield source.diagnostic(
            ("success_metrics",),
            "mark exactly one success metric primary: true; it decides the conclusion",
            "primary-metric",
        )
    for index in primaries[1:]:
        yield source.diagnostic(
            ("success_metrics", index, "primary"),
            "only one success metric may be primary",
            "primary-metric",
        )
    metrics = [m.metric_name for m in experiment.success_metrics]
    yield from _duplicates(
        source, metrics, lambda i: ("success_metrics", i, "metric_name"), "metric name"
    )
    for index, guardrail in enumerate(experiment.guardrail_metrics):
        if guardrail.metric_name in metrics:
            yield source.diagnostic(
                ("guardrail_metrics", index, "metric_name"),
                f"'{guardrail.metric_name}' is already a success metric",
                "unique-name",
            )
    yield from _check_time(source, ("start_time",), experiment.start_time)
    yield from _check_time(source, ("end_time",), experiment.end_time)
    start, end = _moment(experiment.start_time), _moment(experiment.end_time)
    if start is not None and end is not None and end <= start:
        yield source.diagnostic(
            ("end_time",),
            f"ends at {experiment.end_time}, not after its start_time {experiment.start_time}",
            "schedule",
        )


def check_rollout(strategy: RolloutStrategy, source: Source) -> Iterator[Diagnostic]:
    conf = strategy.configuration
    at = ("configuration",)
    if strategy.rollout_type == "canary":
        yield from _check_canary_schedule(strategy, source)
    elif conf.percentage is None:
        yield source.diagnostic(
            at,
            f"missing required field 'percentage' for rollout_type {strategy.rollout_type}",
            "schedule",
        )
    elif conf.percentage > conf.max_percentage:
        yield source.diagnostic(
            (*at, "percentage"),
            f"starts at {conf.percentage:g}%, above max_percentage {conf.max_percentage:g}%",
            "schedule",
        )
    elif conf.percentage < conf.max_percentage and conf.increment_percentage == 0:
        yield source.diagnostic(
            (*at, "increment_percentage"),
            f"the schedule never reaches max_percentage {conf.max_percentage:g}%: "
            f"set increment_percentage, or max_percentage: {conf.percentage:g} to stay put",
            "schedule",
        )
    yield from _check_time(source, (*at, "start_time"), conf.start_time)
    yield from _check_rollout_type(strategy, source)
    checks = [c.check_name for c in strategy.health_checks]
    yield from _duplicates(
        source, checks, lambda i: ("health_checks", i, "check_name"), "check name"
    )
    conditions = [c.condition_name for c in strategy.rollback_conditions]
    yield from _duplicates(
        source,
        conditions,
        lambda i: ("rollback_conditions", i, "condition_name"),
        "condition name",
    )
    measured: tuple[tuple[str, Sequence[HealthCheck | RollbackCondition]], ...] = (
        ("health_checks", strategy.health_checks),
        ("rollback_conditions", strategy.rollback_conditions),
    )
    for field, items in measured:
        for index, item in enumerate(items):
            if item.check_type == "custom_metric":
                for needed in ("metric_name", "namespace"):
                    if getattr(item, needed) is None:
                        yield source.diagnostic(
                            (field, index, "check_type"),
                            f"check_type custom_metric needs {needed} (the CloudWatch "
                            "metric it reads)",
                            "metric",
                        )
                continue
            fields_set = item.model_fields_set
            for cloudwatch in ("metric_name", "namespace", "dimensions", "statistic"):
                if cloudwatch in fields_set:
                    yield source.diagnostic(
                        (field, index, cloudwatch),
                        f"{cloudwatch} is only used with check_type custom_metric",
                        "metric",
                    )


def _check_canary_schedule(strategy: RolloutStrategy, source: Source) -> Iterator[Diagnostic]:
    """A canary's shares and timing are its stages': the ramp's fields would do nothing."""
    conf = strategy.configuration
    for unused in ("increment_percentage", "increment_interval_hours", "max_percentage"):
        if unused in conf.model_fields_set:
            yield source.diagnostic(
                ("configuration", unused),
                f"{unused} is not used with rollout_type canary (its stages set the shares "
                "and min_duration_hours the timing)",
                "rollout-type",
            )
    first = conf.stages[0].percentage if conf.stages else None
    if conf.percentage is not None and first is not None and conf.percentage != first:
        yield source.diagnostic(
            ("configuration", "percentage"),
            f"a canary starts at its first stage's {first:g}%, not {conf.percentage:g}%: "
            "leave percentage out",
            "rollout-type",
        )


def _check_rollout_type(strategy: RolloutStrategy, source: Source) -> Iterator[Diagnostic]:
    conf, kind = strategy.configuration, strategy.rollout_type
    at: FieldPath = ("configuration",)
    if kind == "targeting" and conf.targeting is None:
        yield source.diagnostic(
            (*at, "targeting"),
            "missing required field 'targeting' for rollout_type targeting",
            "rollout-type",
        )
    if conf.targeting is not None:
        if kind != "targeting":
            yield source.diagnostic(
                (*at, "targeting"),
                f"targeting is only used with rollout_type targeting, not {kind}",
                "rollout-type",
            )
        yield from _check_targeting(conf.targeting, source, (*at, "targeting"))
    if kind == "canary" and not conf.stages:
        yield source.diagnostic(
            (*at, "stages"),
            "missing required field 'stages' for rollout_type canary",
            "rollout-type",
        )
    for field, present in (
        ("stages", conf.stages),
        ("promotion_criteria", conf.promotion_criteria),
    ):
        if present and kind != "canary":
            yield source.diagnostic(
                (*at, field),
                f"{field} is only used with rollout_type canary, not {kind}",
                "rollout-type",
            )
    for index, criterion in enumerate(conf.promotion_criteria):
        if criterion.metric_name not in MEASURED:
            yield source.diagnostic(
                (*at, "promotion_criteria", index, "metric_name"),
                f"unknown metric {criterion.metric_name!r}: a promotion criterion measures one "
                f"of {', '.join(MEASURED)}",
                "metric",
            )
    for index in range(1, len(conf.stages)):
        if conf.stages[index].percentage <= conf.stages[index - 1].percentage:
            yield source.diagnostic(
                (*at, "stages", index, "percentage"),
                "canary stage percentages must rise from stage to stage",
                "schedule",
            )
    names = [stage.name for stage in conf.stages]
    yield from _duplicates(source, names, lambda i: (*at, "stages", i, "name"), "stage name")


def check_cost(threshold: CostThreshold, source: Source) -> Iterator[Diagnostic]:
    if threshold.throttle is None and threshold.emergency is None:
        yield source.diagnostic(
            ("threshold_name",),
            "set throttle, emergency or both: a threshold needs a limit",
            "limits",
        )
    if (
        threshold.throttle is not None
        and threshold.emergency is not None
        and threshold.throttle.amount_usd >= threshold.emergency.amount_usd
    ):
        yield source.diagnostic(
            ("throttle", "amount_usd"),
            f"throttle ({threshold.throttle.amount_usd:g} USD) must be below emergency "
            f"({threshold.emergency.amount_usd:g} USD)",
            "limits",
        )
    try:
        ZoneInfo(threshold.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        yield source.diagnostic(
            ("time_zone",),
            f"unknown time zone {threshold.time_zone!r}: give an IANA name such as UTC, "
            "Europe/Berlin or America/New_York",
            "time-zone",
        )
    scope = threshold.applies_to
    if isinstance(scope, CostScope) and not scope.flags and not scope.request_types:
        yield source.diagnostic(
            ("applies_to",),
            "applies_to names no flags or request types; write 'applies_to: all' for every "
            "AI feature",
            "scope",
        )


def _check_targeting(targeting: Targeting, source: Source, at: FieldPath) -> Iterator[Diagnostic]:
    names = [rule.name for rule in targeting.rules]
    yield from _duplicates(source, names, lambda i: (*at, "rules", i, "name"), "rule name")
    for index, rule in enumerate(targeting.rules):
        rule_at = (*at, "rules", index)
        if rule.action == "exclude" and rule.rollout_percentage is not None:
            yield source.diagnostic(
                (*rule_at, "rollout_percentage"),
                "rollout_percentage only applies to include rules",
                "targeting",
            )
        yield from _check_condition(rule.when, source, (*rule_at, "when"))


def _check_condition(condition: Condition, source: Source, at: FieldPath) -> Iterator[Diagnostic]:
    inner = condition.root
    if isinstance(inner, AllCondition | AnyCondition):
        key = "all" if isinstance(inner, AllCondition) else "any"
        items = inner.all if isinstance(inner, AllCondition) else inner.any
        for index, item in enumerate(items):
            yield from _check_condition(item, source, (*at, key, index))
    elif isinstance(inner, NotCondition):
        yield from _check_condition(inner.not_, source, (*at, "not"))
    elif isinstance(inner, MatchCondition):
        try:
            re.compile(inner.value)
        except re.error as exc:
            yield source.diagnostic(
                (*at, "value"), f"not a valid regular expression: {exc}", "targeting"
            )


def _check_time(source: Source, at: FieldPath, value: str | None) -> Iterator[Diagnostic]:
    if value is None:
        return
    try:
        datetime.fromisoformat(value)
    except ValueError as exc:
        yield source.diagnostic(at, f"not a real date and time: {exc}", "timestamp")


def _moment(value: str | None) -> datetime | None:
    """A timestamp as an aware time (UTC when it names no zone); None if absent or unreadable."""
    try:
        moment = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _duplicates(
    source: Source, names: Iterable[str], field_of: Callable[[int], FieldPath], what: str
) -> Iterator[Diagnostic]:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            yield source.diagnostic(
                field_of(index), f"{what} '{name}' is used twice", "unique-name"
            )
        seen.add(name)


def _matches_type(value: object, flag_type: str) -> bool:
    if flag_type != "boolean" and isinstance(value, bool):
        return False
    return isinstance(value, VALUE_TYPES[flag_type])


def _type_word(flag_type: str) -> str:
    return {"boolean": "true or false", "string": "a string", "number": "a number"}.get(
        flag_type, "a JSON object (a mapping)"
    )
