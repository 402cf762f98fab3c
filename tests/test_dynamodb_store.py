"""What only the DynamoDB store does: tables, conditions, retries, paging, batching, the lease.

Run against moto in-process and moto's HTTP server. Failures DynamoDB would answer with
(throttling, server errors, timeouts) are injected at botocore's ``before-call`` event, in place
of the request: DynamoDB's HTTP answer, parsed by botocore's own parser.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.parsers import create_parser
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from reconciler.state.dynamodb import (
    BACKOFF_CAP,
    DynamoDBRequestError,
    DynamoDBStore,
    backoff,
    from_dynamodb,
    to_dynamodb,
)
from reconciler.state.records import AuditEntry, Item, Lock, RecordKind, Write, format_time
from reconciler.state.store import (
    LockHeldError,
    StoreUnavailableError,
    TablesMissingError,
    WriteConflictError,
)
from tests.dynamodb_fixtures import unique_tables

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PREFIX = "com.amazonaws.dynamodb.v20120810#"


@pytest.fixture(params=["moto", "moto-server"])
def dynamo(request: pytest.FixtureRequest) -> DynamoDBStore:
    """The DynamoDB store in-process and over the wire, bootstrapped, tables of its own."""
    name = "moto_store" if request.param == "moto" else "moto_server_store"
    store: DynamoDBStore = request.getfixturevalue(name)
    return store


# -- helpers ---------------------------------------------------------------------------------

_clock = iter(range(10**9))


def _audit(name: str, action: str) -> AuditEntry:
    """An audit entry a microsecond after the previous one, as successive applies would be."""
    at = format_time(NOW + timedelta(microseconds=next(_clock)))
    return AuditEntry(f"flag/{name}", action, "tester", at, reason="test", after={"n": 1})


def managed(name: str, version: int = 1, **extra: Any) -> Item:
    return {
        "flag_name": name,
        "enabled": True,
        "managed_by": "reconciler",
        "version": version,
        **extra,
    }


def create(name: str, *, audit: bool = True, **extra: Any) -> Write:
    entry = _audit(name, "create") if audit else None
    return Write(RecordKind.FLAG, name, "create", None, managed(name, **extra), (), entry)


def update(name: str, expected: int, remove: tuple[str, ...] = (), **attributes: Any) -> Write:
    attributes = {"version": expected + 1, **attributes}
    return Write(
        RecordKind.FLAG, name, "update", expected, attributes, remove, _audit(name, "update")
    )


def delete(name: str, expected: int) -> Write:
    return Write(RecordKind.FLAG, name, "delete", expected, audit=_audit(name, "delete"))


def audit_count(store: DynamoDBStore) -> int:
    """Items in the audit table, counted by DynamoDB itself."""
    answer = store.client.scan(TableName=store.audit_table, Select="COUNT", ConsistentRead=True)
    return answer["Count"]


def flags(store: DynamoDBStore) -> dict[str, Item]:
    return {name: record.item for name, record in store.read_records(RecordKind.FLAG).items()}


def typed(value: Any) -> str:
    """A value's JSON text: tells 1 from 1.0 and True from 1, which ``==`` does not."""
    return json.dumps(value, sort_keys=True)


class _Body:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def error(code: str, status: int = 400, **fields: Any) -> tuple[int, dict[str, Any]]:
    """An error answer as DynamoDB sends it over HTTP."""
    return status, {"__type": PREFIX + code, "message": f"injected {code}", **fields}


class Faults:
    """Answers the next calls of one operation with the given failures, before anything is sent
    (so neither moto in-process nor the server sees them), as botocore would have parsed them
    from DynamoDB's HTTP answer; records the ``ClientRequestToken`` of every attempt."""

    def __init__(self, store: DynamoDBStore, operation: str, failures: list[Any]) -> None:
        self.failures = failures
        self.attempts = 0
        self.tokens: list[str | None] = []
        store.client.meta.events.register(f"before-call.dynamodb.{operation}", self)

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> Any:
        self.attempts += 1
        self.tokens.append(json.loads(params["body"] or b"{}").get("ClientRequestToken"))
        if self.attempts > len(self.failures):
            return None  # through to DynamoDB
        failure = self.failures[self.attempts - 1]
        if isinstance(failure, Exception):
            raise failure
        status, payload = failure
        headers = {"x-amzn-requestid": "injected", "content-type": "application/x-amz-json-1.0"}
        answer = {
            "status_code": status,
            "headers": headers,
            "body": json.dumps(payload).encode() if payload else b"",
        }
        parser = create_parser(model.service_model.resolved_protocol)
        parsed = parser.parse(answer, model.output_shape)
        shape = model.service_model.shape_for_error_code(parsed.get("Error", {}).get("Code"))
        if shape is not None:  # the modeled fields, CancellationReasons among them
            parsed.update(parser.parse(answer, shape))
        raw = _Body(answer["body"])
        return AWSResponse(params["url"], status, HTTPHeaders.from_dict(headers), raw), parsed


