"""The snapshot: everything a decision reads, built once from the stored items, rules compiled.

Built from plain items (as the stores hold them), so it needs nothing of the control plane.
Items of any shape are tolerated: a flag whose item cannot be understood becomes a broken flag
that decides by its fail mode, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.runtime.bucketing import variant_ranges
from reconciler.runtime.rules import Predicate, compile_condition

Item = Mapping[str, Any]


@dataclass(frozen=True)
class Shutdown:
    """An operator's emergency shutdown: who, why, since when, until when."""

    by: str
    reason: str
    since: str | None = None
    expires_at: str | None = None

    @property
    def expires(self) -> datetime | None:
        return _parse_time(self.expires_at)

    def active(self, now: datetime) -> bool:
        expires = self.expires
        return expires is None or expires > now


def _parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time as an aware datetime (UTC when no zone is given); None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Rule:
    name: str
    include: bool
    predicate: Predicate
    rollout_percentage: float | None


@dataclass(frozen=True)
class Schedule:
    """A rollout strategy's ramp: start percentage plus increments per interval, up to a max."""

    percentage: float
    increment: float
    interval_hours: float
    maximum: float
    start: datetime | None
    stages: tuple[tuple[str, float], ...] = ()

    def percentage_at(self, now: datetime, stage: str | None = None) -> float:
        if self.stages:
            named = dict(self.stages)
            return named.get(stage or "", self.stages[0][1])
        if self.start is None or now < self.start:
            return self.percentage if self.start is None else 0.0
        steps = int((now - self.start).total_seconds() // (self.interval_hours * 3600))
        return min(self.maximum, self.percentage + self.increment * steps)


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    status: str
    ranges: tuple[tuple[str, float, float], ...]
    configs: Mapping[str, Mapping[str, Any]]
    control: str
    traffic: float
    winner: str | None


@dataclass(frozen=True)
class Flag:
    name: str
    enabled: bool
    flag_type: str
    value: Any
    fail_open: bool
    rollout_percentage: float
    rules: tuple[Rule, ...] = ()
    default_include: bool = True
    schedule: Schedule | None = None
    experiment: Experiment | None = None
    cost_threshold: float | None = None
    request_type: str | None = None
    shutdown: Shutdown | None = None
    controller: Mapping[str, Any] = field(default_factory=dict)
    broken: str | None = None  # why the item could not be understood
    # Decisions that are the same for every user (off by kill switch, no match, ...) are made
    # once per flag and snapshot and shared: decisions are immutable.
    decisions: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class CostLimit:
    """A cost threshold as the runtime applies it."""

    name: str
    flags: frozenset[str] | None  # None: every flag
    request_types: frozenset[str]
    throttle_usd: float | None
    rollout_factor: float
    emergency_usd: float | None

    def applies_to(self, flag: Flag) -> bool:
        if self.flags is None:
            return True
        return flag.name in self.flags or (flag.request_type or "") in self.request_types


@dataclass(frozen=True)
class CostVerdict:
    """What today's spend means for one flag: shut down (why), or throttled by a factor."""

    emergency: str | None
    factor: float = 1.0


@dataclass(frozen=True)
class Snapshot:
    version: str
    flags: Mapping[str, Flag]
    limits: tuple[CostLimit, ...] = ()
    spend: Mapping[str, float] = field(default_factory=dict)  # by request type; "*" is all
    global_shutdown: Shutdown | None = None
    limit_spend: Mapping[str, float] = field(default_factory=dict)  # what each limit counts
    flag_shutdowns: Mapping[str, Shutdown] = field(default_factory=dict)  # from the overrides
    cost: Mapping[str, CostVerdict] = field(default_factory=dict)  # flags the spend affects


def build_snapshot(
    version: str,
    flag_items: Sequence[Item],
    threshold_items: Sequence[Item] = (),
    *,
    spend: Mapping[str, float] | None = None,
    global_shutdown: Shutdown | None = None,
) -> Snapshot:
    flags = {}
    for item in flag_items:
        name = str(item.get("flag_name", ""))
        if name:
            flags[name] = build_flag(item)
    limits = tuple(
        limit for limit in (_limit(item) for item in threshold_items) if limit is not None
    )
    spent = dict(spend or {})
    counted = {}
    for limit in limits:
        if limit.flags is None:
            counted[limit.name] = spent.get("*", sum(v for k, v in spent.items() if k != "*"))
        else:
            types = set(limit.request_types)
            types |= {
                f.request_type for n, f in flags.items() if n in limit.flags and f.request_type
            }
            counted[limit.name] = sum(spent.get(t, 0.0) for t in types)
    cost = {}
    for name, flag in flags.items():
        verdict = _cost_verdict(flag, limits, counted, spent)
        if verdict is not None:
            cost[name] = verdict
    return Snapshot(version, flags, limits, spent, global_shutdown, counted, cost=cost)


def _cost_verdict(
    flag: Flag,
    limits: Sequence[CostLimit],
    counted: Mapping[str, float],
    spent: Mapping[str, float],
) -> CostVerdict | None:
    factor = 1.0
    for limit in limits:
        if not limit.applies_to(flag):
            continue
        amount = counted.get(limit.name, 0.0)
        if limit.emergency_usd is not None and amount >= limit.emergency_usd:
            return CostVerdict(f"{limit.name}: {amount:g} USD")
        if limit.throttle_usd is not None and amount >= limit.throttle_usd:
            factor = min(factor, limit.rollout_factor)
    if flag.cost_threshold is not None:
        amount = spent.get(flag.request_type or "", 0.0)
        if amount >= flag.cost_threshold:
            return CostVerdict(f"cost_threshold: {amount:g} USD")
    return CostVerdict(None, factor) if factor < 1.0 else None


def build_flag(item: Item) -> Flag:
    name = str(item["flag_name"])
    fail_open = item.get("fail_mode") == "open"
    try:
        return _flag(name, item)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return Flag(
            name, False, "boolean", None, fail_open, 0.0, broken=f"{type(exc).__name__}: {exc}"
        )


def _flag(name: str, item: Item) -> Flag:
    targeting = item.get("targeting") or {}
    rules = tuple(
        Rule(
            str(rule["name"]),
            rule["action"] == "include",
            compile_condition(rule["when"]),
            float(rule["rollout_percentage"])
            if rule.get("rollout_percentage") is not None
            else None,
        )
        for rule in targeting.get("rules", [])
    )
    default = targeting.get("default")
    default_include = default == "include" if default else not any(r.include for r in rules)
    shutdown = None
    if item.get("emergency_shutdown") is True:
        shutdown = Shutdown(
            str(item.get("shutdown_by", "")),
            str(item.get("shutdown_reason", "")),
            item.get("shutdown_at"),
            item.get("shutdown_expires_at"),
        )
    return Flag(
        name=name,
        enabled=item.get("enabled") is True,
        flag_type=str(item.get("flag_type", "boolean")),
        value=item.get("value", True),
        fail_open=item.get("fail_mode") == "open",
        rollout_percentage=float(item.get("rollout_percentage", 100)),
        rules=rules,
        default_include=default_include,
        schedule=_schedule(item.get("rollout"), item.get("created_at")),
        experiment=_experiment(item.get("ab_test_config")),
        cost_threshold=float(item["cost_threshold"])
        if item.get("cost_threshold") is not None
        else None,
        request_type=item.get("request_type"),
        shutdown=shutdown,
        controller=item.get("controller_state") or {},
    )


def _schedule(rollout: Any, created_at: Any) -> Schedule | None:
    if not isinstance(rollout, Mapping):
        return None
    conf = rollout.get("configuration", {})
    start = conf.get("start_time") or created_at
    stages = tuple((str(s["name"]), float(s["percentage"])) for s in conf.get("stages", []))
    return Schedule(
        percentage=float(conf.get("percentage", 100)),
        increment=float(conf.get("increment_percentage", 0)),
        interval_hours=float(conf.get("increment_interval_hours", 24)),
        maximum=float(conf.get("max_percentage", 100)),
        start=datetime.fromisoformat(start) if start else None,
        stages=stages if rollout.get("rollout_type") == "canary" else (),
    )


def _experiment(config: Any) -> Experiment | None:
    if not isinstance(config, Mapping) or not config.get("variants"):
        return None
    variants = config["variants"]
    weights = [(str(v["name"]), float(v["weight"])) for v in variants]
    return Experiment(
        experiment_id=str(config.get("test_name", "")),
        status=str(config.get("status", "active" if config.get("active") else "paused")),
        ranges=tuple(variant_ranges(weights)),
        configs={str(v["name"]): dict(v.get("config") or {}) for v in variants},
        control=str(config.get("control", weights[0][0])),
        traffic=float(config.get("traffic_percentage", 100)),
        winner=config.get("winner"),
    )


def _limit(item: Item) -> CostLimit | None:
    if item.get("enabled", True) is not True:
        return None
    scope = item.get("applies_to", "all")
    throttle = item.get("throttle") or {}
    emergency = item.get("emergency") or {}
    try:
        return CostLimit(
            name=str(item.get("threshold_name", "")),
            flags=None if scope == "all" else frozenset(scope.get("flags", [])),
            request_types=frozenset()
            if scope == "all"
            else frozenset(scope.get("request_types", [])),
            throttle_usd=float(throttle["amount_usd"]) if "amount_usd" in throttle else None,
            rollout_factor=float(throttle.get("rollout_factor", 0.5)),
            emergency_usd=float(emergency["amount_usd"]) if "amount_usd" in emergency else None,
        )
    except (TypeError, ValueError, AttributeError):
        return None
