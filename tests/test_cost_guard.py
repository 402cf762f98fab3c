"""The cost guard: its pure decision (levels, scope, periods and zones, idempotence, exact money)
and its shell on every store (cost-metrics rows, audit entries, alerts once under concurrency,
superseded runs, SNS, a lost answer on the state write)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from moto import mock_aws

from reconciler.apply import apply_plan
from reconciler.codec import DesiredState, encode
from reconciler.config import load_config
from reconciler.controllers.alerts import SnsPublisher
from reconciler.controllers.cost_guard import Alert, Outcome, decide
from reconciler.controllers.run import GUARD_RECORD, GuardRun, run_cost_guard
from reconciler.controllers.spend import DaySpend, SpendReading
from reconciler.plan.build import build_plan
from reconciler.runtime.budgets import (
    Budget,
    budgets_from_items,
    format_usd,
    period_at,
    to_micros,
)
from reconciler.runtime.cost_state import COST_GUARD_ID, CostState, cost_state_from_item, with_flags
from reconciler.runtime.telemetry import Shard, Totals, cost_bucket
from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.local import LocalStore
from reconciler.state.records import Item, RecordKind, format_time
from reconciler.state.store import StateStore
from reconciler.validation import validate
from tests.conftest import REPO_ROOT
from tests.dynamodb_fixtures import REGION

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
DAY = "2026-01-15"
NEXT_MIDNIGHT = "2026-01-16T00:00:00.000000Z"
BUDGET = "ai_daily_budget"
FLAG_BUDGET = "flag:vc_bedrock_live"
FLAGS = ["ai_model_selection", "vc_bedrock_live"]
POINTS = ["throttle-warning", "throttle", "emergency-warning", "emergency"]


# -- the pure decision -----------------------------------------------------------------------


@cache
def desired() -> DesiredState:
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    assert result.ok
    return encode(result.tree)


def example_budgets() -> list[Budget]:
    """The repository's budgets: ai_daily_budget and vc_bedrock_live's own cost_threshold."""
    state = desired()
    return budgets_from_items(
        list(state[RecordKind.COST_THRESHOLD].values()), list(state[RecordKind.FLAG].values())
    )


def step(
    budgets: Sequence[Budget],
    amount: object,
    previous: CostState | None = None,
    *,
    now: datetime = NOW,
    flags: Sequence[str] = FLAGS,
) -> Outcome:
    """decide() with every budget having counted ``amount`` USD."""
    spend = {b.name: to_micros(amount) for b in budgets}
    return decide(budgets, flags, spend, previous or CostState(), now=now, read_at=now)


def points(outcome: Outcome) -> list[str]:
    return [a.point for a in outcome.alerts]


def described(outcome: Outcome) -> list[str]:
    return [t.describe() for t in outcome.transitions]


def threshold(
    name: str,
    *,
    applies_to: object = "all",
    throttle: object = 100,
    factor: float = 0.5,
    emergency: object = None,
    **extra: object,
) -> Item:
    item: Item = {"threshold_name": name, "period": "daily", "applies_to": applies_to}
    if throttle is not None:
        item["throttle"] = {"amount_usd": throttle, "rollout_factor": factor}
    if emergency is not None:
        item["emergency"] = {"amount_usd": emergency}
    return {**item, **extra}


SCOPED_FLAGS: list[Item] = [
    {"flag_name": "fx", "request_type": "x"},
    {"flag_name": "fx2", "request_type": "x"},
    {"flag_name": "fy", "request_type": "y"},
    {"flag_name": "plain"},
]
SCOPED_NAMES = ["fx", "fx2", "fy", "plain"]
AI_FLAG: list[Item] = [{"flag_name": "f", "request_type": "x"}]  # an AI feature: it has a type


def test_the_example_manifests_give_the_two_budgets() -> None:
    budgets = {b.name: b for b in example_budgets()}
    assert sorted(budgets) == [BUDGET, FLAG_BUDGET]
    daily = budgets[BUDGET]
    assert (daily.period, daily.time_zone, daily.counts, daily.acts_on) == (
        "daily",
        "UTC",
        None,
        frozenset({"ai_model_selection", "vc_bedrock_live"}),  # every flag with a request type
    )
    assert (daily.throttle_micros, daily.rollout_factor, daily.emergency_micros) == (
        100_000_000,
        0.5,
        500_000_000,
    )
    own = budgets[FLAG_BUDGET]
    assert (own.counts, own.acts_on, own.throttle_micros, own.rollout_factor) == (
        frozenset({"vc_analysis"}),
        frozenset({"vc_bedrock_live"}),
        100_000_000,
        0.5,
    )
    assert own.emergency_micros is None
    assert not own.alerting


def test_levels_and_alerts_follow_the_spend() -> None:
    budgets = example_budgets()
    quiet = step(budgets, "79.99")
    assert quiet.state.budgets[BUDGET].level == "ok"
    assert quiet.alerts == ()
    assert quiet.state.flags == {}

    warned = step(budgets, 80, quiet.state)
    assert warned.state.budgets[BUDGET].level == "warning"
    assert warned.state.budgets[FLAG_BUDGET].level == "ok", "a flag's own limit does not warn"
    assert warned.state.flags == {}
    (alert,) = warned.alerts
    assert alert.alert_id == f"{BUDGET}/{DAY}@UTC/throttle-warning"
    assert (alert.limit_micros, alert.spent_micros) == (100_000_000, 80_000_000)
    assert alert.message.startswith(f"Cost budget {BUDGET} ")
    assert "throttle limit: $80.00 spent of $100.00 (2026-01-15, UTC)." in alert.message
    (change,) = described(warned)
    assert change.startswith(f"budget/{BUDGET}: ok -> warning ({BUDGET}: $80.00 spent")

    more = step(budgets, "99.99", warned.state)
    assert more.state.budgets[BUDGET].level == "warning"
    assert more.alerts == ()
    assert more.transitions == ()

    throttled = step(budgets, 100, more.state)
    assert throttled.state.budgets[BUDGET].level == "throttled"
    assert throttled.state.budgets[FLAG_BUDGET].level == "throttled"
    assert points(throttled) == ["throttle"]
    assert {a.budget for a in throttled.alerts} == {BUDGET}, "the flag's own limit never alerts"
    assert sorted(throttled.state.flags) == FLAGS
    for held in throttled.state.flags.values():
        assert (held.state, held.factor, held.until) == ("throttled", 0.5, NEXT_MIDNIGHT)
    assert throttled.state.budgets[BUDGET].period_end == NEXT_MIDNIGHT
    assert f"budget/{BUDGET}: warning -> throttled" in described(throttled)[0]
    assert any(
        d.startswith("flag/ai_model_selection: normal -> throttled") for d in described(throttled)
    )

    near = step(budgets, 400, throttled.state)
    assert near.state.budgets[BUDGET].level == "throttled"
    assert points(near) == ["emergency-warning"]
    assert near.alerts[0].limit_micros == 500_000_000

    emergency = step(budgets, 500, near.state)
    assert emergency.state.budgets[BUDGET].level == "emergency"
    assert points(emergency) == ["emergency"]
    assert sorted(emergency.state.flags) == FLAGS
    for held in emergency.state.flags.values():
        assert (held.state, held.budget, held.until) == ("emergency", BUDGET, NEXT_MIDNIGHT)

    jump = step(budgets, 600)
    assert jump.state.budgets[BUDGET].level == "emergency"
    assert points(jump) == POINTS
    assert {a.spent_micros for a in jump.alerts} == {600_000_000}
    assert len({a.alert_id for a in jump.alerts}) == 4


def test_a_flags_own_cost_threshold_halves_that_flag_alone_and_does_not_alert() -> None:
    flags = list(desired()[RecordKind.FLAG].values())
    budgets = budgets_from_items([], flags)
    assert [b.name for b in budgets] == [FLAG_BUDGET]
    below = step(budgets, "99.99")
    assert below.state.flags == {}
    reached = step(budgets, 100, below.state)
    assert reached.alerts == ()
    assert sorted(reached.state.flags) == ["vc_bedrock_live"]
    held = reached.state.flags["vc_bedrock_live"]
    assert (held.state, held.budget, held.factor, held.until) == (
        "throttled",
        FLAG_BUDGET,
        0.5,
        NEXT_MIDNIGHT,
    )


def test_a_budget_scoped_to_a_request_type_counts_and_acts_on_that_type_only() -> None:
    (budget,) = budgets_from_items(
        [threshold("bx", applies_to={"request_types": ["x"]})], SCOPED_FLAGS
    )
    assert budget.counts == frozenset({"x"})
    assert budget.acts_on == frozenset({"fx", "fx2"})
    by_type = {"x": to_micros(60), "y": to_micros(500)}
    assert budget.spent(by_type) == to_micros(60)

    reading = SpendReading(
        NOW,
        [
            DaySpend(DAY, "UTC", "x", to_micros(60), 6, 0),
            DaySpend(DAY, "UTC", "y", to_micros(500), 50, 0),
            DaySpend("2026-01-14", "UTC", "x", to_micros(900), 90, 0),
        ],
        [],
    )
    assert reading.budget_spend(budget, NOW) == to_micros(60), "today, type x only"

    spend = {"bx": budget.spent({"x": to_micros(100), "y": to_micros(500)})}
    outcome = decide([budget], SCOPED_NAMES, spend, CostState(), now=NOW, read_at=NOW)
    assert outcome.state.budgets["bx"].level == "throttled"
    assert sorted(outcome.state.flags) == ["fx", "fx2"]

    calm = decide(
        [budget], SCOPED_NAMES, {"bx": budget.spent(by_type)}, CostState(), now=NOW, read_at=NOW
    )
    assert calm.state.budgets["bx"].level == "ok"
    assert calm.state.flags == {}


def test_a_budget_scoped_to_a_flag_counts_its_request_type_and_acts_on_it_alone() -> None:
    (budget,) = budgets_from_items([threshold("bf", applies_to={"flags": ["fx"]})], SCOPED_FLAGS)
    assert budget.counts == frozenset({"x"})
    assert budget.acts_on == frozenset({"fx"})
    assert budget.spent({"x": 7, "y": 11}) == 7
    spend = {"bf": budget.spent({"x": to_micros(150), "y": to_micros(1)})}
    outcome = decide([budget], SCOPED_NAMES, spend, CostState(), now=NOW, read_at=NOW)
    assert sorted(outcome.state.flags) == ["fx"], "not fx2, though it has fx's request type"


def test_of_two_throttles_the_tighter_wins_and_emergency_beats_throttle() -> None:
    loose, tight, hard = budgets_from_items(
        [
            threshold("loose", factor=0.5),
            threshold("tight", factor=0.25),
            threshold("hard", throttle=None, emergency=200),
        ],
        SCOPED_FLAGS,
    )
    for order in ([loose, tight], [tight, loose]):
        outcome = step(order, 150, flags=["fx"])
        held = outcome.state.flags["fx"]
        assert (held.state, held.budget, held.factor) == ("throttled", "tight", 0.25)
    for order in ([loose, tight, hard], [hard, tight, loose]):
        outcome = step(order, 250, flags=["fx"])
        held = outcome.state.flags["fx"]
        assert (held.state, held.budget) == ("emergency", "hard")
    below = step([tight, hard], 150, flags=["fx"])
    assert below.state.budgets["hard"].level == "ok"
    assert below.state.flags["fx"].budget == "tight"


def test_at_utc_midnight_a_daily_budget_starts_from_nothing_and_releases_its_flags() -> None:
    budgets = example_budgets()
    late = datetime(2026, 1, 15, 23, 59, 59, 999999, tzinfo=UTC)
    midnight = datetime(2026, 1, 16, tzinfo=UTC)
    reading = SpendReading(
        midnight,
        [DaySpend(DAY, "UTC", "vc_analysis", to_micros(150), 15, 0)],
        [],
    )
    assert reading.budget_spend(budgets[0], late) == to_micros(150)
    assert reading.budget_spend(budgets[0], midnight) == 0, "the new day starts from nothing"

    before = step(budgets, 150, now=late)
    assert before.state.budgets[BUDGET].level == "throttled"
    assert sorted(before.state.flags) == FLAGS
    after = step(budgets, 0, before.state, now=midnight)
    state = after.state.budgets[BUDGET]
    assert (state.period, state.level, state.spent_micros) == ("2026-01-16", "ok", 0)
    assert state.period_end == "2026-01-17T00:00:00.000000Z"
    assert state.since == format_time(midnight)
    assert after.state.flags == {}
    assert after.changed
    assert f"budget/{BUDGET}: throttled -> ok (a new period)" in described(after)
    for name in FLAGS:
        assert f"flag/{name}: throttled -> normal (the period ended)" in described(after)
    assert after.alerts == ()
    again = step(budgets, 80, after.state, now=midnight + timedelta(hours=1))
    assert points(again) == ["throttle-warning"], "the new period's alerts fire anew"
    assert again.alerts[0].period == "2026-01-16"


@pytest.mark.parametrize(
    ("last_local_instant", "rollover", "day", "next_day"),
    [
        pytest.param(
            datetime(2026, 1, 15, 22, 59, 59, tzinfo=UTC),
            datetime(2026, 1, 15, 23, 0, tzinfo=UTC),
            "2026-01-15",
            "2026-01-16",
            id="winter-23:00Z",
        ),
        pytest.param(
            datetime(2026, 7, 15, 21, 59, 59, tzinfo=UTC),
            datetime(2026, 7, 15, 22, 0, tzinfo=UTC),
            "2026-07-15",
            "2026-07-16",
            id="summer-22:00Z",
        ),
    ],
)
def test_a_berlin_budget_rolls_over_at_berlin_midnight(
    last_local_instant: datetime, rollover: datetime, day: str, next_day: str
) -> None:
    berlin, utc = budgets_from_items(
        [threshold("berlin", time_zone="Europe/Berlin"), threshold("utc")], AI_FLAG
    )
    assert berlin.time_zone == "Europe/Berlin"
    assert berlin.period_at(last_local_instant).key == day
    assert berlin.period_at(rollover).key == next_day
    assert berlin.period_at(last_local_instant).end == rollover
    before = step([berlin, utc], 150, now=last_local_instant, flags=["f"])
    assert before.state.budgets["berlin"].period_end == format_time(rollover)
    assert before.state.flags["f"].until == format_time(rollover)

    after = decide(
        [berlin, utc],
        ["f"],
        {"berlin": 0, "utc": to_micros(150)},
        before.state,
        now=rollover,
        read_at=rollover,
    )
    assert after.state.budgets["berlin"].period == next_day
    assert after.state.budgets["berlin"].level == "ok"
    assert "budget/berlin: throttled -> ok (a new period)" in described(after)
    utc_state = after.state.budgets["utc"]
    assert (utc_state.period, utc_state.level) == (day, "throttled"), "UTC's day goes on"
    assert not any(d.startswith("budget/utc") for d in described(after))
    assert after.state.flags["f"].budget == "utc"

    # A Berlin budget does not roll over at UTC midnight.
    utc_midnight = datetime.fromisoformat(next_day).replace(tzinfo=UTC)
    assert berlin.period_at(utc_midnight - timedelta(microseconds=1)).key == next_day
    assert berlin.period_at(utc_midnight).key == next_day


def test_a_monthly_budget_sums_the_month_so_far_and_rolls_over_on_the_first() -> None:
    (monthly,) = budgets_from_items(
        [
            threshold(
                "monthly",
                period="monthly",
                time_zone="Europe/Berlin",
                throttle=1000,
                emergency=3000,
            )
        ],
        AI_FLAG,
    )
    mid = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
    period = monthly.period_at(mid)
    assert period.key == "2026-03"
    assert period.days == tuple(f"2026-03-{d:02d}" for d in range(1, 16))
    assert period.start == datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    assert period.end == datetime(2026, 3, 31, 22, 0, tzinfo=UTC), "CEST has begun by then"
    assert len(period_at("monthly", "UTC", datetime(2026, 2, 28, 12, tzinfo=UTC)).days) == 28
    assert len(period_at("monthly", "UTC", datetime(2028, 2, 29, 12, tzinfo=UTC)).days) == 29
    december = period_at("monthly", "UTC", datetime(2026, 12, 31, 23, tzinfo=UTC))
    assert (december.key, len(december.days), december.end) == (
        "2026-12",
        31,
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    first_local = monthly.period_at(datetime(2026, 2, 28, 23, 30, tzinfo=UTC))
    assert (first_local.key, first_local.days) == ("2026-03", ("2026-03-01",))

    zone = "Europe/Berlin"
    reading = SpendReading(
        mid,
        [
            DaySpend("2026-02-28", zone, "x", to_micros(5000), 1, 0),  # last month
            DaySpend("2026-03-01", zone, "x", to_micros(400), 1, 0),
            DaySpend("2026-03-09", zone, "y", to_micros(500), 1, 0),
            DaySpend("2026-03-15", zone, "x", to_micros(300), 1, 0),
            DaySpend("2026-03-15", "UTC", "x", to_micros(7000), 1, 0),  # another zone's day
            DaySpend("2026-03-16", zone, "x", to_micros(7000), 1, 0),  # not yet
        ],
        [],
    )
    spent = reading.budget_spend(monthly, mid)
    assert spent == to_micros(1200)

    outcome = decide([monthly], ["f"], {"monthly": spent}, CostState(), now=mid, read_at=mid)
    assert outcome.state.budgets["monthly"].level == "throttled"
    assert outcome.state.flags["f"].until == "2026-03-31T22:00:00.000000Z"
    assert points(outcome) == ["throttle-warning", "throttle"]
    assert outcome.alerts[0].alert_id == "monthly/2026-03@Europe/Berlin/throttle-warning"

    last = datetime(2026, 3, 31, 21, 59, 59, tzinfo=UTC)
    rollover = datetime(2026, 3, 31, 22, 0, tzinfo=UTC)
    assert monthly.period_at(last).key == "2026-03"
    assert len(monthly.period_at(last).days) == 31
    assert monthly.period_at(rollover).key == "2026-04"
    assert monthly.period_at(rollover).days == ("2026-04-01",)
    held = decide(
        [monthly], ["f"], {"monthly": to_micros(2000)}, outcome.state, now=last, read_at=last
    )
    assert held.state.budgets["monthly"].level == "throttled"
    assert held.transitions == ()
    fresh = decide([monthly], ["f"], {"monthly": 0}, held.state, now=rollover, read_at=rollover)
    assert fresh.state.budgets["monthly"].period == "2026-04"
    assert fresh.state.flags == {}
    assert "budget/monthly: throttled -> ok (a new period)" in described(fresh)


def test_deciding_again_on_the_same_inputs_changes_nothing() -> None:
    budgets = example_budgets()
    first = step(budgets, 120)
    assert first.changed
    again = step(budgets, 120, first.state)
    assert not again.changed
    assert again.transitions == ()
    assert again.alerts == ()

    stored = cost_state_from_item(json.loads(json.dumps(first.state.to_item())))
    later = step(budgets, 120, stored, now=NOW + timedelta(hours=1))
    assert not later.changed, "as the shell reads it back"
    assert later.transitions == ()
    assert later.alerts == ()
    assert later.state.budgets[BUDGET].since == first.state.budgets[BUDGET].since
    for name in FLAGS:
        assert later.state.flags[name].since == first.state.flags[name].since

    moved = step(budgets, 130, later.state, now=NOW + timedelta(hours=2))
    assert moved.changed, "the spend moved"
    assert moved.transitions == ()
    assert moved.alerts == ()
    assert moved.state.budgets[BUDGET].since == format_time(NOW)
    assert moved.state.flags["vc_bedrock_live"].since == format_time(NOW)

    up = step(budgets, 500, moved.state, now=NOW + timedelta(hours=3))
    assert up.state.budgets[BUDGET].since == format_time(NOW + timedelta(hours=3))
    assert up.state.flags["vc_bedrock_live"].since == format_time(NOW + timedelta(hours=3))


def test_money_is_exact() -> None:
    assert to_micros("0.1") * 3 == to_micros("0.3") == 300_000
    assert to_micros(0.1) * 3 == to_micros(0.3)
    assert to_micros(100) == 100_000_000
    assert to_micros("1234.567891") == 1_234_567_891
    assert format_usd(5_000) == "$0.01", "half a cent rounds up"
    assert format_usd(4_999) == "$0.00"
    assert format_usd(25_000) == "$0.03", "half up, not to even"
    assert format_usd(1_234_565_000) == "$1,234.57"
    assert format_usd(100_000_000) == "$100.00"
    assert format_usd(0) == "$0.00"
    with pytest.raises(TypeError):
        to_micros(True)
    with pytest.raises(ValueError, match="not an amount"):
        to_micros("ten")


# -- the shell, on every store ---------------------------------------------------------------


def seed(store: StateStore) -> None:
    """The repository's manifests, applied to the store."""
    planned = build_plan(desired(), store, git_commit="c0ffee", now=NOW)
    apply_plan(planned, store, actor="tester", now=lambda: NOW)