def recording_sleep(store: DynamoDBStore) -> list[float]:
    sleeps: list[float] = []
    store._sleep = sleeps.append
    return sleeps


# -- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_creates_on_demand_tables_with_recovery_and_ttl(dynamo: DynamoDBStore) -> None:
    client = dynamo.client
    keys = {dynamo.table(kind): [(kind.key, "HASH")] for kind in RecordKind}
    keys[dynamo.audit_table] = [("record", "HASH"), ("audit_id", "RANGE")]
    keys[dynamo.control_table] = [("record_id", "HASH")]
    keys[dynamo.telemetry_table] = [("shard_key", "HASH"), ("writer", "RANGE")]
    keys[dynamo.cost_metrics_table] = [("date", "HASH"), ("request_type", "RANGE")]
    keys[dynamo.cost_alerts_table] = [("alert_id", "HASH")]
    keys[dynamo.assignments_table] = [("assignment_key", "HASH"), ("user_hash", "RANGE")]
    keys[dynamo.results_table] = [("experiment_id", "HASH"), ("result_key", "RANGE")]
    assert set(keys) == set(dynamo.tables.values())
    for name, expected in keys.items():
        table = client.describe_table(TableName=name)["Table"]
        assert table["TableStatus"] == "ACTIVE"
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == expected
        indexed = {("audit_month", "S")} if name == dynamo.audit_table else set()
        assert {
            (a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]
        } == {(attribute, "S") for attribute, _ in expected} | indexed
        backups = client.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
        ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if name in (dynamo.control_table, dynamo.telemetry_table, dynamo.assignments_table):
            assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
        else:
            assert ttl.get("TimeToLiveStatus") == "DISABLED"


def test_bootstrap_reports_what_it_did_and_is_idempotent() -> None:
    with mock_aws():
        store = DynamoDBStore(tables=unique_tables(), region="eu-central-1")
        first = store.bootstrap()
        assert sum(line.startswith("created table ") for line in first) == 11
        assert sum(line.startswith("enabled point-in-time recovery") for line in first) == 11
        assert f"enabled TTL (attribute ttl) on {store.control_table}" in first

        before = store.calls.copy()
        again = store.bootstrap()
        assert again == [f"table {name} exists" for name in store.tables.values()] + [
            "nothing to change: every table is in place"
        ]
        used = store.calls - before
        assert set(used) == {"DescribeTable", "DescribeContinuousBackups", "DescribeTimeToLive"}
        store.close()


def test_bootstrap_completes_what_is_missing_and_leaves_existing_tables_as_they_are() -> None:
    with mock_aws():
        store = DynamoDBStore(tables=unique_tables(), region="eu-central-1")
        flags_table = store.table(RecordKind.FLAG)
        store.client.create_table(
            TableName=flags_table,
            KeySchema=[{"AttributeName": "flag_name", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "flag_name", "AttributeType": "S"}],
            ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
        )
        lines = store.bootstrap()
        assert f"table {flags_table} exists (provisioned capacity, left as is)" in lines
        assert f"enabled point-in-time recovery on {flags_table}" in lines
        assert sum(line.startswith("created table ") for line in lines) == 10
        table = store.client.describe_table(TableName=flags_table)["Table"]
        assert table["BillingModeSummary"]["BillingMode"] == "PROVISIONED"
        store.close()


