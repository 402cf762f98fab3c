"""Where a rollout is, as clients serve it: a pure function of the schedule, the controller's
entry and an operator's last action at a time; and what the runtime does with it (targeting
strategies, canary stages, the same users across a rollback and a resume, cohort recording)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Reason
from reconciler.runtime.evaluate import evaluate
from reconciler.runtime.recorder import Recorder
from reconciler.runtime.rollout_state import (
    COMPLETE,
    NOT_WATCHED,
    PAUSED,
    RAMPING,
    ROLLED_BACK,
    SCHEDULED,
    Action,
    Entry,
    RolloutStates,
    Stage,
    Strategy,
    entry_from_item,
    serve,
    valid_until,
)
from reconciler.runtime.snapshot import build_snapshot, with_rollout_states
from reconciler.runtime.sources import Configuration, Overrides
from reconciler.runtime.telemetry import IN, OUT

START = datetime(2026, 12, 1, 10, tzinfo=UTC)
RAMP = Strategy("ramp", "f", "percentage", 10, 10, 24, 100, start=START)
CANARY = Strategy(
    "canary",
    "f",
    "canary",
    5,
    0,
    24,
    100,
    start=START,
    stages=(Stage("canary", 5, 12), Stage("half", 50, 24), Stage("full", 100)),
)


@given(st.integers(min_value=-100, max_value=24 * 20))
def test_an_ungated_schedule_is_a_function_of_time(hours: int) -> None:
    now = START + timedelta(hours=hours, minutes=30)
    served = serve(RAMP, None, (), now)
    if hours < 0:
        assert (served.state, served.percentage) == (SCHEDULED, 0)
    else:
        assert served.percentage == min(100, 10 + 10 * (hours // 24))
        assert served.state == (COMPLETE if hours >= 9 * 24 else RAMPING)
    assert valid_until(RAMP, None, (), served) > now


def test_an_ungated_canary_moves_through_its_stages_by_their_minimum_durations() -> None:
    stages = [serve(CANARY, None, (), START + timedelta(hours=h)).stage for h in (0, 11, 12, 35)]
    assert stages == ["canary", "canary", "half", "half"]
    assert serve(CANARY, None, (), START + timedelta(hours=36)).percentage == 100


def test_a_gated_strategy_holds_its_first_step_until_the_controller_judges_it() -> None:
    gated = Strategy("ramp", "f", "percentage", 10, 10, 24, 100, start=START, gated=True)
    unseen = serve(gated, None, (), START + timedelta(days=2, hours=1))
    assert (unseen.percentage, unseen.reason) == (10, NOT_WATCHED)  # no evidence yet: no steps
    assert serve(gated, None, (), START - timedelta(hours=1)).state == SCHEDULED
    # Once the controller has an entry, only it moves the share: time alone does not.
    entry = Entry(RAMPING, 30, START + timedelta(days=2))
    later = serve(gated, entry, (), START + timedelta(days=9))
    assert later.percentage == 30
    assert valid_until(gated, entry, (), later) == datetime.max.replace(tzinfo=UTC)


def test_an_operators_action_applies_before_the_controller_has_seen_it() -> None:
    entry = Entry(RAMPING, 30, START + timedelta(days=2), step=2)
    at = START + timedelta(days=2, hours=3)
    pause = Action("pause", at, "ana", "tickets", percentage=30)
    before = serve(RAMP, entry, [pause], at - timedelta(seconds=1))
    assert before.state == RAMPING  # written for a later time: not yet
    paused = serve(RAMP, entry, [pause], at + timedelta(days=5))
    assert (paused.state, paused.percentage) == (PAUSED, 30)  # no steps while paused
    abort = Action("abort", at, "ana", "tickets")
    assert serve(RAMP, entry, [abort], at).percentage == 0
    # The controller took the abort into account: the same action is not applied again.
    back = Entry(ROLLED_BACK, 0, at, step=2, acted=at)
    resumed_at = at + timedelta(hours=1)
    resume = Action("resume", resumed_at, "ana", "fixed", epoch=1)
    restarted = serve(RAMP, back, [resume], resumed_at + timedelta(hours=25))
    assert (restarted.state, restarted.percentage, restarted.epoch) == (RAMPING, 20, 1)
    assert restarted.since == resumed_at + timedelta(hours=24)  # from the resume, by time
    seen = Entry(RAMPING, 40, at, step=3, acted=resumed_at)
    assert serve(RAMP, seen, [resume], resumed_at).percentage == 40


def test_an_unreadable_entry_is_ignored_not_raised() -> None:
    for item in ({"state": "ramping"}, {"state": "x", "since": "2026-01-01T00:00:00Z"}, None, 3):
        assert entry_from_item(item) is None
    bad = {"state": "ramping", "since": "2026-01-01T00:00:00Z", "percentage": 140}
    assert entry_from_item(bad) is None


def flag_item(**rollout: Any) -> dict[str, Any]:
    conf = {
        "percentage": 10,
        "increment_percentage": 10,
        "increment_interval_hours": 24,
        "start_time": "2026-12-01T10:00:00Z",
    }
    return {
        "flag_name": "f",
        "enabled": True,
        "flag_type": "boolean",
        "value": True,
        "rollout_percentage": 100,
        "request_type": "chat",
        "rollout": {
            "strategy_name": "ramp",
            "rollout_type": "percentage",
            "configuration": conf,
            "gated": True,
            **rollout,
        },
    }


def users_on(snapshot: Any, now: datetime, **context: Any) -> set[str]:
    return {
        f"u{n}"
        for n in range(4000)
        if evaluate(snapshot, "f", {"user_id": f"u{n}", **context}, now).enabled
    }


def test_a_targeting_strategy_applies_only_to_its_users() -> None:
    item = flag_item(rollout_type="targeting")
    item["rollout"]["configuration"]["targeting"] = {
        "rules": [
            {
                "name": "germany",
                "action": "include",
                "when": {"attribute": "country", "operator": "equals", "value": "DE"},
            }
        ]
    }
    snapshot = build_snapshot("v", [item])
    now = START + timedelta(hours=1)
    assert 0.08 < len(users_on(snapshot, now, country="DE")) / 4000 < 0.12
    assert users_on(snapshot, now, country="US") == set()
    out = evaluate(snapshot, "f", {"user_id": "u1", "country": "US"}, now)
    assert (out.reason, out.detail) == (Reason.ROLLOUT_OUT, "outside the rollout's targeting")


def test_the_same_users_come_back_after_a_rollback_and_a_resume() -> None:
    snapshot = build_snapshot("v", [flag_item(gated=False)])
    early = START + timedelta(days=2, hours=1)  # 30%, by time
    had = users_on(snapshot, early)
    assert users_on(snapshot, START + timedelta(hours=1)) < had  # monotonic: 10% within 30%
    back_at = early + timedelta(hours=1)
    back = RolloutStates({"ramp": Entry(ROLLED_BACK, 0, back_at, step=2, acted=back_at)})
    assert users_on(with_rollout_states(snapshot, back), back_at) == set()
    resumed_at = back_at + timedelta(hours=1)
    resume = Action("resume", resumed_at, "ana", "fixed", epoch=1)
    resumed = with_rollout_states(snapshot, RolloutStates(back.entries, {"ramp": (resume,)}))
    first = users_on(resumed, resumed_at)
    assert first < had  # the first step's users: every one of them had it before
    ramped = RolloutStates({"ramp": Entry(RAMPING, 30, resumed_at, step=2, acted=resumed_at)})
    assert users_on(with_rollout_states(snapshot, ramped), resumed_at) == had  # exactly them
    paused = RolloutStates({"ramp": Entry(PAUSED, 30, resumed_at, step=2, acted=resumed_at)})
    assert users_on(with_rollout_states(snapshot, paused), resumed_at) == had


def test_a_decision_cached_with_its_rollout_moves_at_the_next_step() -> None:
    item = flag_item(gated=False)
    snapshot = build_snapshot("v", [item])
    flag = snapshot.flags["f"]
    on = [evaluate(snapshot, "f", {"user_id": f"u{n}"}, START).enabled for n in range(2000)]
    day = START + timedelta(days=1)
    later = [evaluate(snapshot, "f", {"user_id": f"u{n}"}, day).enabled for n in range(2000)]
    assert sum(later) > sum(on) * 1.5  # 20% after a day, from the same snapshot and flag
    assert flag is snapshot.flags["f"]


class Sink:
    def __init__(self) -> None:
        self.shards: list[Any] = []

    def write_shards(self, shards: Any) -> None:
        self.shards.extend(shards)


def test_outcomes_are_recorded_per_cohort_of_a_watched_rollout() -> None:
    class Source:
        def read_configuration(self) -> Any:
            return Configuration([copy.deepcopy(flag_item())], [])

        def read_overrides(self) -> Any:
            return Overrides()

        def describe(self) -> str:
            return "in memory"

    now = START + timedelta(hours=1)
    sink = Sink()
    client = FlagClient(Source(), background=False, clock=lambda: now, telemetry=sink)
    assert client.snapshot is not None
    assert client.snapshot.watched == {"chat": ("f",)}
    for n in range(1000):
        ctx = {"user_id": f"u{n}", "request_type": "chat"}
        if n % 10 == 0:
            client.record_ai_failure(ctx, "boom", 3000)
        else:
            client.record_ai_success(ctx, 800, 0.01, quality_score=0.9)
    assert client.flush()
    series = {name: t for shard in sink.shards for name, t in shard.series.items()}
    inside, outside = series[f"rollout:f:{IN}"], series[f"rollout:f:{OUT}"]
    assert inside.count + outside.count == 1000
    assert 60 < inside.count < 140  # the 10% with the feature
    assert series[f"rollout_cost:f:{IN}"].sum == 10_000 * series[f"rollout_cost:f:{IN}"].count
    assert any(name.startswith(f"rollout_latency:f:{IN}:") for name in series)
    client.close()
    recorder: Recorder = client.recorder
    assert recorder.health.rejected == {}


def test_actions_between_controller_runs_all_count_in_order() -> None:
    entry = Entry(RAMPING, 20, START + timedelta(days=1), step=1)
    paused_at, resumed_at = START + timedelta(days=1, hours=2), START + timedelta(days=4)
    actions = [
        Action("pause", paused_at, "ana", "look", percentage=20),
        Action("resume", resumed_at, "ana", "fine", epoch=1),
    ]
    # Not the schedule's 50% of day four: paused days do not count, the ramp goes on from 20%.
    assert serve(RAMP, entry, actions, resumed_at + timedelta(hours=1)).percentage == 20
    assert serve(RAMP, entry, actions, resumed_at + timedelta(hours=25)).percentage == 30
    aborted = [
        Action("abort", paused_at, "ana", "bad"),
        Action("resume", resumed_at, "ana", "fixed", epoch=1),
    ]
    assert serve(RAMP, entry, aborted, resumed_at + timedelta(hours=1)).percentage == 10
    promoted = [Action("promote", paused_at, "ana", "ready")]
    # A promote moves on from where the schedule is at its moment, then the schedule goes on.
    assert serve(RAMP, entry, promoted, paused_at).percentage == 30
    assert serve(RAMP, entry, promoted, paused_at + timedelta(hours=24)).percentage == 40


def test_an_entry_of_an_older_schedule_is_taken_up_by_the_new_one() -> None:
    old = Strategy("ramp", "f", "percentage", 10, 10, 24, 100, start=START)
    done = Entry(COMPLETE, 100, START + timedelta(days=9), step=9, schedule=old.fingerprint)
    halved = Strategy("ramp", "f", "percentage", 10, 10, 24, 50, start=START)
    assert serve(halved, done, (), START + timedelta(days=20)).percentage == 50  # git's new max
    gated = Strategy("ramp", "f", "percentage", 10, 10, 24, 100, start=START, gated=True)
    at_40 = Entry(RAMPING, 40, START + timedelta(days=3), step=3, schedule=gated.fingerprint)
    finer = Strategy("ramp", "f", "percentage", 10, 5, 24, 100, start=START, gated=True)
    moved = serve(finer, at_40, (), START + timedelta(days=3, hours=2))
    assert (moved.percentage, moved.step) == (40, 6)  # the same share: nobody loses it
    later = Strategy("ramp", "f", "percentage", 10, 10, 24, 100, start=START + timedelta(days=9))
    assert serve(later, done, (), START + timedelta(days=5)).state == SCHEDULED
    paused = Entry(PAUSED, 30, START, step=2, schedule=old.fingerprint)
    assert serve(halved, paused, (), START + timedelta(days=20)).percentage == 30  # held


def test_a_resume_before_the_start_waits_for_it() -> None:
    early = START - timedelta(days=3)
    actions = [
        Action("abort", early, "ana", "not yet"),
        Action("resume", early + timedelta(hours=1), "ana", "ok", epoch=1),
    ]
    assert serve(RAMP, None, actions, START - timedelta(days=1)).state == SCHEDULED
    assert serve(RAMP, None, actions, START + timedelta(hours=1)).percentage == 10
