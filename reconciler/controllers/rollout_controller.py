"""The rollout controller's decision: a pure function of (strategy, previous state, the checks
judged over recorded traffic, an operator's last action, now).

A gated rollout (one with health checks, rollback conditions or promotion criteria) moves only
when its checks say so: each step of a percentage schedule, or each canary stage, is taken when
its time has come *and* every check passes; a failed health check or a met rollback condition
rolls it back (or pauses it, as the condition says) and it stays back until a person resumes it;
a check without enough traffic holds it where it is. The state says the percentage (or stage)
the runtime serves, so clients follow the controller, not the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from reconciler.controllers.rollout_checks import FAIL, INSUFFICIENT, CheckResult

SCHEDULED = "scheduled"  # before its start time: nobody
RAMPING = "ramping"
HOLDING = "holding"  # a check has too little traffic: no step until it has
PAUSED = "paused"
ROLLED_BACK = "rolled_back"
COMPLETE = "complete"


@dataclass(frozen=True)
class Stage:
    name: str
    percentage: float
    min_hours: float = 0.0


@dataclass(frozen=True)
class Strategy:
    name: str
    flag: str
    rollout_type: str  # percentage | targeting | canary
    initial: float
    increment: float
    interval_hours: float
    maximum: float
    start: datetime | None = None
    stages: tuple[Stage, ...] = ()

    def step_percentage(self, step: int) -> float:
        return min(self.maximum, self.initial + self.increment * step)

    @property
    def last_step(self) -> int:
        if self.increment <= 0:
            return 0
        return max(0, int(-(-(self.maximum - self.initial) // self.increment)))


@dataclass(frozen=True)
class Entry:
    """Where a rollout is: the state, the share the runtime serves, the step or stage it is
    on and since when, and why."""

    state: str
    percentage: float
    since: datetime
    step: int = 0
    stage: str | None = None
    reason: str = ""
    epoch: int = 0  # operator resumes so far

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "state": self.state,
            "percentage": self.percentage,
            "since": self.since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "step": self.step,
            "reason": self.reason,
            "epoch": self.epoch,
        }
        if self.stage is not None:
            item["stage"] = self.stage
        return item


@dataclass(frozen=True)
class Action:
    """An operator's last word on a strategy: pause, resume, abort or promote, and when."""

    action: str
    at: datetime
    by: str
    reason: str
    epoch: int = 0  # the resume count after this action


@dataclass(frozen=True)
class Decision:
    entry: Entry
    transition: str | None = None  # what changed, for the audit and the alert
    alert: bool = False
    results: tuple[CheckResult, ...] = field(default=())


def first_entry(strategy: Strategy, now: datetime) -> Entry:
    """A rollout the controller has not seen yet: its first step or stage, from its start."""
    start = strategy.start
    if start is not None and now < start:
        return Entry(SCHEDULED, 0.0, start, reason=f"starts at {start.isoformat()}")
    since = start if start is not None and strategy.stages else now
    if strategy.stages:
        first = strategy.stages[0]
        return Entry(RAMPING, first.percentage, since, stage=first.name)
    return Entry(RAMPING, strategy.initial, now)


def decide(
    strategy: Strategy,
    previous: Entry | None,
    *,
    checks: Sequence[CheckResult],
    conditions: Sequence[CheckResult],
    promotion: Sequence[CheckResult] = (),
    action: Action | None = None,
    now: datetime,
) -> Decision:
    entry = previous or first_entry(strategy, now)
    results = (*checks, *conditions, *promotion)
    if entry.state == SCHEDULED:
        if strategy.start is not None and now < strategy.start:
            return Decision(entry, results=results)
        entry = replace(first_entry(strategy, now), epoch=entry.epoch)
    acted = _operator(strategy, entry, action, now)
    if acted is not None:
        return replace(acted, results=results)
    if entry.state in (ROLLED_BACK, PAUSED):
        return Decision(entry, results=results)  # until a person resumes it
    for result in conditions:
        if result.outcome == FAIL:
            state = PAUSED if result.check.action == "pause" else ROLLED_BACK
            share = entry.percentage if state == PAUSED else 0.0
            why = f"rollback condition {result.describe()}"
            moved = replace(entry, state=state, percentage=share, since=now, reason=why)
            return Decision(
                moved, f"{strategy.name}: {entry.state} -> {state} ({why})", True, results
            )
    for result in checks:
        if result.outcome == FAIL:
            why = f"health check {result.describe()}"
            back = replace(entry, state=ROLLED_BACK, percentage=0.0, since=now, reason=why)
            return Decision(
                back, f"{strategy.name}: {entry.state} -> rolled back ({why})", True, results
            )
    waiting = [r for r in (*checks, *promotion) if r.outcome == INSUFFICIENT]
    due, next_entry = _next(strategy, entry, promotion, now)
    if not due or next_entry is None:
        return Decision(_settled(entry, waiting, due), results=results)
    if waiting:
        why = "insufficient data: " + "; ".join(r.describe() for r in waiting)
        return Decision(replace(entry, state=HOLDING, reason=why), results=results)
    change = f"{strategy.name}: {entry.percentage:g}% -> {next_entry.percentage:g}%"
    if next_entry.stage is not None:
        change += f" (stage {next_entry.stage})"
    return Decision(next_entry, change, next_entry.state == COMPLETE, results)


