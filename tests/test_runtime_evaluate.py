"""The evaluation core, step by step in the design's order, on the repository's own flags."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.codec import encode
from reconciler.config import load_config
from reconciler.runtime.bucketing import bucket, pick_variant, variant_ranges
from reconciler.runtime.cost_state import CostState, FlagCost
from reconciler.runtime.decision import ErrorCode, Reason
from reconciler.runtime.evaluate import evaluate, variant_value
from reconciler.runtime.rollout_state import PAUSED, ROLLED_BACK, Entry, RolloutStates
from reconciler.runtime.rules import compile_condition, semver_key
from reconciler.runtime.snapshot import (
    Shutdown,
    Snapshot,
    build_flag,
    build_snapshot,
    with_rollout_states,
)
from reconciler.state.records import RecordKind
from reconciler.validation import validate
from tests.conftest import REPO_ROOT

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PRO_DE = {"user_id": "user-0", "country": "DE", "plan": "pro"}
USERS = [f"user-{i}" for i in range(10_000)]
STRATEGY = "bedrock_gradual_rollout"


def items() -> dict[RecordKind, list[dict[str, Any]]]:
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    assert result.ok
    return {kind: list(table.values()) for kind, table in encode(result.tree).items()}


def snapshot(flag_changes: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> Snapshot:
    data = items()
    flags = copy.deepcopy(data[RecordKind.FLAG])
    for item in flags:
        item.update((flag_changes or {}).get(item["flag_name"], {}))
    return build_snapshot("v1", flags, data[RecordKind.COST_THRESHOLD], **kwargs)


def share_enabled(snap: Snapshot, flag: str, now: datetime = NOW, **context: Any) -> float:
    on = sum(evaluate(snap, flag, {"user_id": u, **context}, now).enabled for u in USERS)
    return on / len(USERS)


def test_targeted_user_gets_the_feature() -> None:
    decision = evaluate(snapshot(), "vc_bedrock_live", PRO_DE, NOW)
    assert decision.enabled
    assert decision.reason is Reason.TARGETING_MATCH
    assert decision.matched_rule == "supported_markets"
    assert decision.value is True
    assert decision.snapshot_version == "v1"


def test_users_no_rule_includes_are_excluded() -> None:
    decision = evaluate(snapshot(), "vc_bedrock_live", {**PRO_DE, "plan": "free"}, NOW)
    assert (decision.enabled, decision.reason, decision.value) == (
        False,
        Reason.TARGETING_NO_MATCH,
        False,
    )


def test_a_rule_with_its_own_rollout() -> None:
    staff = {"user_id": "u", "email": "ana@example.com"}
    decision = evaluate(snapshot(), "vc_bedrock_live", staff, datetime(2025, 1, 9, 11, tzinfo=UTC))
    assert decision.enabled
    assert decision.matched_rule == "internal_staff"


def test_the_schedule_ramps_from_its_start_time() -> None:
    """The example's strategy is gated (health checks): its first step from its start until the
    rollout controller moves it; without its checks it ramps by time."""
    snap = snapshot()
    start = datetime(2025, 1, 9, 10, tzinfo=UTC)
    before, first = start - timedelta(hours=1), start + timedelta(hours=1)
    assert share_enabled(snap, "vc_bedrock_live", before, country="DE", plan="pro") == 0
    for moment in (first, start + timedelta(days=3, hours=1), start + timedelta(days=30)):
        assert share_enabled(
            snap, "vc_bedrock_live", moment, country="DE", plan="pro"
        ) == pytest.approx(0.10, abs=0.015)
    item = next(i for i in items()[RecordKind.FLAG] if i["flag_name"] == "vc_bedrock_live")
    ungated = snapshot({"vc_bedrock_live": {"rollout": {**item["rollout"], "gated": False}}})
    assert share_enabled(ungated, "vc_bedrock_live", first, country="DE", plan="pro") == (
        pytest.approx(0.10, abs=0.015)
    )
    assert share_enabled(
        ungated, "vc_bedrock_live", start + timedelta(days=3, hours=1), country="DE", plan="pro"
    ) == pytest.approx(0.40, abs=0.015)
    assert (
        share_enabled(
            ungated, "vc_bedrock_live", start + timedelta(days=30), country="DE", plan="pro"
        )
        == 1.0
    )


def test_global_shutdown_outranks_everything() -> None:
    snap = snapshot(
        global_shutdown=Shutdown("oncall", "runaway cost", "2026-06-01T03:00:00.000000Z")
    )
    decision = evaluate(snap, "vc_bedrock_live", PRO_DE, NOW)
    assert (decision.enabled, decision.reason) == (False, Reason.EMERGENCY_SHUTDOWN)
    assert decision.detail == "global shutdown by oncall: runaway cost"


def test_flag_shutdown_and_its_expiry() -> None:
    shut = {
        "emergency_shutdown": True,
        "shutdown_by": "oncall",
        "shutdown_reason": "bad answers",
        "shutdown_expires_at": "2026-06-01T13:00:00.000000Z",
    }
    snap = snapshot({"vc_bedrock_live": shut})
    assert evaluate(snap, "vc_bedrock_live", PRO_DE, NOW).reason is Reason.EMERGENCY_SHUTDOWN
    later = evaluate(snap, "vc_bedrock_live", PRO_DE, NOW + timedelta(hours=2))
    assert later.enabled, "an expired shutdown no longer holds"


def test_unknown_flag_and_no_snapshot_are_errors_not_exceptions() -> None:
    missing = evaluate(snapshot(), "vc_nope", PRO_DE, NOW)
    assert (missing.enabled, missing.reason, missing.error_code) == (
        False,
        Reason.ERROR,
        ErrorCode.FLAG_NOT_FOUND,
    )
    none = evaluate(None, "vc_bedrock_live", PRO_DE, NOW)
    assert none.error_code is ErrorCode.NO_SNAPSHOT


def test_the_kill_switch() -> None:
    decision = evaluate(
        snapshot({"vc_bedrock_live": {"enabled": False}}), "vc_bedrock_live", PRO_DE, NOW
    )
    assert (decision.enabled, decision.reason, decision.value) == (False, Reason.DISABLED, False)


def held(flag: str, state: str, factor: float = 1.0, until: str = "") -> CostState:
    detail = f"ai_daily_budget: $512.00 of $500.00 (daily {NOW.date()} UTC)"
    return CostState(
        1, flags={flag: FlagCost(flag, state, "ai_daily_budget", factor, until, detail, "")}
    )


def test_cost_emergency_shuts_down() -> None:
    snap = snapshot(cost_state=held("ai_model_selection", "emergency"))
    decision = evaluate(snap, "ai_model_selection", {"user_id": "u"}, NOW)
    assert (decision.enabled, decision.reason) == (False, Reason.COST_EMERGENCY)
    assert decision.detail == "ai_daily_budget: $512.00 of $500.00 (daily 2026-06-01 UTC)"
    other = evaluate(snap, "vc_bedrock_live", PRO_DE, NOW)
    assert other.reason is Reason.TARGETING_MATCH  # the state names the flags it holds


def test_cost_throttle_halves_the_rollout() -> None:
    snap = snapshot(
        {"ai_model_selection": {"ab_test_config": None}},
        cost_state=held("ai_model_selection", "throttled", 0.5),
    )
    assert share_enabled(snap, "ai_model_selection") == pytest.approx(0.5, abs=0.015)
    decisions = [evaluate(snap, "ai_model_selection", {"user_id": u}, NOW) for u in USERS[:500]]
    assert {d.reason for d in decisions if not d.enabled} == {Reason.COST_THROTTLED}
    assert {d.reason for d in decisions if d.enabled} == {Reason.DEFAULT}  # kept: as before


def test_a_throttle_keeps_the_users_admission_admits() -> None:
    """Decisions and should_allow_request bucket the throttle by request type alike."""
    from reconciler.runtime.bucketing import bucket

    snap = snapshot(
        {"ai_model_selection": {"ab_test_config": None}},
        cost_state=held("ai_model_selection", "throttled", 0.5),
    )
    for user in USERS[:2000]:
        kept = evaluate(snap, "ai_model_selection", {"user_id": user}, NOW).enabled
        assert kept == (bucket("cost:vc_analysis", user) < 0.5)


def test_a_cost_state_lifts_itself_when_its_period_ends() -> None:
    until = "2026-06-02T00:00:00+00:00"
    snap = snapshot(cost_state=held("vc_bedrock_live", "emergency", until=until))
    assert evaluate(snap, "vc_bedrock_live", PRO_DE, NOW).reason is Reason.COST_EMERGENCY
    midnight = datetime(2026, 6, 2, tzinfo=UTC)
    assert evaluate(snap, "vc_bedrock_live", PRO_DE, midnight).reason is Reason.TARGETING_MATCH


def test_experiment_assigns_variants_by_weight() -> None:
    snap = snapshot()
    variants = Counter(
        evaluate(snap, "ai_model_selection", {"user_id": u}, NOW).variant for u in USERS
    )
    assert variants["claude"] / len(USERS) == pytest.approx(0.5, abs=0.02)
    assert variants["gemini"] / len(USERS) == pytest.approx(0.5, abs=0.02)
    decision = evaluate(snap, "ai_model_selection", {"user_id": "user-1"}, NOW)
    assert decision.reason is Reason.EXPERIMENT_ASSIGNED
    assert decision.experiment == "claude_vs_gemini"
    assert decision.variant_config == {
        "model": f"{'claude-3.5-sonnet' if decision.variant == 'claude' else 'gemini-pro'}"
    }


@given(
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=5).filter(lambda w: sum(w) > 0),
    units=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30),
)
def test_assigned_variants_are_the_bucketing_contracts(
    weights: list[int], units: list[str]
) -> None:
    """Each decision's variant is ``pick_variant`` of ``bucket(experiment_id, unit)`` over the
    declared ranges (zero weights and rounding included), decided once per flag or not."""
    total = sum(weights)
    shares = [100 * w / total for w in weights]
    variants = [{"name": f"v{k}", "weight": share} for k, share in enumerate(shares)]
    experiment = {"test_name": "prop_test", "status": "active", "variants": variants}
    flag = {"flag_name": "f", "enabled": True, "flag_type": "boolean", "value": True}
    snap = build_snapshot("v", [{**flag, "ab_test_config": experiment}])
    ranges = variant_ranges([(f"v{k}", share) for k, share in enumerate(shares)])
    for unit in units * 2:  # the second time from the flag's cache
        expected = pick_variant(bucket("prop_test", unit), ranges) or "v0"
        decision = evaluate(snap, "f", {"user_id": unit}, NOW)
        assert (decision.reason, decision.variant) == (Reason.EXPERIMENT_ASSIGNED, expected)


def test_a_concluded_experiment_serves_its_winner_to_everyone() -> None:
    config = items()[RecordKind.FLAG]
    ab = next(i for i in config if i["flag_name"] == "ai_model_selection")["ab_test_config"]
    concluded = {**ab, "status": "concluded", "winner": "gemini", "active": False}
    snap = snapshot({"ai_model_selection": {"ab_test_config": concluded}})
    decisions = [evaluate(snap, "ai_model_selection", {"user_id": u}, NOW) for u in USERS[:200]]
    assert {(d.variant, d.reason) for d in decisions} == {("gemini", Reason.EXPERIMENT_CONCLUDED)}


def test_the_rollout_controllers_state_caps_the_rollout() -> None:
    since = NOW - timedelta(hours=1)
    back = Entry(ROLLED_BACK, 0.0, since, reason="health check error_rate_check: fail")
    rolled_back = with_rollout_states(snapshot(), RolloutStates({STRATEGY: back}))
    assert share_enabled(rolled_back, "vc_bedrock_live", country="DE", plan="pro") == 0
    staff = {"user_id": "u1", "email": "ana@example.com"}  # a rule at 100%: rolled back too
    assert not evaluate(rolled_back, "vc_bedrock_live", staff, NOW).enabled
    paused = with_rollout_states(snapshot(), RolloutStates({STRATEGY: Entry(PAUSED, 20, since)}))
    assert share_enabled(paused, "vc_bedrock_live", country="DE", plan="pro") == pytest.approx(
        0.2, abs=0.015
    )
    assert evaluate(paused, "vc_bedrock_live", staff, NOW).enabled


def test_a_rollout_without_a_user_id_is_out_with_a_reason() -> None:
    snap = snapshot({"ai_model_selection": {"rollout_percentage": 50, "ab_test_config": None}})
    decision = evaluate(snap, "ai_model_selection", {}, NOW)
    assert (decision.enabled, decision.error_code) == (False, ErrorCode.TARGETING_KEY_MISSING)


def test_a_broken_item_decides_by_its_fail_mode() -> None:
    snap = snapshot({"ai_model_selection": {"targeting": {"rules": [{"name": "x"}]}}})
    decision = evaluate(snap, "ai_model_selection", {"user_id": "u"}, NOW)
    assert (decision.enabled, decision.reason) == (True, Reason.ERROR), "fail_mode: open"
    closed = snapshot({"vc_bedrock_live": {"targeting": "garbage"}})
    assert not evaluate(closed, "vc_bedrock_live", PRO_DE, NOW).enabled


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["user_id", "country", "plan", "email", "app_version", "device"]),
        json_values,
    )
)
def test_no_context_makes_a_decision_raise(context: dict[str, Any]) -> None:
    """``evaluate`` turns any exception into an ERROR decision with code GENERAL (the promise
    that nothing reaches the request path), so "did not raise" is seen as "did not come out as
    GENERAL": a context the core cannot handle fails here."""
    snap = snapshot()
    for flag in ("vc_bedrock_live", "ai_model_selection"):
        decision = evaluate(snap, flag, context, NOW)
        assert decision.error_code is not ErrorCode.GENERAL, decision.detail
        assert decision.reason is not Reason.ERROR, decision
    unknown = evaluate(snap, "vc_unknown", context, NOW)
    assert (unknown.reason, unknown.error_code) == (Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)