def test_bootstrap_adds_the_audit_index_to_an_audit_table_made_before_it() -> None:
    with mock_aws():
        store = DynamoDBStore(tables=unique_tables(), region="eu-central-1")
        keys = [
            {"AttributeName": "record", "KeyType": "HASH"},
            {"AttributeName": "audit_id", "KeyType": "RANGE"},
        ]
        store.client.create_table(
            TableName=store.audit_table,
            KeySchema=keys,  # type: ignore[arg-type]
            AttributeDefinitions=[
                {"AttributeName": k["AttributeName"], "AttributeType": "S"} for k in keys
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        lines = store.bootstrap()
        assert any(
            line.startswith(f"enabled index by_month on {store.audit_table}") for line in lines
        )
        table = store.client.describe_table(TableName=store.audit_table)["Table"]
        [index] = table["GlobalSecondaryIndexes"]
        assert index["IndexName"] == "by_month"
        assert [k["AttributeName"] for k in index["KeySchema"]] == ["audit_month", "audit_id"]
        assert not any(line.startswith("enabled index") for line in store.bootstrap())
        store.close()


def test_bootstrap_waits_for_backups_of_a_new_table_to_become_available() -> None:
    with mock_aws():
        sleeps: list[float] = []
        store = DynamoDBStore(tables=unique_tables(), region="eu-central-1", sleep=sleeps.append)
        unavailable = error("ContinuousBackupsUnavailableException")
        faults = Faults(store, "UpdateContinuousBackups", [unavailable] * 10)
        lines = store.bootstrap()
        assert faults.attempts == 10 + 11, "the first table's ten refusals, then one per table"
        assert len(sleeps) == 10
        assert sum(line.startswith("enabled point-in-time recovery") for line in lines) == 11
        store.close()


def test_bootstrap_refuses_a_table_with_another_key() -> None:
    with mock_aws():
        store = DynamoDBStore(tables=unique_tables(), region="eu-central-1")
        store.client.create_table(
            TableName=store.audit_table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        with pytest.raises(DynamoDBRequestError, match=r"exists with key id \(HASH\), expected"):
            store.bootstrap()
        store.close()


def test_missing_tables_are_named_and_say_to_bootstrap() -> None:
    with mock_aws():
        store = DynamoDBStore(tables=unique_tables(), region="eu-central-1")
        with pytest.raises(TablesMissingError, match="run `reconcile --bootstrap`") as caught:
            store.read_records(RecordKind.FLAG)
        assert caught.value.missing == [store.table(RecordKind.FLAG)]
        with pytest.raises(TablesMissingError) as caught:
            store.read_lock()
        assert caught.value.missing == [store.control_table]
        with pytest.raises(TablesMissingError) as caught:
            store.apply_writes([create("vc_a")], "t")
        assert set(caught.value.missing) == {
            store.table(RecordKind.FLAG),
            store.audit_table,
            store.control_table,  # the configuration's stamp, written with the records
        }
        store.close()


def test_describe_names_region_endpoint_and_tables(dynamo: DynamoDBStore) -> None:
    line = dynamo.describe()
    assert "\n" not in line
    assert line.startswith("DynamoDB (region eu-central-1")
    assert all(name in line for name in dynamo.tables.values())
    if dynamo.endpoint_url:
        assert f"endpoint {dynamo.endpoint_url}" in line


def test_configuration_comes_from_arguments_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:4566")
    monkeypatch.setenv("FEATURE_FLAGS_TABLE", "prod-flags")
    store = DynamoDBStore()
    assert store.region == "eu-central-1"
    assert store.endpoint_url == "http://127.0.0.1:4566"
    assert store.client.meta.endpoint_url == "http://127.0.0.1:4566"
    assert store.table(RecordKind.FLAG) == "prod-flags"
    assert store.audit_table == "bedrock-flag-audit"
    config: Any = store.client.meta.config
    assert config.connect_timeout <= 5
    assert config.read_timeout <= 10
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}
    store.close()

    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    store = DynamoDBStore(tables={"FEATURE_FLAGS_TABLE": "mine"})
    assert (store.region, store.endpoint_url) == ("us-west-2", "http://127.0.0.1:8000")
    assert store.table(RecordKind.FLAG) == "mine"
    store.close()

    store = DynamoDBStore(region="ap-south-1", endpoint_url="http://localhost:9")
    assert (store.region, store.endpoint_url) == ("ap-south-1", "http://localhost:9")
    assert store.client.meta.region_name == "ap-south-1"
    store.close()


# -- values ----------------------------------------------------------------------------------

ROUND_TRIP = {
    "flag_name": "vc_values",
    "managed_by": "reconciler",
    "version": 1,
    "nested": {"a": {"b": {"c": [1, 2.5, {"d": False}]}}, "empty": {}},
    "floats": [0.1, 33.333333333333336, -0.5, 1e-07, 123456.789],
    "ints": [0, -3, 10**15, 2**53 + 1],
    "integral_float": 100.0,
    "bools": [True, False],
    "empty_list": [],
    "empty_string": "",
    "nothing": None,
    "text": "Grüße, 日本",
}
ROUND_TRIP_READ = {**ROUND_TRIP, "integral_float": 100}


def test_items_round_trip_through_the_store(dynamo: DynamoDBStore) -> None:
    dynamo.apply_writes([Write(RecordKind.FLAG, "vc_values", "create", None, ROUND_TRIP)], "t")
    assert typed(flags(dynamo)["vc_values"]) == typed(ROUND_TRIP_READ)

    nested = {"stage": {"weights": [12.5, 87.5], "canary": True}}
    dynamo.apply_writes(
        [Write(RecordKind.FLAG, "vc_values", "update", 1, {"more": nested, "floats": []})], "u"
    )
    item = flags(dynamo)["vc_values"]
    assert typed(item["more"]) == typed(nested)
    assert item["floats"] == []


def test_integral_numbers_come_back_as_ints_and_others_as_floats() -> None:
    assert typed(from_dynamodb(to_dynamodb({"p": 100.0, "q": [2.0, 2.5], "r": 7}))) == typed(
        {"p": 100, "q": [2, 2.5], "r": 7}
    )
    assert to_dynamodb({"f": 0.1})["f"] == {"N": "0.1"}, "floats go in as Decimal(str(x))"


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_numbers = st.floats(
    min_value=-1e100, max_value=1e100, allow_nan=False, allow_infinity=False, allow_subnormal=False
).filter(lambda x: x == 0 or abs(x) > 1e-100)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**37), max_value=10**37)
    | _numbers
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), _json, max_size=6))
def test_any_json_item_round_trips_as_plain_values(item: dict[str, Any]) -> None:
    assert typed(from_dynamodb(to_dynamodb(item))) == typed(_plain(item))


