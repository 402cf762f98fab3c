"""A plan of thousands of changes stays readable: what a reviewer must read in full, the rest
counted; every change on request and in the JSON."""

from __future__ import annotations

from reconciler.plan.model import Change, FieldChange, Plan, Risk
from reconciler.render.large import FULL_UP_TO
from reconciler.render.markdown import render_markdown
from reconciler.render.text import render_text
from reconciler.state.records import RecordKind


def large_plan(creates: int) -> Plan:
    changes = [
        Change(
            RecordKind.FLAG,
            f"vc_clone_{i:05d}",
            "create",
            after={"enabled": True},
            fields=(FieldChange("enabled", None, True, "added"),),
        )
        for i in range(creates)
    ]
    changes.append(
        Change(
            RecordKind.FLAG,
            "vc_bedrock_live",
            "update",
            expected_version=3,
            fields=(FieldChange("rollout_percentage", 10, 100),),
            risks=(Risk("rollout-jump", "rollout 10% -> 100%: 90% of users newly get it"),),
        )
    )
    changes.append(Change(RecordKind.EXPERIMENT, "old_test", "delete", expected_version=2))
    return Plan("p-1", "2026-12-01T00:00:00Z", "c0ffee", "local", tuple(changes))


def test_a_large_plan_shows_what_a_reviewer_must_read_and_counts_the_rest() -> None:
    lines = list(render_text(large_plan(5000)))
    text = "\n".join(lines)
    assert "~ flag/vc_bedrock_live (update, version 3)" in lines
    assert "    ! rollout 10% -> 100%: 90% of users newly get it" in lines
    assert "- experiment/old_test (delete, version 2)" in lines
    assert (
        "  + 5,000 flag record(s) to add: vc_clone_00000, vc_clone_00001, vc_clone_00002 and "
        "4,997 more" in lines
    )
    assert "+ flag/vc_clone_00042" not in text, "not each of the 5,000"
    assert lines[-1] == "Plan: 5000 to add, 1 to change, 1 to destroy."
    assert len(lines) < 30


def test_every_change_in_full_on_request_and_in_small_plans() -> None:
    everything = list(render_text(large_plan(5000), show_all=True))
    assert "+ flag/vc_clone_04999 (create)" in everything
    small = list(render_text(large_plan(FULL_UP_TO - 2)))
    assert "+ flag/vc_clone_00042 (create)" in small
    assert not any("not shown field by field" in line for line in small)


def test_the_comment_of_a_large_plan_fits_and_keeps_the_risks() -> None:
    comment = render_markdown(large_plan(20_000))
    assert len(comment) < 10_000
    assert "`flag/vc_bedrock_live`: rollout 10% -> 100%" in comment
    assert "| + | 20,000 flag record(s) to add: vc_clone_00000" in comment
    assert "<code>- experiment/old_test</code>" in comment
    assert "is too long for one comment" not in comment
