"""``reconcile-stack deploy|status|teardown`` against moto in this process, and the artifact.

moto's CloudFormation creates the tables, roles and policies, both Lambda functions, the
schedule, the topic and the REST API; it does not model ``AWS::CloudWatch::Alarm``,
``AWS::SecretsManager::Secret``, ``AWS::IAM::OIDCProvider``, ``AWS::ApiGateway::Stage`` or
``AWS::SNS::Subscription`` (it warns and skips them: exactly those warnings are ignored here),
nor TTL and point-in-time recovery on a table it creates, nor a stack's outputs when the stack
is made through a change set. Those are covered on the template itself
(tests/test_deploy_template.py: present, linted by cfn-lint, referenced correctly).
"""

from __future__ import annotations

import ast
import logging
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws

from reconciler.cli.boundary import run
from reconciler.cli.stack import stack
from reconciler.deploy.artifact import (
    PLATFORM,
    existing_artifact,
    pip_command,
    requirements,
    write_zip,
)
from reconciler.deploy.functions import API_HANDLER, CONTROLLER_HANDLER
from reconciler.deploy.tables import STACK_TAG
from reconciler.state.dynamodb import TABLE_KEYS, DynamoDBStore
from reconciler.state.records import table_names
from tests.conftest import REPO_ROOT

REGION = "eu-central-1"
STACK = "flags-test"
ACCOUNT = "123456789012"
BUCKET = f"{STACK}-artifacts-{ACCOUNT}-{REGION}"
OIDC = f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
NOT_MODELED = (
    r"Tried to parse AWS::(CloudWatch::Alarm|SecretsManager::Secret|IAM::OIDCProvider|"
    r"ApiGateway::Stage|SNS::Subscription) but it's not supported by moto's CloudFormation"
)
TABLES = table_names({})


