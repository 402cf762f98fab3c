"""The CloudWatch alarms: the original system's two and one per cost threshold limit, made from
the repository's settings and manifests, accepted by cfn-lint and by CloudWatch (moto)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.api import ManualArgs, lint
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from reconciler.config import RepoConfig, load_config
from reconciler.deploy.alarms import alarm_problems, alarm_resources
from reconciler.diagnostics import Diagnostic, Severity
from reconciler.errors import ConfigError
from reconciler.loader import Tree, load_tree
from tests.conftest import REPO_ROOT
from tests.test_cli import invoke

TOPIC = {"Ref": "AlertsTopic"}
DAY = 86_400
ORIGINAL = ["DailyCostHighAlarm", "HighErrorRateAlarm"]
BUDGET = ["CostAiDailyBudgetThrottleAlarm", "CostAiDailyBudgetEmergencyAlarm"]


def made(root: Path) -> tuple[Tree, RepoConfig]:
    result = load_tree(root)
    assert [d for d in result.diagnostics if d.severity is Severity.ERROR] == []
    return result.tree, load_config(root)


def alarms_of(root: Path) -> dict[str, dict[str, Any]]:
    tree, config = made(root)
    return {k: v["Properties"] for k, v in alarm_resources(tree, config, TOPIC).items()}


def problems_of(root: Path) -> list[Diagnostic]:
    return alarm_problems(*made(root))


def write_threshold(root: Path, name: str, body: str) -> None:
    (root / "costs.d" / f"{name}.yaml").write_text(
        f"kind: CostThreshold\nthreshold_name: {name}\ndescription: d\nowner: o\n{body}"
    )


def spend_sum(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "Namespace": "BedrockAI/Costs",
        "MetricName": "Spend",
        "Statistic": "Sum",
        "Period": DAY,
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
    } | {k: properties[k] for k in ("Threshold", "ComparisonOperator")}


# -- the repository's own -----------------------------------------------------------------


def test_the_repository_gives_the_original_alarms_and_its_budgets() -> None:
    tree, config = made(REPO_ROOT)
    resources = alarm_resources(tree, config, TOPIC)

    assert list(resources) == ORIGINAL + BUDGET
    for logical_id, resource in resources.items():
        assert re.fullmatch(r"[A-Za-z0-9]+", logical_id)
        assert resource["Type"] == "AWS::CloudWatch::Alarm"
        properties = resource["Properties"]
        assert properties["AlarmActions"] == properties["OKActions"] == [TOPIC]
        assert properties["TreatMissingData"] == "notBreaching"
        assert "Dimensions" not in properties  # every one over all request types
    alarms = {k: v["Properties"] for k, v in resources.items()}
    names = [p["AlarmName"] for p in alarms.values()]
    assert names == [
        "BedrockAI-DailyCostHigh",
        "BedrockAI-HighErrorRate",
        "BedrockAI-Cost-ai_daily_budget-Throttle",
        "BedrockAI-Cost-ai_daily_budget-Emergency",
    ]
    for logical_id, threshold, comparison in (
        ("DailyCostHighAlarm", 50.0, "GreaterThanThreshold"),
        ("CostAiDailyBudgetThrottleAlarm", 100.0, "GreaterThanOrEqualToThreshold"),
        ("CostAiDailyBudgetEmergencyAlarm", 500.0, "GreaterThanOrEqualToThreshold"),
    ):
        properties = alarms[logical_id]
        assert (properties["Threshold"], properties["ComparisonOperator"]) == (
            threshold,
            comparison,
        )
        assert {k: properties[k] for k in spend_sum(properties)} == spend_sum(properties)
    assert alarm_problems(tree, config) == []


def test_the_error_rate_alarm_divides_the_exact_counts() -> None:
    alarm = alarms_of(REPO_ROOT)["HighErrorRateAlarm"]

    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (10.0, "GreaterThanThreshold")
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (2, 2)
    errors, outcomes, rate = alarm["Metrics"]
    for query, metric in ((errors, "ErrorCount"), (outcomes, "OutcomeCount")):
        assert query["MetricStat"] == {
            "Metric": {"Namespace": "BedrockAI/Operations", "MetricName": metric},
            "Period": 300,
            "Stat": "Sum",
        }
        assert query["ReturnData"] is False
    assert rate["Expression"] == "IF(outcomes >= 1, 100 * FILL(errors, 0) / outcomes, 0)"
    assert rate["ReturnData"] is True
    assert "2 of 2 periods of 5 minutes" in alarm["AlarmDescription"]


def test_descriptions_say_what_the_alarm_sums_and_what_to_do() -> None:
    alarms = alarms_of(REPO_ROOT)

    throttle = alarms["CostAiDailyBudgetThrottleAlarm"]["AlarmDescription"]
    emergency = alarms["CostAiDailyBudgetEmergencyAlarm"]["AlarmDescription"]
    for text in (throttle, emergency):
        assert "costs.d/ai_daily_budget.yaml" in text
        assert "last 24 hours" in text
        assert "not the calendar day in UTC that the cost guard counts" in text
    assert "$100.00, the throttle amount" in throttle
    assert "$500.00, the emergency amount" in emergency
    assert 'breakglass shutdown --all --reason "..."' in emergency
    assert "$50.00" in alarms["DailyCostHighAlarm"]["AlarmDescription"]


# -- thresholds of request types ----------------------------------------------------------


def test_a_threshold_on_two_request_types_sums_both(example_tree: Path) -> None:
    scope = "applies_to:\n  request_types: [vc_analysis, chat]\nemergency:\n  amount_usd: 20.5\n"
    write_threshold(example_tree, "vc_chat_budget", scope)

    alarm = alarms_of(example_tree)["CostVcChatBudgetEmergencyAlarm"]

    assert alarm["AlarmName"] == "BedrockAI-Cost-vc_chat_budget-Emergency"
    assert alarm["Threshold"] == 20.5
    *series, total = alarm["Metrics"]
    assert [q["MetricStat"]["Metric"]["Dimensions"] for q in series] == [
        [{"Name": "RequestType", "Value": "chat"}],
        [{"Name": "RequestType", "Value": "vc_analysis"}],
    ]
    for query in series:
        assert query["MetricStat"]["Metric"]["MetricName"] == "Spend"
        assert (query["MetricStat"]["Period"], query["MetricStat"]["Stat"]) == (DAY, "Sum")
        assert query["ReturnData"] is False
    assert total == {
        "Id": "spend",
        "Expression": "SUM([FILL(m0, 0), FILL(m1, 0)])",
        "Label": "Spend (USD)",
        "ReturnData": True,
    }
    assert "Namespace" not in alarm  # all in the metrics
    assert "Period" not in alarm
    assert "AI spend of chat, vc_analysis reached $20.50" in alarm["AlarmDescription"]
    assert "--flag NAME" in alarm["AlarmDescription"]
    assert "CostVcChatBudgetThrottleAlarm" not in alarms_of(example_tree)  # no throttle set


def test_a_threshold_on_a_flag_sums_the_flags_request_type(example_tree: Path) -> None:
    scope = "applies_to:\n  flags: [vc_bedrock_live]\nthrottle:\n  amount_usd: 7\n"
    write_threshold(example_tree, "vc_live_budget", scope)

    alarm = alarms_of(example_tree)["CostVcLiveBudgetThrottleAlarm"]

    [series, total] = alarm["Metrics"]
    assert series["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "RequestType", "Value": "vc_analysis"}  # the flag's request_type
    ]
    assert total["Expression"] == "SUM([FILL(m0, 0)])"
    assert alarm["Threshold"] == 7.0


def test_more_request_types_than_an_alarm_can_sum_is_a_warning(example_tree: Path) -> None:
    types = ", ".join(f"type_{n:02d}" for n in range(11))
    scope = f"applies_to:\n  request_types: [{types}]\nemergency:\n  amount_usd: 10\n"
    write_threshold(example_tree, "ai_wide_budget", scope)

    assert not [k for k in alarms_of(example_tree) if k.startswith("CostAiWide")]
    [problem] = problems_of(example_tree)
    assert (problem.path, problem.field, problem.severity) == (
        "costs.d/ai_wide_budget.yaml",
        ("applies_to",),
        Severity.WARNING,
    )
    assert problem.position.line == 5
    assert "11 request types; an alarm sums at most 10 metrics" in problem.message


def test_ten_request_types_are_summed(example_tree: Path) -> None:
    types = ", ".join(f"type_{n:02d}" for n in range(10))
    scope = f"applies_to:\n  request_types: [{types}]\nemergency:\n  amount_usd: 10\n"
    write_threshold(example_tree, "ai_wide_budget", scope)

    alarm = alarms_of(example_tree)["CostAiWideBudgetEmergencyAlarm"]
    assert len(alarm["Metrics"]) == 11
    assert problems_of(example_tree) == []


# -- what cannot be alarmed on ------------------------------------------------------------


def test_a_monthly_threshold_has_no_alarm_and_a_warning(example_tree: Path) -> None:
    write_threshold(
        example_tree,
        "ai_monthly_budget",
        "period: monthly\napplies_to: all\nemergency:\n  amount_usd: 3000\n",
    )

    assert list(alarms_of(example_tree)) == ORIGINAL + BUDGET
    [problem] = problems_of(example_tree)
    assert (problem.path, problem.position.line, problem.field) == (
        "costs.d/ai_monthly_budget.yaml",
        5,
        ("period",),
    )
    assert problem.severity is Severity.WARNING
    assert problem.rule == "alarms"
    assert problem.message.startswith("no CloudWatch alarm: CloudWatch cannot sum a calendar month")
    assert "BedrockAI-DailyCostHigh still watches all AI spend" in problem.message


def test_a_disabled_threshold_has_neither_alarm_nor_warning(example_tree: Path) -> None:
    write_threshold(
        example_tree,
        "ai_monthly_budget",
        "period: monthly\napplies_to: all\nemergency:\n  amount_usd: 3000\nenabled: false\n",
    )
    assert list(alarms_of(example_tree)) == ORIGINAL + BUDGET
    assert problems_of(example_tree) == []


def test_a_daily_cost_alarm_after_the_shutdown_is_a_warning(example_tree: Path) -> None:
    (example_tree / "reconciler.toml").write_text('[alarms.daily_cost]\nthreshold_usd = "500"\n')

    [problem] = problems_of(example_tree)

    assert (problem.path, problem.field) == (
        "costs.d/ai_daily_budget.yaml",
        ("emergency", "amount_usd"),
    )
    assert problem.position.line == 14
    assert "BedrockAI-DailyCostHigh fires above $500.00" in problem.message
    assert "shuts every AI feature down at $500.00" in problem.message
    (example_tree / "reconciler.toml").write_text('[alarms.daily_cost]\nthreshold_usd = "499.99"\n')
    assert problems_of(example_tree) == []


def test_alarms_can_be_turned_off(example_tree: Path) -> None:
    write_threshold(
        example_tree,
        "ai_monthly_budget",
        "period: monthly\napplies_to: all\nthrottle:\n  amount_usd: 9\n",
    )
    (example_tree / "reconciler.toml").write_text(
        "[alarms]\ncost_thresholds = false\n[alarms.daily_cost]\nenabled = false\n"
        "[alarms.error_rate]\nenabled = false\n"
    )
    assert alarms_of(example_tree) == {}
    assert problems_of(example_tree) == []  # no alarm wanted, none missing


# -- settings -----------------------------------------------------------------------------


def test_settings_change_the_original_alarms(example_tree: Path) -> None:
    (example_tree / "reconciler.toml").write_text(
        "[alarms.daily_cost]\nthreshold_usd = 75.10\n"
        "[alarms.error_rate]\nthreshold_percent = 2.5\nperiod_seconds = 60\n"
        "evaluation_periods = 5\ndatapoints_to_alarm = 3\nmin_outcomes = 20\n"
    )
    alarms = alarms_of(example_tree)

    assert alarms["DailyCostHighAlarm"]["Threshold"] == 75.1
    assert "$75.10" in alarms["DailyCostHighAlarm"]["AlarmDescription"]
    rate = alarms["HighErrorRateAlarm"]
    assert (rate["Threshold"], rate["EvaluationPeriods"], rate["DatapointsToAlarm"]) == (2.5, 5, 3)
    assert {q["MetricStat"]["Period"] for q in rate["Metrics"][:2]} == {60}
    assert rate["Metrics"][2]["Expression"].startswith("IF(outcomes >= 20, ")
    assert "fewer than 20 calls does not count" in rate["AlarmDescription"]


def test_amounts_are_read_exactly(example_tree: Path) -> None:
    (example_tree / "reconciler.toml").write_text("[alarms.daily_cost]\nthreshold_usd = 0.10\n")
    assert load_config(example_tree).alarms.daily_cost.threshold_usd == Decimal("0.10")
    assert RepoConfig().alarms.daily_cost.threshold_usd == Decimal(50)
    assert RepoConfig().alarms.error_rate.threshold_percent == Decimal(10)


@given(st.integers(min_value=1, max_value=10**14 - 1))
def test_a_cent_amount_is_exact_in_the_double(cents: int) -> None:
    """What the alarms rely on: the double nearest to an amount of whole cents (14 digits, as
    the settings allow) reads back as that amount."""
    amount = Decimal(cents) / 100
    assert Decimal(repr(float(amount))) == amount


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        (
            '[alarms.daily_cost]\nthreshold_usd = "fifty"\n',
            2,
            "daily_cost.threshold_usd",
            "decimal",
        ),
        (
            "[alarms.daily_cost]\nthreshold_usd = 50.005\n",
            2,
            "daily_cost.threshold_usd",
            "2 decimal",
        ),
        (
            "[alarms.daily_cost]\nthreshold_usd = 0\n",
            2,
            "daily_cost.threshold_usd",
            "greater than 0",
        ),
        ("[alarms.daily_cost]\nthreshold_usd = true\n", 2, "daily_cost.threshold_usd", "boolean"),
        ("[alarms.daily_cost]\nenabled = 1\n", 2, "daily_cost.enabled", "boolean"),
        (  # the key of its own table, not the first of that name
            "[alarms.daily_cost]\nenabled = true\n[alarms.error_rate]\nenabled = 1\n",
            4,
            "error_rate.enabled",
            "boolean",
        ),
        (
            "[alarms.error_rate]\nthreshold_percent = 100\n",
            2,
            "error_rate.threshold_percent",
            "less",
        ),
        ("[alarms.error_rate]\n\nperiod_seconds = 90\n", 3, "error_rate.period_seconds", "60"),
        (
            "[alarms.error_rate]\nperiod_seconds = '300'\n",
            2,
            "error_rate.period_seconds",
            "integer",
        ),
        (
            "[alarms.error_rate]\nevaluation_periods = 1\n",
            1,
            "error_rate.datapoints_to_alarm",
            "more",
        ),
        (
            "[alarms.error_rate]\nperiod_seconds = 600\nevaluation_periods = 145\n",
            3,
            "error_rate.evaluation_periods",
            "86,400 s with periods under an hour",
        ),
        ("[alarms]\ncost_thresholds = 'yes'\n", 2, "cost_thresholds", "boolean"),
        ("[validate]\nnaming = 'off'\n[alarms]\nsurprise = 1\n", 4, "surprise", "Extra inputs"),
    ],
)
def test_bad_settings_are_refused_with_file_line_and_field(
    example_tree: Path, text: str, line: int, field: str, says: str
) -> None:
    (example_tree / "reconciler.toml").write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(example_tree)
    assert str(refused.value).startswith(f"reconciler.toml:{line}: alarms.{field}: ")
    assert says in str(refused.value)

    code, _, err = invoke("--validate", str(example_tree))
    assert code == 1
    assert f"reconciler.toml:{line}: alarms.{field}: " in err


def test_the_repository_settings_are_the_originals() -> None:
    settings = load_config(REPO_ROOT).alarms
    assert settings.daily_cost.threshold_usd == Decimal(50)
    assert settings.error_rate.threshold_percent == Decimal(10)
    assert (settings.error_rate.period_seconds, settings.error_rate.evaluation_periods) == (300, 2)
    assert settings.cost_thresholds


# -- accepted by cfn-lint and CloudWatch --------------------------------------------------


def template(resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {"AlertsTopic": {"Type": "AWS::SNS::Topic"}, **resources},
    }


def many_alarms(root: Path) -> dict[str, dict[str, Any]]:
    """The repository's alarms and some of every other shape."""
    write_threshold(
        root,
        "vc_chat_budget",
        "applies_to:\n  request_types: [vc_analysis, chat]\nthrottle:\n  amount_usd: 12.34\n"
        "emergency:\n  amount_usd: 56.78\ntime_zone: Europe/Berlin\n",
    )
    write_threshold(
        root,
        "vc_live_budget",
        "applies_to:\n  flags: [vc_bedrock_live]\nthrottle:\n  amount_usd: 1\n",
    )
    tree, config = made(root)
    return alarm_resources(tree, config, TOPIC)


