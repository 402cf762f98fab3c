"""``should_allow_request``: known spend (the guard's count plus this process's unseen spend),
the emergency limit, the throttle's share of users, and the overshoot bound under load."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from reconciler.controllers.overshoot import bound
from reconciler.controllers.run import run_cost_guard
from reconciler.runtime.admission import AdmissionReason
from reconciler.runtime.client import FlagClient
from reconciler.runtime.sources import SQLiteSource
from reconciler.state.local import LocalStore
from tests.test_cli import invoke

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def applied(example_tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = example_tree / "state.db"
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
    assert invoke("--apply", str(example_tree), "--yes")[0] == 0
    return path


def client(path: Path, clock: Clock) -> FlagClient:
    return FlagClient(SQLiteSource(path), background=False, clock=clock)


def test_within_budget_reports_known_spend_and_what_remains(applied: Path) -> None:
    clock = Clock()
    flags = client(applied, clock)
    flags.record_request_cost("vc_analysis", 100, 0.07, {"user_id": "a"})
    flags.record_request_cost("vc_analysis", 100, 0.01, {"user_id": "a"})
    check = flags.should_allow_request("vc_analysis", 0.05, {"user_id": "a"})
    assert check.allowed
    assert check.reason is AdmissionReason.WITHIN_BUDGET
    # the $500 emergency limit is the nearest that denies (the flag's own $100 only throttles)
    assert (check.budget, check.spent_usd, check.remaining_usd) == (
        "ai_daily_budget",
        Decimal("0.08"),
        Decimal("499.92"),
    )
    assert flags.should_allow_request("unknown_type", 1, {}).reason is AdmissionReason.WITHIN_BUDGET


def test_denied_when_known_spend_plus_the_estimate_would_cross_the_emergency_limit(
    applied: Path,
) -> None:
    clock = Clock()
    flags = client(applied, clock)
    store = LocalStore(applied)
    flags.record_request_cost("vc_analysis", 0, 495.0, {"user_id": "a"})  # not flushed yet
    check = flags.should_allow_request("other_type", 6.0, {"user_id": "a"})
    assert (check.allowed, check.reason) == (False, AdmissionReason.BUDGET_EXCEEDED)
    assert check.budget == "ai_daily_budget"
    assert check.remaining_usd == Decimal(5)
    assert flags.flush()
    run_cost_guard(store, now=clock())
    flags.refresh_overrides()
    # the guard counted the flushed $495: known spend is $495, not $990
    check = flags.should_allow_request("other_type", 4.0, {"user_id": "a"})
    assert check.spent_usd == Decimal(495)
    store.close()


def test_a_throttle_admits_the_factors_share_of_users_and_always_the_same_ones(
    applied: Path,
) -> None:
    clock = Clock()
    flags = client(applied, clock)
    store = LocalStore(applied)
    flags.record_request_cost("vc_analysis", 0, 150.0, {"user_id": "a"})
    assert flags.flush()
    run_cost_guard(store, now=clock())
    flags.refresh_overrides()
    users = [{"user_id": f"user-{i}"} for i in range(4000)]
    first = [flags.should_allow_request("vc_analysis", 0.05, u).allowed for u in users]
    again = [flags.should_allow_request("vc_analysis", 0.05, u).allowed for u in users]
    assert first == again
    assert sum(first) / len(users) == pytest.approx(0.5, abs=0.03)
    denied = flags.should_allow_request("vc_analysis", 0.05, users[first.index(False)])
    assert denied.reason is AdmissionReason.COST_THROTTLED
    store.close()


def test_break_glass_denies_everything(applied: Path, example_tree: Path) -> None:
    from reconciler.breakglass import shutdown

    store = LocalStore(applied)
    shutdown(store, None, reason="drill", by="oncall", expires_at=None, now=datetime.now(UTC))
    flags = FlagClient(SQLiteSource(applied), background=False)
    check = flags.should_allow_request("vc_analysis", 0.01, {"user_id": "a"})
    assert (check.allowed, check.reason) == (False, AdmissionReason.EMERGENCY_SHUTDOWN)
    store.close()


@pytest.mark.parametrize("estimate", [float("nan"), -1.0, "0.1", None, object()])
def test_never_raises(applied: Path, estimate: object) -> None:
    flags = client(applied, Clock())
    check = flags.should_allow_request("vc_analysis", estimate, None)  # type: ignore[arg-type]
    assert check.allowed
    assert flags.health().rejected["invalid_estimate"] == 1


def test_overshoot_under_simulated_load_stays_inside_the_bound(applied: Path) -> None:
    """Twelve processes ask before each call and record after it, flush every 10 s, poll the
    guard's state every 5 s; the guard runs every 15 s. Spend passes the $500 limit by less than
    the bound the report prints for these figures, and then stops."""
    processes, rate, cost = 12, 2, Decimal("0.50")  # requests/s per process; USD per request
    flush, poll, guard_every, step = 10.0, 5.0, 15.0, 0.5
    clock = Clock()
    store = LocalStore(applied)
    clients = [client(applied, clock) for _ in range(processes)]
    users = itertools.count()
    spent = Decimal(0)
    for tick in range(int(240 / step)):
        elapsed = tick * step
        for index, flags in enumerate(clients):
            for _ in range(int(rate * step)):
                user = {"user_id": f"user-{next(users)}"}
                if flags.should_allow_request("vc_analysis", float(cost), user).allowed:
                    flags.record_request_cost("vc_analysis", 1000, float(cost), user)
                    spent += cost
            if (elapsed + index) % flush == 0:  # staggered, as real processes are
                flags.flush()
            if (elapsed + index) % poll == 0:
                flags.refresh_overrides()
        if elapsed % guard_every == 0:
            run_cost_guard(store, now=clock())
        clock.advance(step)
    limit = bound(
        processes,
        Decimal(rate),
        cost,
        flush_seconds=flush,
        guard_seconds=guard_every,
        poll_seconds=poll,
    )
    overshoot = spent - 500
    assert 0 < overshoot <= limit.bound_usd  # some overshoot: the delay is real
    late = sum(
        flags.should_allow_request("vc_analysis", 0.5, {"user_id": "x"}).allowed
        for flags in clients
    )
    assert late == 0  # every process has stopped
    for flags in clients:
        flags.close()
    store.close()


def test_known_spend_stays_right_long_after_the_guards_reading(applied: Path) -> None:
    """The guard counted $60; then a hundred flushes (past the recorder's flush history) and a
    configuration refresh: admission still knows $60, not $120."""
    clock = Clock()
    flags = client(applied, clock)
    store = LocalStore(applied)
    flags.record_request_cost("vc_analysis", 0, 60.0, {"user_id": "a"})
    assert flags.flush()
    clock.advance(1)
    run_cost_guard(store, now=clock())
    flags.refresh_overrides()
    for _ in range(100):
        clock.advance(1)
        flags.record_request_cost("vc_analysis", 0, 0.000001, {"user_id": "a"})
        assert flags.flush()
    assert flags.health().flushes == 101
    flags.refresh_configuration()  # drops the admission cache
    check = flags.should_allow_request("vc_analysis", 0.01, {"user_id": "a"})
    assert check.spent_usd == Decimal("60.0001")  # the guard's $60 and a hundred micro-dollars
    flags.close()
    store.close()
