"""The cost guard's decision: a pure function of (budgets, flags, spend, previous state, now).

Per budget, the level its spend has reached this period: ``warning`` (the alert percentage of a
limit), ``throttled`` (the throttle limit: the flags it acts on keep ``rollout_factor`` of their
users) or ``emergency`` (the emergency limit: those flags are off). A new period starts from
nothing, so the guard's own state lifts at midnight of the budget's time zone; the state carries
the period's end, so clients lift it at that instant even before the guard runs again.
Alerts fire once per budget, period and alert point; the transitions are what the audit records.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from reconciler.runtime.budgets import Budget, format_usd
from reconciler.runtime.cost_state import BudgetState, CostState, describe, with_flags
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
    def subject(self) -> str:
        return f"AI cost: {self.budget} {self.point}"

    @property
    def group(self) -> str:
        return self.budget

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
    """(point, spend at which it fires), lowest first; exact integer micro-dollars."""
    points: list[tuple[str, int]] = []
    share = Decimal(str(budget.alert_percentage))
    for name, limit in (
        ("throttle", budget.throttle_micros),
        ("emergency", budget.emergency_micros),
    ):
        if limit is None:
            continue
        if share < 100:
            points.append((f"{name}-warning", int(limit * share // 100)))
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
    ai_flags: Collection[str] | None = None,
) -> Outcome:
    """The new state from the spend each budget counts this period (``spend`` by budget name);
    ``flags`` are the flags that exist (a budget may name one that is gone), ``ai_flags`` those
    with a request type, which a budget of every AI flag acts on (by default: as the budgets
    of every AI flag say)."""
    stamp = format_time(now)
    exists = set(flags)
    if ai_flags is None:
        every = [b.acts_on for b in budgets if b.every_feature]
        ai_flags = set().union(*every) & exists if every else exists
    states: dict[str, BudgetState] = {}
    transitions: list[Transition] = []
    alerts: list[Alert] = []
    for budget in budgets:
        period = budget.period_at(now)
        spent = spend.get(budget.name, 0)
        level = level_of(budget, spent)
        before = previous.budgets.get(budget.name)
        same_period = before is not None and before.period == period.key
        kept = before is not None and same_period and before.level == level
        fired = set(before.alerted) if before is not None and same_period else set()
        crossed = [(p, at) for p, at in alert_points(budget) if budget.alerting and spent >= at]
        for point, _ in crossed:
            if point in fired:
                continue  # once per period, even when a limit moves below the spend
            limit = (
                budget.throttle_micros if point.startswith("throttle") else budget.emergency_micros
            )
            assert limit is not None
            share = budget.alert_percentage if point.endswith("-warning") else 100.0
            alerts.append(
                Alert(budget.name, period.key, budget.time_zone, point, limit, spent, stamp, share)
            )
        current = BudgetState(
            budget.name,
            period.key,
            budget.time_zone,
            format_time(period.end),
            spent,
            level,
            before.since if kept and before is not None else stamp,
            tuple(sorted(fired | {p for p, _ in crossed})),
            None if budget.every_feature else tuple(sorted(budget.acts_on & exists)),
            budget.rollout_factor,
        )
        current = replace(current, detail=describe(budget, current))
        states[budget.name] = current
        was = before.level if before is not None else "ok"
        if was != level or (not same_period and before is not None and level != "ok"):
            why = describe(budget, current)
            if before is not None and not same_period:
                why = f"a new period: {why}" if level != "ok" else "a new period"
            transitions.append(Transition(f"budget/{budget.name}", was, level, why))
    for name, gone in sorted(previous.budgets.items()):
        if name not in states:  # removed from git (or renamed): its hold ends now, audited
            transitions.append(Transition(f"budget/{name}", gone.level, "removed", "not in git"))
    state = CostState(
        previous.version + 1, format_time(read_at), stamp, states, rolled_up=previous.rolled_up
    )
    old = with_flags(previous, ai_flags, now=previous.read_time or now).flags
    new = with_flags(state, ai_flags, now).flags
    for name in sorted(set(old) | set(new)):
        before_flag, after_flag = old.get(name), new.get(name)
        old_text = before_flag.state if before_flag is not None else "normal"
        new_text = after_flag.state if after_flag is not None else "normal"
        renewed = (
            before_flag is not None
            and after_flag is not None
            and before_flag.until != after_flag.until
        )
        if old_text != new_text or renewed:
            if after_flag is not None:
                detail = after_flag.detail
            elif before_flag is not None and not before_flag.in_force(now):
                detail = "the period ended"
            else:
                detail = "spend back under every limit"
            transitions.append(Transition(f"flag/{name}", old_text, new_text, detail))
    changed = _content(state) != _content(previous)
    return Outcome(replace(state, flags=new), tuple(transitions), tuple(alerts), changed)


def _content(state: CostState) -> Any:
    item = state.to_item()
    for key in ("version", "read_at", "updated_at"):
        item.pop(key, None)
    return item