@pytest.fixture
def aws() -> Iterator[None]:
    """moto, without its warnings and log lines about the types it does not model."""
    logger = logging.getLogger("moto")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with mock_aws(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NOT_MODELED, category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


@pytest.fixture
def small_zip(tmp_path: Path) -> Path:
    path = tmp_path / "small.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("reconciler/__init__.py", "")
    return path


def client(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


def invoke(*args: str) -> tuple[int, str]:
    """``reconcile-stack`` through the error boundary, as the console script runs it (with
    this test's stack and region, but for ``template``)."""
    where = [] if args[0] == "template" else ["--stack-name", STACK, "--region", REGION]
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        code = run(stack, [*args, *where])
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode() + err.getvalue().decode()


def deploy(artifact: Path, *extra: str) -> tuple[int, str]:
    return invoke("deploy", "--artifact", str(artifact), "--root", str(REPO_ROOT), *extra)


def resources(kind: str) -> dict[str, str]:
    found = client("cloudformation").list_stack_resources(StackName=STACK)
    return {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in found["StackResourceSummaries"]
        if r["ResourceType"] == kind
    }


def test_deploy_creates_every_resource_and_a_second_deploy_changes_nothing(
    aws: None, small_zip: Path
) -> None:
    code, out = deploy(small_zip)
    assert code == 0, out
    assert f"Created the artifact bucket {BUCKET}" in out
    assert "+ Add FeatureFlagsTable (AWS::DynamoDB::Table)" in out
    assert f"Stack {STACK}: created" in out

    dynamodb = client("dynamodb")
    for variable, keys in TABLE_KEYS.items():
        table = dynamodb.describe_table(TableName=TABLES[variable])["Table"]
        assert table["KeySchema"] == keys
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        tags = dynamodb.list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"]
        assert {"Key": STACK_TAG, "Value": STACK} in tags

    iam = client("iam")
    roles = resources("AWS::IAM::Role")
    assert set(roles) == {"ApiFunctionRole", "ControllerFunctionRole"}  # no GitHub roles
    policy = iam.get_role_policy(RoleName=roles["ControllerFunctionRole"], PolicyName="controller")
    document = policy["PolicyDocument"]
    if isinstance(document, str):  # moto keeps a CloudFormation role's policy as a dict's repr
        document = ast.literal_eval(document)
    actions = {a for s in document["Statement"] for a in s["Action"]}
    assert {"dynamodb:Scan", "sns:Publish", "cloudwatch:GetMetricData"} <= actions
    assert "dynamodb:DeleteItem" not in actions
    [runtime] = resources("AWS::IAM::ManagedPolicy").values()
    assert iam.get_policy(PolicyArn=runtime)["Policy"]["Arn"] == runtime

    functions = client("lambda")
    topic = next(
        t["TopicArn"]
        for t in client("sns").list_topics()["Topics"]
        if t["TopicArn"].endswith(f":{STACK}-alerts")
    )
    for name, handler, timeout in (
        (f"{STACK}-api", API_HANDLER, 29),
        (f"{STACK}-controller-tick", CONTROLLER_HANDLER, 55),
    ):
        configuration = functions.get_function(FunctionName=name)["Configuration"]
        assert (configuration["Handler"], configuration["Runtime"]) == (handler, "python3.11")
        assert configuration["Timeout"] == timeout
        variables = configuration["Environment"]["Variables"]
        assert {v: variables[v] for v in TABLES} == TABLES
        assert variables["RECONCILER_STORE"] == "dynamodb"
    api_env = functions.get_function(FunctionName=f"{STACK}-api")["Configuration"]["Environment"]
    assert api_env["Variables"]["RECONCILER_API_AUTH"] == "token"
    tick = functions.get_function(FunctionName=f"{STACK}-controller-tick")["Configuration"]
    assert tick["Environment"]["Variables"]["COST_ALERTS_TOPIC_ARN"] == topic

    events = client("events")
    [rule] = resources("AWS::Events::Rule").values()
    assert events.describe_rule(Name=rule)["ScheduleExpression"] == "rate(1 minute)"
    [target] = events.list_targets_by_rule(Rule=rule)["Targets"]
    assert target["Arn"] == tick["FunctionArn"]

    gateway = client("apigateway")
    [api] = [a for a in gateway.get_rest_apis()["items"] if a["name"] == f"{STACK}-api"]
    paths = {r["path"]: r for r in gateway.get_resources(restApiId=api["id"])["items"]}
    assert set(paths) == {
        "/",
        "/health",
        "/health/detail",
        "/feature-flags",
        "/feature-flags/status",
        "/emergency-shutdown",
        "/emergency-restore",
        "/dashboard",
        "/dashboard/sign-in",
        "/dashboard/audit",
        "/dashboard/shutdown",
        "/dashboard/restore",
    }
    for path, method in (("/health", "GET"), ("/emergency-shutdown", "POST")):
        found = gateway.get_method(
            restApiId=api["id"], resourceId=paths[path]["id"], httpMethod=method
        )
        assert found["authorizationType"] == "NONE"  # token mode: the application checks
        assert found["methodIntegration"]["type"] == "AWS_PROXY"
        assert f"function:{STACK}-api/invocations" in found["methodIntegration"]["uri"]
    assert gateway.get_deployments(restApiId=api["id"])["items"]

    s3 = client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert f"lambda/{existing_artifact(small_zip).sha256}.zip" in keys
    assert any(re.fullmatch(r"templates/[0-9a-f]{64}\.yaml", k) for k in keys)
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values())

    cfn = client("cloudformation")
    events_before = cfn.describe_stack_events(StackName=STACK)["StackEvents"]
    change_sets = cfn.list_change_sets(StackName=STACK)["Summaries"]
    code, out = deploy(small_zip)
    assert (code, out) == (0, f"Stack {STACK}: nothing to change\n")
    assert cfn.describe_stack_events(StackName=STACK)["StackEvents"] == events_before
    assert cfn.list_change_sets(StackName=STACK)["Summaries"] == change_sets


def test_a_second_deploy_with_github_roles_updates_the_stack(aws: None, small_zip: Path) -> None:
    assert deploy(small_zip)[0] == 0
    code, out = deploy(
        small_zip, "--github-repository", "acme/flags", "--github-oidc-provider-arn", OIDC
    )
    assert code == 0, out
    assert f"Updating stack {STACK} in {REGION}:" in out
    assert f"Stack {STACK}: updated" in out
    cfn = client("cloudformation")
    assert cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"] == "UPDATE_COMPLETE"
    roles = resources("AWS::IAM::Role")
    iam = client("iam")
    subjects = {}
    for logical in ("GitHubPlanRole", "GitHubApplyRole", "GitHubBreakglassRole"):
        trust = iam.get_role(RoleName=roles[logical])["Role"]["AssumeRolePolicyDocument"]
        [statement] = trust["Statement"]
        assert statement["Principal"] == {"Federated": OIDC}
        condition = statement["Condition"]["StringEquals"]
        subjects[logical] = condition["token.actions.githubusercontent.com:sub"]
    assert subjects == {
        "GitHubPlanRole": "repo:acme/flags:pull_request",
        "GitHubApplyRole": "repo:acme/flags:environment:production",
        "GitHubBreakglassRole": "repo:acme/flags:environment:breakglass",
    }
    policy = iam.get_role_policy(RoleName=roles["GitHubPlanRole"], PolicyName="reconciler-plan")
    document = policy["PolicyDocument"]
    if isinstance(document, str):
        document = ast.literal_eval(document)
    actions = {a for s in document["Statement"] for a in s["Action"]}
    assert actions == {"dynamodb:DescribeTable", "dynamodb:Scan", "dynamodb:GetItem"}


def test_iam_mode_puts_aws_iam_on_every_route_but_health(aws: None, small_zip: Path) -> None:
    code, out = deploy(small_zip, "--api-auth", "iam")
    assert code == 0, out
    gateway = client("apigateway")
    [api] = [a for a in gateway.get_rest_apis()["items"] if a["name"] == f"{STACK}-api"]
    paths = {r["path"]: r["id"] for r in gateway.get_resources(restApiId=api["id"])["items"]}
    for path, method, authorization in (
        ("/health", "GET", "NONE"),  # load balancers' liveness checks, always
        ("/health/detail", "GET", "AWS_IAM"),
        ("/feature-flags/status", "GET", "AWS_IAM"),
        ("/emergency-shutdown", "POST", "AWS_IAM"),
        ("/emergency-restore", "POST", "AWS_IAM"),
    ):
        found = gateway.get_method(restApiId=api["id"], resourceId=paths[path], httpMethod=method)
        assert found["authorizationType"] == authorization, path
    variables = client("lambda").get_function(FunctionName=f"{STACK}-api")["Configuration"]
    assert variables["Environment"]["Variables"]["RECONCILER_API_AUTH"] == "iam"
    assert "RECONCILER_API_TOKEN_SECRET" not in variables["Environment"]["Variables"]
    assert "ApiTokenPolicy" not in resources("AWS::IAM::Policy")


def test_teardown_keeps_the_tables_unless_asked(aws: None, small_zip: Path) -> None:
    assert deploy(small_zip)[0] == 0
    code, out = invoke("teardown", "--root", str(REPO_ROOT))  # no --yes, no answer
    assert code == 130
    assert client("cloudformation").describe_stacks(StackName=STACK)["Stacks"]

    code, out = invoke("teardown", "--yes", "--root", str(REPO_ROOT))
    assert code == 0, out
    assert f"Deleted stack {STACK}" in out
    assert f"Kept the tables (their data stays): {', '.join(sorted(TABLES.values()))}" in out
    assert f"Removed the artifact bucket {BUCKET}" in out
    stacks = client("cloudformation").list_stacks(StackStatusFilter=["CREATE_COMPLETE"])
    assert not stacks["StackSummaries"]
    assert set(client("dynamodb").list_tables()["TableNames"]) == set(TABLES.values())
    assert BUCKET not in {b["Name"] for b in client("s3").list_buckets()["Buckets"]}

    code, out = deploy(small_zip)  # the kept tables are named, with what to do
    assert code == 1
    assert f"kept by an earlier teardown of stack {STACK}" in out
    assert "--delete-tables" in out

    code, out = invoke("teardown", "--yes", "--delete-tables", "--root", str(REPO_ROOT))
    assert code == 0, out
    assert f"No stack {STACK} in {REGION}" in out
    assert client("dynamodb").list_tables()["TableNames"] == []


def test_teardown_with_delete_tables_removes_everything(aws: None, small_zip: Path) -> None:
    assert deploy(small_zip)[0] == 0
    client("dynamodb").create_table(  # a table of someone else's: never deleted
        TableName="other",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    code, out = invoke("teardown", "--yes", "--delete-tables", "--root", str(REPO_ROOT))
    assert code == 0, out
    assert f"Deleted table {TABLES['FEATURE_FLAGS_TABLE']}" in out
    assert client("dynamodb").list_tables()["TableNames"] == ["other"]


def test_tables_made_by_bootstrap_are_refused_before_anything_is_created(
    aws: None, small_zip: Path
) -> None:
    store = DynamoDBStore(region=REGION, tables={}, sleep=lambda _: None)
    store.bootstrap()
    store.close()
    code, out = deploy(small_zip)
    assert code == 1
    assert "nothing was created" in out
    assert "made outside the stack (reconcile --bootstrap" in out
    assert TABLES["FEATURE_FLAGS_TABLE"] in out
    assert "[store.tables] in reconciler.toml" in out
    assert client("cloudformation").list_stacks()["StackSummaries"] == []
    assert client("s3").list_buckets()["Buckets"] == []


def test_the_originals_alarms_outside_the_stack_are_refused_before_anything_is_created(
    aws: None, small_zip: Path
) -> None:
    client("cloudwatch").put_metric_alarm(
        AlarmName="BedrockAI-DailyCostHigh",
        Namespace="BedrockAI/Costs",
        MetricName="RequestCost",
        Statistic="Sum",
        Period=86400,
        EvaluationPeriods=1,
        Threshold=50,
        ComparisonOperator="GreaterThanThreshold",
    )
    code, out = deploy(small_zip)
    assert code == 1
    assert "alarms of the stack's names exist already outside it: BedrockAI-DailyCostHigh" in out
    assert client("cloudformation").list_stacks()["StackSummaries"] == []
    assert client("s3").list_buckets()["Buckets"] == []


def test_status_shows_the_outputs_and_the_workflows_variables(aws: None) -> None:
    code, out = invoke("status")
    assert code == 1
    assert f"no stack {STACK} in {REGION}; create it with reconcile-stack deploy" in out
    # moto gives a stack outputs only when it is created without a change set
    client("cloudformation").create_stack(
        StackName=STACK,
        TemplateBody=(
            "Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n"
            "Outputs:\n  ReconcilerPlanRoleArn:\n    Value: arn:aws:iam::1:role/plan\n"
            "  ApiUrl:\n    Value: https://example.invalid/v1\n"
        ),
    )
    code, out = invoke("status")
    assert code == 0
    assert out.splitlines() == [
        f"Stack {STACK} in {REGION}: CREATE_COMPLETE",
        "  ApiUrl: https://example.invalid/v1",
        "  ReconcilerPlanRoleArn: arn:aws:iam::1:role/plan",
        "The workflows' repository variables:",
        "  gh variable set RECONCILER_PLAN_ROLE_ARN --body arn:aws:iam::1:role/plan",
    ]


def test_an_artifact_that_is_not_this_projects_is_refused(aws: None, tmp_path: Path) -> None:
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("handler.py", "")
    code, out = deploy(other)
    assert code == 1
    assert "holds no reconciler package" in out
    assert client("s3").list_buckets()["Buckets"] == []


# -- the artifact -----------------------------------------------------------------------------


def _site(root: Path, mtime: int) -> Path:
    """A pip target as pip leaves it: packages, metadata, console scripts, bytecode."""
    files = {
        "mangum/__init__.py": "",
        "mangum-0.19.dist-info/METADATA": "Name: mangum\n",
        "mangum-0.19.dist-info/RECORD": "../../bin/x,sha256=machine-dependent\n",
        "mangum-0.19.dist-info/INSTALLER": "pip\n",
        "bin/uvicorn": f"#!{root}/python\n",
        "mangum/__pycache__/x.cpython-311.pyc": "bytes",
        "scipy/bin/keep.txt": "a data folder named bin, deeper down",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (mtime, mtime))
    return root


def test_the_artifact_is_the_same_bytes_from_the_same_files(tmp_path: Path) -> None:
    first = write_zip([(_site(tmp_path / "a", 1_000_000), "")], tmp_path / "a.zip")
    second = write_zip([(_site(tmp_path / "b", 2_000_000), "")], tmp_path / "b.zip")
    assert first.sha256 == second.sha256
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.namelist() == [
            "mangum-0.19.dist-info/METADATA",
            "mangum/__init__.py",
            "scipy/bin/keep.txt",
        ]
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert first.key == f"lambda/{first.sha256}.zip"


def test_the_artifact_installs_the_runtime_and_server_dependencies_for_lambda(
    tmp_path: Path,
) -> None:
    needed = requirements()
    names = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in needed}
    assert {"boto3", "pydantic", "scipy", "starlette", "uvicorn", "mangum"} <= names
    assert not names & {"pytest", "moto", "mypy"}
    command = pip_command(tmp_path, needed)
    for flag in (
        ["--platform", PLATFORM],
        ["--python-version", "3.11"],
        ["--implementation", "cp"],
        ["--target", str(tmp_path)],
    ):
        start = command.index(flag[0])
        assert command[start : start + 2] == flag
    assert {"--only-binary=:all:", "--no-compile"} <= set(command)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--github-oidc-provider-arn", OIDC], "is for --github-repository's roles"),
        (["--github-repository", "acme"], "'acme': give OWNER/NAME"),
        (["--alert-email", "oncall"], "'oncall' is not an e-mail address"),
    ],
)
def test_deploy_refuses_bad_options_before_calling_aws(
    small_zip: Path, args: list[str], message: str
) -> None:
    code, out = deploy(small_zip, *args)  # no moto here: a call to AWS would fail the guard
    assert code == 1
    assert message in out


