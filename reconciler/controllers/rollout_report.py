"""Where every active rollout is now, as clients serve it: the state and share (``serve``), the
step or stage and since when, why, the rollout controller's last checks, an operator's action
not taken by the controller yet, and the next step with when it is due (or how to resume).

``read_status`` reads the store; ``build`` is pure; ``reconciler.render.rollout`` prints it.
The strategy is read as clients read it (the ``rollout`` their flag's item carries, with the
flag's ``created_at`` as the start of a schedule without one), so the report says what they
serve.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.controllers.rollout_run import watched_strategies
from reconciler.errors import UserError
from reconciler.runtime.rollout_state import (
    CONTROLLER,
    CONTROLLER_ID,
    HOLDING,
    OPERATOR,
    RAMPING,
    ROLLED_BACK,
    SCHEDULED,
    STOPPED_STATES,
    Action,
    Entry,
    Strategy,
    actions_from_item,
    entries_from_item,
    holder,
    pending,
    serve,
    valid_until,
)
from reconciler.state.records import RecordKind
from reconciler.state.store import StateStore

__all__ = ["CONTROLLER", "OPERATOR", "NextStep", "RolloutReport", "RolloutStatus", "read_status"]


@dataclass(frozen=True)
class NextStep:
    """The step (or canary stage) a rollout takes next, and when."""

    percentage: float
    stage: str | None
    at: datetime  # when it is due (for a gated rollout: at the earliest)
    gated: bool  # taken only if every check passes, at a run of the controller


@dataclass(frozen=True)
class RolloutStatus:
    """One active strategy now, as clients serve it."""

    strategy: str
    flag: str
    rollout_type: str
    gated: bool
    state: str
    percentage: float  # the share served now
    step: int
    stage: str | None
    since: datetime
    reason: str
    judged: bool  # the controller has written an entry for it
    held_by: str | None  # OPERATOR or CONTROLLER while paused, rolled back or holding
    action: Action | None  # the operators' last action
    pending: Action | None  # the last of those the controller has not taken yet
    checked_at: str | None
    checks: tuple[Mapping[str, Any], ...]  # the controller's last, as it recorded them
    alert: str | None
    next: NextStep | None
    resume_percentage: float | None  # while paused or rolled back: served again on resume
    resume_restarts: bool = False  # a resume starts it over at its first step

    @property
    def watched(self) -> bool:
        return self.judged or not self.gated

    @property
    def resume_command(self) -> str | None:
        if self.state not in STOPPED_STATES:
            return None
        return f"controller resume {self.strategy} --reason ..."


@dataclass(frozen=True)
class RolloutReport:
    read_at: datetime
    rollouts: tuple[RolloutStatus, ...]
    errors: tuple[str, ...] = field(default=())  # strategies that could not be read


@dataclass(frozen=True)
class Rollout:
    """An active strategy as clients read it, and the controller's record of it."""

    strategy: Strategy
    entry: Entry | None
    record: Mapping[str, Any]  # the controller's item for it (checks, checked_at, alert)


def build(rollout: Rollout, actions: Sequence[Action], now: datetime) -> RolloutStatus:
    """A rollout's status at ``now`` (pure)."""
    strategy, entry = rollout.strategy, rollout.entry
    served = serve(strategy, entry, actions, now)
    todo = pending(entry, actions, now)
    waiting = todo[-1] if todo else None
    action = actions[-1] if actions else None
    resumed = _resumed(strategy, entry, actions, now) if served.state in STOPPED_STATES else None
    return RolloutStatus(
        strategy=strategy.name,
        flag=strategy.flag,
        rollout_type=strategy.rollout_type,
        gated=strategy.gated,
        state=served.state,
        percentage=served.percentage,
        step=served.step,
        stage=served.stage,
        since=served.since,
        reason=served.reason,
        judged=entry is not None,
        held_by=holder(served, actions),
        action=action,
        pending=waiting,
        checked_at=_text(rollout.record.get("checked_at")),
        checks=_checks(rollout.record.get("checks")),
        alert=_text(rollout.record.get("alert")),
        next=next_step(strategy, served, entry, actions),
        resume_percentage=resumed.percentage if resumed is not None else None,
        resume_restarts=served.state == ROLLED_BACK,
    )


