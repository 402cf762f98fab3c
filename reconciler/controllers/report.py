"""The cost report: spend per request type against every budget, the guard's state, the alerts
and the overshoot bound. ``collect`` reads the store; ``build`` is pure; ``reconciler.render.cost``
prints it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from reconciler.controllers.cost_guard import level_of
from reconciler.controllers.overshoot import Overshoot, bound
from reconciler.controllers.run import load_budgets
from reconciler.controllers.spend import DaySpend, SpendReading, observed_rate, read_spend
from reconciler.runtime.budgets import UTC_ZONE, Budget, period_at
from reconciler.runtime.cost_state import (
    COST_GUARD_ID,
    CostState,
    cost_state_from_item,
    with_flags,
)
from reconciler.state.records import Item, format_time
from reconciler.state.store import StateStore


@dataclass(frozen=True)
class TypeRow:
    request_type: str
    cost_micros: int
    requests: int
    tokens: int


@dataclass(frozen=True)
class LimitRow:
    name: str  # throttle | emergency
    limit_micros: int
    spent_micros: int

    @property
    def share(self) -> float:
        return self.spent_micros / self.limit_micros if self.limit_micros else 0.0


@dataclass(frozen=True)
class BudgetRow:
    name: str
    period_kind: str
    period: str
    time_zone: str
    spent_micros: int
    level: str
    since: str
    limits: tuple[LimitRow, ...]
    scope: str

    @property
    def remaining_micros(self) -> int | None:
        """What is left before the hard limit (the emergency limit, which denies), if any."""
        hard = [lim for lim in self.limits if lim.name == "emergency"]
        return max(hard[0].limit_micros - self.spent_micros, 0) if hard else None


@dataclass(frozen=True)
class HeldRow:
    flag: str
    state: str
    budget: str
    factor: float
    until: str


@dataclass(frozen=True)
class CostReport:
    date: str
    live: bool  # today's figures from the shards, or a past day's stored rows
    read_at: str
    state_version: int
    state_updated_at: str
    types: tuple[TypeRow, ...]
    budgets: tuple[BudgetRow, ...]
    held: tuple[HeldRow, ...]
    alerts: tuple[Item, ...]
    overshoot: Overshoot | None

    @property
    def total_micros(self) -> int:
        return sum(t.cost_micros for t in self.types)


def _days(budget: Budget, day: date) -> list[str]:
    if budget.period == "monthly":
        return [(day.replace(day=1) + timedelta(days=n)).isoformat() for n in range(day.day)]
    return [day.isoformat()]


def build(
    budgets: Sequence[Budget],
    reading: SpendReading,
    state: CostState,
    alerts: Sequence[Item],
    *,
    now: datetime,
    day: date | None,
    overshoot: Overshoot | None,
) -> CostReport:
    """The report for ``day`` (a UTC date; None: now, each budget in its own current period)."""
    shown = day.isoformat() if day is not None else period_at("daily", UTC_ZONE, now).today
    types = [
        TypeRow(d.request_type, d.cost_micros, d.requests, d.tokens)
        for d in reading.days
        if d.time_zone == UTC_ZONE and d.date == shown
    ]
    rows = []
    for budget in budgets:
        if day is None:
            period = budget.period_at(now)
            days, key = list(period.days), period.key
        else:
            days = _days(budget, day)
            key = days[-1] if budget.period == "daily" else days[-1][:7]
        spent = budget.spent(reading.by_type(budget.time_zone, days))
        held = state.budgets.get(budget.name)
        current = held is not None and held.period == key and day is None
        limits = tuple(
            LimitRow(name, limit, spent)
            for name, limit in (
                ("throttle", budget.throttle_micros),
                ("emergency", budget.emergency_micros),
            )
            if limit is not None
        )
        rows.append(
            BudgetRow(
                budget.name,
                budget.period,
                key,
                budget.time_zone,
                spent,
                held.level if current and held else level_of(budget, spent),
                held.since if current and held else "",
                limits,
                _scope(budget),
            )
        )
    held_rows = tuple(
        HeldRow(f.flag, f.state, f.budget, f.factor, f.until)
        for f in sorted(state.flags.values(), key=lambda f: f.flag)
        if day is None and f.in_force(now)
    )
    periods = {(r.name, r.period) for r in rows}
    order = ["throttle-warning", "throttle", "emergency-warning", "emergency"]
    shown_alerts = tuple(
        sorted(
            (a for a in alerts if (a.get("threshold_name"), a.get("period")) in periods),
            key=lambda a: (
                str(a.get("threshold_name")),
                order.index(str(a["level"])) if a.get("level") in order else len(order),
            ),
        )
    )
    return CostReport(
        shown,
        day is None,
        format_time(reading.read_at),
        state.version,
        state.updated_at,
        tuple(sorted(types, key=lambda t: t.request_type)),
        tuple(rows),
        held_rows,
        shown_alerts,
        overshoot,
    )


def _scope(budget: Budget) -> str:
    counts = "all request types" if budget.counts is None else ", ".join(sorted(budget.counts))
    acts = ", ".join(sorted(budget.acts_on)) or "no flag"
    if budget.every_feature:
        acts = f"every AI flag ({acts})"
    return f"counts {counts}; acts on {acts}"


def collect(
    store: StateStore,
    *,
    now: datetime,
    day: date | None = None,
    processes: int | None = None,
    rate: Decimal | None = None,
    dearest: Decimal | None = None,
    intervals: Mapping[str, float] | None = None,
) -> CostReport:
    """Read everything the report shows. Today's spend comes from the shards (exact, current);
    a past day's from the stored cost-metrics rows."""
    configuration = load_budgets(store)
    budgets = configuration.budgets
    stored = cost_state_from_item(store.read_control(COST_GUARD_ID))
    state = with_flags(stored, configuration.ai_flags, now)
    reading = read_spend(store, budgets, now) if day is None else _stored(store, budgets, day, now)
    overshoot = None
    if day is None:
        seen, burn, seen_dearest = observed_rate(
            reading, now, _recent_burn(budgets, reading, state, now)
        )
        given = rate is not None
        overshoot = bound(
            processes if processes is not None else seen,
            rate if rate is not None else Decimal(0),
            dearest if dearest is not None else seen_dearest,
            burn_usd_per_second=None if given else burn,
            source="given" if given else "observed",
            **dict(intervals or {}),
        )
    alerts = store.read_alerts()
    return build(budgets, reading, state, alerts, now=now, day=day, overshoot=overshoot)


