"""Least privilege: each role's IAM policy allows exactly the DynamoDB actions its code calls.

The calls are read from the code itself (the methods each role uses, and everything they call),
so a new call without a policy change, or a policy grant nothing uses, fails here. The
deployment template's roles carry these same documents, with the stack's tables: checked here
too, statement by statement, on the committed deploy/template.yaml.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from reconciler.deploy.roles import ROLE_DOCUMENTS
from reconciler.runtime import sources
from reconciler.state import dynamodb
from reconciler.state.records import table_names
from tests.conftest import REPO_ROOT

POLICIES = REPO_ROOT / "docs" / "iam"
TRANSACTION_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
ROLES = {
    "reconciler-ci": (
        dynamodb.DynamoDBStore,
        [
            "bootstrap",
            "read_records",
            "apply_writes",
            "acquire_lock",
            "release_lock",
            "read_lock",
            "force_unlock",
            "read_audit",
            "read_overrides",
        ],
    ),
    "breakglass": (
        dynamodb.DynamoDBStore,
        ["read_overrides", "write_overrides", "read_audit", "read_records", "read_lock"],
    ),
    "reconciler-plan": (  # reconcile --plan, read-only
        dynamodb.DynamoDBStore,
        ["read_records", "read_overrides", "read_control"],
    ),
    "api": (  # the HTTP API's Lambda function
        dynamodb.DynamoDBStore,
        [
            "read_record",
            "read_records",
            "read_overrides",
            "write_overrides",
            "read_control",
            # the dashboard's spend, experiments and audit trail
            "read_shards",
            "read_cost_metrics",
            "read_alerts",
            "read_assignment_counts",
            "read_results",
            "read_audit",
            "read_recent_audit",
        ],
    ),
    "runtime": (
        sources.DynamoDBSource,
        ["read_configuration", "read_overrides", "write_shards", "write_assignments"],
    ),
    "controller": (
        dynamodb.DynamoDBStore,
        [
            "read_records",
            "read_shards",
            "read_cost_metrics",
            "write_cost_metrics",
            "read_control",
            "write_control",
            "put_alert",
            "mark_alert_published",
            "read_alerts",
            "read_audit",
            "read_overrides",
            "read_assignment_counts",
            "read_results",
            "write_results",
        ],
    ),
}


def _methods(cls: type) -> dict[str, ast.FunctionDef]:
    """The methods of a class and of the classes it is made of (the store's mixins)."""
    found = {}
    for part in reversed(cls.__mro__[:-1]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(part)))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                found[node.name] = node
    return found


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def actions_called(cls: type, entries: Iterable[str]) -> set[str]:
    methods = _methods(cls)
    seen: set[str] = set()
    todo = list(entries)
    actions: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in methods:
            continue
        seen.add(name)
        body = methods[name]
        for node in ast.walk(body):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "client"
            ):
                actions.add(node.attr)  # self.client.<operation>
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                todo.append(node.attr)  # another method of the class, followed
            if isinstance(node, ast.Constant) and node.value in TRANSACTION_ACTIONS:
                actions.add(TRANSACTION_ACTIONS[str(node.value)])
    iam = set()
    for action in actions:
        if action in ("close", "meta", "transact_write_items"):
            continue  # not API calls, or authorised per item (the literal actions above)
        if action == "get_waiter":
            iam.add("DescribeTable")  # the table_exists waiter polls DescribeTable
            continue
        iam.add(action if re.match(r"^[A-Z]", action) else _camel(action))
    return {f"dynamodb:{a}" for a in iam}


def granted(role: str) -> set[str]:
    policy = json.loads((POLICIES / f"{role}.json").read_text())
    assert policy["Version"] == "2012-10-17"
    actions: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        if not all(a.startswith("dynamodb:") for a in statement["Action"]):
            continue  # another service's grant (CloudWatch metrics): not a table's
        assert statement["Resource"], "every grant names its tables"
        assert all(r.startswith("arn:aws:dynamodb:") for r in statement["Resource"])
        actions |= set(statement["Action"])
    return actions


def test_the_runtime_may_publish_only_its_own_metrics() -> None:
    policy = json.loads((POLICIES / "runtime.json").read_text())
    metrics = [s for s in policy["Statement"] if s["Action"] == ["cloudwatch:PutMetricData"]]
    assert len(metrics) == 1
    namespaces = metrics[0]["Condition"]["StringEquals"]["cloudwatch:namespace"]
    assert sorted(namespaces) == ["BedrockAI/Costs", "BedrockAI/Operations"]


@pytest.mark.parametrize("role", list(ROLES))
def test_each_role_is_granted_exactly_what_its_code_calls(role: str) -> None:
    cls, entries = ROLES[role]
    needed = actions_called(cls, entries)
    assert needed, "the analysis found the role's calls"
    assert granted(role) == needed