# -- conditions ------------------------------------------------------------------------------

FUTURE = format_time(datetime.now(UTC) + timedelta(days=1))
PAST = format_time(datetime.now(UTC) - timedelta(minutes=1))


@pytest.mark.parametrize(
    ("existing", "write", "why"),
    [
        pytest.param({}, create("vc_x"), "exists already", id="create-existing"),
        pytest.param(
            {}, update("vc_x", 7), "at version 1, the plan expected 7", id="update-version"
        ),
        pytest.param({}, update("vc_missing", 1), "does not exist", id="update-missing"),
        pytest.param(
            {"managed_by": "console"}, update("vc_x", 1), "not managed", id="update-unmanaged"
        ),
        pytest.param(
            {"emergency_shutdown": True, "shutdown_by": "oncall"},
            update("vc_x", 1),
            "held by an emergency shutdown (oncall",
            id="update-overridden",
        ),
        pytest.param(
            {"emergency_shutdown": True, "shutdown_expires_at": FUTURE},
            update("vc_x", 1),
            "held by an emergency shutdown",
            id="update-overridden-until-later",
        ),
        pytest.param(
            {"emergency_shutdown": True}, delete("vc_x", 1), "emergency shutdown", id="delete-held"
        ),
        pytest.param({}, delete("vc_x", 3), "at version 1", id="delete-version"),
        pytest.param(
            {"managed_by": "console"}, delete("vc_x", 1), "not managed", id="delete-unmanaged"
        ),
        pytest.param(
            {"deletion_protection": True}, delete("vc_x", 1), "deletion protection", id="protected"
        ),
    ],
)
def test_a_failed_condition_names_the_record_and_writes_nothing(
    dynamo: DynamoDBStore, existing: Item, write: Write, why: str
) -> None:
    dynamo.apply_writes(
        [Write(RecordKind.FLAG, "vc_x", "create", None, managed("vc_x", **existing))], "s"
    )
    dynamo.apply_writes([create("vc_keep")], "s2")
    before, audits = flags(dynamo), audit_count(dynamo)
    group = [create("vc_new_1"), update("vc_keep", 1, enabled=False), create("vc_new_2"), write]
    with pytest.raises(WriteConflictError) as caught:
        dynamo.apply_writes(group, "group")
    assert caught.value.records == [f"flag/{write.name}"]
    assert why in str(caught.value)
    assert flags(dynamo) == before, "no write of the group landed"
    assert audit_count(dynamo) == audits, "nor any of its audit entries"
    assert dynamo.calls["TransactWriteItems"] == 3, "conditions are not retried"


def test_every_failing_record_is_named(dynamo: DynamoDBStore) -> None:
    dynamo.apply_writes([create("vc_a"), create("vc_b")], "s")
    with pytest.raises(WriteConflictError) as caught:
        dynamo.apply_writes([create("vc_a"), create("vc_c"), update("vc_b", 4)], "g")
    assert caught.value.records == ["flag/vc_a", "flag/vc_b"]
    assert sorted(flags(dynamo)) == ["vc_a", "vc_b"]