def spend(store: StateStore, amount: object, *, seq: int, writer: str = "writer-a") -> int:
    """One writer's absolute vc_analysis spend today (UTC), as its shard number ``seq``."""
    micros = to_micros(amount)
    series = {"cost:vc_analysis": Totals(seq, micros, 0.0, 0, micros)}
    store.write_shards([Shard(cost_bucket(DAY, "UTC"), writer, seq, series, format_time(NOW))])
    return micros


def guard_state(store: StateStore) -> CostState:
    return cost_state_from_item(store.read_control(COST_GUARD_ID))


def twin(store: StateStore) -> StateStore:
    """Another store object on the same backend, as a second guard process would have."""
    if isinstance(store, LocalStore):
        return LocalStore(store.path)
    assert isinstance(store, DynamoDBStore)
    return DynamoDBStore(
        tables=store.tables,
        region=REGION,
        endpoint_url=store.endpoint_url,
        sleep=lambda _: None,
    )


def test_the_original_cost_metrics_rows_are_written(store: StateStore) -> None:
    seed(store)
    bucket = cost_bucket(DAY, "UTC")
    stamp = format_time(NOW)
    store.write_shards(
        [
            Shard(
                bucket,
                "writer-a",
                3,
                {
                    "cost:vc_analysis": Totals(10, 12_345_678, 0.0, 1_000, 3_000_000),
                    "tokens:vc_analysis": Totals(10, 5_000, 0.0, 100, 900),
                    "cost:summary": Totals(2, 100_001, 0.0, 1, 100_000),
                },
                stamp,
            ),
            Shard(
                bucket,
                "writer-b",
                1,
                {
                    "cost:vc_analysis": Totals(5, 1_000_001, 0.0, 7, 400_000),
                    "tokens:vc_analysis": Totals(5, 2_500, 0.0, 100, 900),
                },
                stamp,
            ),
        ]
    )
    later = NOW + timedelta(minutes=3)
    run = run_cost_guard(store, now=later)
    rows = {str(r["request_type"]): r for r in store.read_cost_metrics(DAY)}
    assert sorted(rows) == ["summary", "vc_analysis"]
    vc, summary = rows["vc_analysis"], rows["summary"]
    assert vc["cost_micros"] == 13_345_679
    assert Decimal(str(vc["daily_cost"])) == Decimal("13.345679")
    assert (vc["total_requests"], vc["total_tokens"]) == (15, 7_500)
    assert vc["last_updated"] == format_time(later)
    assert summary["cost_micros"] == 100_001
    assert Decimal(str(summary["daily_cost"])) == Decimal("0.100001")
    assert (summary["total_requests"], summary["total_tokens"]) == (2, 0)
    assert run.outcome.state.budgets[BUDGET].spent_micros == 13_345_679 + 100_001
    assert run.outcome.state.budgets[FLAG_BUDGET].spent_micros == 13_345_679
    assert store.read_cost_metrics("2026-01-14") == []