@pytest.mark.parametrize("country", [[], ["DE"], {}, {"code": "DE"}])
def test_a_list_or_object_where_a_rule_tests_membership_does_not_raise(country: object) -> None:
    decision = evaluate(snapshot(), "vc_bedrock_live", {**PRO_DE, "country": country}, NOW)
    assert decision.error_code is not ErrorCode.GENERAL, decision.detail
    assert decision.reason is Reason.TARGETING_NO_MATCH  # a list is no country in the list


@pytest.mark.parametrize(
    ("condition", "context", "expected"),
    [
        (
            {"attribute": "country", "operator": "in", "values": ["DE", "FR"]},
            {"country": "DE"},
            True,
        ),
        ({"attribute": "country", "operator": "in", "values": ["DE"]}, {}, False),
        ({"attribute": "country", "operator": "not_in", "values": ["KP"]}, {"country": "DE"}, True),
        ({"attribute": "country", "operator": "not_in", "values": ["KP"]}, {}, False),
        ({"attribute": "plan", "operator": "equals", "value": "pro"}, {"plan": "pro"}, True),
        ({"attribute": "beta", "operator": "equals", "value": True}, {"beta": 1}, False),
        (
            {"attribute": "age", "operator": "greater_than_or_equal", "value": 18},
            {"age": "21"},
            True,
        ),
        ({"attribute": "age", "operator": "less_than", "value": 18}, {"age": "n/a"}, False),
        (
            {"attribute": "v", "operator": "semver_greater_than_or_equal", "value": "2.4.0"},
            {"v": "2.10.0"},
            True,
        ),
        (
            {"attribute": "v", "operator": "semver_less_than", "value": "2.4.0"},
            {"v": "2.4.0-beta.1"},
            True,
        ),
        (
            {"attribute": "email", "operator": "matches", "value": "@example\\.com$"},
            {"email": "a@example.com"},
            True,
        ),
        (
            {"attribute": "device.os", "operator": "equals", "value": "ios"},
            {"device": {"os": "ios"}},
            True,
        ),
        ({"attribute": "device.os", "operator": "exists"}, {"device": "phone"}, False),
        ({"not": {"attribute": "x", "operator": "exists"}}, {}, True),
        (
            {
                "any": [
                    {"attribute": "a", "operator": "exists"},
                    {"attribute": "b", "operator": "exists"},
                ]
            },
            {"b": 1},
            True,
        ),
        (
            {
                "all": [
                    {"attribute": "a", "operator": "exists"},
                    {"attribute": "b", "operator": "exists"},
                ]
            },
            {"b": 1},
            False,
        ),
    ],
)
def test_operators(condition: dict[str, Any], context: dict[str, Any], expected: bool) -> None:
    assert compile_condition(condition)(context) is expected