@pytest.mark.parametrize(
    "override",
    [
        {"emergency_shutdown": True, "shutdown_expires_at": PAST},
        {"emergency_shutdown": False},
        {"emergency_shutdown": False, "shutdown_expires_at": FUTURE},
    ],
    ids=["expired", "off", "off-with-expiry"],
)
def test_an_inactive_override_does_not_hold(dynamo: DynamoDBStore, override: Item) -> None:
    dynamo.apply_writes([create("vc_a", **override), create("vc_b", **override)], "s")
    dynamo.apply_writes([update("vc_a", 1, enabled=False), delete("vc_b", 1)], "g")
    assert flags(dynamo)["vc_a"]["enabled"] is False
    assert "vc_b" not in flags(dynamo)
    assert flags(dynamo)["vc_a"]["emergency_shutdown"] == override["emergency_shutdown"], (
        "the operator's attributes are left alone"
    )


def test_unprotected_records_can_be_deleted(dynamo: DynamoDBStore) -> None:
    dynamo.apply_writes([create("vc_a", deletion_protection=False)], "s")
    dynamo.apply_writes([delete("vc_a", 1)], "d")
    assert flags(dynamo) == {}
    assert [e["action"] for e in dynamo.read_audit("flag/vc_a")] == ["delete", "create"]


def test_a_record_without_a_version_is_at_version_0(dynamo: DynamoDBStore) -> None:
    unversioned = {"flag_name": "vc_a", "managed_by": "reconciler", "enabled": True}
    dynamo.apply_writes([Write(RecordKind.FLAG, "vc_a", "create", None, unversioned)], "s")
    assert dynamo.read_records(RecordKind.FLAG)["vc_a"].version == 0
    with pytest.raises(WriteConflictError, match="at version 0, the plan expected 1"):
        dynamo.apply_writes([update("vc_a", 1)], "u1")
    dynamo.apply_writes([update("vc_a", 0, enabled=False)], "u0")
    assert flags(dynamo)["vc_a"]["version"] == 1
    with pytest.raises(WriteConflictError):
        dynamo.apply_writes([update("vc_a", 0)], "again")


def test_update_sets_and_removes_only_what_it_names(dynamo: DynamoDBStore) -> None:
    dynamo.apply_writes(
        [create("vc_a", tags=["x"], controller_state={"stage": 2}, emergency_shutdown=False)], "s"
    )
    write = update("vc_a", 1, ("tags",), flag_name="vc_other", enabled=False, rollout=12.5)
    dynamo.apply_writes([write], "u")
    assert flags(dynamo)["vc_a"] == {
        "flag_name": "vc_a",  # the key is never rewritten
        "managed_by": "reconciler",
        "version": 2,
        "enabled": False,
        "rollout": 12.5,
        "controller_state": {"stage": 2},
        "emergency_shutdown": False,
    }


def test_an_update_with_nothing_to_change_still_checks_its_condition(
    dynamo: DynamoDBStore,
) -> None:
    dynamo.apply_writes([create("vc_a")], "s")
    with pytest.raises(WriteConflictError):
        dynamo.apply_writes([Write(RecordKind.FLAG, "vc_a", "update", 5)], "u")
    dynamo.apply_writes([Write(RecordKind.FLAG, "vc_a", "update", 1)], "u2")
    assert flags(dynamo)["vc_a"] == managed("vc_a")


def test_a_group_is_one_transaction_of_its_writes_and_their_audit_entries(
    dynamo: DynamoDBStore,
) -> None:
    sent: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        sent.append(json.loads(params["body"]))

    dynamo.client.meta.events.register("before-call.dynamodb.TransactWriteItems", capture)
    dynamo.apply_writes([create(f"vc_{i:02d}") for i in range(49)], "g", overrides_version=0)
    [request] = sent
    assert len(request["TransactItems"]) == 100, "49 writes, 49 audits, 1 check, the stamp"
    [check] = [a["ConditionCheck"] for a in request["TransactItems"] if "ConditionCheck" in a]
    assert (check["TableName"], check["Key"]) == (
        dynamo.control_table,
        {"record_id": {"S": "overrides"}},
    )
    puts = [action["Put"] for action in request["TransactItems"] if "Put" in action]
    audits = [put for put in puts if put["TableName"] == dynamo.audit_table]
    assert len(audits) == 49
    ids = [put["Item"]["audit_id"]["S"] for put in audits]
    assert len(set(ids)) == 49
    assert all(i.startswith("2026-03-01T12:00:00.") and "#" in i for i in ids)
    assert 1 <= len(request["ClientRequestToken"]) <= 36
    assert len(dynamo.read_audit(limit=1000)) == 49
    [stamp] = [p for p in puts if p["TableName"] == dynamo.control_table]
    assert stamp["Item"]["record_id"] == {"S": "configuration"}
    assert (dynamo.read_control("configuration") or {})["stamp"] == "g"  # the group's token