def test_cfn_lint_accepts_the_alarms(example_tree: Path) -> None:
    resources = many_alarms(example_tree)
    assert len(resources) == 7
    text = json.dumps(template(resources), indent=2)

    found = lint(text, config=ManualArgs(regions=["eu-central-1", "us-east-1"]))

    assert [str(m) for m in found] == []


def test_cfn_lint_would_refuse_a_broken_alarm(example_tree: Path) -> None:
    """The lint above can fail: the same alarms with one property wrong are refused."""
    resources = many_alarms(example_tree)
    resources["DailyCostHighAlarm"]["Properties"]["ComparisonOperator"] = "Above"
    found = lint(json.dumps(template(resources)), config=ManualArgs(regions=["eu-central-1"]))
    assert [m.rule.id for m in found] == ["E3030"]
    assert "'Above' is not one of" in str(found[0])


def test_cloudwatch_accepts_every_alarm(example_tree: Path) -> None:
    resources = many_alarms(example_tree)
    with mock_aws():
        sns = boto3.client("sns", region_name="eu-central-1")
        topic = sns.create_topic(Name="alerts")["TopicArn"]
        cloudwatch = boto3.client("cloudwatch", region_name="eu-central-1")
        for resource in resources.values():
            properties = {**resource["Properties"], "AlarmActions": [topic], "OKActions": [topic]}
            cloudwatch.put_metric_alarm(**properties)

        stored = cloudwatch.describe_alarms()["MetricAlarms"]
    by_name = {a["AlarmName"]: a for a in stored}
    assert set(by_name) == {r["Properties"]["AlarmName"] for r in resources.values()}
    for resource in resources.values():
        properties = resource["Properties"]
        alarm = by_name[properties["AlarmName"]]
        assert alarm["Threshold"] == properties["Threshold"]
        assert alarm["AlarmActions"] == alarm["OKActions"] == [topic]
        assert len(alarm["AlarmDescription"]) <= 1024
        if "Metrics" in properties:
            assert [m["Id"] for m in alarm["Metrics"]] == [m["Id"] for m in properties["Metrics"]]
        else:
            assert (alarm["MetricName"], alarm["Period"]) == ("Spend", DAY)


def test_validate_warns_of_a_threshold_no_alarm_can_watch(example_tree: Path) -> None:
    from tests.test_cli import invoke

    path = example_tree / "costs.d" / "ai_daily_budget.yaml"
    path.write_text(path.read_text().replace("period: daily", "period: monthly"))
    code, out, err = invoke("--validate", str(example_tree))
    assert code == 0, "a warning, not an error"
    [line] = [line for line in (out + err).splitlines() if "no CloudWatch alarm" in line]
    assert line.startswith("costs.d/ai_daily_budget.yaml:8:")
    assert "CloudWatch cannot sum a calendar month" in line
