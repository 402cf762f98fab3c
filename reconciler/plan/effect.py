"""What a flag change does to users: the runtime's decision before and after, compared.

Both sides are decided by the runtime's own core (``reconciler.runtime.evaluate.evaluate``) on
snapshots built by ``reconciler.runtime.snapshot.build_snapshot``: from the stored item before
and the encoded item after, each with the rollout strategy (``rollout``) and experiment
(``ab_test_config``) it embeds, so a change to a strategy or an experiment is assessed through
the flag it acts on. Times: now, and every moment in the next 24 hours at which a schedule steps
or an experiment starts or ends (up to ``MAX_INSTANTS`` of them, evenly chosen beyond that).

The population, in order of preference:

- **exact**: a decision reads a unit only through its attributes (by the rules) and its buckets
  (``bucket(salt, user_id)``, uniform in [0, 1), one independent coordinate per salt: the flag's
  name, and each experiment's id and ``<id>:traffic`` where the experiment differs between the
  two sides), each compared with thresholds (rollout percentages, the schedule's percentages at
  those times, variant ranges, traffic). The thresholds cut the coordinates into cells on which
  the decision is constant: one unit found in each cell is decided, and the cell counts with
  its volume. Without targeting rules every user is such a unit, so the shares are exact.
- **synthetic**: with targeting rules, the users are the seeded synthetic population of
  ``reconciler.plan.population`` (100,000 units whose attributes make each rule's condition true
  and false); its classes (units the rules treat alike) are each computed exactly as above and
  weighted by their share of the units.
- **direct**: where neither holds (a rule reads ``user_id``; cells too many or too thin to
  find a unit in), every unit of the synthetic population is decided, at now and up to
  ``DIRECT_INSTANTS`` of the moments.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from reconciler.plan.population import (
    UNIT_PREFIX,
    TargetingClass,
    population_for,
    targeting_classes,
)
from reconciler.plan.witnesses import rule_conditions
from reconciler.runtime.bucketing import bucket
from reconciler.runtime.decision import Decision
from reconciler.runtime.evaluate import UNIT_ATTRIBUTE, evaluate
from reconciler.runtime.rollout_state import RolloutStates, serve, valid_until
from reconciler.runtime.snapshot import (
    Experiment,
    Flag,
    Snapshot,
    build_snapshot,
    with_rollout_states,
)

WINDOW = timedelta(hours=24)
MAX_INSTANTS = 96
DIRECT_INSTANTS = 8
MAX_CELLS = 4096
SEARCH_BUDGET = 50_000  # candidate units tried to find one in every cell
UNFOUND_TOLERANCE = 0.001  # the volume of cells left without a unit, at most (0.1 points)
# Fields of another owner that act on both sides of a git change (the plan's record has them).
LIVE_FIELDS = ("controller_state", "created_at")

Method = Literal["exact", "synthetic", "direct"]


@dataclass(frozen=True)
class Effect:
    """At one moment, the shares of users who gain the flag, lose it, and change variant."""

    at: datetime
    gain: float = 0.0
    lose: float = 0.0
    switch: float = 0.0

    @property
    def moved(self) -> float:
        """The share whose on/off decision changes."""
        return self.gain + self.lose


@dataclass(frozen=True)
class Assessment:
    """The effect now (first) and at each later moment of the window; with targeting, the
    effect within each class of users (conditional on the class)."""

    effects: tuple[Effect, ...]
    method: Method
    classes: tuple[tuple[TargetingClass, tuple[Effect, ...]], ...] = ()

    @property
    def now(self) -> Effect:
        return self.effects[0]

    def worst(self, measure: Callable[[Effect], float]) -> Effect:
        """The moment in the window where ``measure`` is largest (the earliest of equals)."""
        return max(self.effects, key=lambda e: (measure(e), -e.at.timestamp()))


def assess(
    name: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    now: datetime,
    *,
    live: Mapping[str, Any] | None = None,
    rollouts: RolloutStates | None = None,
) -> Assessment:
    """The effect of changing flag ``name`` from ``before`` to ``after`` (None: no flag) at
    ``now`` and over the next 24 hours. ``live``: the record as stored, whose controller state
    (and creation time, where a schedule starts from it) acts on both sides. An operator's
    shutdown does not: the change it holds lands, as assessed, once it is lifted. The cost
    guard's state is not the plan's to know: throttles are left out. ``rollouts``: where the
    rollouts are (the controller's entries, operators' actions), on both sides."""
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    held = {k: live[k] for k in LIVE_FIELDS if live and k in live}
    method: Method
    sides = [_snapshot(name, item, held, rollouts) for item in (before, after)]
    flags = [s.flags.get(name) for s in sides]
    times = instants([f for f in flags if f is not None], now)
    # A targeting strategy's users first, so that the population covers its conditions too
    # (the flag's own targeting, after, is last: the classes are named by its rules).
    scopes = [t for t in (_scope(item) for item in (before, after)) if t is not None]
    targetings = [*scopes, *((item or {}).get("targeting") for item in (before, after))]
    if any(any(True for _ in rule_conditions(t)) for t in targetings):
        found = targeting_classes(targetings)
        if found is None:
            return _direct(name, sides, flags, times, targetings)
        classes, method = found, "synthetic"
    else:
        classes, method = (TargetingClass(1.0, {}, (None, None)),), "exact"
    cells = _cells(name, flags, times)
    if cells is None:
        return _direct(name, sides, flags, times, targetings)
    per_class = []
    for group in classes:
        units = [(volume, {**group.context, UNIT_ATTRIBUTE: uid}) for volume, uid in cells]
        per_class.append((group, tuple(_effect(name, sides, flags, t, units) for t in times)))
    effects = tuple(
        _weighted(t, [(g.weight, e[i]) for g, e in per_class]) for i, t in enumerate(times)
    )
    return Assessment(effects, method, tuple(per_class) if method == "synthetic" else ())


def _scope(item: Mapping[str, Any] | None) -> Any:
    """The targeting of the targeting strategy the flag's item embeds, if it does."""
    rollout = (item or {}).get("rollout")
    if not isinstance(rollout, Mapping) or rollout.get("rollout_type") != "targeting":
        return None
    configuration = rollout.get("configuration")
    return configuration.get("targeting") if isinstance(configuration, Mapping) else None