def test_groups_are_checked_before_anything_is_sent(dynamo: DynamoDBStore) -> None:
    with pytest.raises(ValueError, match="at most 49"):
        dynamo.apply_writes([create(f"vc_{i}") for i in range(50)], "g")
    with pytest.raises(ValueError, match="expected version"):
        dynamo.apply_writes([Write(RecordKind.FLAG, "vc_a", "update", None, {"a": 1})], "g")
    with pytest.raises(ValueError, match="twice"):
        dynamo.apply_writes([create("vc_a"), update("vc_a", 1)], "g")
    with pytest.raises(ValueError, match="both set and removed"):
        dynamo.apply_writes([update("vc_a", 1, ("tags",), tags=[])], "g")
    dynamo.apply_writes([], "empty")
    assert dynamo.calls["TransactWriteItems"] == 0


def test_a_request_dynamodb_refuses_is_not_a_conflict(dynamo: DynamoDBStore) -> None:
    huge = create("vc_huge", description="x" * 410_000)  # over DynamoDB's 400 KB per item
    with pytest.raises(DynamoDBRequestError, match="size"):
        dynamo.apply_writes([create("vc_a"), huge], "g")
    assert flags(dynamo) == {}
    assert dynamo.calls["TransactWriteItems"] == 1, "not retried"


def test_a_transaction_cancelled_for_validation_is_reported_as_such(
    moto_store: DynamoDBStore,
) -> None:
    reasons = [{"Code": "None"}, {"Code": "ValidationError", "Message": "Item too large"}]
    Faults(
        moto_store,
        "TransactWriteItems",
        [error("TransactionCanceledException", CancellationReasons=reasons)],
    )
    with pytest.raises(DynamoDBRequestError, match="ValidationError: Item too large"):
        moto_store.apply_writes([create("vc_a")], "g")
    assert flags(moto_store) == {}


# -- retries ---------------------------------------------------------------------------------

TRANSIENT = [
    pytest.param(error("ThrottlingException"), id="throttling"),
    pytest.param(error("ProvisionedThroughputExceededException"), id="throughput"),
    pytest.param(error("RequestLimitExceeded"), id="request-limit"),
    pytest.param(error("TransactionInProgressException"), id="in-progress"),
    pytest.param(error("InternalServerError", 500), id="internal-error"),
    pytest.param((503, None), id="service-unavailable"),
    pytest.param(
        error(
            "TransactionCanceledException",
            CancellationReasons=[{"Code": "None"}, {"Code": "TransactionConflict"}],
        ),
        id="transaction-conflict",
    ),
    pytest.param(ReadTimeoutError(endpoint_url="http://dynamodb"), id="read-timeout"),
    pytest.param(ConnectTimeoutError(endpoint_url="http://dynamodb"), id="connect-timeout"),
    pytest.param(EndpointConnectionError(endpoint_url="http://dynamodb"), id="no-connection"),
    pytest.param(ConnectionClosedError(endpoint_url="http://dynamodb"), id="connection-closed"),
]


@pytest.mark.parametrize("failure", TRANSIENT)
def test_transient_failures_are_retried_with_the_same_token_and_backoff(
    dynamo: DynamoDBStore, failure: Any
) -> None:
    sleeps = recording_sleep(dynamo)
    faults = Faults(dynamo, "TransactWriteItems", [failure] * 3)
    dynamo.apply_writes([create("vc_a"), create("vc_b")], "token-1")
    assert faults.attempts == 4
    assert len(set(faults.tokens)) == 1, "every attempt is the same request, same token"
    assert faults.tokens[0]
    assert len(sleeps) == 3
    assert all(0 <= s <= 0.05 * 2**i for i, s in enumerate(sleeps)), sleeps
    assert sorted(flags(dynamo)) == ["vc_a", "vc_b"]
    assert audit_count(dynamo) == 2
    assert dynamo.calls["TransactWriteItems"] == 1, "the one attempt that was sent"


def test_a_store_that_keeps_failing_is_reported_unavailable(dynamo: DynamoDBStore) -> None:
    sleeps = recording_sleep(dynamo)
    faults = Faults(dynamo, "TransactWriteItems", [error("ThrottlingException")] * 100)
    with pytest.raises(
        StoreUnavailableError, match=r"TransactWriteItems \(ThrottlingException\) after 8"
    ):
        dynamo.apply_writes([create("vc_a")], "t")
    assert faults.attempts == 8
    assert len(set(faults.tokens)) == 1
    assert len(sleeps) == 7
    assert all(s <= BACKOFF_CAP for s in sleeps)
    assert flags(dynamo) == {}


