"""The rollout controller's decision: a pure function of (strategy, previous state, the checks
judged over recorded traffic, an operator's last action, now).

A gated rollout (one with health checks, rollback conditions or promotion criteria) moves only
when its checks say so: each step of a percentage schedule, or each canary stage, is taken when
its time has come *and* every check passes; a failed health check or a met rollback condition
rolls it back (or pauses it, as the condition says) and it stays back until a person resumes it;
a check without enough traffic holds it where it is. An ungated rollout follows its schedule by
time (``reconciler.runtime.rollout_state.advance``, as clients do). Operators' actions come
first, whatever the checks say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from reconciler.controllers.rollout_checks import FAIL, INSUFFICIENT, CheckResult
from reconciler.runtime.rollout_state import (
    COMPLETE,
    HOLDING,
    PAUSED,
    RAMPING,
    ROLLED_BACK,
    SCHEDULED,
    STOPPED_STATES,
    Action,
    Entry,
    Stage,
    Strategy,
    advance,
    apply_actions,
    first_entry,
    pending,
    strategy_from_item,
)

__all__ = [
    "COMPLETE",
    "HOLDING",
    "PAUSED",
    "RAMPING",
    "ROLLED_BACK",
    "SCHEDULED",
    "Action",
    "Decision",
    "Entry",
    "Stage",
    "Strategy",
    "decide",
    "first_entry",
    "strategy_from_item",
]


@dataclass(frozen=True)
class Decision:
    entry: Entry
    transition: str | None = None  # what changed, for the audit and the alert
    alert: bool = False
    results: tuple[CheckResult, ...] = field(default=())


def decide(
    strategy: Strategy,
    previous: Entry | None,
    *,
    checks: Sequence[CheckResult],
    conditions: Sequence[CheckResult],
    promotion: Sequence[CheckResult] = (),
    actions: Sequence[Action] = (),
    now: datetime,
) -> Decision:
    results = (*checks, *conditions, *promotion)
    if pending(previous, actions, now):  # operators decide, whatever the checks say
        moved, moves = apply_actions(strategy, previous, actions, now)
        said = [_said(strategy, action, before, after) for action, before, after in moves]
        words = "; ".join(s for s in said if s)
        return Decision(moved, words or None, bool(words), results)
    entry = previous or first_entry(strategy, now)
    if entry.state == SCHEDULED and (strategy.start is None or now >= strategy.start):
        entry = replace(first_entry(strategy, now), epoch=entry.epoch, acted=entry.acted)
    if entry.state in (*STOPPED_STATES, SCHEDULED):
        return Decision(entry, results=results)  # until a person resumes it (or its start)
    if not strategy.gated:
        moved = advance(strategy, entry, now)
        return Decision(moved, _change(strategy, entry, moved), moved.state == COMPLETE, results)
    for result in conditions:
        if result.outcome == FAIL:
            state = PAUSED if result.check.action == "pause" else ROLLED_BACK
            share = entry.percentage if state == PAUSED else 0.0
            why = f"rollback condition {result.describe()}"
            moved = replace(entry, state=state, percentage=share, since=now, reason=why)
            words = "paused" if state == PAUSED else "rolled back"
            return Decision(
                moved, f"{strategy.name}: {entry.state} -> {words} ({why})", True, results
            )
    for result in checks:
        if result.outcome == FAIL:
            why = f"health check {result.describe()}"
            back = replace(entry, state=ROLLED_BACK, percentage=0.0, since=now, reason=why)
            return Decision(
                back, f"{strategy.name}: {entry.state} -> rolled back ({why})", True, results
            )
    waiting = [r for r in (*checks, *promotion) if r.outcome == INSUFFICIENT]
    due = _due(strategy, entry, promotion, now)
    if not due:
        return Decision(_settled(entry, waiting, due=False), results=results)
    if waiting:
        why = "insufficient data: " + "; ".join(r.describe() for r in waiting)
        return Decision(replace(entry, state=HOLDING, reason=why), results=results)
    following = strategy.at_step(entry, entry.step + 1, now)
    return Decision(
        following, _change(strategy, entry, following), following.state == COMPLETE, results
    )


def _change(strategy: Strategy, before: Entry, after: Entry) -> str | None:
    if after.percentage == before.percentage and after.stage == before.stage:
        return None
    change = f"{strategy.name}: {before.percentage:g}% -> {after.percentage:g}%"
    return change + (f" (stage {after.stage})" if after.stage is not None else "")


def _settled(entry: Entry, waiting: Sequence[CheckResult], *, due: bool) -> Entry:
    if entry.state == COMPLETE:
        return entry
    if waiting and due:
        return replace(entry, state=HOLDING)
    if entry.state == HOLDING and not waiting:
        return replace(entry, state=RAMPING, reason="")
    return entry


def _due(strategy: Strategy, entry: Entry, promotion: Sequence[CheckResult], now: datetime) -> bool:
    """Whether the next step (or stage) is due now: its time has come and, for a canary, no
    promotion criterion fails (one that fails keeps the stage: it is not a rollback)."""
    if entry.state == COMPLETE or entry.step >= strategy.last_step:
        return False
    if now - entry.since < strategy.wait(entry):
        return False
    return not any(r.outcome == FAIL for r in promotion)


def _said(strategy: Strategy, action: Action, before: Entry, after: Entry) -> str | None:
    """What an operator's action did, for the audit and the alert (None: nothing)."""
    if (after.state, after.percentage, after.stage) == (
        before.state,
        before.percentage,
        before.stage,
    ):
        return None  # a resume of a running rollout, a pause of a paused one: noted as seen
    who = f"{action.by}: {action.reason}"
    if action.action == "abort":
        return f"{strategy.name}: aborted ({who})"
    if action.action == "pause":
        return f"{strategy.name}: paused at {after.percentage:g}% ({who})"
    if action.action == "promote":
        stage = f" (stage {after.stage})" if after.stage is not None else ""
        return f"{strategy.name}: promoted to {after.percentage:g}%{stage} ({who})"
    return f"{strategy.name}: resumed at {after.percentage:g}% by {who}"