def test_each_state_change_has_one_audit_entry(store: StateStore) -> None:
    seed(store)
    runs: list[GuardRun] = []
    for minute, (amount, seq) in enumerate([(50, 1), (50, 1), (85, 2), (90, 3), (120, 4)]):
        spend(store, amount, seq=seq)
        runs.append(run_cost_guard(store, now=NOW + timedelta(minutes=minute)))
    assert [r.written for r in runs] == [True, False, True, True, True]
    entries = store.read_audit(GUARD_RECORD)
    assert len(entries) == 2, [e["reason"] for e in entries]
    throttled, warned = entries  # newest first
    assert warned["reason"] == described(runs[2].outcome)[0]
    assert warned["reason"].startswith(f"budget/{BUDGET}: ok -> warning")
    assert warned["at"] == format_time(NOW + timedelta(minutes=2))
    assert (warned["action"], warned["actor"]) == ("cost-state", "cost-guard")
    assert warned["after"]["budgets"][BUDGET] == {"level": "warning", "period": DAY}
    assert f"budget/{BUDGET}: warning -> throttled" in throttled["reason"]
    assert f"budget/{FLAG_BUDGET}: ok -> throttled" in throttled["reason"]
    assert "flag/vc_bedrock_live: normal -> throttled" in throttled["reason"]
    assert throttled["before"]["budgets"][BUDGET]["level"] == "warning"
    assert throttled["after"]["flags"]["ai_model_selection"] == {
        "state": "throttled",
        "budget": BUDGET,
    }
    state = guard_state(store)
    assert state.version == 4
    assert state.budgets[BUDGET].spent_micros == to_micros(120)
    assert state.read_at == format_time(NOW + timedelta(minutes=4))