def served(decision: Decision, flag: Flag | None) -> tuple[bool, str | None]:
    """What a user gets: on or off, and the variant, with the experiment's control (what users
    got before the experiment) counted as no variant."""
    if not decision.enabled:
        return False, None
    control = flag.experiment.control if flag is not None and flag.experiment else None
    return True, None if decision.variant == control else decision.variant


def instants(flags: Iterable[Flag], now: datetime) -> list[datetime]:
    """Now, then the moments of the next 24 hours at which a decision may change by time."""
    end = now + WINDOW
    found: set[datetime] = set()
    for flag in flags:
        found.update(_schedule_steps(flag, now, end))
        experiment = flag.experiment
        moments = (experiment.start, experiment.end) if experiment is not None else ()
        expiry = flag.shutdown.expires if flag.shutdown is not None else None
        found.update(m for m in (*moments, expiry) if m is not None and now < m <= end)
    later = sorted(found)
    if len(later) > MAX_INSTANTS:
        step = len(later) / MAX_INSTANTS
        later = [
            later[min(len(later) - 1, math.ceil((i + 1) * step) - 1)] for i in range(MAX_INSTANTS)
        ]
    return [now, *later]


def _schedule_steps(flag: Flag, now: datetime, end: datetime) -> Iterable[datetime]:
    """The moments the flag's rollout changes share between now and ``end``, as clients
    compute them (an ungated schedule moves by time; a gated one only by the controller)."""
    schedule = flag.schedule
    if schedule is None:
        return
    moment = now
    for _ in range(10_000):
        served = serve(schedule, flag.rollout_entry, flag.rollout_actions, moment)
        following = valid_until(schedule, flag.rollout_entry, flag.rollout_actions, served)
        if following > end or following <= moment:
            return
        yield following
        moment = following


def _snapshot(
    name: str,
    item: Mapping[str, Any] | None,
    held: Mapping[str, Any],
    rollouts: RolloutStates | None = None,
) -> Snapshot:
    if item is None:
        return build_snapshot(name, [])
    built = build_snapshot(name, [{**item, **held, "flag_name": name}])
    return with_rollout_states(built, rollouts) if rollouts is not None else built


def _effect(
    name: str,
    sides: Sequence[Snapshot],
    flags: Sequence[Flag | None],
    at: datetime,
    units: Sequence[tuple[float, Mapping[str, Any]]],
) -> Effect:
    gain = lose = switch = 0.0
    for weight, context in units:
        was_on, was = served(evaluate(sides[0], name, context, at), flags[0])
        is_on, now = served(evaluate(sides[1], name, context, at), flags[1])
        if was_on != is_on:
            gain, lose = (gain + weight, lose) if is_on else (gain, lose + weight)
        elif is_on and was != now:
            switch += weight
    return Effect(at, gain, lose, switch)


