"""``controller new-experiment``: a valid experiment manifest and the flag's link, or nothing."""

from __future__ import annotations

import shutil
import sys
from decimal import Decimal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from reconciler.cli.boundary import run
from reconciler.cli.new_experiment import new_experiment_command
from reconciler.cli.reconcile import reconcile
from reconciler.commands.new_experiment import (
    Request,
    VariantSpec,
    link_flag,
    parse_guardrail,
    parse_variant,
    split_weights,
)
from reconciler.loader import Source, load_file
from reconciler.manifests import Experiment
from reconciler.yaml_strict import load_yaml
from tests.conftest import REPO_ROOT

FREE_FLAG = """\
# yaml-language-server: $schema=../schemas/flag.schema.json
kind: Flag
flag_name: ai_summary_model
description: Which model writes the summaries.
owner: team-summaries
enabled: true
type: string
value: claude-3.5-sonnet
fail_mode: open

# the cost-metrics key
request_type: vc_analysis
"""
NEXT = (
    "Next: review it, set status: active when ready, open a pull request; "
    "`reconcile --plan` shows what merging does."
)


@click.group()
def controller() -> None:
    """The group the command joins in reconciler.cli.controller."""


controller.add_command(new_experiment_command)


@pytest.fixture
def tree(example_tree: Path) -> Path:
    """The repository's manifests (and schemas), with one flag no experiment runs on yet."""
    shutil.copytree(REPO_ROOT / "schemas", example_tree / "schemas")
    (example_tree / "flags.d" / "ai_summary_model.yaml").write_text(FREE_FLAG)
    return example_tree


