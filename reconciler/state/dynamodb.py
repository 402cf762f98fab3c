"""DynamoDB through boto3: the production store, in the original tables and field names.

Every condition of a write is a DynamoDB condition expression, checked by DynamoDB in the write
itself; a group of writes is one ``TransactWriteItems`` call with an idempotency token, retried
with exponential backoff and full jitter on throttling and transient errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import boto3
from boto3.dynamodb.types import TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, ReadTimeoutError

from reconciler.runtime.attributes import plain_item
from reconciler.state.records import (
    AUDIT_TABLE,
    CONTROL_TABLE,
    MANAGED_BY,
    Item,
    Lock,
    RecordKind,
    StoredRecord,
    Write,
    format_time,
    table_names,
)
from reconciler.state.store import (
    LockHeldError,
    StoreUnavailableError,
    TablesMissingError,
    WriteConflictError,
)

DEFAULT_REGION = "eu-central-1"
LOCK_ID = "lock#reconcile"
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)
T = TypeVar("T")

_serializer = TypeSerializer()


def to_dynamodb(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain JSON item as DynamoDB attribute values (floats as exact decimals)."""
    return {key: _serializer.serialize(_decimals(value)) for key, value in item.items()}


def from_dynamodb(item: Mapping[str, Any]) -> Item:
    """DynamoDB attribute values as a plain JSON item (integral numbers as ints), read straight
    from DynamoDB's JSON: several times faster than botocore's parse and TypeDeserializer."""
    return plain_item(item)


