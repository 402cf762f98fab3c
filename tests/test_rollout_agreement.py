"""What clients serve and what the rollout controller writes agree, whenever it runs: properties
over generated schedules (percentage ramps and canaries, gated or not, with a start) and
generated histories (controller runs and operators' actions at increasing times).

A history is replayed as the system lives it: the controller's entry is the one its last run
wrote (``decide``, given every action written so far); an operator's action is written as the
CLI writes it (a pause holds the share clients serve at its moment, a resume counts one more
epoch). Clients are looked at just before and at every event, and at probes in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.controllers.rollout_checks import Check, CheckResult, Window, judge
from reconciler.controllers.rollout_controller import decide
from reconciler.runtime.bucketing import bucket
from reconciler.runtime.rollout_state import (
    COMPLETE,
    HOLDING,
    PAUSED,
    RAMPING,
    ROLLED_BACK,
    SCHEDULED,
    Action,
    Entry,
    Stage,
    Strategy,
    pending,
    serve,
)

BASE = datetime(2026, 12, 1, 10, tzinfo=UTC)
TICK = timedelta(microseconds=1)
HEALTHY = Window(requests=10_000, failures=100)  # 1% errors over plenty of requests
HEALTH = Check("error_rate_check", "error_rate", 5, "less_than", 60)
SPIKE = Check("error_rate_spike", "error_rate", 10, "greater_than", 15, action="rollback")
CRITERION = Check("promote_when", "error_rate", 5, "less_than", 60)
OPERATOR_ACTIONS = ("pause", "resume", "abort", "promote")
USERS = tuple(f"u{n}" for n in range(200))


@dataclass(frozen=True)
class Inputs:
    """What a controller run at a time would be given (no checks: ungated)."""

    checks: tuple[CheckResult, ...] = ()
    conditions: tuple[CheckResult, ...] = ()
    promotion: tuple[CheckResult, ...] = ()


@dataclass(frozen=True)
class Moment:
    """A time, the controller's last written entry then, the actions written so far, and what
    happened (``before <event>`` just before an event, the event itself right after it)."""

    at: datetime
    entry: Entry | None
    actions: tuple[Action, ...]
    event: str


def ramps(gated: bool) -> st.SearchStrategy[Strategy]:
    @st.composite
    def build(draw: st.DrawFn) -> Strategy:
        initial = draw(st.integers(1, 50))
        return Strategy(
            "ramp",
            "f",
            "percentage",
            float(initial),
            float(draw(st.integers(0, 30))),
            float(draw(st.integers(1, 48))),
            float(draw(st.integers(initial, 100))),
            start=BASE + timedelta(hours=draw(st.integers(-72, 72))),
            gated=gated,
        )

    return build()


def canaries(gated: bool) -> st.SearchStrategy[Strategy]:
    @st.composite
    def build(draw: st.DrawFn) -> Strategy:
        shares = sorted(draw(st.sets(st.integers(1, 100), min_size=1, max_size=4)))
        stages = tuple(
            Stage(f"s{k}", float(share), float(draw(st.integers(0, 48))))
            for k, share in enumerate(shares)
        )
        return Strategy(
            "canary",
            "f",
            "canary",
            stages[0].percentage,
            0.0,
            24.0,
            100.0,
            start=BASE + timedelta(hours=draw(st.integers(-72, 72))),
            stages=stages,
            gated=gated,
        )

    return build()


def schedules(gated: bool) -> st.SearchStrategy[Strategy]:
    return st.one_of(ramps(gated), canaries(gated))


KINDS = st.sampled_from(("run",) * 4 + ("probe",) * 3 + OPERATOR_ACTIONS)
# Gaps in minutes: from a minute to three days, so that steps come due between events.
EVENTS = st.lists(st.tuples(st.integers(1, 3 * 24 * 60), KINDS), max_size=25)


def judged(with_promotion: bool) -> Inputs:
    return Inputs(
        checks=(judge(HEALTH, HEALTHY),),
        conditions=(judge(SPIKE, HEALTHY),),
        promotion=(judge(CRITERION, HEALTHY),) if with_promotion else (),
    )


def written(
    strategy: Strategy, entry: Entry | None, actions: Sequence[Action], kind: str, at: datetime
) -> Action:
    """The operator's action as the CLI writes it: a pause holds what clients serve at its
    moment; a resume is one more epoch."""
    served = serve(strategy, entry, actions, at)
    epoch = max([served.epoch, *(a.epoch for a in actions)])
    if kind == "pause":
        return Action("pause", at, "ana", "look", epoch, served.percentage)
    if kind == "resume":
        return Action("resume", at, "ana", "fine", epoch + 1)
    return Action(kind, at, "ana", kind, epoch)


def replay(
    strategy: Strategy,
    events: Sequence[tuple[int, str]],
    inputs: Inputs,
    *,
    runs: bool = True,
    pause_scheduled: bool = True,
) -> list[Moment]:
    """The history lived: every moment clients are looked at. ``runs=False``: the controller
    never runs (clients have no entry), the same actions are written. ``pause_scheduled=False``:
    operators do not pause a rollout before its start (a pause then is only a probe)."""
    entry: Entry | None = None
    actions: tuple[Action, ...] = ()
    now = (strategy.start or BASE) - timedelta(days=1)  # a day of it scheduled, at most
    moments = []
    for gap, event in events:
        now += timedelta(minutes=gap)
        early = strategy.start is not None and now < strategy.start
        kind = "probe" if event == "pause" and early and not pause_scheduled else event
        moments.append(Moment(now - TICK, entry, actions, f"before {kind}"))
        if kind == "run" and runs:
            entry = controller(strategy, entry, actions, inputs, now)
        elif kind in OPERATOR_ACTIONS:
            actions = (*actions, written(strategy, entry, actions, kind, now))
        moments.append(Moment(now, entry, actions, kind))
    moments.append(Moment(now + timedelta(days=30), entry, actions, "long after"))
    return moments


def controller(
    strategy: Strategy,
    entry: Entry | None,
    actions: Sequence[Action],
    inputs: Inputs,
    now: datetime,
) -> Entry:
    return decide(
        strategy,
        entry,
        checks=inputs.checks,
        conditions=inputs.conditions,
        promotion=inputs.promotion,
        actions=actions,
        now=now,
    ).entry


def position(entry: Entry) -> tuple[str, float, int, str | None]:
    return entry.state, entry.percentage, entry.step, entry.stage


def share_of(strategy: Strategy, step: int) -> float:
    if strategy.stages:
        return strategy.stages[min(step, len(strategy.stages) - 1)].percentage
    return strategy.step_percentage(step)


def largest(strategy: Strategy) -> float:
    return strategy.stages[-1].percentage if strategy.stages else strategy.maximum


def described(strategy: Strategy, moment: Moment) -> str:
    actions = [(a.action, a.at.isoformat(), a.epoch, a.percentage) for a in moment.actions]
    return f"{strategy}\n{moment.event} at {moment.at.isoformat()}\n{moment.entry}\n{actions}"


# (1) Ungated: clients and the controller agree whenever it runs.


@settings(max_examples=200, deadline=None)
@given(schedules(gated=False), EVENTS)
def test_an_ungated_rollout_serves_what_a_controller_run_now_would_write(
    strategy: Strategy, events: list[tuple[int, str]]
) -> None:
    """At every moment: ``serve`` (the last written entry, the actions so far) is, in state,
    share, step and stage, the entry a controller run at that moment would write (no checks);
    and it is what clients serve had the controller never run (the same actions)."""
    lived = replay(strategy, events, Inputs())
    never = replay(strategy, events, Inputs(), runs=False)
    for moment, unwatched in zip(lived, never, strict=True):
        served = serve(strategy, moment.entry, moment.actions, moment.at)
        would = controller(strategy, moment.entry, moment.actions, Inputs(), moment.at)
        why = described(strategy, moment)
        assert position(served) == position(would), why
        alone = serve(strategy, None, unwatched.actions, moment.at)
        assert position(served) == position(alone), why


# (2) Gated with passing checks: clients never serve more than the next run writes.


@settings(max_examples=200, deadline=None)
@given(schedules(gated=True), EVENTS, st.booleans())
def test_a_gated_rollout_serves_at_most_what_the_next_controller_run_writes(
    strategy: Strategy, events: list[tuple[int, str]], with_promotion: bool
) -> None:
    """Health checks and rollback conditions pass (1% errors over 10,000 requests), with or
    without a promotion criterion that passes too. At every moment, with ``s`` what clients
    serve and ``d`` what a controller run then would write (given the same entry and actions):

    - ``s.percentage <= d.percentage``;
    - ``d`` is ``s`` (state, share, step, stage; holding and ramping alike), or exactly one
      step (or stage) on from it, when ``s`` is running, not at its last step, its step's
      wait has passed and no resume or abort is among the actions the entry has not seen
      (those are judged from the next run on);
    - right after a run, clients serve exactly what it wrote.

    Operators' actions change ``s`` and ``d`` alike: both apply them (``apply_actions``)."""
    inputs = judged(with_promotion)
    for moment in replay(strategy, events, inputs):
        served = serve(strategy, moment.entry, moment.actions, moment.at)
        would = controller(strategy, moment.entry, moment.actions, inputs, moment.at)
        why = f"{described(strategy, moment)}\nserved {served}\nwould write {would}"
        assert served.percentage <= would.percentage, why
        if moment.event == "run":
            assert moment.entry is not None
            assert position(served) == position(moment.entry), why
        if _running(served) == _running(would):
            continue
        unseen = pending(moment.entry, moment.actions, moment.at)  # not taken in by the entry
        assert served.state in (RAMPING, HOLDING), why
        assert served.step < strategy.last_step, why
        assert moment.at - served.since >= strategy.wait(served), why
        assert not any(a.action in ("resume", "abort") for a in unseen), why
        following = strategy.at_step(served, served.step + 1, moment.at)
        assert _running(would) == _running(following), why


