"""The rollout controller's decision over simulated days, with a fake clock: a healthy ramp
reaches 100% on schedule, an error jump rolls it back and it stays back, too little traffic
holds it, a canary is promoted only after its stage's minimum duration with its criteria met,
and operators' pause, resume, abort and promote outrank the checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.controllers.rollout_checks import Check, Window, judge
from reconciler.controllers.rollout_controller import (
    COMPLETE,
    HOLDING,
    PAUSED,
    RAMPING,
    ROLLED_BACK,
    Action,
    Decision,
    Entry,
    Stage,
    Strategy,
    decide,
)

START = datetime(2026, 12, 1, 10, tzinfo=UTC)
RAMP = Strategy(
    "bedrock_gradual_rollout", "vc_bedrock_live", "percentage", 10, 10, 24, 100, gated=True
)
HEALTH = Check("error_rate_check", "error_rate", 5, "less_than", 60)
SPIKE = Check("error_rate_spike", "error_rate", 10, "greater_than", 15, action="rollback")


def step(entry: Entry | None, now: datetime, window: Window, **kwargs: object) -> Decision:
    return decide(
        RAMP,
        entry,
        checks=[judge(HEALTH, window)],
        conditions=[judge(SPIKE, window)],
        now=now,
        **kwargs,  # type: ignore[arg-type]
    )


def run(days: float, window: Window, every: timedelta = timedelta(minutes=5)) -> list[Entry]:
    entry: Entry | None = None
    seen = []
    now = START
    while now <= START + timedelta(days=days):
        entry = step(entry, now, window).entry
        seen.append(entry)
        now += every
    return seen


def test_a_healthy_rollout_reaches_100_percent_on_schedule() -> None:
    seen = run(9.1, Window(5000, 50), every=timedelta(hours=1))
    shares = [e.percentage for e in seen]
    assert shares[0] == 10
    assert shares[24] == 20  # one step a day, as the schedule says
    assert seen[-1].state == COMPLETE
    assert seen[-1].percentage == 100
    assert max(shares) == 100
    assert shares == sorted(shares)  # never down


def test_an_error_rate_of_7_percent_rolls_it_back_at_the_next_run_and_it_stays_back() -> None:
    healthy = step(None, START, Window(5000, 50)).entry
    later = START + timedelta(days=2)
    healthy = step(healthy, later, Window(5000, 50)).entry
    assert healthy.percentage == 20
    bad = step(healthy, later + timedelta(minutes=5), Window(5000, 350))
    assert bad.entry.state == ROLLED_BACK
    assert bad.entry.percentage == 0
    assert bad.alert
    assert "error_rate 7% not < 5%" in bad.entry.reason
    # Healthy again, days later: still back, until a person resumes it.
    again = step(bad.entry, later + timedelta(days=3), Window(5000, 10)).entry
    assert (again.state, again.percentage) == (ROLLED_BACK, 0)


def test_too_little_traffic_holds_instead_of_promoting() -> None:
    entry = step(None, START, Window(40, 0)).entry
    held = step(entry, START + timedelta(days=2), Window(40, 0)).entry
    assert held.state == HOLDING
    assert held.percentage == 10
    assert "insufficient data" in held.reason
    assert step(held, START + timedelta(days=2, hours=1), Window(5000, 10)).entry.percentage == 20


def test_a_rollback_condition_acts_as_the_manifest_says() -> None:
    pause = Check("spike", "error_rate", 10, "greater_than", 15, action="pause")
    entry = decide(RAMP, None, checks=[], conditions=[], now=START).entry
    paused = decide(
        RAMP, entry, checks=[], conditions=[judge(pause, Window(500, 60))], now=START
    ).entry
    assert (paused.state, paused.percentage) == (PAUSED, 10)


CANARY = Strategy(
    "bedrock_canary",
    "vc_bedrock_live",
    "canary",
    0,
    0,
    24,
    100,
    stages=(Stage("canary", 5, 24), Stage("early", 25, 24), Stage("full", 100)),
    gated=True,
)
LATENCY = Check("p95", "latency_p95", 2000, "less_than", 60, min_samples=100)


def test_a_canary_is_promoted_only_after_its_criteria_held_for_its_minimum_duration() -> None:
    fast = Window(1000, 0, {40: 1000})  # p95 1024 ms
    slow = Window(1000, 0, {48: 1000})  # p95 4096 ms
    entry: Entry | None = None
    stages = {}
    for hour in range(0, 80):
        window = slow if hour < 30 else fast  # too slow for the first 30 hours
        entry = decide(
            CANARY, entry, checks=[], conditions=[], promotion=[judge(LATENCY, window)],
            now=START + timedelta(hours=hour),
        ).entry  # fmt: skip
        stages[hour] = (entry.stage, entry.percentage, entry.state)
    assert stages[0] == ("canary", 5, RAMPING)
    assert stages[29] == ("canary", 5, RAMPING)  # over 24 h, criteria failing: kept, not back
    assert stages[53] == ("canary", 5, RAMPING)  # passing for 23 hours only
    assert stages[54] == ("early", 25, RAMPING)  # passing since hour 30, for 24 hours
    assert stages[78] == ("early", 25, RAMPING)  # judged on early's users from hour 55 only
    assert stages[79] == ("full", 100, COMPLETE)


def test_operators_outrank_the_checks() -> None:
    entry = step(None, START, Window(5000, 50)).entry
    at = START + timedelta(hours=1)
    paused = step(entry, at, Window(5000, 50), actions=[Action("pause", at, "ana", "look")]).entry
    assert (paused.state, paused.percentage) == (PAUSED, 10)
    later = START + timedelta(days=3)
    assert step(paused, later, Window(5000, 50)).entry.percentage == 10  # no steps while paused
    aborted = step(
        paused, later, Window(5000, 50), actions=[Action("abort", later, "ana", "tickets")]
    ).entry
    assert (aborted.state, aborted.percentage) == (ROLLED_BACK, 0)
    back = later + timedelta(hours=1)
    resumed = step(
        aborted, back, Window(5000, 50), actions=[Action("resume", back, "ana", "fixed", epoch=1)]
    ).entry
    assert (resumed.state, resumed.percentage, resumed.epoch) == (RAMPING, 10, 1)  # from the start
    jump = back + timedelta(minutes=5)
    promoted = step(
        resumed, jump, Window(5000, 50), actions=[Action("promote", jump, "ana", "ready")]
    ).entry
    assert promoted.percentage == 20


def test_a_promote_does_not_skip_the_checks() -> None:
    entry = step(None, START, Window(5000, 50)).entry
    at = START + timedelta(hours=2)
    promoted = step(entry, at, Window(5000, 1500), actions=[Action("promote", at, "bo", "go")])
    assert promoted.entry.state == ROLLED_BACK  # 30% errors: rolled back in the same run
    assert "promoted to 20% (bo: go)" in str(promoted.transition)
    assert "rolled back" in str(promoted.transition)


def test_a_rollback_condition_without_data_holds_a_due_step() -> None:
    quiet = judge(SPIKE, Window(60, 24))  # 40% errors, but 60 requests: insufficient
    entry = decide(RAMP, None, checks=[], conditions=[], now=START).entry
    later = START + timedelta(days=1, hours=1)
    held = decide(
        RAMP, entry, checks=[judge(HEALTH, Window(5000, 10))], conditions=[quiet], now=later
    )
    assert (held.entry.state, held.entry.percentage) == (HOLDING, 10)


def test_a_step_by_time_is_not_called_a_change_in_git() -> None:
    ramp = Strategy("r", "f", "percentage", 10, 10, 24, 100, start=START)
    first = decide(ramp, None, checks=[], conditions=[], now=START).entry
    later = decide(ramp, first, checks=[], conditions=[], now=START + timedelta(days=1, hours=1))
    assert later.transition == "r: 10% -> 20%"
    halved = Strategy("r", "f", "percentage", 10, 10, 24, 50, start=START)
    done = decide(ramp, first, checks=[], conditions=[], now=START + timedelta(days=20)).entry
    edited = decide(halved, done, checks=[], conditions=[], now=START + timedelta(days=21))
    assert edited.transition == "r: 100% -> 50% (the schedule changed in git)"