def test_max_attempts_is_the_number_of_attempts(moto_store: DynamoDBStore) -> None:
    store = DynamoDBStore(
        moto_store.client, tables=moto_store.tables, sleep=lambda _: None, max_attempts=3
    )
    faults = Faults(store, "Scan", [ReadTimeoutError(endpoint_url="http://dynamodb")] * 10)
    with pytest.raises(StoreUnavailableError, match="ReadTimeoutError"):
        store.read_records(RecordKind.FLAG)
    assert faults.attempts == 3
    store.close()


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    random.seed(7)
    for attempt in range(1, 12):
        ceiling = min(BACKOFF_CAP, 0.05 * 2 ** (attempt - 1))
        waits = [backoff(attempt) for _ in range(300)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > 0.8 * ceiling, "the whole range is used"
        assert min(waits) < 0.2 * ceiling, "down to no wait at all"
    assert backoff(40) <= BACKOFF_CAP


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("Scan", lambda s: s.read_records(RecordKind.FLAG)),
        ("GetItem", lambda s: s.read_lock()),
        ("PutItem", lambda s: s.acquire_lock("me", "r", 60, NOW)),
        ("DeleteItem", lambda s: s.release_lock("me")),
        ("Query", lambda s: s.read_audit("flag/vc_a")),
    ],
)
def test_reads_and_lease_calls_are_retried_too(
    dynamo: DynamoDBStore, operation: str, call: Any
) -> None:
    sleeps = recording_sleep(dynamo)
    faults = Faults(
        dynamo, operation, [error("ThrottlingException"), error("InternalServerError", 500)]
    )
    call(dynamo)
    assert faults.attempts == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (error("AccessDeniedException"), "refused Scan: AccessDeniedException"),
        (error("ValidationException"), "refused Scan: ValidationException"),
        (error("UnrecognizedClientException"), "UnrecognizedClientException"),
        (NoCredentialsError(), "Unable to locate credentials"),
    ],
)
def test_other_failures_are_reported_at_once(
    dynamo: DynamoDBStore, failure: Any, message: str
) -> None:
    faults = Faults(dynamo, "Scan", [failure] * 10)
    with pytest.raises(DynamoDBRequestError, match=message) as caught:
        dynamo.read_records(RecordKind.FLAG)
    assert isinstance(caught.value, StoreUnavailableError), "a store error the CLI reports"
    assert faults.attempts == 1


# -- paging and batching ---------------------------------------------------------------------


def test_a_scan_of_3000_records_takes_a_few_pages(dynamo: DynamoDBStore) -> None:
    payload = "x" * 1000  # 3,000 items of about 1 KB: 3 MB, over three 1 MB pages
    table = dynamo.table(RecordKind.FLAG)
    for start in range(0, 3000, 25):  # seeding, not under test: BatchWriteItem
        requests: list[Any] = [
            {"PutRequest": {"Item": to_dynamodb(managed(f"vc_{i:05d}", payload=payload))}}
            for i in range(start, start + 25)
        ]
        answer = dynamo.client.batch_write_item(RequestItems={table: requests})
        assert not answer.get("UnprocessedItems")
    before = dynamo.calls["Scan"]
    records = dynamo.read_records(RecordKind.FLAG)
    scans = dynamo.calls["Scan"] - before
    assert list(records) == [f"vc_{i:05d}" for i in range(3000)]
    assert records["vc_02999"].item["payload"] == payload
    assert 3 <= scans <= 6, f"{scans} Scan calls: pages of 1 MB, not one call per item"


def test_1960_creates_in_groups_of_49_take_40_transactions(moto_store: DynamoDBStore) -> None:
    # Spread over the four record tables and without audit entries only because moto copies a
    # table for every item of every transaction (its rollback), which grows with the tables;
    # a group of 49 writes with their audit entries and the overrides check is one call too
    # (see above).
    kinds = list(RecordKind)
    for group in range(40):
        kind = kinds[group % 4]
        writes = [
            Write(kind, f"r_{group:02d}_{i:02d}", "create", None, {"managed_by": "reconciler"})
            for i in range(49)
        ]
        moto_store.apply_writes(writes, f"group-{group}", overrides_version=0)
    assert moto_store.calls["TransactWriteItems"] == 40
    assert sum(len(moto_store.read_records(kind)) for kind in kinds) == 1960


# -- the lease -------------------------------------------------------------------------------


