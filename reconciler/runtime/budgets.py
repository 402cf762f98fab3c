"""Cost budgets as the runtime and the cost guard both read them: one definition for both.

A budget comes from a ``CostThreshold`` record, or from a flag's own ``cost_threshold`` (a daily
UTC throttle on the spend of the flag's request type: the flag keeps half its users, as the
original system's cost_threshold did). Money is integer micro-dollars
here, never a binary float: ``to_micros`` reads an amount through its decimal text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MICROS = 1_000_000
UTC_ZONE = "UTC"
DEFAULT_ALERT_PERCENTAGE = 80.0
FLAG_BUDGET_PREFIX = "flag:"


def to_micros(amount: Any) -> int:
    """An amount of USD as integer micro-dollars, exactly as written (``0.1`` is 100,000)."""
    if isinstance(amount, bool):
        raise TypeError("an amount of money is a number, not a boolean")
    try:
        value = Decimal(str(amount)) * MICROS
    except InvalidOperation:
        raise ValueError(f"{amount!r} is not an amount of money") from None
    if not value.is_finite():
        raise ValueError(f"{amount!r} is not a finite amount")
    return int(value.to_integral_value())


def usd(micros: int) -> Decimal:
    """Micro-dollars as exact USD."""
    return Decimal(micros) / MICROS


def format_usd(micros: int) -> str:
    """``$1,234.57``: cents, rounded half up (the report's and the alerts' form)."""
    cents = (Decimal(micros) / 10_000).quantize(Decimal(1), rounding="ROUND_HALF_UP")
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(int(cents)), 100)
    return f"{sign}${whole:,}.{part:02d}"


@dataclass(frozen=True)
class Period:
    """One budget period in one time zone: a day (``2026-12-01``) or a month (``2026-12``)."""

    key: str
    time_zone: str
    days: tuple[str, ...]  # the local dates it spans up to now, oldest first
    start: datetime
    end: datetime  # the first instant of the next period

    @property
    def today(self) -> str:
        return self.days[-1]


@dataclass(frozen=True)
class Budget:
    name: str
    period: str  # daily | monthly
    time_zone: str
    counts: frozenset[str] | None  # request types whose spend counts; None: every one
    acts_on: frozenset[str]  # the flags it throttles or shuts down
    throttle_micros: int | None
    rollout_factor: float
    emergency_micros: int | None
    alert_percentage: float = DEFAULT_ALERT_PERCENTAGE
    alerting: bool = True
    every_feature: bool = False  # applies_to: all (acts_on is then every flag with a type)

    def spent(self, by_type: Mapping[str, int]) -> int:
        """What this budget counts of a spend by request type."""
        if self.counts is None:
            return sum(by_type.values())
        return sum(by_type.get(t, 0) for t in self.counts)

    def period_at(self, now: datetime) -> Period:
        return period_at(self.period, self.time_zone, now)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def period_at(kind: str, time_zone: str, now: datetime) -> Period:
    """The daily or monthly period holding ``now`` in ``time_zone``."""
    tz = zone(time_zone)
    local = now.astimezone(tz).date()
    if kind == "monthly":
        first = local.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        days = tuple((first + timedelta(days=n)).isoformat() for n in range(local.day))
        key = f"{local.year:04d}-{local.month:02d}"
    else:
        first, following = local, local + timedelta(days=1)
        days, key = (local.isoformat(),), local.isoformat()
    return Period(key, time_zone, days, _midnight(first, tz), _midnight(following, tz))


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


def budgets_from_items(
    threshold_items: Iterable[Mapping[str, Any]], flag_items: Sequence[Mapping[str, Any]]
) -> list[Budget]:
    """``applies_to: all`` acts on every AI feature: every flag that declares the request type
    its spend is counted under. A flag without one (``auth_mfa_required``) is no AI feature."""
    """Every budget the stored records declare; items that cannot be understood are skipped
    (the reconciler validated them; the runtime must not fail on a hand-edited one)."""
    types_of = {
        str(f.get("flag_name")): str(f["request_type"]) for f in flag_items if f.get("request_type")
    }
    budgets = []
    for item in threshold_items:
        try:
            budget = _threshold_budget(item, types_of)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if budget is not None:
            budgets.append(budget)
    for flag in flag_items:
        limit = flag.get("cost_threshold")
        request_type = flag.get("request_type")
        if limit is None or not request_type:
            continue
        try:
            limit_micros = to_micros(limit)
        except (TypeError, ValueError):
            continue
        name = str(flag.get("flag_name"))
        budgets.append(
            Budget(
                FLAG_BUDGET_PREFIX + name,
                "daily",
                UTC_ZONE,
                frozenset({str(request_type)}),
                frozenset({name}),
                throttle_micros=limit_micros,
                rollout_factor=0.5,
                emergency_micros=None,
                alerting=False,  # a flag's own limit is audited, not alerted: the budget alerts
            )
        )
    return budgets


def _threshold_budget(item: Mapping[str, Any], types_of: Mapping[str, str]) -> Budget | None:
    if item.get("enabled", True) is not True:
        return None
    scope = item.get("applies_to", "all")
    throttle = item.get("throttle") or {}
    emergency = item.get("emergency") or {}
    counts: frozenset[str] | None = None
    acts_on = frozenset(types_of)  # all: every AI feature, i.e. every flag with a request type
    if scope != "all":
        flags = {str(f) for f in scope.get("flags", [])}
        types = {str(t) for t in scope.get("request_types", [])}
        counts = frozenset(types | {types_of[f] for f in flags if f in types_of})
        acts_on = frozenset(flags | {f for f, t in types_of.items() if t in types})
    time_zone = str(item.get("time_zone") or UTC_ZONE)
    zone(time_zone)  # an unknown zone makes the budget unusable, not the process
    alert = item.get("alert_at_percentage")
    return Budget(
        name=str(item["threshold_name"]),
        period="monthly" if item.get("period") == "monthly" else "daily",
        time_zone=time_zone,
        counts=counts,
        acts_on=acts_on,
        throttle_micros=to_micros(throttle["amount_usd"]) if "amount_usd" in throttle else None,
        rollout_factor=float(throttle.get("rollout_factor", 0.5)),
        emergency_micros=to_micros(emergency["amount_usd"]) if "amount_usd" in emergency else None,
        alert_percentage=float(alert) if alert is not None else DEFAULT_ALERT_PERCENTAGE,
        every_feature=scope == "all",
    )
