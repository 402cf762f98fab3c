"""``should_allow_request``: may a request of this type go ahead, given the budgets it counts in?

Known spend is the cost guard's count (as of when it read the telemetry) plus what this process
recorded that the guard could not have seen yet. A request is denied when known spend plus its
estimate would cross a budget's emergency limit; while a budget is throttled, only the share of
users its rollout factor keeps may go ahead (by the bucketing contract, salted by request type,
so the same users keep the feature). Spend the guard has not seen from *other* processes is the
overshoot this admits; ``reconciler.controllers.overshoot`` bounds it.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from reconciler.runtime.bucketing import bucket
from reconciler.runtime.budgets import Budget, usd
from reconciler.runtime.cost_state import BudgetState, CostState
from reconciler.runtime.telemetry import COST, cost_bucket


class AdmissionReason(enum.StrEnum):
    WITHIN_BUDGET = "WITHIN_BUDGET"
    NO_BUDGET = "NO_BUDGET"  # no budget counts this request type
    COST_THROTTLED = "COST_THROTTLED"  # throttled, and this user is outside the reduced share
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"  # known spend + the estimate would cross the limit
    COST_EMERGENCY = "COST_EMERGENCY"  # the guard has shut the budget's features down
    EMERGENCY_SHUTDOWN = "EMERGENCY_SHUTDOWN"  # break-glass: everything is off
    ERROR = "ERROR"


@dataclass(frozen=True)
class Admission:
    allowed: bool
    reason: AdmissionReason
    spent_usd: Decimal  # known spend of the budget closest to its limit, this period
    remaining_usd: Decimal | None  # before that budget's hard limit; None: no budget
    budget: str | None = None
    detail: str = ""


@dataclass
class BudgetView:
    """One budget as admission reads it, cached until its period ends or the state changes."""

    budget: Budget
    series: tuple[str, ...] | None  # the cost series it counts; None: every one
    bucket: str
    period: str
    ends: float  # epoch seconds
    state: BudgetState | None  # the guard's, if it is for this period
    baseline: int  # own spend the guard had counted already
    limit: int | None  # the hard limit (emergency, else throttle)


OwnSpend = Callable[[str, tuple[str, ...] | None], int]


def view(
    budget: Budget,
    state: CostState,
    now: datetime,
    flushed_before: Callable[[float, str, tuple[str, ...] | None], int],
) -> BudgetView:
    period = budget.period_at(now)
    held = state.budgets.get(budget.name)
    if held is not None and held.period != period.key:
        held = None  # a past period's count: this one starts from nothing
    bucket_id = cost_bucket(period.today, period.time_zone)
    read = state.read_time
    series = None if budget.counts is None else tuple(f"{COST}:{t}" for t in budget.counts)
    baseline = flushed_before(read.timestamp(), bucket_id, series) if held and read else 0
    limit = budget.emergency_micros if budget.emergency_micros is not None else None
    return BudgetView(
        budget, series, bucket_id, period.key, period.end.timestamp(), held, baseline, limit
    )


def admit(
    views: list[BudgetView],
    estimate: int,
    unit: str | None,
    request_type: str,
    own_spend: OwnSpend,
) -> Admission:
    """The answer from the budgets that count ``request_type`` (already up to date)."""
    if not views:
        return Admission(True, AdmissionReason.NO_BUDGET, Decimal(0), None)
    tightest: tuple[int, int, BudgetView] | None = None
    throttled: BudgetView | None = None
    for current in views:
        budget = current.budget
        own = own_spend(current.bucket, current.series) - current.baseline
        known = (current.state.spent_micros if current.state else 0) + max(own, 0)
        level = current.state.level if current.state else "ok"
        if level == "emergency":
            return _deny(AdmissionReason.COST_EMERGENCY, known, current, "shut down by the guard")
        limit = current.limit
        if limit is not None and known + estimate > limit:
            return _deny(
                AdmissionReason.BUDGET_EXCEEDED,
                known,
                current,
                f"known spend {usd(known)} + estimate {usd(estimate)} > limit {usd(limit)}",
            )
        over = budget.throttle_micros is not None and known >= budget.throttle_micros
        tighter = throttled is None or budget.rollout_factor < throttled.budget.rollout_factor
        if (level == "throttled" or over) and tighter:
            throttled = current
        hard = limit if limit is not None else budget.throttle_micros
        if hard is not None and (tightest is None or hard - known < tightest[0] - tightest[1]):
            tightest = (hard, known, current)
    if throttled is not None:
        factor = throttled.budget.rollout_factor
        position = bucket(f"cost:{request_type}", unit) if unit else random.random()
        if position >= factor:
            own = own_spend(throttled.bucket, throttled.series) - throttled.baseline
            spent = (throttled.state.spent_micros if throttled.state else 0) + max(own, 0)
            return _deny(
                AdmissionReason.COST_THROTTLED,
                spent,
                throttled,
                f"throttled to {factor:.0%} of users",
            )
    if tightest is None:
        return Admission(True, AdmissionReason.WITHIN_BUDGET, Decimal(0), None)
    hard, known, current = tightest
    return Admission(
        True, AdmissionReason.WITHIN_BUDGET, usd(known), usd(hard - known), current.budget.name
    )


def _deny(reason: AdmissionReason, known: int, current: BudgetView, detail: str) -> Admission:
    hard = current.limit if current.limit is not None else current.budget.throttle_micros
    remaining = usd(max(hard - known, 0)) if hard is not None else None
    return Admission(False, reason, usd(known), remaining, current.budget.name, detail)


def budgets_by_type(budgets: tuple[Budget, ...]) -> Mapping[str | None, list[Budget]]:
    """The budgets that count each request type; key None holds those that count every one."""
    found: dict[str | None, list[Budget]] = {}
    for budget in budgets:
        for key in budget.counts if budget.counts is not None else (None,):
            found.setdefault(key, []).append(budget)
    return found


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
