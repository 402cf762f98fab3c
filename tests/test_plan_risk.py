"""Risk from decisions, not fields: the plan's shares of users against the runtime's decisions."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.codec import DesiredState, encode, encode_flag
from reconciler.config import load_config
from reconciler.manifests import Experiment, Flag, RolloutStrategy
from reconciler.plan import effect
from reconciler.plan.diff import diff
from reconciler.plan.effect import Assessment, assess, served
from reconciler.plan.population import POPULATION_SIZE, population_for, targeting_classes
from reconciler.plan.risk import risks_of
from reconciler.plan.witnesses import regex_example, witnesses
from reconciler.runtime.evaluate import evaluate
from reconciler.runtime.rules import compile_condition
from reconciler.runtime.snapshot import build_snapshot
from reconciler.state.records import Item, RecordKind
from reconciler.validation import validate
from tests.conftest import REPO_ROOT
from tests.test_plan import stored

NOW = datetime(2026, 1, 9, 10, 0, tzinfo=UTC)
BEDROCK = "vc_bedrock_live"
MODELS = "ai_model_selection"


def repository() -> DesiredState:
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    assert result.ok
    return encode(result.tree)


def flag_risks(before: Item | None, after: Item | None, name: str = BEDROCK) -> dict[str, Any]:
    return {r.code: r for r in risks_of(RecordKind.FLAG, name, before, after, now=NOW)}


def direct(
    name: str, before: Item | None, after: Item | None, moment: datetime
) -> tuple[float, float, float]:
    """Gain, lose and change of variant over the 100,000 units of the documented population,
    each decided by the runtime before and after."""
    sides = [build_snapshot(s, [item] if item else []) for s, item in (("b", before), ("a", after))]
    flags = [s.flags.get(name) for s in sides]
    population = population_for([(before or {}).get("targeting"), (after or {}).get("targeting")])
    gain = lose = switch = 0
    for context in population.units():
        was_on, was = served(evaluate(sides[0], name, context, moment), flags[0])
        is_on, now = served(evaluate(sides[1], name, context, moment), flags[1])
        gain += is_on and not was_on
        lose += was_on and not is_on
        switch += is_on and was_on and was != now
    size = population.size
    return gain / size, lose / size, switch / size


# -- the two cases --------------------------------------------------------------------


def test_the_readme_edit_changes_no_decision() -> None:
    before = repository()[RecordKind.FLAG][BEDROCK]
    after = {**before, "rollout_percentage": 30}
    [risk] = risks_of(RecordKind.FLAG, BEDROCK, before, after, now=NOW)
    assert risk.code == "rollout-change"
    assert risk.users_affected == 0
    assert risk.message == (
        "rollout 100% -> 30%: no user's decision changes now or in the next 24 h "
        "(rollout strategy bedrock_gradual_rollout's schedule decides)"
    )
    assert direct(BEDROCK, before, after, NOW) == (0, 0, 0)


def test_moving_the_start_time_back_shows_who_loses_the_flag() -> None:
    """The strategy's start 30 hours ago: 20% instead of 100% of the supported markets, 30% in
    18 hours. The plan (through diff, at the plan's time) shows it on the flag, and the
    strategy's change points there. (The schedule without its checks: one that moves by
    time; a gated one stays at its first step until the controller moves it.)"""
    now = datetime.now(UTC).replace(microsecond=0)
    start = (now - timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = repository()
    before[RecordKind.FLAG][BEDROCK]["rollout"]["gated"] = False
    after = copy.deepcopy(before)
    after[RecordKind.ROLLOUT]["bedrock_gradual_rollout"]["configuration"]["start_time"] = start
    after[RecordKind.FLAG][BEDROCK]["rollout"]["configuration"]["start_time"] = start
    changes, _ = diff(after, stored(before), now=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    risks = {(c.address, r.code): r for c in changes for r in c.risks}
    assert set(risks) == {
        ("flag/vc_bedrock_live", "rollout-jump"),
        ("rollout_strategy/bedrock_gradual_rollout", "rollout-schedule-changed"),
    }
    risk = risks["flag/vc_bedrock_live", "rollout-jump"]
    assert re.fullmatch(
        r"the schedule of rollout strategy bedrock_gradual_rollout: [\d.]+% of users lose "
        r"vc_bedrock_live \(80% of those supported_markets matches\) now, the most in the next "
        r"24 h; users: the synthetic population of its targeting rules",
        risk.message,
    ), risk.message
    assessment = assess(
        BEDROCK, before[RecordKind.FLAG][BEDROCK], after[RecordKind.FLAG][BEDROCK], now
    )
    [markets] = [e for c, e in assessment.classes if c.rules == ("supported_markets",) * 2]
    assert [round(e.lose, 6) for e in markets] == [0.8, 0.7]
    assert markets[1].at - now == timedelta(hours=18)
    assert risk.users_affected == pytest.approx(assessment.now.lose)

    # As the issue measured it: 2,000 users in a supported market, through the runtime.
    sides = [
        build_snapshot(s, [x[RecordKind.FLAG][BEDROCK]]) for s, x in (("b", before), ("a", after))
    ]
    users = [{"user_id": f"user-{i}", "country": "DE", "plan": "pro"} for i in range(2000)]
    lost = sum(
        evaluate(sides[0], BEDROCK, u, now).enabled
        and not evaluate(sides[1], BEDROCK, u, now).enabled
        for u in users
    )
    assert abs(lost / 2000 - 0.8) < 0.03


# -- schedules, experiments, creates and deletes ------------------------------------------------


def plain_flag(**fields: Any) -> Item:
    return {"flag_name": "vc_x", "enabled": True, "flag_type": "boolean", "value": True, **fields}


def ramp(start: datetime, increment: float) -> dict[str, Any]:
    return {
        "strategy_name": "ramp",
        "rollout_type": "percentage",
        "configuration": {
            "percentage": 10,
            "increment_percentage": increment,
            "increment_interval_hours": 1,
            "max_percentage": 100,
            "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def test_a_faster_ramp_is_worst_a_few_hours_on() -> None:
    start = NOW - timedelta(minutes=30)
    before = plain_flag(rollout=ramp(start, 10))
    after = plain_flag(rollout=ramp(start, 20))
    risks = flag_risks(before, after, "vc_x")
    assert list(risks) == ["rollout-jump"]
    assert risks["rollout-jump"].message == (
        "the schedule of rollout strategy ramp: no user's decision changes now; 40% of users "
        "gain vc_x at 2026-01-09T13:30Z (in 3.5 h), the most in the next 24 h"
    )
    assert risks["rollout-jump"].users_affected == pytest.approx(0.4)


def test_a_static_rollout_is_exact_to_the_bucket() -> None:
    risks = flag_risks(
        plain_flag(rollout_percentage=30), plain_flag(rollout_percentage=30.01), "vc_x"
    )
    assert risks["rollout-change"].users_affected == pytest.approx(0.0001)
    assert risks["rollout-change"].message == "rollout 30% -> 30.01%: <0.1% of users gain vc_x"


def test_an_experiments_weights_are_assessed_through_its_flag() -> None:
    state = repository()
    before = state[RecordKind.FLAG][MODELS]
    after = copy.deepcopy(before)
    variants = after["ab_test_config"]["variants"]
    variants[0]["weight"], variants[1]["weight"] = 30, 70
    risk = flag_risks(before, after, MODELS)["traffic-reallocation"]
    assert risk.message == (
        "experiment claude_vs_gemini: 20% of users change variant of ai_model_selection"
    )
    assert risk.users_affected == pytest.approx(0.2)


def test_a_concluded_experiment_moves_everyone_on_the_losing_variant() -> None:
    before = repository()[RecordKind.FLAG][MODELS]
    after = copy.deepcopy(before)
    after["ab_test_config"].update(status="concluded", winner="gemini", active=False)
    after["rollout_percentage"] = 50
    risks = flag_risks(before, after, MODELS)
    assert risks["rollout-jump"].users_affected == pytest.approx(0.5)
    # Of the half that keeps the flag, those on claude (the control) now get gemini.
    assert risks["traffic-reallocation"].users_affected == pytest.approx(0.25)


def test_creating_and_deleting_flags() -> None:
    flag = repository()[RecordKind.FLAG][BEDROCK]
    on = flag_risks(None, flag)["kill-switch-on"]
    off = flag_risks(flag, None)["flag-deleted"]
    assert on.users_affected == off.users_affected
    assert on.users_affected == pytest.approx(direct(BEDROCK, None, flag, NOW)[0], abs=0.01)
    assert off.message.startswith(f"deletes {BEDROCK}: ")
    assert off.message.endswith("services fall back to their default or the flag's fail mode")
    assert flag_risks(None, plain_flag(enabled=False), "vc_x") == {}


def test_the_kill_switch_states_who_had_the_flag() -> None:
    flag = repository()[RecordKind.FLAG][BEDROCK]
    risk = flag_risks(flag, {**flag, "enabled": False})["kill-switch-off"]
    had = direct(BEDROCK, flag, {**flag, "enabled": False}, NOW)[1]
    assert risk.users_affected == pytest.approx(had, abs=0.01)
    assert 0 < had < 1, "the rules exclude some of the population"


def test_a_rule_on_the_user_id_is_decided_unit_by_unit() -> None:
    rule = {
        "name": "beta",
        "action": "include",
        "when": {"attribute": "user_id", "operator": "in", "values": ["u1"]},
    }
    before = plain_flag(targeting={"rules": [rule], "default": "include"}, rollout_percentage=50)
    after = {**before, "rollout_percentage": 20}
    assessment = assess("vc_x", before, after, NOW)
    assert assessment.method == "direct"
    assert assessment.now.lose == pytest.approx(direct("vc_x", before, after, NOW)[1])


def test_too_many_cells_falls_back_to_the_population(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(effect, "MAX_CELLS", 1)
    assessment = assess(
        "vc_x", plain_flag(rollout_percentage=30), plain_flag(rollout_percentage=60), NOW
    )
    assert assessment.method == "direct"
    assert assessment.now.gain == pytest.approx(0.3, abs=0.01)


def test_an_item_of_any_shape_is_a_risk_to_review() -> None:
    [risk] = risks_of(
        RecordKind.FLAG, "vc_x", plain_flag(), {"enabled": True, "rollout_percentage": "x"}, now=NOW
    )
    assert risk.code == "risk-unknown"


# -- the population -------------------------------------------------------------------------


CONDITIONS = [
    {"attribute": "country", "operator": "in", "values": ["DE", "FR"]},
    {"attribute": "country", "operator": "not_in", "values": ["DE"]},
    {"attribute": "plan", "operator": "equals", "value": "pro"},
    {"attribute": "beta", "operator": "not_equals", "value": True},
    {"attribute": "age", "operator": "greater_than_or_equal", "value": 18},
    {"attribute": "age", "operator": "less_than", "value": 0.5},
    {"attribute": "app_version", "operator": "semver_less_than", "value": "2.4.0"},
    {"attribute": "app_version", "operator": "semver_equals", "value": "0.0.0-0"},
    {"attribute": "email", "operator": "matches", "value": r"^[a-z]+\.[a-z]+@example\.(com|org)$"},
    {"attribute": "email", "operator": "matches", "value": r"[^@]+@corp\d{2,}"},
    {"attribute": "device.os", "operator": "exists"},
    {"not": {"attribute": "device.os", "operator": "in", "values": ["ios"]}},
    {
        "all": [
            {"attribute": "plan", "operator": "in", "values": ["pro"]},
            {"attribute": "age", "operator": "less_than", "value": 30},
        ]
    },
    {
        "any": [
            {"attribute": "x", "operator": "equals", "value": 1},
            {"attribute": "y", "operator": "equals", "value": 2},
        ]
    },
]


@pytest.mark.parametrize("condition", CONDITIONS, ids=lambda c: str(c)[:60])
def test_every_condition_is_true_for_some_units_and_false_for_others(
    condition: dict[str, Any],
) -> None:
    targeting = {"rules": [{"name": "r", "action": "include", "when": condition}]}
    classes = targeting_classes([targeting, targeting])
    assert classes is not None
    matched = sum(c.weight for c in classes if c.rules == ("r", "r"))
    assert 0.05 < matched < 0.95
    test = compile_condition(condition)
    assert any(test(c.context) for c in classes)
    assert not all(test(c.context) for c in classes)


def test_regex_examples_are_found_by_their_pattern() -> None:
    for pattern in (r"@example\.com$", r"^a+b{2,3}(c|d)\s\w\d[x-z][^q]$", r"(?i)^ADMIN-", r".*"):
        example = regex_example(pattern)
        assert example is not None, pattern
        assert re.search(pattern, example), pattern
    assert regex_example(r"(a)\1") is None  # a back-reference: no example, no error
    unclosed = {"attribute": "email", "operator": "matches", "value": "(unclosed"}
    assert witnesses([unclosed]) == {}  # the runtime cannot compile it: the flag is broken


def test_the_population_is_fixed_seeded_and_large() -> None:
    targeting = repository()[RecordKind.FLAG][BEDROCK]["targeting"]
    population = population_for([targeting, targeting])
    assert population.size == POPULATION_SIZE >= 100_000
    assert population.combinations() == population_for([targeting, None]).combinations()
    assert population.attributes == ("country", "email", "plan")
    first = next(population.units())
    assert first["user_id"] == "synthetic-0"


# -- the property: reported shares are the runtime's, within one point ------------------------

percentages = st.one_of(st.integers(0, 100), st.integers(0, 1000).map(lambda p: p / 10))
hours = st.integers(-96, 48).map(lambda h: NOW + timedelta(hours=h / 2))

conditions = st.one_of(
    st.builds(
        lambda a, vs: {"attribute": a, "operator": "in", "values": vs},
        st.just("country"),
        st.lists(st.sampled_from(["DE", "FR", "US", "GB"]), min_size=1, max_size=3, unique=True),
    ),
    st.builds(
        lambda op, v: {"attribute": "plan", "operator": op, "value": v},
        st.sampled_from(["equals", "not_equals"]),
        st.sampled_from(["free", "pro"]),
    ),
    st.builds(
        lambda op, v: {"attribute": "age", "operator": op, "value": v},
        st.sampled_from(["less_than", "greater_than_or_equal"]),
        st.integers(16, 70),
    ),
    st.builds(
        lambda op: {"attribute": "app_version", "operator": op, "value": "2.4.0"},
        st.sampled_from(["semver_less_than", "semver_greater_than_or_equal"]),
    ),
    st.just({"attribute": "email", "operator": "matches", "value": r"@example\.com$"}),
    st.just({"attribute": "device.os", "operator": "exists"}),
)
combined = st.one_of(
    conditions,
    st.lists(conditions, min_size=2, max_size=2).map(lambda cs: {"all": cs}),
    st.lists(conditions, min_size=2, max_size=2).map(lambda cs: {"any": cs}),
    conditions.map(lambda c: {"not": c}),
)


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any] | None:
    count = draw(st.integers(0, 2))
    if count == 0:
        return None
    made = []
    for index in range(count):
        action = draw(st.sampled_from(["include", "exclude"]))
        rule: dict[str, Any] = {"name": f"r{index}", "action": action, "when": draw(combined)}
        if action == "include" and draw(st.booleans()):
            rule["rollout_percentage"] = draw(percentages)
        made.append(rule)
    default = draw(st.sampled_from([None, "include", "exclude"]))
    return {"rules": made, **({"default": default} if default else {})}


@st.composite
def strategies_of(draw: st.DrawFn) -> dict[str, Any] | None:
    kind = draw(st.sampled_from([None, "percentage", "percentage", "canary"]))
    if kind is None:
        return None
    configuration: dict[str, Any] = {
        "percentage": draw(percentages),
        "start_time": draw(hours).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if kind == "canary":
        first = draw(st.integers(1, 50))
        configuration["stages"] = [
            {"name": "canary", "percentage": first},
            {"name": "full", "percentage": 100},
        ]
    else:
        configuration["increment_percentage"] = draw(st.sampled_from([0, 5, 10, 25]))
        configuration["increment_interval_hours"] = draw(st.sampled_from([0.5, 1, 6, 24]))
        configuration["max_percentage"] = draw(st.integers(50, 100))
    return {"rollout_type": kind, "configuration": configuration}


@st.composite
def experiments_of(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    first = draw(st.integers(0, 100))
    second = draw(st.integers(0, 100 - first))
    weights = [first, second, 100 - first - second]
    names = ["control", "treatment", "other"]
    status = draw(st.sampled_from(["active", "active", "paused", "concluded"]))
    return {
        "experiment_id": draw(st.sampled_from(["exp_a", "exp_b"])),
        "status": status,
        "traffic_percentage": draw(percentages),
        "variants": [{"name": n, "weight": w} for n, w in zip(names, weights, strict=True)],
        **({"winner": draw(st.sampled_from(names))} if status == "concluded" else {}),
    }


PARTS = ("enabled", "rollout_percentage", "targeting", "strategy", "experiment")


@st.composite
def parts_of(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "enabled": draw(st.booleans()) or draw(st.booleans()),
        "rollout_percentage": draw(percentages),
        "targeting": draw(rules()),
        "strategy": draw(strategies_of()),
        "experiment": draw(experiments_of()),
    }


def encoded(name: str, parts: dict[str, Any] | None) -> Item | None:
    """The flag's item from its manifests (a flag, maybe a rollout strategy and an experiment)
    as the codec encodes them; None: no flag."""
    if parts is None:
        return None
    common = {"description": "generated", "owner": "tests"}
    flag = Flag.model_validate(
        {
            "kind": "Flag",
            "flag_name": name,
            "enabled": parts["enabled"],
            "rollout_percentage": parts["rollout_percentage"],
            **({"targeting": parts["targeting"]} if parts["targeting"] else {}),
            **common,
        }
    )
    strategies = [
        RolloutStrategy.model_validate(
            {
                "kind": "RolloutStrategy",
                "strategy_name": "ramp",
                "feature_flag": name,
                **parts["strategy"],
                **common,
            }
        )
        for _ in [parts["strategy"]]
        if parts["strategy"] is not None
    ]
    metric = {"metric_name": "m", "metric_type": "numeric", "primary": True}
    experiments = [
        Experiment.model_validate(
            {
                "kind": "Experiment",
                "name": "generated",
                "feature_flag": name,
                "success_metrics": [metric],
                **parts["experiment"],
                **common,
            }
        )
        for _ in [parts["experiment"]]
        if parts["experiment"] is not None
    ]
    return encode_flag(flag, experiments, strategies)


@st.composite
def changes(draw: st.DrawFn) -> tuple[Item | None, Item | None]:
    """A flag before and after: created, deleted, or with some of its parts drawn again."""
    before: dict[str, Any] | None = draw(parts_of())
    after: dict[str, Any] | None = dict(before or {})
    redrawn = draw(parts_of())
    for part in draw(st.lists(st.sampled_from(PARTS), min_size=1, max_size=3, unique=True)):
        after[part] = redrawn[part]  # type: ignore[index]
    shape = draw(st.sampled_from(["update"] * 8 + ["create", "delete"]))
    if shape == "create":
        before = None
    elif shape == "delete":
        after = None
    return encoded("vc_generated", before), encoded("vc_generated", after)


def moments(assessment: Assessment) -> set[datetime]:
    worst = [assessment.worst(lambda e: e.moved), assessment.worst(lambda e: e.switch)]
    return {assessment.now.at, *(e.at for e in worst)}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes())
def test_reported_shares_are_the_runtimes_decisions_within_a_point(
    change: tuple[Item | None, Item | None],
) -> None:
    before, after = change
    name = "vc_generated"
    assessment = assess(name, before, after, NOW)
    by_time = {e.at: e for e in assessment.effects}
    for moment in sorted(moments(assessment)):
        gain, lose, switch = direct(name, before, after, moment)
        reported = by_time[moment]
        assert reported.gain == pytest.approx(gain, abs=0.01)
        assert reported.lose == pytest.approx(lose, abs=0.01)
        assert reported.switch == pytest.approx(switch, abs=0.01)
    decided = {"kill-switch-on", "kill-switch-off", "rollout-jump", "rollout-change"}
    for risk in risks_of(RecordKind.FLAG, name, before, after, now=NOW):
        if risk.code in decided:
            assert risk.users_affected == pytest.approx(assessment.worst(lambda e: e.moved).moved)
        elif risk.code == "flag-deleted":
            assert risk.users_affected == pytest.approx(assessment.worst(lambda e: e.lose).lose)
        elif risk.code == "traffic-reallocation":
            assert risk.users_affected == pytest.approx(assessment.worst(lambda e: e.switch).switch)


def test_a_targeting_strategy_is_assessed_over_its_own_users() -> None:
    """A ramp made beta-only (an attribute the flag's own rules do not read): the other users
    lose it, and the plan says how many, against the runtime deciding every unit of a
    population that covers the strategy's condition too."""
    before = copy.deepcopy(repository()[RecordKind.FLAG][BEDROCK])
    before["rollout"]["configuration"]["start_time"] = "2026-01-08T10:00:00Z"  # 20% now
    after = copy.deepcopy(before)
    after["rollout"]["rollout_type"] = "targeting"
    after["rollout"]["configuration"]["targeting"] = {
        "rules": [
            {
                "name": "beta",
                "action": "include",
                "when": {"attribute": "programme", "operator": "equals", "value": "beta"},
            }
        ]
    }
    assessment = assess(BEDROCK, before, after, NOW)
    lose = assessment.now.lose
    assert lose > 0.01  # the others' 20%
    scope = after["rollout"]["configuration"]["targeting"]
    population = population_for([scope, before.get("targeting"), after.get("targeting")])
    sides = [build_snapshot(s, [item]) for s, item in (("b", before), ("a", after))]
    flags = [s.flags.get(BEDROCK) for s in sides]
    lost = (
        sum(
            served(evaluate(sides[0], BEDROCK, c, NOW), flags[0])[0]
            and not served(evaluate(sides[1], BEDROCK, c, NOW), flags[1])[0]
            for c in population.units()
        )
        / population.size
    )
    assert lose == pytest.approx(lost, abs=0.003)
    beta = [c for c in population.units() if c.get("programme") == "beta"]
    assert beta, "the population has users the strategy's condition matches"
