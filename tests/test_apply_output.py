"""What ``reconcile --apply`` prints: the plan once, the store once, the outcome."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli.boundary import run
from reconciler.cli.reconcile import reconcile


def invoke(*args: str) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        code = run(reconcile, list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


RECORDS = [
    "+ flag/ai_model_selection (create)",
    "+ flag/vc_bedrock_live (create)",
    "+ experiment/claude_vs_gemini (create)",
    "+ rollout_strategy/bedrock_gradual_rollout (create)",
    "+ cost_threshold/ai_daily_budget (create)",
]


@pytest.fixture(autouse=True)
def _local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECONCILER_STORE", raising=False)
    monkeypatch.delenv("RECONCILER_LEASE_SECONDS", raising=False)


def test_apply_yes_prints_the_plan_once(example_tree: Path) -> None:
    code, out, err = invoke("--apply", str(example_tree), "--yes", "--store", "local")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Applying plan ")
    assert "(commit " in lines[0]
    records = [line for line in lines if line[:2] in ("+ ", "~ ", "- ")]
    assert records == RECORDS, "each record it applies, once"
    assert lines.count("Plan: 5 to add, 0 to change, 0 to destroy.") == 1
    assert lines[-1] == "Apply complete: 5 written in 1 group(s)."
    assert not [line for line in lines if line.startswith(("    + ", "    ~ ", "    - "))], (
        "the field-by-field diff is the plan's (reconcile --plan), not repeated here"
    )
    assert [line for line in err.splitlines() if line.startswith("Store:")] == [
        f"Store: local store (SQLite) {example_tree / '.reconciler' / 'state.db'}"
    ], "the store is named once"


def test_plan_then_apply_shows_each_field_once(example_tree: Path) -> None:
    root = str(example_tree)
    _, planned, _ = invoke("--plan", root, "--store", "local")
    _, applied, _ = invoke("--apply", root, "--yes", "--store", "local")
    field = "    + rollout_percentage: 100"
    both = (planned + applied).splitlines()
    assert both.count(field) == 2, "vc_bedrock_live and ai_model_selection, in the plan only"
    assert field not in applied.splitlines()
    for record in RECORDS:
        assert both.count(record) == 2, "once in the plan, once in what apply applied"


def test_apply_yes_with_nothing_to_do_says_so_once(example_tree: Path) -> None:
    root = str(example_tree)
    assert invoke("--apply", root, "--yes", "--store", "local")[0] == 0
    code, out, err = invoke("--apply", root, "--yes", "--store", "local")
    assert code == 0
    assert out.splitlines().count("No changes. The store matches git.") == 1
    assert "Apply complete" not in out
    assert err.count("Store:") == 1


def test_apply_shows_what_an_override_holds(example_tree: Path) -> None:
    root = str(example_tree)
    assert invoke("--apply", root, "--yes", "--store", "local")[0] == 0
    from reconciler import breakglass
    from reconciler.runtime.client import utc_now
    from reconciler.state.local import LocalStore

    store = LocalStore(example_tree / ".reconciler" / "state.db")
    breakglass.shutdown(
        store,
        ["vc_bedrock_live"],
        reason="bad answers",
        by="oncall",
        expires_at=None,
        now=utc_now(),
    )
    store.close()
    flag = example_tree / "flags.d" / "vc_bedrock_live.yaml"
    flag.write_text(
        flag.read_text().replace("rollout_percentage: 100\n", "rollout_percentage: 30\n", 1)
    )
    code, out, err = invoke("--apply", root, "--yes", "--store", "local")
    assert code == 0, err
    lines = out.splitlines()
    assert "~ flag/vc_bedrock_live (update, version 1)" in lines
    assert "    | held by emergency shutdown by oncall: bad answers" in lines
    assert (
        lines[-1]
        == "Apply complete: 0 written in 0 group(s), 1 held by an override (left waiting)."
    )
    assert "held: flag/vc_bedrock_live is under an emergency shutdown; its change waits" in err


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf"])
def test_a_lease_length_that_is_not_a_positive_number_is_refused(
    example_tree: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RECONCILER_LEASE_SECONDS", value)
    code, out, err = invoke("--apply", str(example_tree), "--yes", "--store", "local")
    assert (code, out) == (1, "")
    assert f"error: RECONCILER_LEASE_SECONDS={value!r}: give the apply lease's length in " in err
    assert not (example_tree / ".reconciler").exists(), "nothing was planned or written"