def next_step(
    strategy: Strategy, served: Entry, entry: Entry | None, actions: Sequence[Action] = ()
) -> NextStep | None:
    """The step after ``served``: none when complete, paused or rolled back (or at the last
    step); at its start for a scheduled one; by time for an ungated schedule or a gated one
    the controller has not judged yet (``valid_until``); else when its wait is over, if every
    check passes."""
    if served.state == SCHEDULED:
        if strategy.start is None:
            return None
        first = strategy.at_step(served, 0, strategy.start)
        return NextStep(first.percentage, first.stage, strategy.start, gated=False)
    if served.state not in (RAMPING, HOLDING) or served.step >= strategy.last_step:
        return None
    due = served.since + strategy.wait(served)
    following = strategy.at_step(served, served.step + 1, due)
    if not strategy.gated:  # by time, as clients serve it
        moves = valid_until(strategy, entry, actions, served)
        at = moves if moves < datetime.max.replace(tzinfo=UTC) else due
        return NextStep(following.percentage, following.stage, at, gated=False)
    return NextStep(following.percentage, following.stage, due, gated=True)


def _resumed(
    strategy: Strategy, entry: Entry | None, actions: Sequence[Action], now: datetime
) -> Entry:
    """What a resume written now serves (as ``serve`` computes it): a rollback starts over at
    the first step (the same users first), a pause goes on from its share."""
    return serve(strategy, entry, [*actions, Action("resume", now, "", "")], now)


def _checks(stored: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(stored, list):
        return ()
    return tuple(c for c in stored if isinstance(c, Mapping))


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def active_rollouts(store: StateStore) -> tuple[dict[str, Rollout], list[str]]:
    """Every active strategy that drives a flag in the store, as clients read it, with the
    controller's record of it; and the strategies that could not be read."""
    watched, errors = watched_strategies(store)
    control = store.read_control(CONTROLLER_ID) or {}
    entries = entries_from_item(control)
    records = control.get("strategies") if isinstance(control.get("strategies"), Mapping) else {}
    found = {}
    for name, seen in watched.items():
        record = (records or {}).get(name)
        found[name] = Rollout(
            seen.strategy, entries.get(name), record if isinstance(record, Mapping) else {}
        )
    return found, errors


def known(store: StateStore, name: str, rollouts: Mapping[str, Rollout]) -> None:
    """Refuse a name that is no active strategy driving a flag, naming the ones there are."""
    if name in rollouts:
        return
    names = sorted(rollouts)
    listed = ", ".join(names) or "none"
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if name in store.read_records(RecordKind.ROLLOUT):
        raise UserError(
            f"rollout strategy {name!r} drives no flag in the store (it is inactive, or no "
            f"flag names it as its rollout_strategy); active ones: {listed}"
        )
    raise UserError(f"no active rollout strategy {name!r} in the store (known: {listed}){hint}")


def read_status(store: StateStore, now: datetime, name: str | None = None) -> RolloutReport:
    """Every active rollout's status at ``now`` (or only ``name``'s: an unknown name is
    refused with the known ones)."""
    now = now.astimezone(UTC)
    rollouts, errors = active_rollouts(store)
    if name is not None:
        broken = [e for e in errors if e.startswith(f"{name}: ")]
        if broken:
            raise UserError(f"rollout strategy {broken[0]} (its stored record cannot be read)")
        known(store, name, rollouts)
        rollouts = {name: rollouts[name]}
        errors = []
    actions = actions_from_item((store.read_overrides() or {}).get("rollouts"))
    statuses = tuple(build(r, actions.get(n, ()), now) for n, r in sorted(rollouts.items()))
    return RolloutReport(now, statuses, tuple(errors))


def held(report: RolloutReport) -> Sequence[RolloutStatus]:
    """The rollouts an operator or the controller holds: paused, rolled back, holding."""
    return [r for r in report.rollouts if r.held_by is not None]
