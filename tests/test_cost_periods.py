"""Budgets in other time zones and over months, through the real recording path and the
guard's reading: the day a call counts in is the budget's local day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.controllers.run import run_cost_guard
from reconciler.runtime.client import FlagClient
from reconciler.runtime.sources import SQLiteSource
from reconciler.state.local import LocalStore
from tests.test_cli import invoke

BUDGET = """\
kind: CostThreshold
threshold_name: {name}
description: d
owner: team-finops
period: {period}
time_zone: {zone}
applies_to: all
emergency:
  amount_usd: 1000
"""


def applied(example_tree: Path, monkeypatch: pytest.MonkeyPatch, **budget: str) -> Path:
    (example_tree / "costs.d" / f"{budget['name']}.yaml").write_text(BUDGET.format(**budget))
    path = example_tree / "state.db"
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
    code, out, err = invoke("--apply", str(example_tree), "--yes")
    assert code == 0, out + err
    return path


def record(path: Path, at: datetime, usd: float) -> None:
    with FlagClient(SQLiteSource(path), background=False, clock=lambda: at) as flags:
        flags.record_request_cost("vc_analysis", 10, usd, {"user_id": "u"})


def test_a_call_counts_in_the_budgets_local_day(
    example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = applied(
        example_tree, monkeypatch, name="berlin_daily", period="daily", zone="Europe/Berlin"
    )
    late = datetime(2026, 12, 1, 23, 30, tzinfo=UTC)  # 00:30 on 2 December in Berlin
    record(path, late - timedelta(hours=1), 7.0)  # 23:30 on 1 December in Berlin
    record(path, late, 5.0)
    store = LocalStore(path)
    result = run_cost_guard(store, now=late)
    berlin = result.outcome.state.budgets["berlin_daily"]
    utc = result.outcome.state.budgets["ai_daily_budget"]
    assert (berlin.period, berlin.spent_micros) == ("2026-12-02", 5_000_000)
    assert (utc.period, utc.spent_micros) == ("2026-12-01", 12_000_000)
    assert berlin.period_end == "2026-12-02T23:00:00.000000Z"
    rows = {
        r["date"]: r["cost_micros"] for r in store.read_cost_metrics("2026-12-02@Europe/Berlin")
    }
    assert rows == {"2026-12-02@Europe/Berlin": 5_000_000}
    store.close()


def test_a_monthly_budget_counts_the_days_before_yesterday_from_the_stored_rows(
    example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = applied(example_tree, monkeypatch, name="monthly", period="monthly", zone="UTC")
    store = LocalStore(path)
    first = datetime(2026, 12, 1, 12, tzinfo=UTC)
    record(path, first, 300.0)
    run_cost_guard(store, now=first)  # rolls 1 December up into the cost-metrics table
    third = first + timedelta(days=2)
    record(path, third, 200.0)
    result = run_cost_guard(store, now=third)
    monthly = result.outcome.state.budgets["monthly"]
    assert (monthly.period, monthly.spent_micros) == ("2026-12", 500_000_000)
    assert result.outcome.state.budgets["ai_daily_budget"].spent_micros == 200_000_000
    next_month = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    lifted = run_cost_guard(store, now=next_month).outcome.state.budgets["monthly"]
    assert (lifted.period, lifted.spent_micros) == ("2027-01", 0)
    store.close()


def test_a_day_no_guard_saw_while_it_was_recent_still_counts(
    example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$1,500 flushed on 1 December, the guard's first run on 3 December (a late schedule, an
    outage): the month still counts it, from the shards, and the day is then kept as rows."""
    path = applied(example_tree, monkeypatch, name="monthly", period="monthly", zone="UTC")
    store = LocalStore(path)
    first = datetime(2026, 12, 1, 12, tzinfo=UTC)
    record(path, first, 1500.0)
    third = first + timedelta(days=2)
    result = run_cost_guard(store, now=third)
    assert result.outcome.state.budgets["monthly"].spent_micros == 1_500_000_000
    assert result.outcome.state.budgets["monthly"].level == "emergency"
    assert store.read_cost_metrics("2026-12-01")[0]["cost_micros"] == 1_500_000_000
    assert result.outcome.state.rolled_up == {"UTC": "2026-12-01"}
    again = run_cost_guard(store, now=third + timedelta(minutes=1))
    assert again.outcome.state.budgets["monthly"].spent_micros == 1_500_000_000
    store.close()


def test_a_zone_that_leaves_and_comes_back_keeps_its_days_totals(tmp_path: Path) -> None:
    """A budget's zone dropped from the configuration and restored the same day: the process's
    totals for that day go on from where they were (written as absolute totals, a restart
    from nothing would replace the stored spend with less)."""
    from reconciler.runtime.recorder import Recorder
    from reconciler.runtime.telemetry import cost_bucket

    store = LocalStore(tmp_path / "state.db")
    store.bootstrap()
    at = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
    recorder = Recorder(store, background=False, clock=lambda: at)
    recorder.set_zones(["Europe/Berlin"])
    recorder.record_cost("vc_analysis", 0, 10_000_000)
    assert recorder.flush()
    recorder.set_zones([])  # the Berlin budget disabled
    recorder.record_cost("vc_analysis", 0, 1_000_000)
    assert recorder.flush()
    recorder.set_zones(["Europe/Berlin"])  # and enabled again
    recorder.record_cost("vc_analysis", 0, 1_000_000)
    assert recorder.flush()
    (berlin,) = store.read_shards(cost_bucket("2026-12-01", "Europe/Berlin"))
    assert berlin.series["cost:vc_analysis"].sum == 11_000_000
    (utc,) = store.read_shards(cost_bucket("2026-12-01", "UTC"))
    assert utc.series["cost:vc_analysis"].sum == 12_000_000
    recorder.close()
    store.close()
