"""Where a rollout is: a pure function of its schedule (git), the rollout controller's entry and
the operators' actions, at a time.

Two records in the control table, read with the overrides:

- the rollout controller's state (``rollout_controller``): per strategy, an *entry*: the state
  (scheduled, ramping, holding, paused, rolled back, complete), the share served, the step or
  canary stage and since when, and why;
- the operators' actions, in the overrides record under ``rollouts`` (the last few per
  strategy): ``pause`` (held at the share served when paused), ``abort`` (rolled back now),
  ``resume`` and ``promote`` (the next step now).

An operator's action counts from the moment it is written: the actions an entry has not taken
into account yet (``acted`` older than them) are applied to it in order, each at its moment,
so a pause or an abort reaches every client within a refresh, before the controller runs
again, and two actions between controller runs (a pause, then a resume) both count.

A *gated* strategy (one with health checks, rollback conditions or promotion criteria) serves the
entry's share as it is: only the controller, having judged its checks, moves it (until the
controller first writes an entry, its first step: ``controller rollout`` says it is not judged
yet). An ungated one follows its schedule from the entry's step by time alone, so clients and
the controller agree on it whether the controller runs or not. An entry written for a schedule
git has changed since is taken up by the new one (``realign``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.runtime.rules import Predicate, compile_condition

CONTROLLER_ID = "rollout_controller"  # the control-table record of the rollout controller
SCHEDULED = "scheduled"  # before its start time: nobody
RAMPING = "ramping"
HOLDING = "holding"  # a check has too little traffic: no step until it has
PAUSED = "paused"
ROLLED_BACK = "rolled_back"
COMPLETE = "complete"
STOPPED_STATES = (PAUSED, ROLLED_BACK)
NOT_WATCHED = "not judged by the rollout controller yet: at its first step until it is"
OPERATOR, CONTROLLER = "operator", "rollout controller"  # who holds a rollout (``holder``)
_FOREVER = 10_000  # steps: more than any schedule has


@dataclass(frozen=True)
class Stage:
    name: str
    percentage: float
    min_hours: float = 0.0


@dataclass(frozen=True)
class Scope:
    """A targeting strategy's users: first matching rule wins (include or exclude), else the
    default; users outside it do not get the feature from this rollout."""

    rules: tuple[tuple[str, bool, Predicate], ...]
    default_include: bool

    def covers(self, context: Mapping[str, Any]) -> bool:
        for _name, include, predicate in self.rules:
            if predicate(context):
                return include
        return self.default_include


@dataclass(frozen=True)
class Strategy:
    """A rollout strategy as the runtime and the controller read it from the flag's item."""

    name: str
    flag: str
    rollout_type: str  # percentage | targeting | canary
    initial: float
    increment: float
    interval_hours: float
    maximum: float
    start: datetime | None = None
    stages: tuple[Stage, ...] = ()
    gated: bool = False  # health checks, rollback conditions or promotion criteria
    scope: Scope | None = field(default=None, compare=False)

    def step_percentage(self, step: int) -> float:
        return min(self.maximum, self.initial + self.increment * step)

    @property
    def fingerprint(self) -> str:
        """What the schedule is, in short: an entry written for another schedule (git changed
        it since) is taken up again where the new one allows (``realign``)."""
        stages = ",".join(f"{s.name}={s.percentage:g}/{s.min_hours:g}" for s in self.stages)
        start = stamp(self.start) if self.start is not None else "-"
        text = (
            f"{self.rollout_type}|{self.initial:g}|{self.increment:g}|{self.interval_hours:g}|"
            f"{self.maximum:g}|{start}|{stages}|{self.gated}"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def last_step(self) -> int:
        if self.stages:
            return len(self.stages) - 1
        if self.increment <= 0:
            return 0
        return max(0, int(-(-(self.maximum - self.initial) // self.increment)))

    def stage_index(self, name: str | None) -> int:
        for index, stage in enumerate(self.stages):
            if stage.name == name:
                return index
        return 0

    def wait(self, entry: Entry) -> timedelta:
        """How long the entry's step (or stage) lasts before the next is due."""
        if self.stages:
            return timedelta(hours=self.stages[self.stage_index(entry.stage)].min_hours)
        return timedelta(hours=self.interval_hours)

    def at_step(self, entry: Entry, step: int, since: datetime) -> Entry:
        """The entry moved to ``step`` (for a canary: the stage of that index), since then."""
        state = COMPLETE if step >= self.last_step else RAMPING
        if self.stages:
            stage = self.stages[min(step, len(self.stages) - 1)]
            return replace(
                entry, state=state, percentage=stage.percentage, step=step, stage=stage.name,
                since=since, reason="", passing=None,
            )  # fmt: skip
        return replace(
            entry, state=state, percentage=self.step_percentage(step), step=step, since=since,
            reason="", passing=None,
        )  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """Where a rollout is: the state, the share the runtime serves, the step or stage it is
    on and since when, why, and the last operator action taken into account (``acted``)."""

    state: str
    percentage: float
    since: datetime
    step: int = 0
    stage: str | None = None
    reason: str = ""
    epoch: int = 0  # operator resumes so far
    acted: datetime | None = None
    schedule: str | None = None  # the fingerprint of the schedule it was written for
    passing: datetime | None = None  # since when every promotion criterion has passed

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "state": self.state,
            "percentage": self.percentage,
            "since": stamp(self.since),
            "step": self.step,
            "reason": self.reason,
            "epoch": self.epoch,
        }
        if self.stage is not None:
            item["stage"] = self.stage
        if self.acted is not None:
            item["acted"] = stamp(self.acted)
        if self.schedule is not None:
            item["schedule"] = self.schedule
        if self.passing is not None:
            item["passing"] = stamp(self.passing)
        return item


@dataclass(frozen=True)
class Action:
    """An operator's word on a strategy: pause, resume, abort or promote, and when."""

    action: str
    at: datetime
    by: str
    reason: str
    epoch: int = 0  # the resume count after this action
    percentage: float | None = None  # for pause: the share served when it was paused

    def describe(self) -> str:
        return f"{self.action} by {self.by}: {self.reason}"


@dataclass(frozen=True)
class RolloutStates:
    """The controller's entries and the operators' actions, by strategy name."""

    entries: Mapping[str, Entry] = field(default_factory=dict)
    operators: Mapping[str, tuple[Action, ...]] = field(default_factory=dict)  # oldest first


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def moment(text: Any) -> datetime | None:
    """A stored time as an aware datetime (UTC when no zone is given); None if unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        found = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def pending(entry: Entry | None, actions: Sequence[Action], now: datetime) -> tuple[Action, ...]:
    """The actions written up to ``now`` that the entry has not taken into account yet."""
    acted = entry.acted if entry is not None else None
    return tuple(a for a in actions if a.at <= now and (acted is None or a.at > acted))


def first_entry(strategy: Strategy, now: datetime) -> Entry:
    """A rollout nobody has moved yet: scheduled before its start; else, for a gated one, its
    first step (only the controller's checks move it on); else where its schedule is by
    time, each step since it came due."""
    start = strategy.start
    if start is not None and now < start:
        return Entry(SCHEDULED, 0.0, start, reason=f"starts at {stamp(start)}")
    since = start if start is not None else now
    first = strategy.at_step(Entry(RAMPING, 0.0, since), 0, since)
    return first if strategy.gated else _by_time(strategy, first, now)


def begin(strategy: Strategy, entry: Entry, now: datetime) -> Entry:
    """A scheduled entry once its start has come: its first entry, keeping what operators
    did (the epoch, the last action taken)."""
    if entry.state != SCHEDULED or (strategy.start is not None and now < strategy.start):
        return entry
    return replace(first_entry(strategy, now), epoch=entry.epoch, acted=entry.acted)


def _by_time(strategy: Strategy, entry: Entry, now: datetime) -> Entry:
    if entry.state not in (RAMPING, HOLDING):
        return entry
    for _ in range(_FOREVER):
        if entry.step >= strategy.last_step:
            break
        due = entry.since + strategy.wait(entry)
        if due > now:
            break
        entry = strategy.at_step(entry, entry.step + 1, due)
    return entry


def realign(strategy: Strategy, entry: Entry, now: datetime) -> Entry:
    """An entry written for a schedule git has changed since, taken up by the new one: paused
    and rolled back stay so; an ungated rollout is where the new schedule is by time; a gated
    one keeps its share as far as the new schedule allows (the highest step at or below it:
    never more without its checks), on its stage if the new stages still have it."""
    if entry.schedule is None or entry.schedule == strategy.fingerprint:
        return entry
    fresh = replace(entry, schedule=strategy.fingerprint)
    if entry.state in STOPPED_STATES:
        return fresh
    if strategy.start is not None and now < strategy.start:
        scheduled = replace(first_entry(strategy, now), epoch=entry.epoch, acted=entry.acted)
        return replace(scheduled, schedule=strategy.fingerprint)
    if not strategy.gated:
        moved = replace(first_entry(strategy, now), epoch=entry.epoch, acted=entry.acted)
        return replace(moved, schedule=strategy.fingerprint)
    names = [stage.name for stage in strategy.stages]
    if entry.stage in names:
        step = names.index(str(entry.stage))
    else:
        shares = [
            strategy.stages[k].percentage if strategy.stages else strategy.step_percentage(k)
            for k in range(strategy.last_step + 1)
        ]
        step = max([k for k, share in enumerate(shares) if share <= entry.percentage] or [0])
    since = max(entry.since, strategy.start) if strategy.start is not None else entry.since
    return strategy.at_step(fresh, step, since)


def with_action(strategy: Strategy, entry: Entry, action: Action) -> Entry:
    """The entry with an operator's action applied: abort rolls back, pause holds the share
    served, resume restarts a rolled-back rollout from its first step (the same users come
    back first) or lets a paused one go on from where it was, promote takes the next step (or
    stage) now. An action that does not apply (a resume of a running rollout) is only noted."""
    at = action.at
    acted = replace(entry, acted=at)
    who = action.describe()
    if action.action == "abort":
        return replace(acted, state=ROLLED_BACK, percentage=0.0, since=at, reason=who)
    if action.action == "pause" and entry.state not in STOPPED_STATES:
        share = action.percentage if action.percentage is not None else entry.percentage
        return replace(acted, state=PAUSED, percentage=share, since=at, reason=who)
    if action.action == "resume" and entry.state in STOPPED_STATES:
        start = strategy.start
        if start is not None and (at < start or entry.since < start):
            # Not started yet (scheduled), or stopped before its start: from its beginning.
            return replace(first_entry(strategy, at), epoch=action.epoch, acted=at, reason=who)
        if entry.state == ROLLED_BACK:
            fresh = strategy.at_step(Entry(RAMPING, 0.0, at), 0, at)
            return replace(fresh, epoch=action.epoch, acted=at, reason=who)
        if entry.state == PAUSED:
            return replace(acted, state=RAMPING, since=at, reason=who, epoch=action.epoch)
    moving = entry.state in (RAMPING, HOLDING) and entry.step < strategy.last_step
    if action.action == "promote" and moving:
        return replace(strategy.at_step(entry, entry.step + 1, at), reason=who, acted=at)
    return acted


def apply_actions(
    strategy: Strategy, entry: Entry | None, actions: Sequence[Action], now: datetime
) -> tuple[Entry, list[tuple[Action, Entry, Entry]]]:
    """Where the rollout is at ``now``: the entry (or, with none, where its schedule is), the
    actions it has not taken yet applied in order, each at its moment, a schedule that moves
    by time moved up to each; with what each action changed (action, before, after)."""
    todo = pending(entry, actions, now)
    if entry is not None:
        current = realign(strategy, entry, todo[0].at if todo else now)
    else:
        current = first_entry(strategy, todo[0].at if todo else now)
        if strategy.gated and current.state != SCHEDULED:
            current = replace(current, reason=NOT_WATCHED)
    moves = []
    for action in todo:
        current = _at(strategy, current, action.at)
        after = with_action(strategy, current, action)
        moves.append((action, current, after))
        current = after
    return _at(strategy, current, now), moves


def _at(strategy: Strategy, entry: Entry, now: datetime) -> Entry:
    """The entry at ``now``: started if its start has come; moved by time if ungated."""
    entry = begin(strategy, entry, now)
    return entry if strategy.gated else _by_time(strategy, entry, now)


def serve(
    strategy: Strategy, entry: Entry | None, actions: Sequence[Action], now: datetime
) -> Entry:
    """What the runtime serves now (``apply_actions``, without the record of each move)."""
    return apply_actions(strategy, entry, actions, now)[0]


def valid_until(
    strategy: Strategy, entry: Entry | None, actions: Sequence[Action], served: Entry
) -> datetime:
    """Until when what ``serve`` gave stays what it gives (its next step, a start, an action
    written ahead of the clock): a client serves it from a cache until then."""
    ends = [datetime.max.replace(tzinfo=UTC)]
    if served.state == SCHEDULED and strategy.start is not None:
        ends.append(strategy.start)
    moving = served.state in (RAMPING, HOLDING) and served.step < strategy.last_step
    if moving and not strategy.gated:
        ends.append(served.since + strategy.wait(served))
    ends.extend(a.at for a in actions if served.acted is None or a.at > served.acted)
    return min(ends)


def entry_from_item(item: Any) -> Entry | None:
    """An entry as stored; None when it cannot be read (the schedule's first step is then
    served for a gated rollout, the schedule for an ungated one)."""
    if not isinstance(item, Mapping):
        return None
    since = moment(item.get("since"))
    state = item.get("state")
    if since is None or state not in (SCHEDULED, RAMPING, HOLDING, PAUSED, ROLLED_BACK, COMPLETE):
        return None
    try:
        percentage = float(item.get("percentage", 0))
        step = int(float(item.get("step", 0)))
        epoch = int(float(item.get("epoch", 0)))
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0 <= percentage <= 100:
        return None
    stage = item.get("stage")
    schedule = item.get("schedule")
    return Entry(
        str(state),
        percentage,
        since,
        step,
        str(stage) if stage is not None else None,
        str(item.get("reason", "")),
        epoch,
        moment(item.get("acted")),
        str(schedule) if schedule is not None else None,
        moment(item.get("passing")),
    )


def holder(served: Entry, actions: Sequence[Action]) -> str | None:
    """Who holds a rollout that is paused, rolled back or holding: ``operator`` when the last
    action put it there, else ``rollout controller``; None when nothing holds it."""
    if served.state not in (*STOPPED_STATES, HOLDING):
        return None
    last = actions[-1] if actions else None
    by_operator = last is not None and last.action in ("pause", "abort") and served.since == last.at
    return OPERATOR if by_operator else CONTROLLER


def entries_from_item(item: Mapping[str, Any] | None) -> dict[str, Entry]:
    strategies = (item or {}).get("strategies")
    found = {}
    if isinstance(strategies, Mapping):
        for name, stored in strategies.items():
            entry = entry_from_item(stored)
            if entry is not None:
                found[str(name)] = entry
    return found


def actions_from_item(entries: Any) -> dict[str, tuple[Action, ...]]:
    """The ``rollouts`` entries of the overrides record: per strategy, its operators' last
    actions, oldest first (entries it cannot read skipped)."""
    found = {}
    if isinstance(entries, Mapping):
        for name, stored in entries.items():
            listed = stored if isinstance(stored, list) else [stored]
            actions = [a for a in (_action(item) for item in listed) if a is not None]
            if actions:
                found[str(name)] = tuple(sorted(actions, key=lambda a: a.at))
    return found


def _action(entry: Any) -> Action | None:
    if not isinstance(entry, Mapping):
        return None
    at = moment(entry.get("at"))
    kind = entry.get("action")
    if at is None or kind not in ("pause", "resume", "abort", "promote"):
        return None
    share = entry.get("percentage")
    try:
        epoch = int(float(entry.get("epoch", 0)))
        held = float(share) if share is not None else None
    except (TypeError, ValueError, OverflowError):
        return None
    return Action(
        str(kind), at, str(entry.get("by", "")), str(entry.get("reason", "")), epoch, held
    )


def strategy_from_item(
    item: Mapping[str, Any], *, flag: str | None = None, created_at: Any = None
) -> Strategy:
    """A strategy from its stored record, or from the ``rollout`` a flag's item carries (with
    ``flag``: the flag's name; ``created_at``: when the flag was applied, the start of a
    schedule without one). Raises on an item that cannot be read."""
    conf = item.get("configuration") or {}
    start = moment(conf.get("start_time")) or (moment(created_at) if created_at else None)
    if conf.get("start_time") and start is None:
        raise ValueError(f"unreadable start_time {conf.get('start_time')!r}")
    canary = item.get("rollout_type") == "canary"
    stages = tuple(
        Stage(str(s["name"]), float(s["percentage"]), float(s.get("min_duration_hours", 0)))
        for s in (conf.get("stages") or [] if canary else [])
    )
    if "gated" in item:
        gated = item["gated"] is True
    else:
        checks = [c for c in item.get("health_checks") or [] if c.get("enabled", True)]
        gated = bool(checks or item.get("rollback_conditions") or conf.get("promotion_criteria"))
    return Strategy(
        name=str(item["strategy_name"]),
        flag=str(flag if flag is not None else item["feature_flag"]),
        rollout_type=str(item.get("rollout_type", "percentage")),
        initial=float(conf.get("percentage", 100)),
        increment=float(conf.get("increment_percentage", 0)),
        interval_hours=float(conf.get("increment_interval_hours", 24)),
        maximum=float(conf.get("max_percentage", 100)),
        start=start,
        stages=stages,
        gated=gated,
        scope=_scope(conf.get("targeting")) if item.get("rollout_type") == "targeting" else None,
    )


def _scope(targeting: Any) -> Scope | None:
    if not isinstance(targeting, Mapping):
        return None
    rules = tuple(
        (str(rule["name"]), rule["action"] == "include", compile_condition(rule["when"]))
        for rule in targeting.get("rules", [])
    )
    default = targeting.get("default")
    include = default == "include" if default else not any(r[1] for r in rules)
    return Scope(rules, include)
