"""The cost guard's decision: a pure function of (budgets, flags, spend, previous state, now).

Per budget, the level its spend has reached this period: ``warning`` (the alert percentage of a
limit), ``throttled`` (the throttle limit: the flags it acts on keep ``rollout_factor`` of their
users) or ``emergency`` (the emergency limit: those flags are off). A new period starts from
nothing, so the guard's own state lifts at midnight of the budget's time zone; the state carries
the period's end, so clients lift it at that instant even before the guard runs again.
Alerts fire once per budget, period and alert point; the transitions are what the audit records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.runtime.budgets import Budget, Period, format_usd
from reconciler.runtime.cost_state import LEVELS, BudgetState, CostState, FlagCost
from reconciler.state.records import format_time


@dataclass(frozen=True)
class Alert:
    """One alert point crossed in one period: fired once, by whichever guard records it first."""

    budget: str
    period: str
    time_zone: str
    point: str  # throttle-warning | throttle | emergency-warning | emergency
    limit_micros: int
    spent_micros: int
    at: str
    percentage: float = 100.0  # of the limit, where the alert point is

    @property
    def alert_id(self) -> str:
        return f"{self.budget}/{self.period}@{self.time_zone}/{self.point}"

    @property
    def message(self) -> str:
        share = f"{self.percentage:g}%"
        what = {
            "throttle-warning": f"reached {share} of its throttle limit",
            "throttle": "reached its throttle limit: AI rollouts in scope are reduced",
            "emergency-warning": f"reached {share} of its emergency limit",
            "emergency": "reached its emergency limit: AI features in scope are shut down",
        }[self.point]
        return (
            f"Cost budget {self.budget} {what}: {format_usd(self.spent_micros)} spent of "
            f"{format_usd(self.limit_micros)} ({self.period}, {self.time_zone})."
        )

    def to_item(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "threshold_name": self.budget,
            "period": self.period,
            "time_zone": self.time_zone,
            "level": self.point,
            "limit_micros": self.limit_micros,
            "spent_micros": self.spent_micros,
            "message": self.message,
            "percentage": self.percentage,
            "at": self.at,
            "published": False,
        }


@dataclass(frozen=True)
class Transition:
    """A change the guard made: a budget's level, or a flag's cost state."""

    target: str  # budget/<name> or flag/<name>
    before: str
    after: str
    detail: str

    def describe(self) -> str:
        return f"{self.target}: {self.before} -> {self.after} ({self.detail})"


@dataclass(frozen=True)
class Outcome:
    state: CostState
    transitions: tuple[Transition, ...]
    alerts: tuple[Alert, ...]
    changed: bool  # the state differs from the previous one (besides stamps)


def alert_points(budget: Budget) -> list[tuple[str, int]]:
    """(point, spend at which it fires), lowest first."""
    points: list[tuple[str, int]] = []
    share = budget.alert_percentage / 100
    for name, limit in (
        ("throttle", budget.throttle_micros),
        ("emergency", budget.emergency_micros),
    ):
        if limit is None:
            continue
        if share < 1:
            points.append((f"{name}-warning", int(limit * share)))
        points.append((name, limit))
    return sorted(points, key=lambda p: p[1])


def level_of(budget: Budget, spent: int) -> str:
    if budget.emergency_micros is not None and spent >= budget.emergency_micros:
        return "emergency"
    if budget.throttle_micros is not None and spent >= budget.throttle_micros:
        return "throttled"
    if budget.alerting and any(spent >= at for _, at in alert_points(budget)):
        return "warning"
    return "ok"


def decide(
    budgets: Sequence[Budget],
    flags: Sequence[str],
    spend: Mapping[str, int],
    previous: CostState,
    *,
    now: datetime,
    read_at: datetime,
) -> Outcome:
    """The new state from the spend each budget counts this period (``spend`` by budget name)."""
    stamp = format_time(now)
    states: dict[str, BudgetState] = {}
    periods: dict[str, Period] = {}
    transitions: list[Transition] = []
    alerts: list[Alert] = []
    for budget in budgets:
        period = periods[budget.name] = budget.period_at(now)
        spent = spend.get(budget.name, 0)
        level = level_of(budget, spent)
        before = previous.budgets.get(budget.name)
        same_period = before is not None and before.period == period.key
        old_level = before.level if before is not None and same_period else "ok"
        since = before.since if before is not None and same_period and old_level == level else stamp
        states[budget.name] = BudgetState(
            budget.name, period.key, budget.time_zone, format_time(period.end), spent, level, since
        )
        was = before.level if before is not None else "ok"
        if was != level:
            new_period = before is not None and not same_period
            why = "a new period" if new_period else describe(budget, spent, period)
            transitions.append(Transition(f"budget/{budget.name}", was, level, why))
        previously = before.spent_micros if same_period and before is not None else -1
        for point, at in alert_points(budget) if budget.alerting else ():
            if spent >= at > previously:  # crossed since the last run
                limit = (
                    budget.throttle_micros
                    if point.startswith("throttle")
                    else budget.emergency_micros
                )
                assert limit is not None
                share = budget.alert_percentage if point.endswith("-warning") else 100.0
                alerts.append(
                    Alert(
                        budget.name, period.key, budget.time_zone, point, limit, spent, stamp, share
                    )
                )
    held = _flag_states(
        budgets, flags, states=states, periods=periods, previous=previous, stamp=stamp
    )
    for name in sorted(set(held) | set(previous.flags)):
        old, new = previous.flags.get(name), held.get(name)
        old_text = old.state if old is not None else "normal"
        new_text = new.state if new is not None else "normal"
        if old_text != new_text:
            ended = old is not None and not old.in_force(now)
            detail = (
                new.detail
                if new is not None
                else ("the period ended" if ended else "spend back under every limit")
            )
            transitions.append(Transition(f"flag/{name}", old_text, new_text, detail))
    state = CostState(previous.version + 1, format_time(read_at), stamp, states, held)
    changed = _content(state) != _content(previous)
    return Outcome(state, tuple(transitions), tuple(alerts), changed)


def describe(budget: Budget, spent: int, period: Period) -> str:
    limits = [
        f"{name} {format_usd(limit)}"
        for name, limit in (
            ("throttle", budget.throttle_micros),
            ("emergency", budget.emergency_micros),
        )
        if limit is not None
    ]
    kind = "monthly" if budget.period == "monthly" else "daily"
    return (
        f"{budget.name}: {format_usd(spent)} spent ({', '.join(limits)}; {kind} "
        f"{period.key} {period.time_zone})"
    )


def _flag_states(
    budgets: Sequence[Budget],
    flags: Sequence[str],
    *,
    states: Mapping[str, BudgetState],
    periods: Mapping[str, Period],
    previous: CostState,
    stamp: str,
) -> dict[str, FlagCost]:
    held: dict[str, FlagCost] = {}
    for flag in flags:
        worst: FlagCost | None = None
        for budget in budgets:
            state = states[budget.name]
            if not budget.acts_on_flag(flag) or state.level not in ("throttled", "emergency"):
                continue
            kind = "emergency" if state.level == "emergency" else "throttled"
            factor = 0.0 if kind == "emergency" else budget.rollout_factor
            candidate = FlagCost(
                flag,
                kind,
                budget.name,
                factor,
                state.period_end,
                describe(budget, state.spent_micros, periods[budget.name]),
                stamp,
            )
            if worst is None or _rank(candidate) > _rank(worst):
                worst = candidate
        if worst is not None:
            before = previous.flags.get(flag)
            if before is not None and (before.state, before.budget) == (worst.state, worst.budget):
                worst = FlagCost(
                    flag,
                    worst.state,
                    worst.budget,
                    worst.factor,
                    worst.until,
                    worst.detail,
                    before.since,
                )
            held[flag] = worst
    return held


def _rank(held: FlagCost) -> tuple[int, float]:
    """Emergency over throttle; of two throttles, the one that keeps fewer users."""
    return (LEVELS.index(held.state), -held.factor)


def _content(state: CostState) -> Any:
    item = state.to_item()
    for key in ("version", "read_at", "updated_at"):
        item.pop(key, None)
    for flag in item["flags"].values():
        flag.pop("detail", None)  # the spend in the text changes every run; the state does not
    return item