def _running(entry: Entry) -> tuple[str, float, int, str | None]:
    """The position, holding counted as ramping (the share is the same)."""
    state = RAMPING if entry.state == HOLDING else entry.state
    return state, entry.percentage, entry.step, entry.stage


# (3) Monotonic: the share stays within the schedule and only rises, but for an abort.


@settings(max_examples=200, deadline=None)
@given(st.booleans().flatmap(schedules), EVENTS, st.booleans())
def test_the_share_served_stays_within_the_schedule_and_only_rises_until_an_abort(
    strategy: Strategy, events: list[tuple[int, str]], with_promotion: bool
) -> None:
    """Over the moments of a history (passing checks: nothing is rolled back but by an
    operator): the share is within [0, the schedule's largest]; from one moment to the next it
    does not fall unless an abort was written in between (a pause holds the share served, a
    resume goes on from it or, after an abort, from the first step); so the users served at one
    moment are served at the next (bucketing is monotonic in the share)."""
    inputs = judged(with_promotion) if strategy.gated else Inputs()
    moments = replay(strategy, events, inputs)
    shares = [serve(strategy, m.entry, m.actions, m.at).percentage for m in moments]
    for moment, share in zip(moments, shares, strict=True):
        assert 0 <= share <= largest(strategy), described(strategy, moment)
    for (before, had), (after, has) in pairwise(zip(moments, shares, strict=True)):
        written = after.actions[len(before.actions) :]
        if any(a.action == "abort" for a in written):
            continue
        assert has >= had, f"{had} -> {has}\n{described(strategy, after)}"
        users_before = {u for u in USERS if bucket(strategy.flag, u) * 100 < had}
        users_after = {u for u in USERS if bucket(strategy.flag, u) * 100 < has}
        assert users_before <= users_after


