"""The rollout controller's decision: a pure function of (strategy, previous state, the checks
judged over recorded traffic, an operator's last action, now).

A gated rollout (one with health checks, rollback conditions or promotion criteria) moves only
when its checks say so: each step of a percentage schedule, or each canary stage, is taken when
its time has come *and* every check passes; a failed health check or a met rollback condition
rolls it back (or pauses it, as the condition says) and it stays back until a person resumes it;
a check without enough traffic holds it where it is. An ungated rollout follows its schedule by
time (``reconciler.runtime.rollout_state.apply_actions``, as clients do). Operators' actions come
first, whatever the checks say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from reconciler.controllers.rollout_checks import FAIL, INSUFFICIENT, PASS, CheckResult
from reconciler.runtime.rollout_state import (
    COMPLETE,
    HOLDING,
    NOT_WATCHED,
    PAUSED,
    RAMPING,
    ROLLED_BACK,
    SCHEDULED,
    STOPPED_STATES,
    Action,
    Entry,
    Stage,
    Strategy,
    apply_actions,
    first_entry,
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
    """The rollout's next state. The entry it returns is stamped with the schedule it was
    decided for (``Entry.schedule``), so that a change in git is taken up (``realign``)."""
    decided = _decide(strategy, previous, checks, conditions, promotion, actions, now)
    entry = replace(decided.entry, schedule=strategy.fingerprint)
    return replace(decided, entry=entry, results=(*checks, *conditions, *promotion))


def _decide(  # noqa: PLR0917 - decide's arguments, passed on
    strategy: Strategy,
    previous: Entry | None,
    checks: Sequence[CheckResult],
    conditions: Sequence[CheckResult],
    promotion: Sequence[CheckResult],
    actions: Sequence[Action],
    now: datetime,
) -> Decision:
    # Operators first, whatever the checks say: their actions in order, as clients apply them.
    entry, moves = apply_actions(strategy, previous, actions, now)
    if entry.reason == NOT_WATCHED:
        entry = replace(entry, reason="")  # judged from now on
    said = [s for s in (_said(strategy, a, before, after) for a, before, after in moves) if s]
    edited = previous is not None and previous.schedule not in (None, strategy.fingerprint)
    if not said and previous is not None and edited:
        realigned = _change(strategy, previous, entry)  # git changed the schedule
        said = [f"{realigned} (the schedule changed in git)"] if realigned else []
    if not strategy.gated:  # moved by time already, as clients move it: say how far
        since = previous if previous is not None and not said else entry
        change = _change(strategy, since, entry)
        return _with(Decision(entry, change, change is not None and entry.state == COMPLETE), said)
    if entry.state in (*STOPPED_STATES, SCHEDULED, COMPLETE):
        # Until a person resumes it, or its start; a complete rollout is over (its checks
        # are not acted on: a later outage is for break-glass or a budget, not a rollback).
        return _with(Decision(entry), said)
    if any(a.action in ("resume", "abort") for a, _, _ in moves):
        return _with(Decision(entry), said)  # judged on data from the resume on, next run
    for result in conditions:
        if result.outcome == FAIL:
            state = PAUSED if result.check.action == "pause" else ROLLED_BACK
            share = entry.percentage if state == PAUSED else 0.0
            why = f"rollback condition {result.describe()}"
            moved = replace(entry, state=state, percentage=share, since=now, reason=why)
            words = "paused" if state == PAUSED else "rolled back"
            return _with(
                Decision(moved, f"{strategy.name}: {entry.state} -> {words} ({why})", True), said
            )
    for result in checks:
        if result.outcome == FAIL:
            why = f"health check {result.describe()}"
            back = replace(entry, state=ROLLED_BACK, percentage=0.0, since=now, reason=why)
            return _with(
                Decision(back, f"{strategy.name}: {entry.state} -> rolled back ({why})", True), said
            )
    entry = _passing(entry, promotion, now)
    waiting = [r for r in (*checks, *conditions, *promotion) if r.outcome == INSUFFICIENT]
    if not _due(strategy, entry, promotion, now):
        if entry.state == HOLDING and not waiting:
            entry = replace(entry, state=RAMPING, reason="")
        return _with(Decision(entry), said)
    if waiting:
        why = "insufficient data: " + "; ".join(r.describe() for r in waiting)
        return _with(Decision(replace(entry, state=HOLDING, reason=why)), said)
    following = strategy.at_step(entry, entry.step + 1, now)
    change = _change(strategy, entry, following)
    return _with(Decision(following, change, following.state == COMPLETE), said)


def _with(decision: Decision, said: Sequence[str]) -> Decision:
    """The decision with the operators' (or git's) moves before its own."""
    if not said:
        return decision
    words = "; ".join([*said, *([decision.transition] if decision.transition else [])])
    return replace(decision, transition=words, alert=True)


def _passing(entry: Entry, promotion: Sequence[CheckResult], now: datetime) -> Entry:
    """Since when every promotion criterion has passed (reset by a failed or inconclusive
    one): a canary stage is promoted only after they held for its minimum duration."""
    if not promotion:
        return entry
    if all(r.outcome == PASS for r in promotion):
        return entry if entry.passing is not None else replace(entry, passing=now)
    return replace(entry, passing=None)


def _change(strategy: Strategy, before: Entry, after: Entry) -> str | None:
    if after.percentage == before.percentage and after.stage == before.stage:
        return None
    change = f"{strategy.name}: {before.percentage:g}% -> {after.percentage:g}%"
    return change + (f" (stage {after.stage})" if after.stage is not None else "")


def _due(strategy: Strategy, entry: Entry, promotion: Sequence[CheckResult], now: datetime) -> bool:
    """Whether the next step (or stage) is due now: its time has come and, for a canary with
    promotion criteria, they have all passed for its minimum duration (one that fails keeps
    the stage: it is not a rollback)."""
    if entry.state == COMPLETE or entry.step >= strategy.last_step:
        return False
    wait = strategy.wait(entry)
    if now - entry.since < wait:
        return False
    if promotion:
        return entry.passing is not None and now - entry.passing >= wait
    return True


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