def test_alerts_are_recorded_once_when_two_guards_run_at_once(store: StateStore) -> None:
    seed(store)
    other = twin(store)
    guards = [store, other]
    runs: list[GuardRun] = []
    errors: list[BaseException] = []
    total = 0
    try:
        for i in range(1, 21):
            total = spend(store, 27 * i, seq=i)
            barrier = threading.Barrier(2)
            moment = NOW + timedelta(seconds=i)

            def guard(
                n: int, moment: datetime = moment, barrier: threading.Barrier = barrier
            ) -> None:
                try:
                    barrier.wait()
                    runs.append(run_cost_guard(guards[n], now=moment + timedelta(microseconds=n)))
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=guard, args=(n,)) for n in (0, 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
    finally:
        other.close()
    assert errors == []
    assert len(runs) == 40
    expected = [f"{BUDGET}/{DAY}@UTC/{p}" for p in POINTS]
    alerts = store.read_alerts()
    assert sorted(a["alert_id"] for a in alerts) == sorted(expected)
    recorded = [a.alert_id for r in runs for a in r.alerts_recorded]
    assert sorted(recorded) == sorted(expected), "each alert recorded by exactly one run"
    state = guard_state(store)
    assert state.budgets[BUDGET].spent_micros == total == to_micros(540)
    assert state.budgets[BUDGET].level == "emergency"
    last = NOW + timedelta(seconds=20)
    assert state.read_at in (format_time(last), format_time(last + timedelta(microseconds=1)))
    assert state.flags == {}, "the stored state names no flag: the budgets' scopes do"
    held = with_flags(state, FLAGS, last).flags
    assert {f.state for f in held.values()} == {"emergency"}
    assert sorted(held) == FLAGS
    entries = store.read_audit(GUARD_RECORD)
    assert [e["after"]["budgets"][BUDGET]["level"] for e in reversed(entries)] == [
        "warning",
        "throttled",
        "emergency",
    ]


class StaleShards:
    """The store, but its shards are as they were when this (slow) run read them."""

    def __init__(self, inner: StateStore, shards: list[Shard]) -> None:
        self.inner = inner
        self.shards = shards

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read_shards(self, bucket: str) -> list[Shard]:
        return list(self.shards) if bucket == cost_bucket(DAY, "UTC") else []


def test_a_run_with_an_older_reading_writes_nothing(store: StateStore) -> None:
    seed(store)
    spend(store, 90, seq=1)
    old = store.read_shards(cost_bucket(DAY, "UTC"))
    spend(store, 120, seq=2)
    newer = run_cost_guard(store, now=NOW + timedelta(minutes=2))
    assert newer.written
    before = store.read_control(COST_GUARD_ID)
    audit = store.read_audit(GUARD_RECORD)
    alerts = store.read_alerts()
    rows = store.read_cost_metrics(DAY)
    assert rows[0]["cost_micros"] == to_micros(120)

    slow = StaleShards(store, old)
    stale = run_cost_guard(slow, now=NOW + timedelta(minutes=1))
    assert stale.superseded
    assert not stale.written
    assert stale.alerts_recorded == []
    assert store.read_control(COST_GUARD_ID) == before
    assert store.read_audit(GUARD_RECORD) == audit
    assert store.read_alerts() == alerts
    assert store.read_cost_metrics(DAY) == rows, "the newer totals stay"


def test_a_superseded_run_leaves_the_cost_metrics_rows_as_the_newer_run_wrote_them(
    store: StateStore,
) -> None:
    """No new spend between the two readings: the rows' totals are equal, and the older
    reading must not move ``last_updated`` back either."""
    seed(store)
    spend(store, 120, seq=1)
    assert run_cost_guard(store, now=NOW + timedelta(minutes=2)).written
    rows = store.read_cost_metrics(DAY)
    stale = run_cost_guard(store, now=NOW + timedelta(minutes=1))
    assert stale.superseded
    assert store.read_cost_metrics(DAY) == rows


# -- SNS ---------------------------------------------------------------------------------------


@pytest.fixture
def aws() -> Iterator[tuple[Any, Any]]:
    """SNS and SQS clients under moto in-process."""
    with mock_aws():
        yield boto3.client("sns", region_name=REGION), boto3.client("sqs", region_name=REGION)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalStore]:
    store = LocalStore(tmp_path / "state.db")
    store.bootstrap()
    seed(store)
    yield store
    store.close()


