"""The deployment template: committed as generated, following the code, linted by cfn-lint.

The resources moto's CloudFormation does not model (the CloudWatch alarms, the API token's
secret, GitHub's OIDC provider, the API stage, the e-mail subscription; TTL and point-in-time
recovery on the tables) are checked here: present, with the settings they need, referenced by
the resources that use them, and accepted by cfn-lint.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import ManualArgs, lint_file

from reconciler.config import RepoConfig, StoreSettings, load_config
from reconciler.deploy.functions import API_HANDLER, CONTROLLER_HANDLER
from reconciler.deploy.gateway import ROUTES
from reconciler.deploy.roles import GITHUB_SUBJECTS, GITHUB_VARIABLES
from reconciler.deploy.template import OUTPUT_VARIABLES, REGENERATE, RULE, generate
from reconciler.diagnostics import Severity
from reconciler.state.dynamodb import TABLE_KEYS, TTL_ATTRIBUTE, TTL_TABLES, table_indexes
from reconciler.state.records import table_names
from reconciler.validation import validate, validate_manifests
from tests.conftest import REPO_ROOT

COMMITTED = REPO_ROOT / "deploy" / "template.yaml"
TREE_PARTS = ("flags.d", "experiments.d", "rollouts.d", "costs.d", "reconciler.toml")


def generated(root: Path = REPO_ROOT, config: RepoConfig | None = None) -> str:
    config = config or load_config(root)
    result = validate_manifests(root, config)
    assert result.ok
    return generate(result.tree, config)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMMITTED.read_text())
    return loaded


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = template["Resources"]
    return found


def of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: r for k, r in resources.items() if r["Type"] == kind}


def test_the_committed_template_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == generated(), f"regenerate it: {REGENERATE}"


def test_the_template_does_not_depend_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURE_FLAGS_TABLE", "someone-elses-flags")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert generated() == COMMITTED.read_text()


def test_cfn_lint_passes() -> None:
    matches = lint_file(COMMITTED, ManualArgs(regions=["eu-central-1", "us-east-1"]))
    assert [str(m) for m in matches] == []


def test_every_table_of_the_code_with_its_key_billing_recovery_and_ttl(
    resources: dict[str, Any],
) -> None:
    tables = of_type(resources, "AWS::DynamoDB::Table")
    by_name = {t["Properties"]["TableName"]: t for t in tables.values()}
    assert set(by_name) == set(table_names({}).values())
    for variable, name in table_names({}).items():
        table = by_name[name]
        properties = table["Properties"]
        assert properties["KeySchema"] == TABLE_KEYS[variable]
        indexes = table_indexes(variable)
        keys = [*TABLE_KEYS[variable], *(k for i in indexes for k in i["KeySchema"])]
        assert properties["AttributeDefinitions"] == [
            {"AttributeName": name, "AttributeType": "S"}
            for name in dict.fromkeys(k["AttributeName"] for k in keys)
        ]
        assert properties["BillingMode"] == "PAY_PER_REQUEST"
        assert properties["PointInTimeRecoverySpecification"] == {
            "PointInTimeRecoveryEnabled": True
        }
        ttl = properties.get("TimeToLiveSpecification")
        if variable in TTL_TABLES:
            assert ttl == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
        else:
            assert ttl is None, f"{name} keeps its items"
        assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")
        # Only the audit table's newest entries need an index (of the entries' months).
        assert properties.get("GlobalSecondaryIndexes", []) == indexes
        assert bool(indexes) == (variable == "AUDIT_TABLE")


def test_table_names_follow_reconciler_toml() -> None:
    config = RepoConfig(store=StoreSettings(tables={"FEATURE_FLAGS_TABLE": "prod-flags"}))
    resources = yaml.safe_load(generated(config=config))["Resources"]
    assert resources["FeatureFlagsTable"]["Properties"]["TableName"] == "prod-flags"
    assert resources["AuditTable"]["Properties"]["TableName"] == "bedrock-flag-audit"


def test_both_functions_get_every_table_and_their_settings(resources: dict[str, Any]) -> None:
    functions = of_type(resources, "AWS::Lambda::Function")
    assert set(functions) == {"ApiFunction", "ControllerFunction"}
    logical = {
        t["Properties"]["TableName"]: k
        for k, t in of_type(resources, "AWS::DynamoDB::Table").items()
    }
    tables = {variable: {"Ref": logical[name]} for variable, name in table_names({}).items()}
    for function in functions.values():
        properties = function["Properties"]
        variables = properties["Environment"]["Variables"]
        assert {v: variables[v] for v in tables} == tables
        assert variables["RECONCILER_STORE"] == "dynamodb"
        assert (properties["Runtime"], properties["Architectures"]) == ("python3.11", ["x86_64"])
        assert properties["Code"] == {
            "S3Bucket": {"Ref": "ArtifactBucket"},
            "S3Key": {"Ref": "ArtifactKey"},
        }
    api = functions["ApiFunction"]["Properties"]
    assert (api["Handler"], api["Timeout"]) == (API_HANDLER, 29)
    assert api["Environment"]["Variables"]["RECONCILER_API_AUTH"] == {"Ref": "ApiAuth"}
    assert api["Environment"]["Variables"]["RECONCILER_API_TOKEN_SECRET"] == {
        "Fn::If": ["TokenAuth", {"Ref": "ApiTokenSecret"}, {"Ref": "AWS::NoValue"}]
    }
    assert api["Environment"]["Variables"]["RECONCILER_REPOSITORY_URL"] == {
        "Fn::If": [
            "HasGitHub",
            {"Fn::Sub": "https://github.com/${GitHubRepository}"},
            {"Ref": "AWS::NoValue"},
        ]
    }, "the dashboard links the manifests in the workflows' repository"
    tick = functions["ControllerFunction"]["Properties"]
    assert (tick["Handler"], tick["Timeout"]) == (CONTROLLER_HANDLER, 55)
    assert tick["Environment"]["Variables"]["COST_ALERTS_TOPIC_ARN"] == {"Ref": "AlertsTopic"}


@pytest.mark.parametrize("handler", [API_HANDLER, CONTROLLER_HANDLER])
def test_the_handlers_are_functions_of_the_package(handler: str) -> None:
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_logs_are_kept_thirty_days(resources: dict[str, Any]) -> None:
    groups = of_type(resources, "AWS::Logs::LogGroup")
    assert {g["Properties"]["RetentionInDays"] for g in groups.values()} == {30}
    for function in ("ApiFunction", "ControllerFunction"):
        group = resources[function]["DependsOn"][0]
        name = groups[group]["Properties"]["LogGroupName"]["Fn::Sub"]
        assert name == "/aws/lambda/" + resources[function]["Properties"]["FunctionName"]["Fn::Sub"]


def test_the_controllers_run_every_minute(resources: dict[str, Any]) -> None:
    rule = resources["ControllerSchedule"]["Properties"]
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["ControllerFunction", "Arn"]}
    permission = resources["ControllerSchedulePermission"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["ControllerSchedule", "Arn"]}


def test_the_api_token_secret_is_made_and_read_in_token_mode_only(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    secret = resources["ApiTokenSecret"]
    assert (secret["Type"], secret["Condition"]) == ("AWS::SecretsManager::Secret", "TokenAuth")
    assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32
    policy = resources["ApiTokenPolicy"]
    assert policy["Condition"] == "TokenAuth"
    assert policy["Properties"]["Roles"] == [{"Ref": "ApiFunctionRole"}]
    assert template["Outputs"]["ApiTokenCommand"]["Condition"] == "TokenAuth"
    assert "${ApiTokenSecret}" in template["Outputs"]["ApiTokenCommand"]["Value"]["Fn::Sub"]


def test_the_routes_the_stage_and_their_authorization(resources: dict[str, Any]) -> None:
    methods = of_type(resources, "AWS::ApiGateway::Method")
    assert len(methods) == len(ROUTES)
    by_path = {}
    for method in methods.values():
        properties = method["Properties"]
        path = resources[properties["ResourceId"]["Ref"]]["Properties"]["PathPart"]
        by_path[(properties["HttpMethod"], path)] = properties["AuthorizationType"]
        assert properties["Integration"]["Type"] == "AWS_PROXY"
    assert by_path.pop(("GET", "health")) == "NONE"  # load balancers' liveness checks
    assert len(by_path) == len(ROUTES) - 1
    for authorization in by_path.values():
        assert authorization == {"Fn::If": ["IamAuth", "AWS_IAM", "NONE"]}
    deployments = of_type(resources, "AWS::ApiGateway::Deployment")
    assert {d["Condition"] for d in deployments.values()} == {"TokenAuth", "IamAuth"}
    for deployment in deployments.values():
        assert sorted(deployment["DependsOn"]) == sorted(methods)
    stage = resources["ApiStage"]
    assert (stage["Type"], stage["Properties"]["StageName"]) == ("AWS::ApiGateway::Stage", "v1")
    token, iam = sorted(deployments, key=lambda d: deployments[d]["Condition"] != "TokenAuth")
    assert stage["Properties"]["DeploymentId"] == {
        "Fn::If": ["TokenAuth", {"Ref": token}, {"Ref": iam}]
    }
    assert stage["Properties"]["MethodSettings"][0]["ThrottlingRateLimit"] > 0


def test_github_roles_trust_the_repository_through_the_oidc_provider(
    resources: dict[str, Any],
) -> None:
    provider = resources["GitHubOidcProvider"]
    assert (provider["Type"], provider["Condition"]) == (
        "AWS::IAM::OIDCProvider",
        "CreateOidcProvider",
    )
    assert provider["Properties"]["Url"] == "https://token.actions.githubusercontent.com"
    assert provider["Properties"]["ClientIdList"] == ["sts.amazonaws.com"]
    for role, subject in GITHUB_SUBJECTS.items():
        [trust] = resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert resources[role]["Condition"] == "HasGitHub"
        assert trust["Principal"]["Federated"] == {
            "Fn::If": [
                "CreateOidcProvider",
                {"Ref": "GitHubOidcProvider"},
                {"Ref": "GitHubOidcProviderArn"},
            ]
        }
        condition = trust["Condition"]["StringEquals"]
        assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
        assert condition["token.actions.githubusercontent.com:sub"] == {
            "Fn::Sub": f"repo:${{GitHubRepository}}:{subject}"
        }


def _workflow_roles() -> dict[str, str]:
    """Each role variable a workflow job assumes, and the subject claim that job carries."""
    found: dict[str, str] = {}
    for path in sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml")):
        workflow = yaml.safe_load(path.read_text())
        triggers = workflow.get(True, workflow.get("on"))  # YAML 1.1 reads `on` as True
        for job in workflow["jobs"].values():
            text = yaml.safe_dump(job)
            for variable in GITHUB_VARIABLES.values():
                if f"vars.{variable}" not in text:
                    continue
                if "environment" in job:
                    subject = f"environment:{job['environment']}"
                elif "pull_request" in triggers:
                    subject = "pull_request"
                else:
                    subject = "ref:refs/heads/main"
                assert found.setdefault(variable, subject) == subject, path.name
    return found


def test_the_workflows_roles_accept_the_jobs_that_assume_them() -> None:
    expected = {GITHUB_VARIABLES[role]: subject for role, subject in GITHUB_SUBJECTS.items()}
    used = _workflow_roles()
    assert used, "the workflows assume the roles"
    assert {v: expected[v] for v in used} == used


def test_every_variable_the_workflows_read_is_an_output(template: dict[str, Any]) -> None:
    text = "".join(p.read_text() for p in (REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    for variable in ("COST_ALERTS_TOPIC_ARN", *GITHUB_VARIABLES.values()):
        if f"vars.{variable}" in text:
            assert variable in OUTPUT_VARIABLES.values()
    for output in OUTPUT_VARIABLES:
        assert output in template["Outputs"]


def test_alarms_follow_the_manifests_and_alert_the_topic(resources: dict[str, Any]) -> None:
    alarms = of_type(resources, "AWS::CloudWatch::Alarm")
    names = {a["Properties"]["AlarmName"] for a in alarms.values() if "Fn::Sub" not in str(a)}
    assert {
        "BedrockAI-DailyCostHigh",
        "BedrockAI-HighErrorRate",
        "BedrockAI-Cost-ai_daily_budget-Throttle",
        "BedrockAI-Cost-ai_daily_budget-Emergency",
    } <= names
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertsTopic"}]
    not_running = resources["ControllerNotRunningAlarm"]["Properties"]
    assert (not_running["MetricName"], not_running["TreatMissingData"]) == (
        "Invocations",
        "breaching",
    )
    assert not_running["ComparisonOperator"] == "LessThanThreshold"
    errors = resources["ControllerErrorsAlarm"]["Properties"]
    assert (errors["MetricName"], errors["Threshold"]) == ("Errors", 1)
    assert errors["Dimensions"] == [
        {"Name": "FunctionName", "Value": {"Ref": "ControllerFunction"}}
    ]
    subscription = resources["AlertEmailSubscription"]
    assert (subscription["Condition"], subscription["Properties"]["Protocol"]) == (
        "HasAlertEmail",
        "email",
    )


def _copy_repository(target: Path) -> Path:
    for part in TREE_PARTS:
        source = REPO_ROOT / part
        if source.is_dir():
            shutil.copytree(source, target / part)
        else:
            shutil.copy(source, target / part)
    (target / "deploy").mkdir()
    shutil.copy(COMMITTED, target / "deploy" / "template.yaml")
    return target


def test_validate_names_a_template_the_manifests_no_longer_match(tmp_path: Path) -> None:
    root = _copy_repository(tmp_path)
    assert validate(root, load_config(root)).diagnostics == ()
    costs = root / "costs.d" / "ai_daily_budget.yaml"
    costs.write_text(costs.read_text().replace("amount_usd: 500", "amount_usd: 450"))
    [found] = validate(root, load_config(root)).diagnostics
    assert (found.path, found.rule, found.severity) == (
        "deploy/template.yaml",
        RULE,
        Severity.ERROR,
    )
    assert found.message.endswith(f"regenerate it: {REGENERATE}")
    assert "$450" in found.message
    committed = (root / "deploy" / "template.yaml").read_text().splitlines()
    assert "$500" in committed[found.position.line - 1]


def test_without_a_committed_template_validate_does_not_look(tmp_path: Path) -> None:
    root = _copy_repository(tmp_path)
    (root / "deploy" / "template.yaml").unlink()
    assert validate(root, load_config(root)).diagnostics == ()