def _settled(entry: Entry, waiting: Sequence[CheckResult], due: bool) -> Entry:
    if entry.state == COMPLETE:
        return entry
    if waiting and due:
        return replace(entry, state=HOLDING)
    return replace(entry, state=RAMPING) if entry.state == HOLDING and not waiting else entry


def _next(
    strategy: Strategy, entry: Entry, promotion: Sequence[CheckResult], now: datetime
) -> tuple[bool, Entry | None]:
    """Whether the next step (or stage) is due now, and what it is."""
    if entry.state == COMPLETE:
        return False, None
    if strategy.stages:
        names = [s.name for s in strategy.stages]
        index = names.index(entry.stage) if entry.stage in names else 0
        stage = strategy.stages[index]
        if index + 1 >= len(strategy.stages):
            return False, None
        if now - entry.since < timedelta(hours=stage.min_hours):
            return False, None
        if any(r.outcome == FAIL for r in promotion):
            return False, None  # not promoted: the criteria do not hold (not a rollback)
        following = strategy.stages[index + 1]
        state = COMPLETE if index + 2 >= len(strategy.stages) else RAMPING
        return True, replace(
            entry, state=state, percentage=following.percentage, stage=following.name, since=now
        )
    if entry.step >= strategy.last_step:
        return False, None
    if now - entry.since < timedelta(hours=strategy.interval_hours):
        return False, None
    step = entry.step + 1
    share = strategy.step_percentage(step)
    state = COMPLETE if step >= strategy.last_step else RAMPING
    return True, replace(entry, state=state, percentage=share, step=step, since=now, reason="")


def _operator(
    strategy: Strategy, entry: Entry, action: Action | None, now: datetime
) -> Decision | None:
    """An operator's action newer than the state: it decides, whatever the checks say."""
    if action is None or action.at <= entry.since:
        return None
    who = f"{action.by}: {action.reason}"
    if action.action == "abort":
        back = replace(
            entry, state=ROLLED_BACK, percentage=0.0, since=now, reason=f"aborted by {who}"
        )
        return Decision(back, f"{strategy.name}: aborted ({who})", True)
    if action.action == "pause":
        held = replace(entry, state=PAUSED, since=now, reason=f"paused by {who}")
        return Decision(held, f"{strategy.name}: paused at {entry.percentage:g}% ({who})", True)
    if action.action == "resume" and entry.state in (ROLLED_BACK, PAUSED):
        if entry.state == ROLLED_BACK:  # from the first step again: the same users come back
            restart = replace(first_entry(replace(strategy, start=None), now), epoch=action.epoch)
        else:
            restart = replace(entry, state=RAMPING, since=now, reason="", epoch=action.epoch)
        return Decision(restart, f"{strategy.name}: resumed by {who}", True)
    if action.action == "promote":
        forced = _next(
            strategy, replace(entry, since=datetime.min.replace(tzinfo=now.tzinfo)), (), now
        )[1]
        if forced is not None:
            moved = replace(forced, reason=f"promoted by {who}")
            return Decision(
                moved, f"{strategy.name}: promoted to {forced.percentage:g}% ({who})", True
            )
    return None


def strategy_from_item(item: Mapping[str, Any]) -> Strategy:
    conf = item.get("configuration") or {}
    start = conf.get("start_time")
    stages = tuple(
        Stage(str(s["name"]), float(s["percentage"]), float(s.get("min_duration_hours", 0)))
        for s in conf.get("stages") or []
    )
    return Strategy(
        name=str(item["strategy_name"]),
        flag=str(item["feature_flag"]),
        rollout_type=str(item.get("rollout_type", "percentage")),
        initial=float(conf.get("percentage", 100)),
        increment=float(conf.get("increment_percentage", 0)),
        interval_hours=float(conf.get("increment_interval_hours", 24)),
        maximum=float(conf.get("max_percentage", 100)),
        start=datetime.fromisoformat(str(start).replace("Z", "+00:00")) if start else None,
        stages=stages if item.get("rollout_type") == "canary" else (),
    )