def topic_with_queue(sns: Any, sqs: Any, *, fifo: bool = False) -> tuple[str, str]:
    """A topic and an SQS queue subscribed to it (raw delivery), to see what was published."""
    suffix = ".fifo" if fifo else ""
    attributes = {"FifoTopic": "true"} if fifo else {}
    arn = sns.create_topic(Name=f"cost-alerts{suffix}", Attributes=attributes)["TopicArn"]
    queue = sqs.create_queue(
        QueueName=f"alerts{suffix}", Attributes={"FifoQueue": "true"} if fifo else {}
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    return arn, queue


def received(sqs: Any, queue: str) -> list[dict[str, Any]]:
    """Every message waiting in the queue, taken out of it."""
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue,
            MaxNumberOfMessages=10,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return messages
        for message in batch:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        messages.extend(batch)


class BrokenPublisher:
    def __init__(self) -> None:
        self.calls = 0

    def describe(self) -> str:
        return "a publisher that fails"

    def publish(self, alert: Alert) -> None:
        self.calls += 1
        raise RuntimeError("SNS is down")


def test_an_alert_is_published_once(aws: tuple[Any, Any], local: LocalStore) -> None:
    sns, sqs = aws
    arn, queue = topic_with_queue(sns, sqs)
    publisher = SnsPublisher(arn, client=sns)
    assert publisher.describe() == f"SNS topic {arn}"
    spend(local, 85, seq=1)
    first = run_cost_guard(local, now=NOW, publisher=publisher)
    alert_id = f"{BUDGET}/{DAY}@UTC/throttle-warning"
    assert first.alerts_published == [alert_id]
    assert first.publish_errors == []
    (message,) = received(sqs, queue)
    assert message["Body"] == first.alerts_recorded[0].message
    assert message["MessageAttributes"]["source"]["StringValue"] == BUDGET
    assert message["MessageAttributes"]["level"]["StringValue"] == "throttle-warning"
    (item,) = local.read_alerts()
    assert item["published"] is True
    assert item["published_at"] == format_time(NOW)

    spend(local, 90, seq=2)
    for minutes in (1, 10):
        again = run_cost_guard(local, now=NOW + timedelta(minutes=minutes), publisher=publisher)
        assert again.alerts_published == []
    assert received(sqs, queue) == []


def test_an_alert_that_failed_to_publish_goes_out_on_a_later_run(
    aws: tuple[Any, Any], local: LocalStore
) -> None:
    sns, sqs = aws
    arn, queue = topic_with_queue(sns, sqs)
    publisher = SnsPublisher(arn, client=sns)
    broken = BrokenPublisher()
    spend(local, 85, seq=1)
    first = run_cost_guard(local, now=NOW, publisher=broken)
    alert_id = f"{BUDGET}/{DAY}@UTC/throttle-warning"
    assert [a.alert_id for a in first.alerts_recorded] == [alert_id]
    assert first.alerts_published == []
    assert first.publish_errors == [f"{alert_id}: RuntimeError: SNS is down"]
    (item,) = local.read_alerts()
    assert item["published"] is False

    soon = run_cost_guard(local, now=NOW + timedelta(minutes=1), publisher=publisher)
    assert soon.alerts_published == [], "its recorder may still be publishing it"
    assert received(sqs, queue) == []

    late = run_cost_guard(local, now=NOW + timedelta(minutes=6), publisher=publisher)
    assert late.alerts_published == [alert_id]
    assert late.alerts_recorded == []
    (message,) = received(sqs, queue)
    assert "80% of its throttle limit: $85.00 spent of $100.00" in message["Body"]
    (item,) = local.read_alerts()
    assert item["published"] is True
    assert item["published_at"] == format_time(NOW + timedelta(minutes=6))

    after = run_cost_guard(local, now=NOW + timedelta(minutes=12), publisher=publisher)
    assert after.alerts_published == []
    assert received(sqs, queue) == []


def test_a_fifo_topic_gets_the_alert_id_as_deduplication_id(
    aws: tuple[Any, Any], local: LocalStore
) -> None:
    sns, sqs = aws
    arn, queue = topic_with_queue(sns, sqs, fifo=True)
    sent: list[dict[str, Any]] = []
    sns.meta.events.register(
        "provide-client-params.sns.Publish", lambda params, **_: sent.append(dict(params))
    )
    publisher = SnsPublisher(arn, client=sns)
    spend(local, 120, seq=1)
    run = run_cost_guard(local, now=NOW, publisher=publisher)
    ids = [f"{BUDGET}/{DAY}@UTC/throttle-warning", f"{BUDGET}/{DAY}@UTC/throttle"]
    assert run.alerts_published == ids
    assert [p["MessageDeduplicationId"] for p in sent] == [i.replace("@", "-") for i in ids]
    assert {p["MessageGroupId"] for p in sent} == {BUDGET}
    publisher.publish(run.alerts_recorded[0])  # a repeat within five minutes
    messages = received(sqs, queue)
    assert [m["Attributes"]["MessageDeduplicationId"] for m in messages] == [
        i.replace("@", "-") for i in ids
    ], "SNS dropped the repeat"


def test_a_plain_topic_gets_no_deduplication_id_and_the_region_comes_from_the_arn(
    aws: tuple[Any, Any],
) -> None:
    sns, _ = aws
    arn = sns.create_topic(Name="plain")["TopicArn"]
    sent: list[dict[str, Any]] = []
    sns.meta.events.register(
        "provide-client-params.sns.Publish", lambda params, **_: sent.append(dict(params))
    )
    alert = Alert(BUDGET, DAY, "UTC", "emergency", 500_000_000, 612_345_678, format_time(NOW))
    SnsPublisher(arn, client=sns).publish(alert)
    (params,) = sent
    assert "MessageDeduplicationId" not in params
    assert "MessageGroupId" not in params
    body = json.loads(params["Message"])
    assert body["default"] == alert.message
    assert "$612.35 spent of $500.00" in alert.message
    assert json.loads(body["json"])["alert"]["alert_id"] == alert.alert_id
    assert params["Subject"] == f"AI cost: {BUDGET} emergency"
    other = SnsPublisher("arn:aws:sns:us-west-2:123456789012:alerts")
    assert other.client.meta.region_name == "us-west-2"


# -- a lost answer on the state write ----------------------------------------------------------


class LoseAnswer:
    """The first successful answer to one operation is lost: the write landed, the caller
    sees a read timeout (and retries the very same request)."""

    def __init__(self, store: DynamoDBStore, operation: str) -> None:
        self.answers = 0
        self.lost = 0
        store.client.meta.events.register(f"after-call.dynamodb.{operation}", self)

    def __call__(self, http_response: Any, **_: Any) -> None:
        self.answers += 1
        if not self.lost and http_response.status_code == 200:
            self.lost += 1
            raise ReadTimeoutError(endpoint_url="http://dynamodb")


def test_a_lost_answer_to_the_first_state_write_writes_it_once(
    moto_store: DynamoDBStore,
) -> None:
    seed(moto_store)
    spend(moto_store, 50, seq=1)
    lose = LoseAnswer(moto_store, "PutItem")
    run = run_cost_guard(moto_store, now=NOW)
    assert lose.lost == 1
    assert not run.superseded
    state = guard_state(moto_store)
    assert state.version == 1
    assert state.budgets[BUDGET].spent_micros == to_micros(50)
    assert moto_store.read_audit(GUARD_RECORD) == []


def test_a_lost_answer_to_a_state_change_leaves_one_audit_entry_and_its_alerts(
    moto_store: DynamoDBStore,
) -> None:
    seed(moto_store)
    spend(moto_store, 50, seq=1)
    assert run_cost_guard(moto_store, now=NOW).written
    spend(moto_store, 120, seq=2)
    lose = LoseAnswer(moto_store, "TransactWriteItems")
    later = NOW + timedelta(minutes=1)
    run_cost_guard(moto_store, now=later)
    assert lose.lost == 1
    assert lose.answers == 2, "the retry was answered: the condition failed"
    state = guard_state(moto_store)
    assert state.version == 2, "written once"
    assert state.budgets[BUDGET].level == "throttled"
    assert state.read_at == format_time(later)
    (entry,) = moto_store.read_audit(GUARD_RECORD)
    assert f"budget/{BUDGET}: ok -> throttled" in entry["reason"]
    # The alerts of the change the lost answer carried must still be recorded, once.
    assert [a["alert_id"] for a in moto_store.read_alerts()] == [
        f"{BUDGET}/{DAY}@UTC/throttle",
        f"{BUDGET}/{DAY}@UTC/throttle-warning",
    ]
    assert not run_cost_guard(moto_store, now=later + timedelta(minutes=1)).written
    assert len(moto_store.read_alerts()) == 2


# -- what a review found -------------------------------------------------------------------


class Collecting:
    """A publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def describe(self) -> str:
        return "a list"

    def publish(self, alert: Alert) -> None:
        self.sent.append(alert.alert_id)


def test_a_lost_answer_to_an_alerts_record_still_publishes_it_at_once(
    moto_store: DynamoDBStore,
) -> None:
    seed(moto_store)
    spend(moto_store, 85, seq=1)
    lose = LoseAnswer(moto_store, "PutItem")  # the first PutItem: the alert's record
    sent = Collecting()
    run = run_cost_guard(moto_store, now=NOW, publisher=sent)
    assert lose.lost == 1
    assert [a.alert_id for a in run.alerts_recorded] == [f"{BUDGET}/{DAY}@UTC/throttle-warning"]
    assert sent.sent == [f"{BUDGET}/{DAY}@UTC/throttle-warning"]
    assert [a["published"] for a in moto_store.read_alerts()] == [True]


def test_every_flag_with_a_request_type_is_an_ai_feature_and_only_those() -> None:
    flags = [
        {"flag_name": "vc_ai", "request_type": "vc_analysis"},
        {"flag_name": "auth_mfa_required"},  # no request type: no AI feature
    ]
    (budget,) = budgets_from_items([threshold("all_ai", throttle=100, emergency=500)], flags)
    assert budget.acts_on == frozenset({"vc_ai"})
    outcome = step([budget], 600, flags=["vc_ai", "auth_mfa_required"])
    assert sorted(outcome.state.flags) == ["vc_ai"]


def test_a_limit_lowered_below_the_spend_still_alerts_once() -> None:
    (before,) = budgets_from_items([threshold("b", throttle=None, emergency=500)], AI_FLAG)
    first = step([before], 300)
    assert points(first) == []  # under 80% of $500
    (lowered,) = budgets_from_items([threshold("b", throttle=None, emergency=250)], AI_FLAG)
    second = step([lowered], 300, first.state, now=NOW + timedelta(minutes=1))
    assert points(second) == ["emergency-warning", "emergency"]
    third = step([lowered], 310, second.state, now=NOW + timedelta(minutes=2))
    assert points(third) == []


def test_the_stored_state_stays_small_however_many_flags() -> None:
    flags = [{"flag_name": f"vc_f{n}", "request_type": "vc_analysis"} for n in range(3000)]
    budgets = budgets_from_items([threshold("all_ai", throttle=100, emergency=500)], flags)
    outcome = step(budgets, 600, flags=[f["flag_name"] for f in flags])
    assert len(outcome.state.flags) == 3000
    stored = json.dumps(outcome.state.to_item())
    assert len(stored) < 1000, "one entry per budget, none per flag"
    read = with_flags(
        cost_state_from_item(json.loads(stored)), [f["flag_name"] for f in flags], NOW
    )
    assert {f.state for f in read.flags.values()} == {"emergency"}
    assert len(read.flags) == 3000


def test_when_a_daily_shutdown_ends_a_monthly_throttle_still_holds() -> None:
    from reconciler.runtime.decision import Reason
    from reconciler.runtime.evaluate import evaluate
    from reconciler.runtime.snapshot import build_snapshot

    flag = {"flag_name": "f", "request_type": "x", "enabled": True}
    items = [
        threshold("daily", throttle=None, emergency=100),
        threshold("monthly", period="monthly", throttle=200, factor=0.5),
    ]
    budgets = budgets_from_items(items, [flag])
    outcome = step(budgets, 250, flags=["f"])
    snapshot = build_snapshot(
        "v", [flag], items, cost_state=cost_state_from_item(outcome.state.to_item())
    )
    users = [{"user_id": f"u{n}"} for n in range(2000)]
    today = {evaluate(snapshot, "f", u, NOW).reason for u in users}
    assert today == {Reason.COST_EMERGENCY}
    tomorrow = datetime.fromisoformat(DAY).replace(tzinfo=UTC) + timedelta(days=1, seconds=1)
    kept = [evaluate(snapshot, "f", u, tomorrow) for u in users]
    assert {d.reason for d in kept if not d.enabled} == {Reason.COST_THROTTLED}
    assert sum(d.enabled for d in kept) / len(users) == pytest.approx(0.5, abs=0.04)


def test_a_budget_renamed_in_git_holds_until_the_guard_decides_and_its_end_is_audited() -> None:
    """The stored state says which flags each budget acts on: a client that already has the
    renamed budget's configuration still holds the flags; the guard's next run moves the hold
    to the new name, and a removed budget's end is a transition of its own."""
    from reconciler.runtime.decision import Reason
    from reconciler.runtime.evaluate import evaluate
    from reconciler.runtime.snapshot import build_snapshot

    flag = {"flag_name": "f", "request_type": "x", "enabled": True}
    old = [threshold("old_name", throttle=None, emergency=100)]
    new = [threshold("new_name", throttle=None, emergency=100)]
    first = step(budgets_from_items(old, [flag]), 150, flags=["f"])
    stored = cost_state_from_item(first.state.to_item())
    renamed = build_snapshot("v", [flag], new, cost_state=stored)
    assert evaluate(renamed, "f", {"user_id": "u"}, NOW).reason is Reason.COST_EMERGENCY
    later = NOW + timedelta(minutes=1)
    second = step(budgets_from_items(new, [flag]), 150, stored, now=later, flags=["f"])
    assert "budget/old_name: emergency -> removed (not in git)" in described(second)
    assert second.state.flags["f"].budget == "new_name"
    gone = step([], 150, second.state, now=later + timedelta(minutes=1), flags=["f"])
    assert "budget/new_name: emergency -> removed (not in git)" in described(gone)
    assert "flag/f: emergency -> normal (spend back under every limit)" in described(gone)