def invoke(root: Path, *args: str) -> tuple[int, str, str]:
    """``controller new-experiment ...`` through the error boundary, as the console script."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        code = run(controller, ["new-experiment", *args, "--root", str(root)])
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def load_experiment(path: Path, relative: str) -> Experiment:
    loaded, diagnostics = load_file(path, relative)
    assert diagnostics == []
    assert loaded is not None
    assert isinstance(loaded.manifest, Experiment)
    return loaded.manifest


TWO = ("--variant", "claude=claude-3.5-sonnet", "--variant", "gemini=gemini-pro")


def test_writes_a_manifest_and_the_flag_link_that_validate_accepts(tree: Path) -> None:
    code, out, err = invoke(tree, "summary_models", "--flag", "ai_summary_model", *TWO)
    assert (code, err) == (0, "")
    written = tree / "experiments.d" / "summary_models.yaml"
    assert out.splitlines() == [
        f"Wrote {written}.",
        "Linked the flag: added 'experiment: summary_models' to "
        f"{tree / 'flags.d' / 'ai_summary_model.yaml'}:10.",
        "Status is draft: nobody is assigned a variant until it is set to active.",
        NEXT,
    ]
    assert written.read_text() == (
        "# yaml-language-server: $schema=../schemas/experiment.schema.json\n"
        "kind: Experiment\n"
        "experiment_id: summary_models\n"
        "name: Summary Models\n"
        "description: Compare claude-3.5-sonnet and gemini-pro by response_quality.\n"
        "owner: team-summaries\n"
        "feature_flag: ai_summary_model\n"
        "status: draft\n"
        "control: claude\n"
        "variants:\n"
        "  - name: claude\n"
        "    config:\n"
        "      model: claude-3.5-sonnet\n"
        "    weight: 50\n"
        "  - name: gemini\n"
        "    config:\n"
        "      model: gemini-pro\n"
        "    weight: 50\n"
        "success_metrics:\n"
        "  - metric_name: response_quality\n"
        "    metric_type: numeric\n"
        "    primary: true\n"
        "    direction: increase\n"
        "guardrail_metrics:\n"
        "  - metric_name: response_time_ms\n"
        "    metric_type: numeric\n"
        "    direction: decrease\n"
        "    max_degradation: 20\n"
        "  - metric_name: cost_usd\n"
        "    metric_type: numeric\n"
        "    direction: decrease\n"
        "    max_degradation: 25\n"
        "confidence_level: 0.95\n"
        "minimum_duration_days: 7\n"
        "minimum_sample_size: 1000\n"
    )
    assert (tree / "flags.d" / "ai_summary_model.yaml").read_text() == FREE_FLAG.replace(
        "fail_mode: open\n", "fail_mode: open\nexperiment: summary_models\n"
    )
    runner = CliRunner()
    with runner.isolation() as (stdout, _, _):
        assert run(reconcile, ["--validate", str(tree)]) == 0
        assert stdout.getvalue().decode() == (
            "7 manifests valid (1 CostThreshold, 2 Experiment, 3 Flag, 1 RolloutStrategy), "
            "0 warnings.\n"
        )


def test_fields_follow_the_example_file_order(tree: Path) -> None:
    code, _, _ = invoke(
        tree,
        "summary_models",
        "--flag",
        "ai_summary_model",
        *TWO,
        "--hypothesis",
        "Claude summarises better.",
        "--target-improvement",
        "10",
        "--start-time",
        "2026-01-01T00:00:00Z",
    )
    assert code == 0

    def keys(path: Path) -> list[str]:
        document, _ = load_yaml(path.read_bytes())
        assert document is not None
        assert isinstance(document.data, dict)
        return list(document.data)

    example = keys(REPO_ROOT / "experiments.d" / "claude_vs_gemini.yaml")
    assert keys(tree / "experiments.d" / "summary_models.yaml") == [*example, "start_time"]


def test_the_written_yaml_round_trips_through_the_model_with_the_values_given(tree: Path) -> None:
    code, out, _ = invoke(
        tree,
        "summary_models",
        "--flag",
        "ai_summary_model",
        "--variant",
        "haiku=anthropic.claude-3-haiku-20240307-v1:0:20",
        "--variant",
        "sonnet=claude-3.5-sonnet",
        "--variant",
        "gemini=gemini-pro",
        "--name",
        "Summaries: three models",
        "--description",
        "Which model # writes the best summaries?",
        "--hypothesis",
        'Sonnet wins: "at least" 10% better',
        "--owner",
        "no",
        "--control",
        "sonnet",
        "--metric",
        "hallucination_rate",
        "--metric-type",
        "binary",
        "--direction",
        "decrease",
        "--target-improvement",
        "2.5",
        "--guardrail",
        "latency_ms:decrease:15",
        "--guardrail",
        "error_rate:decrease:5:binary",
        "--confidence-level",
        "0.9",
        "--minimum-duration-days",
        "14",
        "--minimum-sample-size",
        "500",
        "--start-time",
        "2026-01-05T09:00:00+01:00",
        "--end-time",
        "2026-02-05T09:00:00Z",
        "--status",
        "active",
    )
    assert code == 0
    assert "Status is active" in out
    assert "set status: active" not in out
    experiment = load_experiment(
        tree / "experiments.d" / "summary_models.yaml", "experiments.d/summary_models.yaml"
    )
    expected = {
        "kind": "Experiment",
        "experiment_id": "summary_models",
        "name": "Summaries: three models",
        "description": "Which model # writes the best summaries?",
        "hypothesis": 'Sonnet wins: "at least" 10% better',
        "owner": "no",
        "feature_flag": "ai_summary_model",
        "status": "active",
        "control": "sonnet",
        "variants": [
            {
                "name": "haiku",
                "config": {"model": "anthropic.claude-3-haiku-20240307-v1:0"},
                "weight": 20,
            },
            {"name": "sonnet", "config": {"model": "claude-3.5-sonnet"}, "weight": 40},
            {"name": "gemini", "config": {"model": "gemini-pro"}, "weight": 40},
        ],
        "success_metrics": [
            {
                "metric_name": "hallucination_rate",
                "metric_type": "binary",
                "primary": True,
                "direction": "decrease",
                "target_improvement": 2.5,
            }
        ],
        "guardrail_metrics": [
            {
                "metric_name": "latency_ms",
                "metric_type": "numeric",
                "direction": "decrease",
                "max_degradation": 15,
            },
            {
                "metric_name": "error_rate",
                "metric_type": "binary",
                "direction": "decrease",
                "max_degradation": 5,
            },
        ],
        "confidence_level": 0.9,
        "minimum_duration_days": 14,
        "minimum_sample_size": 500,
        "start_time": "2026-01-05T09:00:00+01:00",
        "end_time": "2026-02-05T09:00:00Z",
    }
    assert experiment == Experiment.model_validate(expected)
    assert experiment.model_dump(exclude_defaults=True) == expected


def test_three_variants_without_weights_split_34_33_33(tree: Path) -> None:
    code, _, _ = invoke(
        tree,
        "summary_models",
        "--flag",
        "ai_summary_model",
        *TWO,
        "--variant",
        "gpt=gpt-4o",
    )
    assert code == 0
    experiment = load_experiment(
        tree / "experiments.d" / "summary_models.yaml", "experiments.d/summary_models.yaml"
    )
    assert [(v.name, v.weight) for v in experiment.variants] == [
        ("claude", 34),
        ("gemini", 33),
        ("gpt", 33),
    ]


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([None, None], ["50", "50"]),
        ([None, None, None], ["34", "33", "33"]),
        ([None] * 6, ["17", "17", "17", "17", "16", "16"]),
        (["70", None, None], ["70", "15", "15"]),
        ([None, "10.5", None], ["45", "10.5", "44.5"]),
        (["33.3", "66.7"], ["33.3", "66.7"]),
    ],
)
def test_split_weights(weights: list[str | None], expected: list[str]) -> None:
    given = [None if w is None else Decimal(w) for w in weights]
    assert split_weights(given) == [Decimal(w) for w in expected]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (["60", "30"], "the weights sum to 90; they must sum to 100"),
        (["60", "50"], "the weights sum to 110; they must sum to 100"),
        (
            ["100", None],
            "the weights given sum to 100, which leaves 0 for 1 variant(s) without a weight; "
            "lower them or give every weight",
        ),
    ],
)
def test_split_weights_refuses(weights: list[str | None], message: str) -> None:
    with pytest.raises(ValueError, match=r".") as caught:
        split_weights([None if w is None else Decimal(w) for w in weights])
    assert str(caught.value) == message


@given(st.integers(min_value=2, max_value=40))
def test_an_even_split_is_whole_numbers_summing_to_100(count: int) -> None:
    weights = split_weights([None] * count)
    assert sum(weights) == 100
    assert all(w == int(w) for w in weights)
    assert max(weights) - min(weights) <= 1
    assert weights == sorted(weights, reverse=True)  # the remainder goes to the first


def test_explicit_weights_not_summing_to_100_are_refused(tree: Path) -> None:
    before = snapshot(tree)
    code, out, err = invoke(
        tree, "x_test", "--flag", "ai_summary_model", "--variant", "a=m1:60", "--variant", "b=m2:30"
    )
    assert (code, out) == (1, "")
    assert err == "error: --variant: the weights sum to 90; they must sum to 100\n"
    assert snapshot(tree) == before


def test_an_unknown_flag_is_refused_with_a_suggestion(tree: Path) -> None:
    code, _, err = invoke(tree, "x_test", "--flag", "ai_summary_modle", *TWO)
    assert code == 1
    assert err == (
        "error: --flag: no flag 'ai_summary_modle' in flags.d/; did you mean 'ai_summary_model'?\n"
    )


def test_a_flag_with_an_experiment_is_refused_naming_it(tree: Path) -> None:
    before = snapshot(tree)
    code, _, err = invoke(tree, "x_test", "--flag", "ai_model_selection", *TWO)
    assert code == 1
    assert err == (
        "error: --flag: flag 'ai_model_selection' already has experiment 'claude_vs_gemini' "
        "(experiments.d/claude_vs_gemini.yaml, status active); choose another flag, or "
        "conclude and remove that experiment first\n"
    )
    assert snapshot(tree) == before


def test_an_existing_file_is_kept_unless_forced(tree: Path) -> None:
    path = tree / "experiments.d" / "claude_vs_gemini.yaml"
    before = path.read_bytes()
    args = ("claude_vs_gemini", "--flag", "ai_model_selection", *TWO)
    code, _, err = invoke(tree, *args)
    assert code == 1
    assert err == (
        "error: experiments.d/claude_vs_gemini.yaml already exists; pass --force to overwrite it\n"
    )
    assert path.read_bytes() == before

    flag = (tree / "flags.d" / "ai_model_selection.yaml").read_bytes()
    code, out, err = invoke(tree, *args, "--status", "active", "--force")
    assert (code, err) == (0, "")
    assert "Linked the flag" not in out, "the flag already names this experiment"
    assert (tree / "flags.d" / "ai_model_selection.yaml").read_bytes() == flag
    experiment = load_experiment(path, "experiments.d/claude_vs_gemini.yaml")
    assert experiment.name == "Claude vs Gemini"
    assert experiment.owner == "team-ai-quality"


def test_dry_run_prints_the_manifest_and_writes_nothing(tree: Path) -> None:
    before = snapshot(tree)
    code, out, err = invoke(tree, "summary_models", "--flag", "ai_summary_model", *TWO, "--dry-run")
    assert code == 0
    assert snapshot(tree) == before
    assert out.startswith("# yaml-language-server: $schema=../schemas/experiment.schema.json\n")
    assert "feature_flag: ai_summary_model\n" in out
    assert err.splitlines() == [
        "Dry run: would write experiments.d/summary_models.yaml and add "
        "'experiment: summary_models' to flags.d/ai_summary_model.yaml:10; nothing written.",
        "Status is draft: nobody is assigned a variant until it is set to active.",
    ]
    code, _, _ = invoke(tree, "summary_models", "--flag", "ai_summary_model", *TWO)
    assert code == 0
    assert (tree / "experiments.d" / "summary_models.yaml").read_text() == out


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--start-time", "2026-01-01"),
        ("--start-time", "2026-13-01T00:00:00Z"),
        ("--start-time", "2026-01-01T00:00:00"),
        ("--end-time", "tomorrow"),
    ],
)
def test_a_bad_time_is_refused_naming_the_option(tree: Path, option: str, value: str) -> None:
    before = snapshot(tree)
    code, out, err = invoke(tree, "x_test", "--flag", "ai_summary_model", *TWO, option, value)
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        f"Error: Invalid value for '{option}': '{value}' is not an RFC 3339 time with a time "
        "zone, e.g. 2025-01-09T10:00:00Z"
    )
    assert snapshot(tree) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--variant", "a=m1"),
            "Error: Invalid value for '--variant': give at least two variants",
        ),
        (
            ("--variant", "a=m1", "--variant", "b"),
            "Error: Invalid value for '--variant': 'b': expected NAME=MODEL or "
            "NAME=MODEL:WEIGHT, e.g. claude=claude-3.5-sonnet:50",
        ),
        (
            (*TWO, "--guardrail", "latency:up:5"),
            "Error: Invalid value for '--guardrail': 'latency:up:5': direction 'up' is not "
            "increase or decrease",
        ),
        (
            (*TWO, "--no-guardrails", "--guardrail", "latency_ms:decrease:5"),
            "Error: give --guardrail or --no-guardrails, not both",
        ),
        ((*TWO, "--control", "gpt"), "error: --control: 'gpt' is not a variant (claude, gemini)"),
        (
            ("--variant", "a=m1", "--variant", "a=m2"),
            "error: --variant: variant name 'a' is given twice",
        ),
        (
            (*TWO, "--guardrail", "response_quality:decrease:5"),
            "error: --guardrail: metric 'response_quality' is already a metric of the experiment",
        ),
    ],
)
def test_bad_options_are_refused(tree: Path, args: tuple[str, ...], message: str) -> None:
    before = snapshot(tree)
    code, out, err = invoke(tree, "x_test", "--flag", "ai_summary_model", *args)
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == message
    assert snapshot(tree) == before


def test_findings_of_the_real_validation_are_reported_and_nothing_is_written(tree: Path) -> None:
    before = snapshot(tree)
    code, out, err = invoke(tree, "SummaryModels", "--flag", "ai_summary_model", *TWO)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "experiments.d/SummaryModels.yaml:3:16: experiment_id: 'SummaryModels' is not "
        "snake_case; write it as 'summary_models'",
        "error: the tree with experiments.d/SummaryModels.yaml would not validate: 1 error(s) "
        "in the files this writes; nothing written",
    ]
    assert snapshot(tree) == before


def test_errors_elsewhere_in_the_tree_block_the_write_too(tree: Path) -> None:
    other = tree / "flags.d" / "vc_bedrock_live.yaml"
    other.write_text(
        other.read_text().replace("rollout_percentage: 100", "rollout_percentage: 150", 1)
    )
    before = snapshot(tree)
    code, _, err = invoke(tree, "summary_models", "--flag", "ai_summary_model", *TWO)
    assert code == 1
    assert err.splitlines() == [
        "flags.d/vc_bedrock_live.yaml:11:21: rollout_percentage: must be at most 100 (got 150)",
        "error: the tree with experiments.d/summary_models.yaml would not validate: 0 error(s) "
        "in the files this writes, 1 elsewhere (fix those first); nothing written",
    ]
    assert snapshot(tree) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=claude-3.5-sonnet", VariantSpec("a", "claude-3.5-sonnet")),
        ("a=claude-3.5-sonnet:50", VariantSpec("a", "claude-3.5-sonnet", Decimal(50))),
        ("a=m:12.5", VariantSpec("a", "m", Decimal("12.5"))),
        ("a=anthropic.claude-v2:1:50", VariantSpec("a", "anthropic.claude-v2:1", Decimal(50))),
        ("a=ollama/llama3:latest", VariantSpec("a", "ollama/llama3:latest")),
    ],
)
def test_parse_variant(text: str, expected: VariantSpec) -> None:
    assert parse_variant(text) == expected


@pytest.mark.parametrize(
    "text", ["a", "=m", "a=", "1a=m", "a=m:0", "a=m:101", "a=m x", "a=:50", "a b=m"]
)
def test_parse_variant_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_variant(text)


def test_parse_guardrail() -> None:
    guardrail = parse_guardrail("error_rate:decrease:2.5:binary")
    assert (guardrail.metric_name, guardrail.direction, guardrail.metric_type) == (
        "error_rate",
        "decrease",
        "binary",
    )
    assert guardrail.max_degradation == Decimal("2.5")
    for bad in ("x:decrease", "x:decrease:0", "x:decrease:5:ratio", "1x:decrease:5"):
        with pytest.raises(ValueError, match=r"."):
            parse_guardrail(bad)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        pytest.param(
            "kind: Flag\nflag_name: ai_x\nrollout_strategy: r\n# the budget\ncost_threshold: 5\n"
            "request_type: t\ntargeting:\n  rules: []\n",
            "kind: Flag\nflag_name: ai_x\nrollout_strategy: r\nexperiment: e\n# the budget\n"
            "cost_threshold: 5\nrequest_type: t\ntargeting:\n  rules: []\n",
            id="after-rollout-strategy-above-the-comment",
        ),
        pytest.param(
            "kind: Flag\ntags:\n  - a\n  - b\ntargeting:\n  rules: []\nenabled: true",
            "kind: Flag\ntags:\n  - a\n  - b\ntargeting:\n  rules: []\nenabled: true\n"
            "experiment: e\n",
            id="at-the-end",
        ),
        pytest.param(
            "kind: Flag\r\nenabled: true\r\nrequest_type: t\r\n",
            "kind: Flag\r\nenabled: true\r\nexperiment: e\r\nrequest_type: t\r\n",
            id="crlf",
        ),
    ],
)
def test_link_flag_puts_the_field_where_the_readme_does(flag: str, expected: str) -> None:
    document, problems = load_yaml(flag.encode())
    assert document is not None
    assert problems == []
    request = Request(experiment_id="e", flag="ai_x", variants=())
    link = link_flag(Source("flags.d/ai_x.yaml", document), request)
    assert link.after == expected
    assert link.before == flag
