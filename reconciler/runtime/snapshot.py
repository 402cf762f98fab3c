"""The snapshot: everything a decision reads, built once from the stored items, rules compiled.

Built from plain items (as the stores hold them), so it needs nothing of the control plane.
Items of any shape are tolerated: a flag whose item cannot be understood becomes a broken flag
that decides by its fail mode, never an exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.runtime.bucketing import Salt, variant_ranges
from reconciler.runtime.budgets import Budget, budgets_from_items
from reconciler.runtime.cost_state import CostState, flag_verdicts
from reconciler.runtime.experiment_state import ExperimentHold, ExperimentStates, recording_key
from reconciler.runtime.rollout_state import (
    Action,
    Entry,
    RolloutStates,
    Strategy,
    strategy_from_item,
)
from reconciler.runtime.rules import Predicate, compile_condition

Item = Mapping[str, Any]


@dataclass(frozen=True)
class Shutdown:
    """An operator's emergency shutdown: who, why, since when, until when."""

    by: str
    reason: str
    since: str | None = None
    expires_at: str | None = None

    @property
    def expires(self) -> datetime | None:
        return _parse_time(self.expires_at)

    def active(self, now: datetime) -> bool:
        expires = self.expires
        return expires is None or expires > now


def _parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time as an aware datetime (UTC when no zone is given); None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Rule:
    name: str
    include: bool
    predicate: Predicate
    rollout_percentage: float | None


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    status: str
    ranges: tuple[tuple[str, float, float], ...]
    configs: Mapping[str, Mapping[str, Any]]
    control: str
    traffic: float
    winner: str | None
    start: datetime | None = None
    end: datetime | None = None
    metrics: Mapping[str, str] = field(default_factory=dict)  # name -> numeric|binary|count
    key: str = ""  # where its telemetry is recorded (recording_key: id, or id~epoch)
    hold: ExperimentHold | None = None  # the analyser's verdict or an operator's stop
    # The salts of its two buckets (assignment, traffic), each hashed once.
    assignment: Salt = field(default=Salt(""), compare=False, repr=False)
    sampling: Salt = field(default=Salt(""), compare=False, repr=False)

    # Active, untimed, held by nobody: each decision only buckets the unit (worked out once).
    assigning: bool = field(default=False, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.sampling.text != f"{self.experiment_id}:traffic":
            object.__setattr__(self, "assignment", Salt(self.experiment_id))
            object.__setattr__(self, "sampling", Salt(f"{self.experiment_id}:traffic"))
        plain = self.status == "active" and self.hold is None and not self.timed
        object.__setattr__(self, "assigning", plain and not self.winner)

    @property
    def timed(self) -> bool:
        return self.start is not None or self.end is not None


@dataclass(frozen=True)
class Flag:
    name: str
    enabled: bool
    flag_type: str
    value: Any
    fail_open: bool
    rollout_percentage: float
    rules: tuple[Rule, ...] = ()
    default_include: bool = True
    schedule: Strategy | None = None  # the rollout strategy that drives the share
    experiment: Experiment | None = None
    request_type: str | None = None
    shutdown: Shutdown | None = None
    rollout_entry: Entry | None = None  # the rollout controller's, for the strategy
    rollout_actions: tuple[Action, ...] = ()  # the operators', for the strategy, oldest first
    broken: str | None = None  # why the item could not be understood
    cost_salt: str = ""  # the cost throttle's bucketing salt: cost:<request type or flag name>
    # The salts of its rollout bucket (its name) and of the cost throttle's, each hashed once.
    rollout_bucket: Salt = field(default=Salt(""), compare=False, repr=False)
    cost_bucket: Salt = field(default=Salt(""), compare=False, repr=False)
    # Decisions that are the same for every user (off by kill switch, no match, ...) are made
    # once per flag and snapshot and shared: decisions are immutable.
    decisions: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.rollout_bucket.text != self.name:
            object.__setattr__(self, "rollout_bucket", Salt(self.name))
        if self.cost_bucket.text != self.cost_salt:
            object.__setattr__(self, "cost_bucket", Salt(self.cost_salt))


@dataclass(frozen=True)
class CostVerdict:
    """What the cost guard says of one flag: shut down (why), or throttled by a factor; both
    until the budget's period ends."""

    emergency: str | None
    factor: float = 1.0
    until: datetime | None = None
    then: CostVerdict | None = None  # the next-worst verdict, for when this one ends


@dataclass(frozen=True)
class Snapshot:
    version: str
    flags: Mapping[str, Flag]
    budgets: tuple[Budget, ...] = ()
    global_shutdown: Shutdown | None = None
    flag_shutdowns: Mapping[str, Shutdown] = field(default_factory=dict)  # from the overrides
    cost_state: CostState = field(default_factory=CostState)  # the cost guard's
    cost: Mapping[str, CostVerdict] = field(default_factory=dict)  # flags the guard holds
    experiment_states: ExperimentStates = field(default_factory=ExperimentStates)
    experiments: Mapping[str, str] = field(default_factory=dict)  # experiment id -> flag name
    rollout_states: RolloutStates = field(default_factory=RolloutStates)
    rollouts: Mapping[str, str] = field(default_factory=dict)  # strategy name -> flag name
    # request type -> the flags with a gated rollout whose health its outcomes tell
    watched: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def build_snapshot(
    version: str,
    flag_items: Sequence[Item],
    threshold_items: Sequence[Item] = (),
    *,
    cost_state: CostState | None = None,
    global_shutdown: Shutdown | None = None,
) -> Snapshot:
    flags = {}
    for item in flag_items:
        name = str(item.get("flag_name", ""))
        if name:
            flags[name] = build_flag(item)
    budgets = tuple(budgets_from_items(threshold_items, flag_items))
    experiments = {
        flag.experiment.experiment_id: name
        for name, flag in flags.items()
        if flag.experiment is not None
    }
    rollouts = {f.schedule.name: name for name, f in flags.items() if f.schedule is not None}
    watched: dict[str, list[str]] = {}
    for name, flag in sorted(flags.items()):
        if flag.schedule is not None and flag.schedule.gated and flag.request_type:
            watched.setdefault(flag.request_type, []).append(name)
    snapshot = Snapshot(
        version,
        flags,
        budgets,
        global_shutdown,
        experiments=experiments,
        rollouts=rollouts,
        watched={kind: tuple(names) for kind, names in watched.items()},
    )
    return with_cost_state(snapshot, cost_state or CostState())


def with_experiment_states(snapshot: Snapshot, states: ExperimentStates) -> Snapshot:
    """The snapshot with what outranks each experiment's manifest (the analyser's verdict, an
    operator's stop) and where its telemetry goes; flags whose experiment is unchanged are
    kept as they are (with the decisions they have cached)."""
    flags = dict(snapshot.flags)
    changed = False
    for experiment_id, name in snapshot.experiments.items():
        flag = flags.get(name)
        if flag is None or flag.experiment is None:
            continue
        key = recording_key(experiment_id, states.epoch(experiment_id))
        hold = states.hold(experiment_id)
        if flag.experiment.key == key and flag.experiment.hold == hold:
            continue
        experiment = dataclasses.replace(flag.experiment, key=key, hold=hold)
        flags[name] = dataclasses.replace(flag, experiment=experiment, decisions={})
        changed = True
    if not changed and snapshot.experiment_states == states:
        return snapshot
    return dataclasses.replace(
        snapshot, flags=flags if changed else snapshot.flags, experiment_states=states
    )


def with_rollout_states(snapshot: Snapshot, states: RolloutStates) -> Snapshot:
    """The snapshot with where each rollout is (the controller's entry, an operator's last
    action); flags whose rollout is unchanged are kept as they are."""
    if snapshot.rollout_states == states:
        return snapshot
    flags = dict(snapshot.flags)
    for strategy, name in snapshot.rollouts.items():
        flag = flags.get(name)
        if flag is None:
            continue
        entry, actions = states.entries.get(strategy), states.operators.get(strategy, ())
        if flag.rollout_entry != entry or flag.rollout_actions != actions:
            flags[name] = dataclasses.replace(
                flag, rollout_entry=entry, rollout_actions=actions, decisions={}
            )
    return dataclasses.replace(snapshot, flags=flags, rollout_states=states)


def with_cost_state(snapshot: Snapshot, state: CostState) -> Snapshot:
    """The snapshot with the cost guard's state: for each flag a throttled or shut-down budget
    acts on, its verdicts, worst first, each until its budget's period ends."""
    if state.flags:  # a state that names its flags (as the guard holds it in memory)
        verdicts = {name: [held] for name, held in state.flags.items()}
    else:
        ai = [name for name, flag in snapshot.flags.items() if flag.request_type]
        verdicts = flag_verdicts(state, ai)
    cost = {}
    for name, chain in verdicts.items():
        if name not in snapshot.flags:
            continue
        verdict: CostVerdict | None = None
        for held in reversed(chain):  # the mildest last, so each verdict's successor is known
            until = _parse_time(held.until)
            if held.state == "emergency":
                detail = held.detail or f"cost budget {held.budget}"
                verdict = CostVerdict(detail, 0.0, until, verdict)
            elif held.state == "throttled" and 0 < held.factor < 1:
                verdict = CostVerdict(None, held.factor, until, verdict)
        if verdict is not None:
            cost[name] = verdict
    return dataclasses.replace(snapshot, cost_state=state, cost=cost)


def build_flag(item: Item) -> Flag:
    name = str(item["flag_name"])
    fail_open = item.get("fail_mode") == "open"
    try:
        return _flag(name, item)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        kind = item.get("flag_type")
        flag_type = kind if isinstance(kind, str) and kind else "boolean"
        # A fail-open flag keeps what can still be read of it: its type and value.
        value = item.get("value", True if flag_type == "boolean" else None)
        return Flag(
            name, False, flag_type, value, fail_open, 0.0, broken=f"{type(exc).__name__}: {exc}"
        )


def _flag(name: str, item: Item) -> Flag:
    targeting = item.get("targeting") or {}
    rules = tuple(
        Rule(
            str(rule["name"]),
            rule["action"] == "include",
            compile_condition(rule["when"]),
            float(rule["rollout_percentage"])
            if rule.get("rollout_percentage") is not None
            else None,
        )
        for rule in targeting.get("rules", [])
    )
    default = targeting.get("default")
    default_include = default == "include" if default else not any(r.include for r in rules)
    shutdown = None
    if item.get("emergency_shutdown") is True:
        shutdown = Shutdown(
            str(item.get("shutdown_by", "")),
            str(item.get("shutdown_reason", "")),
            item.get("shutdown_at"),
            item.get("shutdown_expires_at"),
        )
    return Flag(
        name=name,
        enabled=item.get("enabled") is True,
        flag_type=str(item.get("flag_type", "boolean")),
        value=item.get("value", True),
        fail_open=item.get("fail_mode") == "open",
        rollout_percentage=float(item.get("rollout_percentage", 100)),
        rules=rules,
        default_include=default_include,
        schedule=_schedule(name, item.get("rollout"), item.get("created_at")),
        experiment=_experiment(item.get("ab_test_config")),
        request_type=item.get("request_type"),
        cost_salt=f"cost:{item.get('request_type') or name}",
        shutdown=shutdown,
    )


def _schedule(name: str, rollout: Any, created_at: Any) -> Strategy | None:
    if not isinstance(rollout, Mapping):
        return None
    return strategy_from_item(rollout, flag=name, created_at=created_at)


def _experiment(config: Any) -> Experiment | None:
    if not isinstance(config, Mapping) or not config.get("variants"):
        return None
    variants = config["variants"]
    weights = [(str(v["name"]), float(v["weight"])) for v in variants]
    experiment_id = str(config.get("test_name", ""))
    metrics = config.get("metrics") or {}
    return Experiment(
        experiment_id=experiment_id,
        status=str(config.get("status", "active" if config.get("active") else "paused")),
        ranges=tuple(variant_ranges(weights)),
        configs={str(v["name"]): dict(v.get("config") or {}) for v in variants},
        control=str(config.get("control", weights[0][0])),
        traffic=float(config.get("traffic_percentage", 100)),
        winner=config.get("winner"),
        start=_parse_time(config.get("start_time")),
        end=_parse_time(config.get("end_time")),
        metrics={str(k): str(v) for k, v in metrics.items()},
        key=experiment_id,
    )
