"""The cost guard's state: what spend means now, as the guard writes it and the runtime reads it.

One record of the control table (``cost_guard``), written only by the cost guard, read by every
runtime client on its short poll. Per budget: the period, the spend the guard counted and when it
read it, the level reached and the alert points fired. The record stays small however many flags
there are: what it means for each flag (throttled by a factor, or shut down, until the period
ends) is derived from the budgets' scopes, here, by the guard and the clients alike; a client
lifts an expired state by itself at midnight, before the guard's next run.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from reconciler.runtime.budgets import Budget, format_usd

COST_GUARD_ID = "cost_guard"
LEVELS = ("ok", "warning", "throttled", "emergency")  # in rising order


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class BudgetState:
    name: str
    period: str  # 2026-12-01, or 2026-12 for a monthly budget
    time_zone: str
    period_end: str
    spent_micros: int
    level: str  # one of LEVELS
    since: str  # when this level was reached
    alerted: tuple[str, ...] = ()  # the alert points fired this period
    # What the level means for flags, stored with it so that every reader agrees whatever
    # configuration it holds (a budget renamed or removed in git still holds until the guard
    # decides again): the flags it acts on (None: every AI flag), the share a throttle keeps.
    scope: tuple[str, ...] | None = None
    factor: float = 0.5
    detail: str = ""

    def to_item(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "time_zone": self.time_zone,
            "period_end": self.period_end,
            "spent_micros": self.spent_micros,
            "level": self.level,
            "since": self.since,
            "alerted": list(self.alerted),
            "scope": "all" if self.scope is None else list(self.scope),
            "factor": self.factor,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class FlagCost:
    """A flag throttled or shut down by a budget, until ``until``: derived, never stored."""

    flag: str
    state: str  # throttled | emergency
    budget: str
    factor: float  # the share of users kept: 0 when shut down
    until: str
    detail: str
    since: str

    def in_force(self, now: datetime) -> bool:
        until = parse_time(self.until)
        return until is None or now < until


@dataclass(frozen=True)
class CostState:
    version: int = 0
    read_at: str = ""  # when the guard read the telemetry these figures come from
    updated_at: str = ""
    budgets: Mapping[str, BudgetState] = field(default_factory=dict)
    # Derived, never stored: the worst verdict on each flag (``with_flags``).
    flags: Mapping[str, FlagCost] = field(default_factory=dict)
    rolled_up: Mapping[str, str] = field(default_factory=dict)  # zone -> last day summed whole

    def to_item(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "read_at": self.read_at,
            "updated_at": self.updated_at,
            "budgets": {name: b.to_item() for name, b in sorted(self.budgets.items())},
            "rolled_up": dict(sorted(self.rolled_up.items())),
        }

    @property
    def read_time(self) -> datetime | None:
        return parse_time(self.read_at)


def cost_state_from_item(item: Mapping[str, Any] | None) -> CostState:
    """The record as stored; entries that cannot be read are left out, never raised."""
    if not item:
        return CostState()
    budgets = {}
    for name, entry in (item.get("budgets") or {}).items():
        try:
            budgets[str(name)] = BudgetState(
                str(name),
                str(entry["period"]),
                str(entry.get("time_zone", "UTC")),
                str(entry.get("period_end", "")),
                int(entry.get("spent_micros", 0)),
                str(entry.get("level", "ok")),
                str(entry.get("since", "")),
                tuple(str(a) for a in entry.get("alerted") or ()),
                _scope(entry.get("scope", "all")),
                float(entry.get("factor", 0.5)),
                str(entry.get("detail", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    rolled = item.get("rolled_up") if isinstance(item.get("rolled_up"), Mapping) else {}
    return CostState(
        int(item.get("version", 0)),
        str(item.get("read_at", "")),
        str(item.get("updated_at", "")),
        budgets,
        rolled_up={str(k): str(v) for k, v in (rolled or {}).items()},
    )


def describe(budget: Budget, state: BudgetState) -> str:
    """``ai_daily_budget: $104.00 spent (throttle $100.00, emergency $500.00; daily ...)``."""
    limits = [
        f"{name} {format_usd(limit)}"
        for name, limit in (
            ("throttle", budget.throttle_micros),
            ("emergency", budget.emergency_micros),
        )
        if limit is not None
    ]
    return (
        f"{budget.name}: {format_usd(state.spent_micros)} spent ({', '.join(limits)}; "
        f"{budget.period} {state.period} {state.time_zone})"
    )


def _scope(value: Any) -> tuple[str, ...] | None:
    if value == "all" or value is None:
        return None
    return tuple(str(flag) for flag in value)


def flag_verdicts(state: CostState, ai_flags: Collection[str]) -> dict[str, list[FlagCost]]:
    """Every verdict on every flag a throttled or shut-down budget acts on, worst first; a
    budget of every AI flag acts on ``ai_flags`` (the flags that declare a request type)."""
    held: dict[str, list[FlagCost]] = {}
    for current in state.budgets.values():
        if current.level not in ("throttled", "emergency"):
            continue
        kind = "emergency" if current.level == "emergency" else "throttled"
        factor = 0.0 if kind == "emergency" else current.factor
        detail = current.detail or f"cost budget {current.name}"
        for flag in sorted(ai_flags if current.scope is None else current.scope):
            verdict = FlagCost(
                flag, kind, current.name, factor, current.period_end, detail, current.since
            )
            held.setdefault(flag, []).append(verdict)
    for verdicts in held.values():
        verdicts.sort(key=lambda v: (LEVELS.index(v.state), -v.factor), reverse=True)
    return held


def with_flags(state: CostState, ai_flags: Collection[str], now: datetime) -> CostState:
    """The state with each flag's worst verdict in force at ``now``."""
    worst = {}
    for flag, verdicts in flag_verdicts(state, ai_flags).items():
        live = [v for v in verdicts if v.in_force(now)]
        if live:
            worst[flag] = live[0]
    return replace(state, flags=worst)