def test_the_runtime_writes_only_telemetry_and_breakglass_cannot_touch_configuration() -> None:
    writes = {
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
    }
    telemetry = {
        "arn:aws:dynamodb:*:*:table/bedrock-flag-telemetry",
        "arn:aws:dynamodb:*:*:table/bedrock-ab-assignments",
    }
    runtime = json.loads((POLICIES / "runtime.json").read_text())
    for statement in runtime["Statement"]:
        if set(statement["Action"]) & writes:
            assert set(statement["Resource"]) <= telemetry
    policy = json.loads((POLICIES / "breakglass.json").read_text())
    for statement in policy["Statement"]:
        if set(statement["Action"]) & writes:
            assert all("feature-flags" not in r for r in statement["Resource"])


def test_bootstrap_may_create_every_table_the_code_uses() -> None:
    policy = json.loads((POLICIES / "reconciler-ci.json").read_text())
    [bootstrap] = [s for s in policy["Statement"] if "dynamodb:CreateTable" in s["Action"]]
    tables = {f"arn:aws:dynamodb:*:*:table/{name}" for name in table_names({}).values()}
    assert set(bootstrap["Resource"]) == tables


# -- the deployment template's roles ---------------------------------------------------------

TEMPLATE = REPO_ROOT / "deploy" / "template.yaml"
TOPIC = "the stack's alert topic"


def _template() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(TEMPLATE.read_text())
    return loaded


def _stack_tables() -> dict[str, str]:
    """A table's logical id in the template to its ARN in the documents (default names)."""
    resources = _template()["Resources"]
    assert isinstance(resources, dict)
    by_name = {name: variable for variable, name in table_names({}).items()}
    found = {}
    for logical, resource in resources.items():
        if resource["Type"] == "AWS::DynamoDB::Table":
            variable = by_name[resource["Properties"]["TableName"]]
            found[logical] = f"arn:aws:dynamodb:*:*:table/{table_names({})[variable]}"
    return found