def test_semver_precedence() -> None:
    order = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    keys = [semver_key(v) for v in order]
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert semver_key("not a version") is None


SHUTDOWN = Shutdown("oncall", "incident", "2026-06-01T03:00:00.000000Z")
FLAG_SHUTDOWN = {"emergency_shutdown": True, "shutdown_by": "oncall", "shutdown_reason": "x"}


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("global", Reason.EMERGENCY_SHUTDOWN),
        ("overrides", Reason.EMERGENCY_SHUTDOWN),
        ("item", Reason.EMERGENCY_SHUTDOWN),
        ("kill switch", Reason.DISABLED),
    ],
)
@pytest.mark.parametrize(
    ("flag", "value"), [("vc_bedrock_live", False), ("ai_model_selection", None)]
)
def test_one_off_value_per_flag_type_whatever_turns_it_off(
    how: str, reason: Reason, flag: str, value: object
) -> None:
    """A boolean flag that is off says False, every other type None (the caller's default),
    whether a global shutdown, a flag shutdown or the kill switch turned it off."""
    changes = {
        "item": {flag: FLAG_SHUTDOWN},
        "kill switch": {flag: {"enabled": False}},
    }.get(how, {})
    snap = snapshot(changes, global_shutdown=SHUTDOWN if how == "global" else None)
    if how == "overrides":
        snap = dataclasses.replace(snap, flag_shutdowns={flag: SHUTDOWN})
    decision = evaluate(snap, flag, PRO_DE, NOW)
    assert (decision.enabled, decision.reason) == (False, reason)
    assert decision.value is value, f"{how}: {decision.value!r}"