def _raw_items(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> None:
    """Hand Scan and Query items over as DynamoDB's own JSON, skipping botocore's slow parse
    of every attribute; ``from_dynamodb`` reads them."""
    if response_dict.get("status_code") != 200:
        return
    body = json.loads(response_dict["body"])
    items = body.pop("Items", None)
    if items is None:
        return
    customized_response_dict["Items"] = items
    response_dict["body"] = json.dumps(body).encode()


def _decimals(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decimals(v) for v in value]
    return value


class DynamoDBStore:
    """A StateStore in DynamoDB tables."""

    max_group_size = 50  # each write also puts its audit entry; TransactWriteItems takes 100

    def __init__(
        self,
        client: Any = None,
        *,
        tables: Mapping[str, str] | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 8,
    ) -> None:
        self.tables = dict(table_names() if tables is None else table_names(tables))
        self.region = (
            region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        ) or DEFAULT_REGION
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        self._sleep = sleep
        self._max_attempts = max_attempts
        self.calls: Counter[str] = Counter()
        if client is None:
            config = Config(
                connect_timeout=3,
                read_timeout=10,
                retries={"mode": "standard", "max_attempts": 2},
            )
            client = boto3.client(
                "dynamodb", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        self.client = client
        self.client.meta.events.register("before-call.dynamodb", self._count)
        for operation in ("Scan", "Query"):
            self.client.meta.events.register(f"before-parse.dynamodb.{operation}", _raw_items)

    def _count(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            self.calls[model.name] += 1

    def table(self, kind: RecordKind) -> str:
        return self.tables[kind.table_env]

    @property
    def audit_table(self) -> str:
        return self.tables[AUDIT_TABLE[0]]

    @property
    def control_table(self) -> str:
        return self.tables[CONTROL_TABLE[0]]

    def describe(self) -> str:
        endpoint = f", endpoint {self.endpoint_url}" if self.endpoint_url else ""
        names = ", ".join(self.tables[kind.table_env] for kind in RecordKind)
        return f"DynamoDB (region {self.region}{endpoint}): tables {names}"

    def close(self) -> None:
        self.client.close()

    # -- retries --------------------------------------------------------------------------------

    def _call(self, operation: Callable[[], T]) -> T:
        """Run one DynamoDB call, retrying throttling and transient failures with backoff."""
        for attempt in range(1, self._max_attempts + 1):
            try:
                return operation()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "ResourceNotFoundException":
                    raise TablesMissingError(self._missing_tables()) from None
                transient = code in RETRYABLE_CODES or _transaction_conflict(exc)
                if not transient or attempt == self._max_attempts:
                    if transient:
                        raise StoreUnavailableError(
                            f"DynamoDB kept failing ({code}) after {attempt} attempts"
                        ) from exc
                    raise
            except (ConnectionError, ReadTimeoutError, BotoCoreError) as exc:
                if attempt == self._max_attempts:
                    raise StoreUnavailableError(
                        f"cannot reach DynamoDB at {self.endpoint_url or self.region}: {exc}"
                    ) from exc
            # Exponential backoff with full jitter: 50 ms, 100 ms, ... capped at 5 s.
            self._sleep(random.uniform(0, min(5.0, 0.05 * 2 ** (attempt - 1))))
        raise AssertionError("unreachable")

    def _missing_tables(self) -> list[str]:
        missing = []
        for name in self.tables.values():
            try:
                self.client.describe_table(TableName=name)
            except ClientError:
                missing.append(name)
        return missing

    # -- bootstrap ------------------------------------------------------------------------------

    def bootstrap(self) -> list[str]:
        done: list[str] = []
        specs: list[tuple[str, list[tuple[str, str]]]] = [
            (self.table(kind), [(kind.key, "HASH")]) for kind in RecordKind
        ]
        specs.append((self.audit_table, [("record", "HASH"), ("audit_id", "RANGE")]))
        specs.append((self.control_table, [("record_id", "HASH")]))
        for name, keys in specs:
            if self._table_exists(name):
                done.append(f"table {name} exists")
            else:
                self._call(
                    lambda name=name, keys=keys: self.client.create_table(  # type: ignore[misc]
                        TableName=name,
                        BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": a, "KeyType": t} for a, t in keys],
                        AttributeDefinitions=[
                            {"AttributeName": a, "AttributeType": "S"} for a, _ in keys
                        ],
                    )
                )
                self.client.get_waiter("table_exists").wait(
                    TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
                )
                done.append(f"created table {name} (on-demand billing)")
            done.extend(self._ensure_recovery(name))
        done.extend(self._ensure_ttl(self.control_table))
        return done

    def _table_exists(self, name: str) -> bool:
        try:
            self._call(lambda: self.client.describe_table(TableName=name))
        except TablesMissingError:
            return False
        return True

    def _ensure_recovery(self, name: str) -> list[str]:
        backups = self._call(lambda: self.client.describe_continuous_backups(TableName=name))
        description = backups.get("ContinuousBackupsDescription", {})
        status = description.get("PointInTimeRecoveryDescription", {})
        if status.get("PointInTimeRecoveryStatus") == "ENABLED":
            return []
        self._call(
            lambda: self.client.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
        )
        return [f"enabled point-in-time recovery on {name}"]

    def _ensure_ttl(self, name: str) -> list[str]:
        ttl = self._call(lambda: self.client.describe_time_to_live(TableName=name))
        if ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
            return []
        self._call(
            lambda: self.client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
            )
        )
        return [f"enabled TTL (attribute ttl) on {name}"]

    # -- records --------------------------------------------------------------------------------

    def _scan(self, table: str) -> Iterator[Item]:
        start: dict[str, Any] | None = None
        while True:
            arguments: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
            if start:
                arguments["ExclusiveStartKey"] = start
            page = self._call(lambda arguments=arguments: self.client.scan(**arguments))  # type: ignore[misc]
            for raw in page.get("Items", []):
                yield from_dynamodb(raw)
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def read_records(self, kind: RecordKind) -> dict[str, StoredRecord]:
        records = {}
        for item in self._scan(self.table(kind)):
            name = str(item[kind.key])
            records[name] = StoredRecord(kind, name, item)
        return dict(sorted(records.items()))

    def apply_writes(self, writes: Sequence[Write], token: str) -> None:
        if len(writes) > self.max_group_size:
            raise ValueError(f"a group holds at most {self.max_group_size} writes")
        if not writes:
            return
        now = format_time(datetime.now(UTC))
        actions: list[dict[str, Any]] = []
        owners: list[str] = []  # the record each action belongs to, for cancellation reasons
        for write in writes:
            actions.append(self._action(write, now))
            owners.append(f"{write.kind.label}/{write.name}")
            if write.audit is not None:
                audit_id = f"{write.audit.at}#{uuid.uuid4().hex}"
                actions.append(
                    {
                        "Put": {
                            "TableName": self.audit_table,
                            "Item": to_dynamodb(write.audit.to_item(audit_id)),
                            "ConditionExpression": "attribute_not_exists(audit_id)",
                        }
                    }
                )
                owners.append("")
        # DynamoDB answers a repeated token with the first outcome only if every parameter is
        # the same, so the token covers the exact request: retries of this call (same actions)
        # are idempotent, and a new attempt with new parameters is a new request.
        digest = hashlib.sha256(token.encode())
        digest.update(json.dumps(actions, sort_keys=True, default=str).encode())
        request_token = digest.hexdigest()[:36]
        try:
            self._call(
                lambda: self.client.transact_write_items(
                    TransactItems=actions, ClientRequestToken=request_token
                )
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons", [])
            failed = [
                owners[i]
                for i, reason in enumerate(reasons)
                if reason.get("Code") == "ConditionalCheckFailed" and i < len(owners) and owners[i]
            ]
            raise WriteConflictError(failed, "a condition failed") from None

    def _action(self, write: Write, now: str) -> dict[str, Any]:
        table, key = self.table(write.kind), {write.kind.key: {"S": write.name}}
        if write.action == "create":
            item = {**write.set_attributes, write.kind.key: write.name}
            return {
                "Put": {
                    "TableName": table,
                    "Item": to_dynamodb(item),
                    "ConditionExpression": "attribute_not_exists(#key)",
                    "ExpressionAttributeNames": {"#key": write.kind.key},
                }
            }
        names = {
            "#version": "version",
            "#managed": "managed_by",
            "#shutdown": "emergency_shutdown",
            "#expires": "shutdown_expires_at",
        }
        values: dict[str, Any] = {
            ":expected": write.expected_version,
            ":managed": MANAGED_BY,
            ":true": True,
            ":now": now,
        }
        condition = (
            "#version = :expected AND #managed = :managed AND (attribute_not_exists(#shutdown) "
            "OR #shutdown <> :true OR (attribute_exists(#expires) AND #expires <= :now))"
        )
        if write.action == "delete":
            names["#protected"] = "deletion_protection"
            values[":false"] = False
            condition += " AND (attribute_not_exists(#protected) OR #protected = :false)"
            return {
                "Delete": {
                    "TableName": table,
                    "Key": key,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": to_dynamodb(values),
                }
            }
        sets, removes = [], []
        for index, (attribute, value) in enumerate(sorted(write.set_attributes.items())):
            if attribute == write.kind.key:
                continue
            names[f"#s{index}"] = attribute
            values[f":s{index}"] = value
            sets.append(f"#s{index} = :s{index}")
        for index, attribute in enumerate(write.remove_attributes):
            names[f"#r{index}"] = attribute
            removes.append(f"#r{index}")
        expression = ("SET " + ", ".join(sets)) if sets else ""
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        return {
            "Update": {
                "TableName": table,
                "Key": key,
                "UpdateExpression": expression.strip(),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": to_dynamodb(values),
            }
        }

    # -- the lock -------------------------------------------------------------------------------

    def acquire_lock(self, holder: str, reason: str, ttl_seconds: int, now: datetime) -> Lock:
        expires = now + timedelta(seconds=ttl_seconds)
        lock = Lock(holder, format_time(now), format_time(expires), reason)
        item = {
            "record_id": LOCK_ID,
            **lock.to_item(),
            "ttl": int((expires + timedelta(days=1)).timestamp()),
        }
        try:
            self._call(
                lambda: self.client.put_item(
                    TableName=self.control_table,
                    Item=to_dynamodb(item),
                    ConditionExpression="attribute_not_exists(record_id) OR expires_at < :now",
                    ExpressionAttributeValues={":now": {"S": format_time(now)}},
                )
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            current = self.read_lock()
            raise LockHeldError(current or lock) from None
        return lock

    def release_lock(self, holder: str) -> bool:
        try:
            self._call(
                lambda: self.client.delete_item(
                    TableName=self.control_table,
                    Key={"record_id": {"S": LOCK_ID}},
                    ConditionExpression="holder = :holder",
                    ExpressionAttributeValues={":holder": {"S": holder}},
                )
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def read_lock(self) -> Lock | None:
        answer = self._call(
            lambda: self.client.get_item(
                TableName=self.control_table,
                Key={"record_id": {"S": LOCK_ID}},
                ConsistentRead=True,
            )
        )
        raw = answer.get("Item")
        if not raw:
            return None
        return Lock.from_item(from_dynamodb(raw))

    def force_unlock(self, by: str, reason: str, now: datetime) -> Lock | None:
        answer = self._call(
            lambda: self.client.delete_item(
                TableName=self.control_table,
                Key={"record_id": {"S": LOCK_ID}},
                ReturnValues="ALL_OLD",
            )
        )
        old = from_dynamodb(answer.get("Attributes", {}))
        removed = Lock.from_item(old) if old else None
        at = format_time(now)
        entry: Item = {
            "record": "lock/reconcile",
            "audit_id": f"{at}#{uuid.uuid4().hex}",
            "action": "force-unlock",
            "actor": by,
            "at": at,
            "reason": reason,
        }
        if removed is not None:
            entry["before"] = removed.to_item()
        self._call(
            lambda: self.client.put_item(TableName=self.audit_table, Item=to_dynamodb(entry))
        )
        return removed

    # -- audit ----------------------------------------------------------------------------------

    def read_audit(self, record: str | None = None, limit: int = 100) -> list[Item]:
        if record is None:
            entries = sorted(
                self._scan(self.audit_table), key=lambda e: e["audit_id"], reverse=True
            )
            return entries[:limit]
        answer = self._call(
            lambda: self.client.query(
                TableName=self.audit_table,
                KeyConditionExpression="#record = :record",
                ExpressionAttributeNames={"#record": "record"},
                ExpressionAttributeValues={":record": {"S": record}},
                ScanIndexForward=False,
                Limit=limit,
                ConsistentRead=True,
            )
        )
        return [from_dynamodb(raw) for raw in answer.get("Items", [])]


def _transaction_conflict(exc: ClientError) -> bool:
    """A transaction cancelled only because another transaction touched the same items."""
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return False
    codes = {r.get("Code") for r in exc.response.get("CancellationReasons", [])}
    return "TransactionConflict" in codes and "ConditionalCheckFailed" not in codes
