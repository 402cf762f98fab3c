"""Each DynamoDB request the HTTP API and its dashboard make, allowed by the API role's policy
document: its action, on that table, with that partition key where the statement limits
``dynamodb:LeadingKeys``. The requests are recorded from botocore while the endpoints run on
moto; ``test_iam_policies`` checks the action names, this the tables and keys they go to.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from reconciler.state.dynamodb import TABLE_KEYS, DynamoDBStore
from tests.api_transports import TOKEN, GatewayBrowser, Lambda
from tests.conftest import REPO_ROOT
from tests.test_apply import apply, desired, plan

POLICIES = REPO_ROOT / "docs" / "iam"
TRANSACTION = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem"}
TRANSACTION["ConditionCheck"] = "ConditionCheckItem"


def _leading(table_variable: str, item: dict[str, Any]) -> str | None:
    key = TABLE_KEYS[table_variable][0]["AttributeName"]
    value = item.get(key)
    return str(next(iter(value.values()))) if isinstance(value, dict) else None


class Requests:
    """(action, table variable, partition key or None) of each request the store sends."""

    def __init__(self, store: DynamoDBStore) -> None:
        self.by_name = {name: variable for variable, name in store.tables.items()}
        self.seen: set[tuple[str, str, str | None]] = set()
        store.client.meta.events.register("before-parameter-build.dynamodb", self._noted)

    def _noted(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        operation = model.name
        if operation == "TransactWriteItems":
            for entry in params["TransactItems"]:
                [(kind, part)] = entry.items()
                self._add(TRANSACTION[kind], part["TableName"], part.get("Key") or part["Item"])
        elif operation in ("BatchGetItem", "BatchWriteItem"):
            for table, requests in params["RequestItems"].items():
                keys = (
                    requests["Keys"]
                    if operation == "BatchGetItem"
                    else [
                        (r.get("PutRequest") or {}).get("Item") or r["DeleteRequest"]["Key"]
                        for r in requests
                    ]
                )
                for key in keys:
                    self._add(operation, table, key)
        elif operation == "Query" and "IndexName" in params:  # IAM's resource: the index
            self._add(operation, f"{params['TableName']}/index/{params['IndexName']}", None)
        elif operation == "Query":
            values = params.get("ExpressionAttributeValues") or {}
            names = params.get("ExpressionAttributeNames") or {}
            variable = self.by_name[params["TableName"]]
            partition = TABLE_KEYS[variable][0]["AttributeName"]
            found = re.match(r"\s*(\S+)\s*=\s*(:\w+)", params["KeyConditionExpression"])
            assert found is not None, params["KeyConditionExpression"]
            assert names.get(found[1], found[1]) == partition
            self._add(operation, params["TableName"], {partition: values[found[2]]})
        elif "TableName" in params:
            self._add(operation, params["TableName"], params.get("Key") or params.get("Item"))

    def _add(self, action: str, table: str, key: dict[str, Any] | None) -> None:
        name, _, index = table.partition("/index/")
        variable = self.by_name[name]
        leading = _leading(variable, key) if key else None
        self.seen.add((action, f"{variable}/index/{index}" if index else variable, leading))


def allowed(role: str, action: str, variable: str, leading: str | None) -> bool:
    """As IAM decides for an Allow-only policy: some statement names the action and the table,
    and, where it limits LeadingKeys (ForAllValues), the request's key is among them."""
    from reconciler.state.records import table_names

    table, _, index = variable.partition("/index/")
    arn = f"arn:aws:dynamodb:*:*:table/{table_names({})[table]}" + (
        f"/index/{index}" if index else ""
    )
    for statement in json.loads((POLICIES / f"{role}.json").read_text())["Statement"]:
        if f"dynamodb:{action}" not in statement["Action"] or arn not in statement["Resource"]:
            continue
        condition = (statement.get("Condition") or {}).get("ForAllValues:StringEquals", {})
        keys = condition.get("dynamodb:LeadingKeys")
        # A request without a partition key (a Scan) passes ForAllValues, as in IAM.
        if keys is None or leading is None or leading in keys:
            return True
    return False


@pytest.fixture
def recorded(moto_store: DynamoDBStore) -> tuple[DynamoDBStore, Requests]:
    apply(moto_store, plan(moto_store, desired()))
    return moto_store, Requests(moto_store)


def test_every_request_of_the_api_and_its_dashboard_is_allowed_on_its_table(
    recorded: tuple[DynamoDBStore, Requests],
) -> None:
    from reconciler.server.app import ApiSettings, BearerToken, create_app

    store, requests = recorded
    app = create_app(ApiSettings(lambda: store, BearerToken(lambda: TOKEN), release=lambda _: None))
    client = Lambda(app)
    who = {"shutdown_by": "a"}
    for method, path, body in [
        ("GET", "/health/detail", None),
        ("GET", "/feature-flags/status?flag=vc_bedrock_live&user_id=u-1", None),
        ("POST", "/emergency-shutdown", {"reason": "r", **who, "flags": ["vc_bedrock_live"]}),
        ("POST", "/emergency-restore", {"reason": "r", "restored_by": "a"}),
    ]:
        assert client.request(method, path, body)[0] == 200
    browser = GatewayBrowser(app)
    assert browser.post("/v1/dashboard/sign-in", {"token": TOKEN})[0] == 303
    page = browser.get("/v1/dashboard")[2]
    assert "Today's AI spend" in page, "the spend section was read"
    assert 'data-experiment="claude_vs_gemini"' in page, "and the experiments'"
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    form = {"reason": "r", "by": "a", "confirm": "yes", "csrf": csrf[1], "target": ""}
    assert browser.post("/v1/dashboard/shutdown", form)[0] == 303
    assert browser.post("/v1/dashboard/restore", form)[0] == 303
    for query in ("", "?flag=vc_bedrock_live", "?owner=team-vc-platform"):
        assert browser.get(f"/v1/dashboard/audit{query}")[0] == 200

    assert len(requests.seen) > 10, "the requests were recorded"
    assert ("Query", "AUDIT_TABLE/index/by_month", None) in requests.seen, "no audit scan"
    assert ("Scan", "AUDIT_TABLE", None) not in requests.seen
    refused = sorted((a, v, k) for a, v, k in requests.seen if not allowed("api", a, v, k))
    assert refused == []


def test_the_check_refuses_what_the_document_does_not_grant() -> None:
    """The evaluator above, on requests the API role must not make."""
    assert allowed("api", "GetItem", "CONTROL_TABLE", "overrides")
    assert not allowed("api", "PutItem", "CONTROL_TABLE", "cost_guard"), "a controller's record"
    assert not allowed("api", "PutItem", "FEATURE_FLAGS_TABLE", "vc_bedrock_live"), "git's"
    assert not allowed("api", "UpdateItem", "COST_METRICS_TABLE", "2026-12-01"), "the guard's"
    assert not allowed("api", "Scan", "TELEMETRY_TABLE", None), "only queried, by shard"