def test_template_prints_the_committed_template_and_writes_it(tmp_path: Path) -> None:
    committed = (REPO_ROOT / "deploy" / "template.yaml").read_text()
    code, out = invoke("template", "--root", str(REPO_ROOT))
    assert (code, out) == (0, committed)
    code, out = invoke("template", "--root", str(REPO_ROOT), "--out", str(tmp_path / "t.yaml"))
    assert (code, out) == (0, f"Wrote {tmp_path / 't.yaml'}\n")
    assert (tmp_path / "t.yaml").read_text() == committed


def test_the_artifact_pins_what_this_environment_runs() -> None:
    """Built again, the artifact holds the same versions, whatever PyPI published since."""
    from importlib.metadata import version

    from reconciler.deploy.artifact import pins, pip_command

    pinned = dict(pin.split("==") for pin in pins(requirements()))
    for direct in ("pydantic", "boto3", "starlette", "uvicorn", "mangum"):
        assert pinned[direct] == version(direct)
    for transitive in ("pydantic-core", "botocore", "anyio", "h11"):
        assert pinned[transitive] == version(transitive), f"{transitive} is followed"
    assert "pytest" not in pinned, "what the requirements do not need is not pinned"
    command = pip_command(Path("/t"), requirements(), Path("/c.txt"))
    assert command[command.index("--constraint") + 1] == "/c.txt"
