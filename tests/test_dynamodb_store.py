"""What only the DynamoDB store does: tables, retries, paging, batching."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from reconciler.state.dynamodb import DynamoDBStore, from_dynamodb, to_dynamodb
from reconciler.state.records import RecordKind, Write
from reconciler.state.store import StoreUnavailableError, TablesMissingError


def test_bootstrap_creates_on_demand_tables_with_recovery_and_ttl(
    moto_store: DynamoDBStore,
) -> None:
    client = moto_store.client
    for name in moto_store.tables.values():
        table = client.describe_table(TableName=name)["Table"]
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        backups = client.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    ttl = client.describe_time_to_live(TableName=moto_store.control_table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    audit = client.describe_table(TableName=moto_store.audit_table)["Table"]["KeySchema"]
    assert audit == [
        {"AttributeName": "record", "KeyType": "HASH"},
        {"AttributeName": "audit_id", "KeyType": "RANGE"},
    ]


def test_bootstrap_is_idempotent(moto_store: DynamoDBStore) -> None:
    again = moto_store.bootstrap()
    assert again == [f"table {name} exists" for name in _in_bootstrap_order(moto_store)]


def _in_bootstrap_order(store: DynamoDBStore) -> list[str]:
    return [store.table(kind) for kind in RecordKind] + [store.audit_table, store.control_table]


def test_missing_tables_say_to_bootstrap() -> None:
    with mock_aws():
        store = DynamoDBStore(region="eu-central-1", sleep=lambda _: None)
        with pytest.raises(TablesMissingError, match="run `reconcile --bootstrap`") as caught:
            store.read_records(RecordKind.FLAG)
        assert "bedrock-feature-flags" in caught.value.missing


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1.5, "b": [1, 2.25, {"c": True}], "d": "", "e": [], "f": {}},
        {"weight": 33.333333333333336, "big": 10**15, "neg": -0.5, "none": None},
    ],
)
def test_values_round_trip_exactly(value: dict[str, Any]) -> None:
    assert from_dynamodb(to_dynamodb(value)) == value


def test_integral_numbers_come_back_as_ints() -> None:
    assert from_dynamodb(to_dynamodb({"p": 100.0, "q": [2.0]})) == {"p": 100, "q": [2]}


def _fail(store: DynamoDBStore, operation: str, code: str, times: int) -> list[int]:
    """Make the next ``times`` calls of ``operation`` fail with ``code``, as DynamoDB would."""
    attempts: list[int] = []

    def handler(**_: Any) -> None:
        attempts.append(1)
        if len(attempts) <= times:
            raise ClientError({"Error": {"Code": code, "Message": "injected"}}, operation)

    store.client.meta.events.register(f"before-call.dynamodb.{operation}", handler)
    return attempts


def _create(name: str, payload: str = "") -> Write:
    item = {"flag_name": name, "managed_by": "reconciler", "description": payload}
    return Write(RecordKind.FLAG, name, "create", None, item)


@pytest.mark.parametrize(
    "code",
    [
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "InternalServerError",
        "TransactionInProgressException",
    ],
)
def test_transient_errors_are_retried_with_backoff(moto_store: DynamoDBStore, code: str) -> None:
    sleeps: list[float] = []
    moto_store._sleep = sleeps.append
    attempts = _fail(moto_store, "TransactWriteItems", code, times=3)
    moto_store.apply_writes([_create("vc_a")], "token")
    assert len(attempts) == 4
    assert len(sleeps) == 3
    assert all(0 <= s <= 0.05 * 2**i for i, s in enumerate(sleeps))
    assert list(moto_store.read_records(RecordKind.FLAG)) == ["vc_a"]


def test_a_store_that_keeps_failing_is_reported_unavailable(moto_store: DynamoDBStore) -> None:
    sleeps: list[float] = []
    moto_store._sleep = sleeps.append
    _fail(moto_store, "Scan", "ThrottlingException", times=100)
    with pytest.raises(
        StoreUnavailableError, match="kept failing \\(ThrottlingException\\) after 8"
    ):
        moto_store.read_records(RecordKind.FLAG)
    assert len(sleeps) == 7
    assert max(sleeps) <= 5.0


def test_other_client_errors_are_not_retried(moto_store: DynamoDBStore) -> None:
    attempts = _fail(moto_store, "Scan", "AccessDeniedException", times=1)
    with pytest.raises(ClientError):
        moto_store.read_records(RecordKind.FLAG)
    assert len(attempts) == 1


def test_reads_come_in_pages(moto_server_store: DynamoDBStore) -> None:
    store = moto_server_store
    payload = "x" * 2500  # 1,000 items of 2.5 KB: more than one 1 MB Scan page
    for start in range(0, 1000, 50):
        batch = [_create(f"vc_{i:05d}", payload) for i in range(start, start + 50)]
        store.apply_writes(batch, f"g{start}")
    assert store.calls["TransactWriteItems"] == 20, "50 records per TransactWriteItems call"
    scans_before = store.calls["Scan"]
    records = store.read_records(RecordKind.FLAG)
    assert len(records) == 1000
    scans = store.calls["Scan"] - scans_before
    assert 2 <= scans <= 4, f"{scans} Scan calls: pages of 1 MB, not one call per item"


def test_update_never_sets_the_key_or_touches_other_attributes(moto_store: DynamoDBStore) -> None:
    moto_store.apply_writes(
        [
            Write(
                RecordKind.FLAG,
                "vc_a",
                "create",
                None,
                {"managed_by": "reconciler", "version": 1, "controller_state": {"stage": 2}},
            )
        ],
        "t1",
    )
    moto_store.apply_writes(
        [
            Write(
                RecordKind.FLAG,
                "vc_a",
                "update",
                1,
                {"flag_name": "vc_a", "version": 2, "enabled": False},
            )
        ],
        "t2",
    )
    item = moto_store.read_records(RecordKind.FLAG)["vc_a"].item
    assert item == {
        "flag_name": "vc_a",
        "managed_by": "reconciler",
        "version": 2,
        "enabled": False,
        "controller_state": {"stage": 2},
    }


def test_the_calls_counter_counts_operations(moto_store: DynamoDBStore) -> None:
    before = moto_store.calls.copy()
    moto_store.read_lock()
    moto_store.read_records(RecordKind.EXPERIMENT)
    used = moto_store.calls - before
    assert used == {"GetItem": 1, "Scan": 1}