def _weighted(at: datetime, parts: Sequence[tuple[float, Effect]]) -> Effect:
    return Effect(
        at,
        sum(w * e.gain for w, e in parts),
        sum(w * e.lose for w, e in parts),
        sum(w * e.switch for w, e in parts),
    )


def _cells(
    name: str, flags: Sequence[Flag | None], times: Sequence[datetime]
) -> list[tuple[float, str]] | None:
    """One unit (its user id) per cell of the bucket coordinates, with the cell's volume;
    None when there are too many cells or too much volume without a unit."""
    thresholds: dict[str, set[float]] = {name: set()}
    for flag in flags:
        if flag is not None:
            thresholds[name].update(_rollout_points(flag, times))
    experiments = [f.experiment if f is not None else None for f in flags]
    if None not in flags and _assignment(experiments[0]) != _assignment(experiments[1]):
        for experiment in experiments:
            if experiment is not None:
                salt = experiment.experiment_id
                thresholds.setdefault(salt, set()).update(end for _, _, end in experiment.ranges)
                traffic = thresholds.setdefault(f"{salt}:traffic", set())
                traffic.add(experiment.traffic / 100)
    axes = [
        (salt, sorted(p for p in points if 0 < p < 1))
        for salt, points in sorted(thresholds.items())
    ]
    axes = [(salt, points) for salt, points in axes if points]
    widths = [[b - a for a, b in itertools.pairwise([0.0, *points, 1.0])] for _, points in axes]
    if math.prod(len(w) for w in widths) > MAX_CELLS:
        return None
    volumes = {
        cell: math.prod(w[i] for w, i in zip(widths, cell, strict=True))
        for cell in itertools.product(*(range(len(w)) for w in widths))
    }
    found: dict[tuple[int, ...], str] = {}
    if len(volumes) > 1:
        [(salt, points)] = axes if len(axes) == 1 else [("", [])]
        for k in range(SEARCH_BUDGET):
            uid = f"{UNIT_PREFIX}{k}"
            if points:  # one axis, the common case: no tuple of axes to build
                cell: tuple[int, ...] = (bisect_right(points, bucket(salt, uid)),)
            else:
                cell = tuple(bisect_right(p, bucket(s, uid)) for s, p in axes)
            found.setdefault(cell, uid)
            if len(found) == len(volumes):
                break
    else:
        found[()] = f"{UNIT_PREFIX}0"
    if sum(v for c, v in volumes.items() if c not in found) > UNFOUND_TOLERANCE:
        return None
    return [(volumes[cell], uid) for cell, uid in sorted(found.items())]


def _rollout_points(flag: Flag, times: Sequence[datetime]) -> set[float]:
    """Every share a rollout check of this flag may compare a bucket with, at these times."""
    points = {flag.rollout_percentage}
    points.update(r.rollout_percentage for r in flag.rules if r.rollout_percentage is not None)
    schedule = flag.schedule
    if schedule is not None:
        points.update(stage.percentage for stage in schedule.stages)
        for moment in times:
            served = serve(schedule, flag.rollout_entry, flag.rollout_actions, moment)
            points.add(served.percentage)
    if flag.rollout_entry is not None:
        points.add(flag.rollout_entry.percentage)
    return {p / 100 for p in points}


def _assignment(experiment: Experiment | None) -> Any:
    """What decides an experiment's variants: equal on both sides, no unit changes variant."""
    if experiment is None:
        return None
    return (
        experiment.experiment_id,
        experiment.status,
        experiment.ranges,
        experiment.control,
        experiment.traffic,
        experiment.winner,
        experiment.start,
        experiment.end,
        experiment.hold,
    )


def _direct(
    name: str,
    sides: Sequence[Snapshot],
    flags: Sequence[Flag | None],
    times: Sequence[datetime],
    targetings: Sequence[Any],
) -> Assessment:
    """Every unit of the synthetic population decided, at now and a few later moments."""
    population = population_for(targetings)
    later = times[1:]
    if len(later) > DIRECT_INSTANTS:
        later = [later[(i + 1) * len(later) // DIRECT_INSTANTS - 1] for i in range(DIRECT_INSTANTS)]
    share = 1 / population.size
    units = [(share, context) for context in population.units()]
    effects = tuple(_effect(name, sides, flags, t, units) for t in (times[0], *later))
    return Assessment(effects, "direct")