def test_a_global_shutdown_of_a_flag_the_snapshot_does_not_know() -> None:
    decision = evaluate(snapshot(global_shutdown=SHUTDOWN), "vc_unknown", PRO_DE, NOW)
    assert (decision.enabled, decision.reason, decision.value) == (
        False,
        Reason.EMERGENCY_SHUTDOWN,
        None,
    )


def test_a_string_flag_in_an_experiment_serves_the_variants_value() -> None:
    snap = snapshot()
    served = {}
    for user in USERS[:400]:
        decision = evaluate(snap, "ai_model_selection", {"user_id": user}, NOW)
        assert decision.value == decision.variant_config["model"], decision
        served[decision.variant] = decision.value
    assert served == {"claude": "claude-3.5-sonnet", "gemini": "gemini-pro"}


def test_a_concluded_experiment_serves_the_winners_value() -> None:
    config = items()[RecordKind.FLAG]
    ab = next(i for i in config if i["flag_name"] == "ai_model_selection")["ab_test_config"]
    concluded = {**ab, "status": "concluded", "winner": "gemini", "active": False}
    snap = snapshot({"ai_model_selection": {"ab_test_config": concluded}})
    values = {evaluate(snap, "ai_model_selection", {"user_id": u}, NOW).value for u in USERS[:50]}
    assert values == {"gemini-pro"}


