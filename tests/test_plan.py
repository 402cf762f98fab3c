"""The pure diff and the renderers: properties, risk classes, and golden renderings."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.codec import DesiredState, canonical, content_hash, encode
from reconciler.config import load_config
from reconciler.plan.diff import ActualState, diff
from reconciler.plan.model import Change, Hold, Plan
from reconciler.render.markdown import MARKER, render_markdown
from reconciler.render.text import render_text
from reconciler.runtime.bucketing import share_reassigned
from reconciler.state.records import MANAGED_BY, RecordKind, StoredRecord
from reconciler.validation import validate
from tests.conftest import REPO_ROOT

GOLDEN = Path(__file__).parent / "golden"
NOW = "2026-01-09T10:00:00.000000Z"


def stored(state: DesiredState, version: int = 1) -> dict[RecordKind, dict[str, StoredRecord]]:
    """What a store holds after applying ``state``."""
    return {
        kind: {
            name: StoredRecord(
                kind,
                name,
                {
                    **item,
                    "managed_by": MANAGED_BY,
                    "version": version,
                    "content_hash": content_hash(item),
                },
            )
            for name, item in items.items()
        }
        for kind, items in state.items()
    }


def apply_changes(actual: ActualState, changes: list[Change]) -> DesiredState:
    """A model of apply: what the git-owned state becomes after the changes."""
    result: DesiredState = {
        kind: {
            n: {
                k: v
                for k, v in r.item.items()
                if k not in ("managed_by", "version", "content_hash")
            }
            for n, r in records.items()
        }
        for kind, records in actual.items()
    }
    for change in changes:
        table = result.setdefault(change.kind, {})
        if change.action == "delete":
            del table[change.name]
        elif change.action in ("create", "update"):
            assert change.after is not None
            table[change.name] = change.after
    return result


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(-1e6, 1e6)
    | st.text(max_size=6)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
items = st.dictionaries(
    st.sampled_from(["enabled", "value", "rollout_percentage", "targeting", "description", "tags"]),
    json_value,
    max_size=5,
)
states = st.fixed_dictionaries(
    {
        kind: st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), items, max_size=3)
        for kind in RecordKind
    }
)


def with_keys(state: DesiredState) -> DesiredState:
    return {
        kind: {name: canonical({**item, kind.key: name}) for name, item in table.items()}
        for kind, table in state.items()
    }


@settings(max_examples=200, deadline=None)
@given(states)
def test_diff_of_a_state_with_itself_is_empty(state: DesiredState) -> None:
    state = with_keys(state)
    changes, unmanaged = diff(state, stored(state), now=NOW)
    assert [c for c in changes if c.pending] == []
    assert unmanaged == []


@settings(max_examples=200, deadline=None)
@given(states, states)
def test_applying_the_diff_gives_the_desired_state(
    desired: DesiredState, actual: DesiredState
) -> None:
    desired, actual = with_keys(desired), with_keys(actual)
    present = stored(actual)
    changes, _ = diff(desired, present, now=NOW)
    assert apply_changes(present, changes) == {k: {} for k in RecordKind} | desired


def test_share_reassigned_follows_the_contiguous_ranges() -> None:
    assert share_reassigned([("a", 50), ("b", 50)], [("a", 50), ("b", 50)]) == 0
    assert share_reassigned([("a", 50), ("b", 50)], [("a", 30), ("b", 70)]) == pytest.approx(0.2)
    assert share_reassigned([("a", 50), ("b", 50)], [("b", 50), ("a", 50)]) == pytest.approx(1.0)
    assert share_reassigned([("a", 50), ("b", 50)], [("a", 50), ("c", 50)]) == pytest.approx(0.5)


def example_state() -> DesiredState:
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    assert result.ok
    return encode(result.tree)


def scenario() -> Plan:
    """A fixed plan touching every kind of change, risk and hold, for the golden files."""
    before = example_state()
    after = copy.deepcopy(before)
    flag = after[RecordKind.FLAG]["vc_bedrock_live"]
    flag["enabled"] = False
    flag["targeting"]["rules"] = flag["targeting"]["rules"][:1]
    after[RecordKind.FLAG]["ai_model_selection"]["rollout_percentage"] = 40
    variants = after[RecordKind.EXPERIMENT]["claude_vs_gemini"]["variants"]
    variants[0]["weight"], variants[1]["weight"] = 30, 70
    after[RecordKind.COST_THRESHOLD]["ai_daily_budget"]["emergency"]["amount_usd"] = 300
    del after[RecordKind.ROLLOUT]["bedrock_gradual_rollout"]
    after[RecordKind.FLAG]["vc_summary_live"] = canonical(
        {"flag_name": "vc_summary_live", "enabled": True, "rollout_percentage": 10, "value": True}
    )
    present = stored(before)
    held = present[RecordKind.FLAG]["ai_model_selection"]
    present[RecordKind.FLAG]["ai_model_selection"] = StoredRecord(
        held.kind,
        held.name,
        {
            **held.item,
            "emergency_shutdown": True,
            "shutdown_by": "oncall",
            "shutdown_reason": "runaway cost",
            "shutdown_at": "2026-01-09T03:12:00.000000Z",
        },
    )
    changes, unmanaged = diff(after, present, now=NOW)
    return Plan(
        "0123456789abcdef",
        NOW,
        "c0ffee0123456789",
        "local store (SQLite) state.db",
        tuple(changes),
        tuple(unmanaged),
    )


def test_scenario_risks_and_holds() -> None:
    plan = scenario()
    risks = {(c.address, r.code) for c in plan.changes for r in c.risks}
    assert risks == {
        ("flag/vc_bedrock_live", "kill-switch-off"),
        ("flag/vc_bedrock_live", "targeting-rule-removed"),
        ("flag/ai_model_selection", "rollout-jump"),
        ("flag/vc_summary_live", "kill-switch-on"),
        ("experiment/claude_vs_gemini", "traffic-reallocation"),
        ("cost_threshold/ai_daily_budget", "cost-threshold-lowered"),
        ("rollout_strategy/bedrock_gradual_rollout", "rollout-removed"),
    }
    held = next(c for c in plan.changes if c.name == "ai_model_selection")
    assert held.held
    assert held.holds == (
        Hold(
            "override", "emergency shutdown by oncall: runaway cost", "2026-01-09T03:12:00.000000Z"
        ),
    )
    assert plan.summary() == "Plan: 1 to add, 4 to change, 1 to destroy. 1 held by an override."


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, (
        f"rendering changed; UPDATE_GOLDEN=1 pytest {__file__} to accept"
    )


def test_text_rendering() -> None:
    golden("plan.txt", "\n".join(render_text(scenario())) + "\n")


def test_text_rendering_in_colour_marks_symbols() -> None:
    lines = list(render_text(scenario(), color=True))
    assert "\x1b[31m- rollout_strategy/bedrock_gradual_rollout (delete, version 1)\x1b[0m" in lines


def test_markdown_rendering() -> None:
    golden("plan.md", render_markdown(scenario()))


def test_markdown_stays_under_the_comment_limit() -> None:
    plan = scenario()
    many = tuple(
        Change(
            RecordKind.FLAG,
            f"vc_flag_{i:05d}",
            "create",
            after={"x": "y" * 200},
            fields=tuple(plan.changes[0].fields),
        )
        for i in range(2000)
    )
    big = Plan(plan.plan_id, plan.created_at, plan.git_commit, plan.store, many)
    text = render_markdown(big, max_chars=20_000, show_all=True)  # every section: the cut
    assert len(text) <= 20_000
    assert text.startswith(MARKER)
    assert "The plan is too long for one comment" in text


def test_json_round_trip() -> None:
    plan = scenario()
    data = plan.to_dict()
    golden("plan.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    assert Plan.from_dict(json.loads(json.dumps(data))) == plan


def test_a_plan_of_another_format_version_is_refused() -> None:
    from reconciler.errors import UserError

    data: dict[str, Any] = scenario().to_dict()
    data["format_version"] = 99
    with pytest.raises(UserError, match="format_version 99 is not supported"):
        Plan.from_dict(data)
