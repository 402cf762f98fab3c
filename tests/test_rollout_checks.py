"""Rollout health checks, judged: pass, fail and the third outcome, insufficient data."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.controllers.rollout_checks import (
    FAIL,
    INSUFFICIENT,
    PASS,
    Check,
    Window,
    bin_edge,
    judge,
    latency_bin,
)

ERRORS = Check("error_rate_check", "error_rate", 5, "less_than", 60)
SPIKE = Check("error_rate_spike", "error_rate", 10, "greater_than", 15, action="rollback")


def test_an_error_rate_under_its_threshold_passes_and_over_it_fails() -> None:
    assert judge(ERRORS, Window(1000, 30)).outcome == PASS
    failed = judge(ERRORS, Window(1000, 70), Window(9000, 270))
    assert failed.outcome == FAIL
    assert failed.value == pytest.approx(7.0)
    assert failed.baseline == pytest.approx(3.0)
    assert "error_rate 7% not < 5% over 60 min, 1000 requests" in failed.describe()


def test_too_few_requests_are_insufficient_whatever_they_say() -> None:
    quiet = judge(ERRORS, Window(99, 99))
    assert quiet.outcome == INSUFFICIENT
    assert "needs 100" in quiet.describe()
    assert judge(ERRORS, Window()).outcome == INSUFFICIENT


def test_a_rollback_condition_triggers_when_met() -> None:
    assert judge(SPIKE, Window(500, 60)).outcome == FAIL  # 12% > 10%: act
    assert judge(SPIKE, Window(500, 20)).outcome == PASS


def test_a_disabled_check_is_not_judged() -> None:
    off = Check("off", "error_rate", 5, "less_than", 60, enabled=False)
    assert judge(off, Window(1000, 999)).outcome == "disabled"


@given(st.lists(st.floats(min_value=0.5, max_value=50_000), min_size=1, max_size=400))
def test_a_latency_quantile_from_the_histogram_is_never_below_the_true_one(
    values: list[float],
) -> None:
    histogram = Counter(latency_bin(v) for v in values)
    window = Window(len(values), 0, histogram)
    for q in (50, 95, 99):
        measured = window.measure(f"latency_p{q}")
        ordered = sorted(values)
        true = ordered[max(0, -(-q * len(values) // 100) - 1)]
        assert measured is not None
        assert measured >= true - 1e-9
        assert measured <= max(1.0, true * 2**0.25) + 1e-9  # within one bin (19%)


def test_cost_per_request_in_dollars() -> None:
    check = Check("cost", "cost_per_request", 0.05, "less_than_or_equal", 60, min_samples=10)
    rng = random.Random(1)
    micros = sum(rng.randint(30_000, 50_000) for _ in range(200))
    result = judge(check, Window(200, 0, {}, micros, 200))
    assert result.outcome == PASS
    assert result.value == pytest.approx(micros / 200 / 1e6)


def test_bins_cover_a_millisecond_to_minutes() -> None:
    assert latency_bin(0.2) == 0
    assert bin_edge(latency_bin(900)) >= 900
    assert bin_edge(latency_bin(900)) < 900 * 1.19
    assert latency_bin(10**9) == 79
