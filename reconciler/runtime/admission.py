"""``should_allow_request``: may a request of this type go ahead, given the budgets it counts in?

Known spend is the cost guard's count (as of when it read the telemetry) plus what this process
recorded that the guard could not have seen yet. A request is denied when known spend plus its
estimate would cross a budget's emergency limit; while a budget is throttled, only the share of
users its rollout factor keeps may go ahead: by the bucketing contract, salted by request type,
the same users whom the throttled flags of that request type keep. Spend the guard has not seen
from *other* processes is the overshoot this admits; ``reconciler.controllers.overshoot`` bounds
it.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

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


class Admission(NamedTuple):
    """The answer: allowed or not, why, and the budget closest to its limit (exact money)."""

    allowed: bool
    reason: AdmissionReason
    spent_micros: int = 0  # known spend of that budget this period
    remaining_micros: int | None = None  # before its hard limit; None: no budget counts it
    budget: str | None = None
    detail: str = ""

    @property
    def spent_usd(self) -> Decimal:
        return usd(self.spent_micros)

    @property
    def remaining_usd(self) -> Decimal | None:
        return None if self.remaining_micros is None else usd(self.remaining_micros)


@dataclass
class BudgetView:
    """One budget as admission reads it, cached until its period ends or the state changes."""

    budget: Budget
    series: tuple[str, ...] | None  # the cost series it counts; None: every one
    bucket: str
    period: str
    ends: float  # epoch seconds
    counted: int  # the guard's count for this period (0 when its state is of another one)
    emergency: bool  # the guard has shut this budget's flags down
    throttled: bool  # the guard has throttled them
    baseline: int  # own spend the guard had counted already
    hard: int | None  # the hard limit, which denies: the emergency limit
    emergency_limit: int | None
    throttle_limit: int | None
    factor: float
    salt: str  # the bucketing salt of the throttle's share: cost:<request type>


def view(
    budget: Budget,
    state: CostState,
    now: datetime,
    flushed_before: Callable[[float, str, tuple[str, ...] | None], int],
    request_type: str = "",
) -> BudgetView:
    period = budget.period_at(now)
    held: BudgetState | None = state.budgets.get(budget.name)
    if held is not None and held.period != period.key:
        held = None  # a past period's count: this one starts from nothing
    bucket_id = cost_bucket(period.today, period.time_zone)
    read = state.read_time
    series = None if budget.counts is None else tuple(f"{COST}:{t}" for t in budget.counts)
    baseline = flushed_before(read.timestamp(), bucket_id, series) if held and read else 0
    level = held.level if held is not None else "ok"
    hard = budget.emergency_micros  # a throttle never denies a request: no hard limit
    return BudgetView(
        budget,
        series,
        bucket_id,
        period.key,
        period.end.timestamp(),
        held.spent_micros if held is not None else 0,
        level == "emergency",
        level == "throttled",
        baseline,
        hard,
        budget.emergency_micros,
        budget.throttle_micros,
        budget.rollout_factor,
        f"cost:{request_type}",
    )


def admit(
    views: Sequence[BudgetView],
    estimate: int,
    unit: str | None,
    own: Callable[[str, tuple[str, ...] | None], int],
) -> Admission:
    """The answer from the budgets that count ``request_type`` (already up to date)."""
    if not views:
        return _NO_BUDGET
    tightest: BudgetView | None = None
    tightest_known = left = 0
    throttled: BudgetView | None = None
    throttled_known = 0
    for current in views:
        known = current.counted + max(own(current.bucket, current.series) - current.baseline, 0)
        if current.emergency:
            return _deny(AdmissionReason.COST_EMERGENCY, known, current, "shut down by the guard")
        limit = current.emergency_limit
        if limit is not None and known + estimate > limit:
            return _deny(AdmissionReason.BUDGET_EXCEEDED, known, current, "would cross the limit")
        if (
            current.throttled
            or (current.throttle_limit is not None and known >= current.throttle_limit)
        ) and (throttled is None or current.factor < throttled.factor):
            throttled, throttled_known = current, known
        hard = current.hard
        if hard is not None and (tightest is None or hard - known < left):
            tightest, tightest_known, left = current, known, hard - known
    if throttled is not None:
        position = bucket(throttled.salt, unit) if unit else random.random()
        if position >= throttled.factor:
            return _deny(AdmissionReason.COST_THROTTLED, throttled_known, throttled, "throttled")
    if tightest is None:
        return _WITHIN
    return Admission(
        True, AdmissionReason.WITHIN_BUDGET, tightest_known, max(left, 0), tightest.budget.name
    )


def _deny(reason: AdmissionReason, known: int, current: BudgetView, detail: str) -> Admission:
    hard = current.hard
    remaining = max(hard - known, 0) if hard is not None else None
    return Admission(False, reason, known, remaining, current.budget.name, detail)


_NO_BUDGET = Admission(True, AdmissionReason.NO_BUDGET)
_WITHIN = Admission(True, AdmissionReason.WITHIN_BUDGET)


def budgets_by_type(budgets: tuple[Budget, ...]) -> Mapping[str | None, list[Budget]]:
    """The budgets that count each request type; key None holds those that count every one."""
    found: dict[str | None, list[Budget]] = {}
    for budget in budgets:
        for key in budget.counts if budget.counts is not None else (None,):
            found.setdefault(key, []).append(budget)
    return found