def test_the_lock_is_exclusive_until_released_or_expired(dynamo: DynamoDBStore) -> None:
    lock = dynamo.acquire_lock("alice", "apply plan p1", 60, NOW, token="t-alice")
    assert lock == Lock(
        "alice",
        format_time(NOW),
        format_time(NOW + timedelta(seconds=60)),
        "apply plan p1",
        "t-alice",
    )
    assert dynamo.read_lock() == lock
    raw = dynamo.client.get_item(
        TableName=dynamo.control_table, Key={"record_id": {"S": "lock#reconcile"}}
    )["Item"]
    expires = NOW + timedelta(seconds=60)
    assert int(raw["ttl"]["N"]) == int((expires + timedelta(days=1)).timestamp())
    assert raw["expires_at"] == {"S": format_time(expires)}

    for moment in (NOW + timedelta(seconds=30), expires):
        with pytest.raises(LockHeldError) as held:
            dynamo.acquire_lock("bob", "apply", 60, moment)
        assert held.value.lock == lock

    assert dynamo.release_lock("bob") is False, "only the holder releases"
    assert dynamo.read_lock() == lock
    assert dynamo.release_lock("alice") is True
    assert dynamo.read_lock() is None
    assert dynamo.release_lock("alice") is False

    dynamo.acquire_lock("alice", "apply", 60, NOW)
    taken = dynamo.acquire_lock("bob", "apply", 60, expires + timedelta(microseconds=1))
    assert taken.holder == "bob", "an expired lease can be taken over"
    assert dynamo.read_lock() == taken
    assert dynamo.release_lock("alice") is False, "the old holder cannot release it"


def test_force_unlock_removes_any_lease_and_is_audited(dynamo: DynamoDBStore) -> None:
    lock = dynamo.acquire_lock("ci-job-17", "apply", 600, NOW)
    removed = dynamo.force_unlock("oncall", "job was killed", NOW + timedelta(minutes=1))
    assert removed == lock
    assert dynamo.read_lock() is None
    assert dynamo.force_unlock("oncall", "again", NOW + timedelta(minutes=2)) is None
    newest, oldest = dynamo.read_audit("lock/reconcile")
    assert (oldest["action"], oldest["actor"], oldest["reason"]) == (
        "force-unlock",
        "oncall",
        "job was killed",
    )
    assert oldest["before"] == lock.to_item()
    assert oldest["at"] == format_time(NOW + timedelta(minutes=1))
    assert newest["reason"] == "again"
    assert "before" not in newest
    dynamo.acquire_lock("next", "apply", 60, NOW + timedelta(minutes=3))


# -- the audit trail and the call counter ----------------------------------------------------


def test_audit_entries_come_newest_first(dynamo: DynamoDBStore) -> None:
    dynamo.apply_writes([create("vc_a"), create("vc_b")], "1")
    for version in (1, 2, 3):
        dynamo.apply_writes([update("vc_a", version, n=version)], f"u{version}")
    mine = dynamo.read_audit("flag/vc_a")
    assert [e["action"] for e in mine] == ["update", "update", "update", "create"]
    assert [e["audit_id"] for e in mine] == sorted((e["audit_id"] for e in mine), reverse=True)
    assert dynamo.read_audit("flag/vc_a", limit=2) == mine[:2]
    everything = dynamo.read_audit()
    assert len(everything) == 5
    assert [e["audit_id"] for e in everything] == sorted(
        (e["audit_id"] for e in everything), reverse=True
    )
    assert dynamo.read_audit(limit=1) == everything[:1]
    assert dynamo.read_audit("flag/nothing") == []
    assert everything[-1]["record"] == "flag/vc_a"
    assert {"record", "audit_id", "action", "actor", "at", "reason", "after"} <= set(mine[0])


def test_the_call_counter_counts_what_is_sent(dynamo: DynamoDBStore) -> None:
    before = dynamo.calls.copy()
    dynamo.read_lock()
    dynamo.read_records(RecordKind.EXPERIMENT)
    dynamo.apply_writes([create("vc_a")], "t")
    assert dynamo.calls - before == {"GetItem": 1, "Scan": 1, "TransactWriteItems": 1}


def test_close_leaves_a_client_it_was_given_usable(moto_store: DynamoDBStore) -> None:
    client = moto_store.client
    store = DynamoDBStore(client, tables=moto_store.tables)
    assert store.region == "eu-central-1"
    store.read_lock()
    assert store.calls == {"GetItem": 1}
    store.close()
    client.get_item(TableName=store.control_table, Key={"record_id": {"S": "x"}})
    assert store.calls == {"GetItem": 1}, "its handlers are gone with it"