def test_a_boolean_flag_in_an_experiment_keeps_its_value() -> None:
    snap = snapshot({"ai_model_selection": {"flag_type": "boolean", "value": True}})
    decisions = [evaluate(snap, "ai_model_selection", {"user_id": u}, NOW) for u in USERS[:200]]
    assert {d.value for d in decisions} == {True}
    assert {d.variant for d in decisions} == {"claude", "gemini"}
    assert {d.variant_config["model"] for d in decisions} == {"claude-3.5-sonnet", "gemini-pro"}


def _flag(flag_type: str, value: object) -> Any:
    return build_flag({"flag_name": "f", "enabled": True, "flag_type": flag_type, "value": value})


@pytest.mark.parametrize(
    ("flag_type", "value", "config", "served"),
    [
        # the config's `value` entry, when it has the flag's type
        ("string", "a", {"value": "b", "model": "m"}, "b"),
        ("number", 1, {"value": 2.5, "x": 3}, 2.5),
        ("json", {"k": 1}, {"value": [1, 2], "x": 3}, [1, 2]),
        # a `value` of another type is not used
        ("string", "a", {"value": 3}, "a"),
        ("number", 1, {"value": True}, 1),
        # else the only entry, when it has the flag's type
        ("string", "a", {"model": "gemini-pro"}, "gemini-pro"),
        ("number", 1, {"temperature": 0.2}, 0.2),
        ("string", "a", {"model": 4}, "a"),
        ("number", 1, {"on": False}, 1),
        # else, for a json flag, the config itself
        ("json", {"k": 1}, {"model": "gemini-pro"}, {"model": "gemini-pro"}),
        ("json", {"k": 1}, {"settings": {"t": 1}}, {"t": 1}),
        # else the flag's own value
        ("string", "a", {"model": "m", "temperature": 0.2}, "a"),
        ("string", "a", {}, "a"),
        ("json", {"k": 1}, {}, {"k": 1}),
        # a boolean flag serves its value with every variant
        ("boolean", True, {"value": False}, True),
    ],
)
def test_the_variant_value_rule(
    flag_type: str, value: object, config: dict[str, Any], served: object
) -> None:
    assert variant_value(_flag(flag_type, value), config) == served