def _recent_burn(
    budgets: Sequence[Budget], reading: SpendReading, state: CostState, now: datetime
) -> Decimal:
    """Micro-dollars a second since the guard last read the spend, by the budget that moved
    most."""
    read = state.read_time
    seconds = (now - read).total_seconds() if read is not None else 0
    if seconds <= 0:
        return Decimal(0)
    fastest = 0
    for budget in budgets:
        held = state.budgets.get(budget.name)
        if held is not None and held.period == budget.period_at(now).key:
            fastest = max(fastest, reading.budget_spend(budget, now) - held.spent_micros)
    return Decimal(fastest) / Decimal(str(seconds))


def _stored(store: StateStore, budgets: Sequence[Budget], day: date, now: datetime) -> SpendReading:
    wanted = {(UTC_ZONE, day.isoformat())} | {
        (b.time_zone, d) for b in budgets for d in _days(b, day)
    }
    days: list[DaySpend] = []
    for zone, local in sorted(wanted):
        key = local if zone == UTC_ZONE else f"{local}@{zone}"
        days.extend(DaySpend.from_row(row) for row in store.read_cost_metrics(key))
    return SpendReading(now, days, [])


def as_json(report: CostReport) -> dict[str, Any]:
    """The report for machines: money as exact decimal strings of USD and as micro-dollars."""

    def money(micros: int | None) -> dict[str, Any] | None:
        if micros is None:
            return None
        return {"usd": str(Decimal(micros) / 1_000_000), "micros": micros}

    overshoot = report.overshoot
    return {
        "format_version": 1,
        "date": report.date,
        "live": report.live,
        "read_at": report.read_at,
        "guard_state": {"version": report.state_version, "updated_at": report.state_updated_at},
        "total": money(report.total_micros),
        "request_types": [
            {
                "request_type": t.request_type,
                "spend": money(t.cost_micros),
                "requests": t.requests,
                "tokens": t.tokens,
            }
            for t in report.types
        ],
        "budgets": [
            {
                "name": b.name,
                "period": b.period_kind,
                "period_key": b.period,
                "time_zone": b.time_zone,
                "scope": b.scope,
                "spent": money(b.spent_micros),
                "level": b.level,
                "since": b.since or None,
                "remaining": money(b.remaining_micros),
                "limits": [
                    {
                        "name": lim.name,
                        "limit": money(lim.limit_micros),
                        "share": round(lim.share, 4),
                    }
                    for lim in b.limits
                ],
            }
            for b in report.budgets
        ],
        "held_flags": [
            {
                "flag": h.flag,
                "state": h.state,
                "budget": h.budget,
                "factor": h.factor,
                "until": h.until,
            }
            for h in report.held
        ],
        "alerts": [
            {k: a.get(k) for k in ("alert_id", "level", "message", "at", "published")}
            for a in report.alerts
        ],
        "overshoot": None
        if overshoot is None
        else {
            "bound_usd": str(overshoot.bound_usd),
            "processes": overshoot.processes,
            "spend_usd_per_second": str(overshoot.burn_usd_per_second.quantize(Decimal("0.0001"))),
            "source": overshoot.source,
            "dearest_request_usd": str(overshoot.dearest_usd),
            "delay_seconds": str(overshoot.delay_seconds),
        },
    }
