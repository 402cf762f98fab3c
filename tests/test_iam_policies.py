"""Least privilege: each role's IAM policy allows exactly the DynamoDB actions its code calls.

The calls are read from the code itself (the methods each role uses, and everything they call),
so a new call without a policy change, or a policy grant nothing uses, fails here.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from collections.abc import Iterable

import pytest

from reconciler.runtime import sources
from reconciler.state import dynamodb
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
