"""The bucketing contract: published vectors, determinism across processes, statistics."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from reconciler.runtime.bucketing import bucket, pick_variant, variant_ranges
from reconciler.runtime.evaluate import evaluate
from reconciler.runtime.snapshot import build_snapshot
from tests.conftest import REPO_ROOT

VECTORS = json.loads((REPO_ROOT / "tests" / "vectors" / "bucketing.json").read_text())
IDS = [f"user-{i}" for i in range(100_000)]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_at_least_fifty_published_vectors_hold() -> None:
    assert len(VECTORS["buckets"]) >= 50
    for case in VECTORS["buckets"]:
        value = bucket(case["salt"], case["unit_id"])
        assert value == case["bucket"], case
        assert value == int(case["first_8_bytes_hex"], 16) / 2**64
    for case in VECTORS["variants"]:
        ranges = variant_ranges([(name, weight) for name, weight in case["weights"]])
        assert pick_variant(bucket(case["salt"], case["unit_id"]), ranges) == case["variant"]


def test_the_same_in_another_process() -> None:
    code = (
        "from reconciler.runtime.bucketing import bucket;"
        "print(repr([bucket('vc_bedrock_live', f'user-{i}') for i in range(50)]))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert other.stdout.strip() == repr([bucket("vc_bedrock_live", f"user-{i}") for i in range(50)])


@given(st.text(max_size=20), st.text(max_size=40))
def test_buckets_are_in_the_unit_interval(salt: str, unit: str) -> None:
    assert 0.0 <= bucket(salt, unit) < 1.0


def users_in(flag: str, percentage: float, units: list[str]) -> set[str]:
    """The units the evaluation core lets into a rollout of ``percentage``, as services ask."""
    item = {"flag_name": flag, "enabled": True, "rollout_percentage": percentage}
    snapshot = build_snapshot("v1", [item])
    return {u for u in units if evaluate(snapshot, flag, {"user_id": u}, NOW).enabled}


@given(st.text(min_size=1, max_size=20), st.floats(0, 100), st.floats(0, 100))
def test_raising_a_rollout_keeps_everyone_who_was_in(flag: str, low: float, high: float) -> None:
    """Asked of the decision itself, not of the arithmetic: everyone in at ``low`` is still in
    at ``high``, and the users in are exactly those the contract puts below the percentage."""
    low, high = sorted((low, high))
    units = IDS[:300]
    before, after = users_in(flag, low, units), users_in(flag, high, units)
    assert before <= after, f"raising {low}% to {high}% dropped {sorted(before - after)[:5]}"
    assert before == {u for u in units if bucket(flag, u) * 100 < low}


def test_rollout_share_is_honoured() -> None:
    inside = sum(1 for unit in IDS if bucket("vc_bedrock_live", unit) * 100 < 30)
    assert abs(inside / len(IDS) - 0.30) < 0.01


def test_variant_weights_are_honoured_within_one_percent() -> None:
    ranges = variant_ranges([("a", 10), ("b", 30), ("c", 60)])
    counts = Counter(pick_variant(bucket("claude_vs_gemini", unit), ranges) for unit in IDS)
    for name, weight in (("a", 0.10), ("b", 0.30), ("c", 0.60)):
        assert abs(counts[name] / len(IDS) - weight) < 0.01


def test_rollout_and_experiment_buckets_are_independent() -> None:
    """Chi-square over a 10 x 10 table of (rollout decile, experiment decile)."""
    table = Counter(
        (int(bucket("vc_bedrock_live", u) * 10), int(bucket("claude_vs_gemini", u) * 10))
        for u in IDS
    )
    expected = len(IDS) / 100
    chi_square = sum(
        (table[(i, j)] - expected) ** 2 / expected for i in range(10) for j in range(10)
    )
    # 81 degrees of freedom: the 99.9th percentile of chi-square is about 129.
    assert chi_square < 129, chi_square


@given(st.text(max_size=40), st.text(max_size=40))
def test_a_salt_hashed_once_buckets_as_the_contract_does(salt: str, unit: str) -> None:
    from reconciler.runtime.bucketing import Salt

    assert Salt(salt).bucket(unit) == bucket(salt, unit)