@settings(max_examples=200, deadline=None)
@given(st.booleans().flatmap(schedules), EVENTS, st.booleans())
def test_a_running_rollout_serves_the_share_of_its_step(
    strategy: Strategy, events: list[tuple[int, str]], with_promotion: bool
) -> None:
    """Ramping, holding or complete, what clients serve is the share of the step (or stage)
    they serve it on: a step is never served at another share (a rollout paused before its
    start and resumed after it too: it begins at its first step)."""
    inputs = judged(with_promotion) if strategy.gated else Inputs()
    for moment in replay(strategy, events, inputs):
        served = serve(strategy, moment.entry, moment.actions, moment.at)
        if served.state in (RAMPING, HOLDING, COMPLETE):
            why = f"{described(strategy, moment)}\nserved {served}"
            assert served.percentage == share_of(strategy, served.step), why


# (4) Scheduled: nobody before the start.


@settings(max_examples=200, deadline=None)
@given(st.booleans().flatmap(schedules), EVENTS, st.booleans())
def test_nobody_is_served_before_the_start(
    strategy: Strategy, events: list[tuple[int, str]], with_promotion: bool
) -> None:
    """Before its start a rollout serves 0, whatever operators do, and a controller run then
    writes 0; with no action written it is ``scheduled``."""
    assert strategy.start is not None
    inputs = judged(with_promotion) if strategy.gated else Inputs()
    for moment in replay(strategy, events, inputs):
        if moment.at >= strategy.start:
            continue
        served = serve(strategy, moment.entry, moment.actions, moment.at)
        would = controller(strategy, moment.entry, moment.actions, inputs, moment.at)
        why = f"{described(strategy, moment)}\nserved {served}"
        assert (served.percentage, would.percentage) == (0, 0), why
        if not moment.actions:
            assert served.state == SCHEDULED, why
        assert served.state in (SCHEDULED, PAUSED, ROLLED_BACK), why


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize(("initial", "increment", "maximum"), [(10, 10, 100), (50, 0, 50)])
def test_a_rollout_paused_before_its_start_and_resumed_after_it_serves_its_first_step(
    gated: bool, initial: float, increment: float, maximum: float
) -> None:
    start = BASE
    strategy = Strategy(
        "ramp", "f", "percentage", initial, increment, 24, maximum, start=start, gated=gated
    )
    resumed_at = start + timedelta(hours=1)
    actions = [
        Action("pause", start - timedelta(days=1), "ana", "not yet", 0, 0.0),  # the CLI's pause
        Action("resume", resumed_at, "ana", "go", 1),
    ]
    now = resumed_at + timedelta(hours=2)
    served = serve(strategy, None, actions, now)
    would = controller(strategy, None, actions, judged(False), now)
    first = COMPLETE if strategy.last_step == 0 else RAMPING  # a single step is complete at once
    assert (served.state, served.percentage) == (first, initial)
    assert would.percentage == initial