def _as_document(resource: object, tables: dict[str, str]) -> object:
    """A template statement's resource as the documents write it."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        logical, attribute = resource["Fn::GetAtt"]
        assert attribute == "Arn"
        return tables[logical]
    if resource == {"Ref": "AlertsTopic"}:
        return TOPIC
    if isinstance(resource, dict) and "Fn::Sub" in resource:  # an index: ${Table.Arn}/index/x
        found = re.fullmatch(r"\$\{(\w+)\.Arn\}(/index/[\w.-]+)", resource["Fn::Sub"])
        assert found is not None, resource
        return tables[found[1]] + found[2]
    return resource


def _document_statements(role: str) -> list[dict[str, object]]:
    policy = json.loads((POLICIES / f"{role}.json").read_text())
    statements = []
    for statement in policy["Statement"]:
        resources = [TOPIC if r.startswith("arn:aws:sns:") else r for r in statement["Resource"]]
        statements.append({**statement, "Resource": resources})
    return statements


def _template_policies(logical: str) -> dict[str, list[dict[str, object]]]:
    """Every policy a template role or managed policy carries, by name."""
    resources = _template()["Resources"]
    assert isinstance(resources, dict)
    resource = resources[logical]
    properties = resource["Properties"]
    if resource["Type"] == "AWS::IAM::ManagedPolicy":
        return {ROLE_DOCUMENTS[logical]: properties["PolicyDocument"]["Statement"]}
    found = {p["PolicyName"]: p["PolicyDocument"]["Statement"] for p in properties["Policies"]}
    for other in resources.values():  # policies attached from outside the role
        if other["Type"] == "AWS::IAM::Policy" and {"Ref": logical} in other["Properties"]["Roles"]:
            found[other["Properties"]["PolicyName"]] = other["Properties"]["PolicyDocument"][
                "Statement"
            ]
    return found


def test_every_role_of_the_template_has_a_checked_document() -> None:
    resources = _template()["Resources"]
    assert isinstance(resources, dict)
    iam = {
        logical
        for logical, r in resources.items()
        if r["Type"] in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy")
    }
    assert iam == set(ROLE_DOCUMENTS)
    assert set(ROLE_DOCUMENTS.values()) <= set(ROLES)


@pytest.mark.parametrize("logical", sorted(ROLE_DOCUMENTS))
def test_each_template_role_carries_its_document_with_the_stack_tables(logical: str) -> None:
    role = ROLE_DOCUMENTS[logical]
    tables = _stack_tables()
    policies = _template_policies(logical)
    statements = [
        {**s, "Resource": [_as_document(r, tables) for r in s["Resource"]]}
        for s in policies.pop(role)
    ]
    assert statements == _document_statements(role)
    dynamodb_actions = {a for s in statements for a in s["Action"] if a.startswith("dynamodb:")}
    cls, entries = ROLES[role]
    assert dynamodb_actions == granted(role) == actions_called(cls, entries)
    # Beside the document: the function's own log group, and the API's token in token mode.
    extra = {a for statements in policies.values() for s in statements for a in s["Action"]}
    expected = {
        "ApiFunctionRole": {
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "secretsmanager:GetSecretValue",
        },
        "ControllerFunctionRole": {"logs:CreateLogStream", "logs:PutLogEvents"},
    }
    assert extra == expected.get(logical, set())


def test_the_function_roles_write_their_own_logs_and_read_only_their_secret() -> None:
    for logical, group in (
        ("ApiFunctionRole", "ApiLogGroup"),
        ("ControllerFunctionRole", "ControllerLogGroup"),
    ):
        [logs] = _template_policies(logical)["logs"]
        assert logs["Resource"] == [{"Fn::GetAtt": [group, "Arn"]}]
    [token] = _template_policies("ApiFunctionRole")["api-token"]
    assert token["Action"] == ["secretsmanager:GetSecretValue"]
    assert token["Resource"] == [{"Ref": "ApiTokenSecret"}]


def test_the_api_role_lists_exactly_the_store_calls_the_api_makes(tmp_path: Path) -> None:
    """The API's entries above, checked against what its endpoints call: every endpoint, on
    its paths that read and write, through a store that notes each method asked for."""
    from reconciler.server.app import ApiSettings, BearerToken, create_app
    from reconciler.state.local import LocalStore
    from tests.api_transports import TOKEN, GatewayBrowser, Lambda
    from tests.test_apply import apply, desired, plan

    store = LocalStore(tmp_path / "state.db")
    apply(store, plan(store, desired()))
    called: set[str] = set()

    class Noting:
        def __getattr__(self, name: str) -> object:
            if not name.startswith("_"):
                called.add(name)
            return getattr(store, name)

    app = create_app(ApiSettings(Noting, BearerToken(lambda: TOKEN), release=lambda _: None))  # type: ignore[arg-type,return-value]
    client = Lambda(app)
    who = {"shutdown_by": "a"}
    for method, path, body in [
        ("GET", "/health", None),
        ("GET", "/health/detail", None),
        ("GET", "/feature-flags/status?flag=vc_bedrock_live&user_id=u-1", None),
        ("POST", "/emergency-shutdown", {"reason": "r", **who, "flags": ["vc_bedrok_live"]}),
        ("POST", "/emergency-shutdown", {"reason": "r", **who, "flags": ["vc_new"], "force": True}),
        ("POST", "/emergency-shutdown", {"reason": "r", **who}),
        ("POST", "/emergency-restore", {"reason": "r", "restored_by": "a", "flags": ["vc_new"]}),
        ("POST", "/emergency-restore", {"reason": "r", "restored_by": "a"}),
    ]:
        assert client.request(method, path, body)[0] in (200, 404)
    # The dashboard's pages and forms, signed in with the token.
    browser = GatewayBrowser(app)
    assert browser.post("/v1/dashboard/sign-in", {"token": TOKEN})[0] == 303
    page = browser.get("/v1/dashboard")[2]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    form = {"reason": "r", "by": "a", "confirm": "yes", "csrf": csrf[1]}
    for target in ("vc_bedrock_live", ""):
        assert browser.post("/v1/dashboard/shutdown", {**form, "target": target})[0] == 303
        assert browser.post("/v1/dashboard/restore", {**form, "target": target})[0] == 303
    for query in ("", "?flag=vc_bedrock_live", "?owner=team-vc-platform"):
        assert browser.get(f"/v1/dashboard/audit{query}")[0] == 200
    store.close()
    assert called - {"close"} == set(ROLES["api"][1])


def test_the_apply_role_appends_audit_entries_only_of_what_it_applies() -> None:
    """It cannot forge a break-glass or controller entry; every entry apply writes matches."""
    import fnmatch

    from reconciler.state.dynamodb import LOCK_RECORD
    from reconciler.state.records import OVERRIDES_RECORD, RecordKind

    policy = json.loads((POLICIES / "reconciler-ci.json").read_text())
    [append] = [
        s
        for s in policy["Statement"]
        if "dynamodb:PutItem" in s["Action"] and any("audit" in r for r in s["Resource"])
    ]
    patterns = append["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
    written = [f"{kind.label}/some_name" for kind in RecordKind] + [LOCK_RECORD]
    assert all(any(fnmatch.fnmatchcase(r, p) for p in patterns) for r in written)
    for forged in (OVERRIDES_RECORD, "rollout_controller", "cost_guard/x"):
        assert not any(fnmatch.fnmatchcase(forged, p) for p in patterns)
