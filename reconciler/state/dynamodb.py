"""DynamoDB through boto3: the production store, in the original tables and field names.

Every condition of a write is a DynamoDB condition expression, checked by DynamoDB in the write
itself; a group of writes is one ``TransactWriteItems`` call with an idempotency token. Every call
goes through the one retry helper of ``reconciler.state.dynamodb_client``; the telemetry, cost
and controller records are in ``reconciler.state.dynamodb_telemetry``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, WaiterError

from reconciler.runtime.sources import (
    ASSIGNMENTS_TABLE,
    OVERRIDES_ID,
    STAMP_ID,
    TELEMETRY_TABLE,
)
from reconciler.state.dynamodb_audit import DynamoDBAudit, audit_index
from reconciler.state.dynamodb_client import (
    BACKOFF_CAP,
    CONDITION_FAILED,
    DynamoDBRequestError,
    backoff,
    cancellation_reasons,
    error_code,
    from_dynamodb,
    now_text,
    to_dynamodb,
)
from reconciler.state.records import (
    AB_RESULTS_TABLE,
    AUDIT_TABLE,
    CONTROL_TABLE,
    COST_ALERTS_TABLE,
    COST_METRICS_TABLE,
    MANAGED_BY,
    OVERRIDES_RECORD,
    AuditEntry,
    Item,
    Lock,
    RecordKind,
    StoredRecord,
    Write,
    format_time,
)
from reconciler.state.store import (
    LockHeldError,
    LockLostError,
    StoreBugError,
    StoreUnavailableError,
    TablesMissingError,
    WriteConflictError,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import (
        AttributeDefinitionTypeDef,
        CreateTableInputTypeDef,
        GlobalSecondaryIndexTypeDef,
        KeySchemaElementTypeDef,
        TransactWriteItemTypeDef,
    )

__all__ = [  # what callers have always imported from here
    "BACKOFF_CAP",
    "DynamoDBRequestError",
    "DynamoDBStore",
    "backoff",
    "from_dynamodb",
    "to_dynamodb",
]

LOCK_ID = "lock#reconcile"
LOCK_RECORD = "lock/reconcile"  # the audit trail's name for the lease
TTL_ATTRIBUTE = "ttl"
LOCK_TTL_GRACE = timedelta(days=1)  # DynamoDB removes a dead lease's item a day after it expired

# Every table's key, by the table's environment variable: string attributes, the partition key
# first. ``bootstrap`` creates the tables with these keys, and the deployment template too.
TABLE_KEYS: dict[str, list[KeySchemaElementTypeDef]] = {
    **{kind.table_env: [{"AttributeName": kind.key, "KeyType": "HASH"}] for kind in RecordKind},
    AUDIT_TABLE[0]: [
        {"AttributeName": "record", "KeyType": "HASH"},
        {"AttributeName": "audit_id", "KeyType": "RANGE"},
    ],
    CONTROL_TABLE[0]: [{"AttributeName": "record_id", "KeyType": "HASH"}],
    TELEMETRY_TABLE[0]: [
        {"AttributeName": "shard_key", "KeyType": "HASH"},
        {"AttributeName": "writer", "KeyType": "RANGE"},
    ],
    COST_METRICS_TABLE[0]: [
        {"AttributeName": "date", "KeyType": "HASH"},
        {"AttributeName": "request_type", "KeyType": "RANGE"},
    ],
    COST_ALERTS_TABLE[0]: [{"AttributeName": "alert_id", "KeyType": "HASH"}],
    ASSIGNMENTS_TABLE[0]: [
        {"AttributeName": "assignment_key", "KeyType": "HASH"},
        {"AttributeName": "user_hash", "KeyType": "RANGE"},
    ],
    AB_RESULTS_TABLE[0]: [
        {"AttributeName": "experiment_id", "KeyType": "HASH"},
        {"AttributeName": "result_key", "KeyType": "RANGE"},
    ],
}
# The tables whose items expire (attribute ``TTL_ATTRIBUTE``): the control table's dead
# leases, the telemetry shards and the experiment assignments.
TTL_TABLES = (CONTROL_TABLE[0], TELEMETRY_TABLE[0], ASSIGNMENTS_TABLE[0])


def table_schemas(tables: Mapping[str, str]) -> dict[str, list[KeySchemaElementTypeDef]]:
    """Each table's key schema by table name; ``tables`` maps the variables to the names."""
    return {tables[variable]: keys for variable, keys in TABLE_KEYS.items()}


class DynamoDBStore(DynamoDBAudit):
    """A StateStore in DynamoDB tables."""

    # Each write also puts its audit entry, and a group may check the overrides record once:
    # 49 x 2 + 1 actions, within the 100 TransactWriteItems takes.
    max_group_size = 49

    def _key_schemas(self) -> dict[str, list[KeySchemaElementTypeDef]]:
        return table_schemas(self.tables)

    def bootstrap(self) -> list[str]:
        """Create the missing tables (on-demand billing), wait until they are active, and turn
        on point-in-time recovery everywhere and TTL on ``TTL_TABLES``. Tables that exist are
        checked and otherwise left as they are."""
        done: list[str] = []
        changed = False
        waiting: list[str] = []
        for name, keys in self._key_schemas().items():
            found = self._describe_table(name)
            if found is None:
                done.append(self._create_table(name, keys))
                waiting.append(name)
                changed = True
                continue
            actual = [dict(element) for element in found.get("KeySchema", [])]
            if actual != [dict(element) for element in keys]:
                raise DynamoDBRequestError(
                    f"table {name} exists with key {_key_text(actual)}, expected "
                    f"{_key_text(keys)}: point the table variables at other tables, or remove it"
                )
            billing = found.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
            note = "" if billing == "PAY_PER_REQUEST" else " (provisioned capacity, left as is)"
            done.append(f"table {name} exists{note}")
            if found.get("TableStatus") != "ACTIVE":
                waiting.append(name)
            added = (
                self._ensure_indexes(name, found) if found.get("TableStatus") == "ACTIVE" else None
            )
            if added:
                done.append(added)
                changed = True
        for name in waiting:
            self._wait_active(name)
        settings = [self._ensure_recovery(name) for name in self._key_schemas()]
        settings.extend(self._ensure_ttl(self.tables[variable]) for variable in TTL_TABLES)
        for line in filter(None, settings):
            done.append(line)
            changed = changed or line.startswith("enabled ")
        if not changed:
            done.append("nothing to change: every table is in place")
        return done

    def _create_table(self, name: str, keys: list[KeySchemaElementTypeDef]) -> str:
        indexes = self._indexes(name)
        request: CreateTableInputTypeDef = {
            "TableName": name,
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": keys,
            "AttributeDefinitions": attribute_definitions(keys, indexes),
        }
        if indexes:
            request["GlobalSecondaryIndexes"] = indexes
        try:
            self._call(
                "CreateTable",
                lambda: self.client.create_table(**request),
                handled={"ResourceInUseException"},
            )
        except ClientError:  # created by someone else since we looked
            return f"table {name} is being created by another process"
        return f"created table {name} (key {_key_text(keys)}, on-demand billing)"

    def _indexes(self, name: str) -> list[GlobalSecondaryIndexTypeDef]:
        variable = next((v for v, n in self.tables.items() if n == name), "")
        return table_indexes(variable)

    def _ensure_indexes(self, name: str, found: Mapping[str, Any]) -> str | None:
        """Add the indexes an existing table lacks (DynamoDB fills them in the background)."""
        have = {i["IndexName"] for i in found.get("GlobalSecondaryIndexes", [])}
        missing = [i for i in self._indexes(name) if i["IndexName"] not in have]
        if not missing:
            return None
        index = missing[0]  # one index per UpdateTable; there is one
        self._call(
            "UpdateTable",
            lambda: self.client.update_table(
                TableName=name,
                AttributeDefinitions=attribute_definitions([], [index]),
                GlobalSecondaryIndexUpdates=[{"Create": index}],
            ),
            tables=[name],
        )
        return (
            f"enabled index {index['IndexName']} on {name} (entries written from now on; "
            "DynamoDB builds it in the background)"
        )

    def _wait_active(self, name: str) -> None:
        try:
            self.client.get_waiter("table_exists").wait(
                TableName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150}
            )
        except WaiterError as exc:
            raise StoreUnavailableError(f"table {name} did not become active: {exc}") from exc

    def _ensure_recovery(self, name: str) -> str | None:
        answer = self._call(
            "DescribeContinuousBackups",
            lambda: self.client.describe_continuous_backups(TableName=name),
            tables=[name],
        )
        description = answer.get("ContinuousBackupsDescription", {})
        recovery = description.get("PointInTimeRecoveryDescription", {})
        if recovery.get("PointInTimeRecoveryStatus") == "ENABLED":
            return None
        # A table created a moment ago may answer ContinuousBackupsUnavailable for a while.
        self._call(
            "UpdateContinuousBackups",
            lambda: self.client.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            ),
            retry_codes={"ContinuousBackupsUnavailableException"},
            attempts=max(self._max_attempts, 20),
            tables=[name],
        )
        return f"enabled point-in-time recovery on {name}"

    def _ensure_ttl(self, name: str) -> str | None:
        answer = self._call(
            "DescribeTimeToLive",
            lambda: self.client.describe_time_to_live(TableName=name),
            tables=[name],
        )
        ttl = answer.get("TimeToLiveDescription", {})
        status = ttl.get("TimeToLiveStatus", "DISABLED")
        if status in ("ENABLED", "ENABLING"):
            attribute = ttl.get("AttributeName")
            if attribute == TTL_ATTRIBUTE:
                return None
            return f"TTL on {name} uses attribute {attribute}, not {TTL_ATTRIBUTE}: left as is"
        if status == "DISABLING":
            return f"TTL on {name} is being disabled: run bootstrap again later to enable it"
        self._call(
            "UpdateTimeToLive",
            lambda: self.client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            ),
            tables=[name],
        )
        return f"enabled TTL (attribute {TTL_ATTRIBUTE}) on {name}"

    # -- records ----------------------------------------------------------------------------

    def read_records(self, kind: RecordKind) -> dict[str, StoredRecord]:
        records = {}
        for item in self._scan(self.table(kind)):
            name = str(item[kind.key])
            records[name] = StoredRecord(kind, name, item)
        return dict(sorted(records.items()))

    def read_record(self, kind: RecordKind, name: str) -> StoredRecord | None:
        table = self.table(kind)
        answer = self._call(
            "GetItem",
            lambda: self.client.get_item(
                TableName=table, Key={kind.key: {"S": name}}, ConsistentRead=True
            ),
            tables=[table],
        )
        raw = answer.get("Item")
        return None if raw is None else StoredRecord(kind, name, from_dynamodb(raw))

    def apply_writes(
        self, writes: Sequence[Write], token: str, overrides_version: int | None = None
    ) -> None:
        if len(writes) > self.max_group_size:
            raise ValueError(f"a group holds at most {self.max_group_size} writes")
        seen: set[tuple[RecordKind, str]] = set()
        for write in writes:
            if write.action != "create" and write.expected_version is None:
                raise ValueError(f"{write.action} of {write.name} needs the expected version")
            if (write.kind, write.name) in seen:
                raise ValueError(f"{write.kind.label}/{write.name} is written twice in one group")
            seen.add((write.kind, write.name))
        if not writes:
            return
        now = now_text()
        actions: list[TransactWriteItemTypeDef] = []
        owners: list[Write | str | None] = []  # the write each action belongs to, by position
        if overrides_version is not None:
            actions.append(self._overrides_check(overrides_version))
            owners.append(OVERRIDES_RECORD)
        for write in writes:
            actions.append(self._action(write, now))
            owners.append(write)
            if write.audit is not None:
                audit_id = f"{write.audit.at}#{uuid.uuid4().hex}"
                actions.append(
                    {
                        "Put": {
                            "TableName": self.audit_table,
                            "Item": to_dynamodb(write.audit.to_item(audit_id)),
                            "ConditionExpression": "attribute_not_exists(#audit_id)",
                            "ExpressionAttributeNames": {"#audit_id": "audit_id"},
                        }
                    }
                )
                owners.append(None)
        # The configuration's stamp, in the same transaction: clients reread when it moves.
        stamp = {"record_id": STAMP_ID, "stamp": token, "applied_at": now}
        actions.append({"Put": {"TableName": self.control_table, "Item": to_dynamodb(stamp)}})
        owners.append(None)
        request_token = _request_token(token, actions)
        tables = sorted({self.table(w.kind) for w in writes} | {self.audit_table})
        tables = sorted({*tables, self.control_table})
        try:
            self._call(
                "TransactWriteItems",
                lambda: self.client.transact_write_items(
                    TransactItems=actions, ClientRequestToken=request_token
                ),
                handled={"TransactionCanceledException", "IdempotentParameterMismatchException"},
                tables=tables,
            )
        except ClientError as exc:
            if error_code(exc) == "IdempotentParameterMismatchException":
                raise StoreBugError(f"idempotency token {request_token} reused") from exc
            raise self._cancelled(exc, owners, now, tables) from None

    def _overrides_check(self, version: int) -> TransactWriteItemTypeDef:
        """The overrides record is still at ``version`` (0: absent, or without a version)."""
        condition = "#version = :expected"
        if version == 0:
            condition = "attribute_not_exists(#version) OR #version = :expected"
        return {
            "ConditionCheck": {
                "TableName": self.control_table,
                "Key": {"record_id": {"S": OVERRIDES_ID}},
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":expected": {"N": str(version)}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _cancelled(
        self,
        exc: ClientError,
        owners: Sequence[Write | str | None],
        now: str,
        tables: Sequence[str],
    ) -> Exception:
        """What a cancelled transaction means: a condition failed (the records it names), a
        table is missing, or DynamoDB will not take the request (too large, invalid)."""
        failed: list[str] = []
        details: list[str] = []
        others: list[str] = []
        for index, reason in enumerate(cancellation_reasons(exc)):
            code = str(reason.get("Code"))
            write = owners[index] if index < len(owners) else None
            if code == "ConditionalCheckFailed":
                raw = reason.get("Item")
                item = from_dynamodb(raw) if raw else None
                if write is None:  # an audit id taken already: only a retry of a landed group
                    details.append("an audit entry exists already")
                    continue
                if isinstance(write, str):  # the overrides record moved since apply read it
                    failed.append(write)
                    found = int((item or {}).get("version", 0))
                    details.append(f"{write} is at version {found} now")
                    continue
                address = f"{write.kind.label}/{write.name}"
                failed.append(address)
                details.append(f"{address} {_why(write, item, now)}")
            elif code == "ResourceNotFoundException":
                return TablesMissingError(self._missing_tables(tables))
            elif code not in ("None", ""):
                message = reason.get("Message", "")
                others.append(f"{code}: {message}" if message else code)
        if details:
            return WriteConflictError(failed, "; ".join(details))
        message = exc.response.get("Error", {}).get("Message", "")
        return DynamoDBRequestError(
            "DynamoDB cancelled the transaction, nothing was written: "
            + ("; ".join(others) or message)
        )

    def _action(self, write: Write, now: str) -> TransactWriteItemTypeDef:
        table = self.table(write.kind)
        key = write.kind.key
        if write.action == "create":
            return {
                "Put": {
                    "TableName": table,
                    "Item": to_dynamodb({**write.set_attributes, key: write.name}),
                    "ConditionExpression": "attribute_not_exists(#key)",
                    "ExpressionAttributeNames": {"#key": key},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        names = {
            "#version": "version",
            "#managed_by": "managed_by",
            "#shutdown": "emergency_shutdown",
            "#expires": "shutdown_expires_at",
        }
        values: dict[str, Any] = {
            ":expected": write.expected_version,
            ":reconciler": MANAGED_BY,
            ":true": True,
            ":now": now,
        }
        # A record without a version is at version 0 (``StoredRecord.version``).
        version = "#version = :expected"
        if write.expected_version == 0:
            version = "(attribute_not_exists(#version) OR #version = :expected)"
        condition = (
            f"{version} AND #managed_by = :reconciler AND "
            "(attribute_not_exists(#shutdown) OR #shutdown <> :true OR "
            "(attribute_exists(#expires) AND #expires <= :now))"
        )
        item_key = {key: {"S": write.name}}
        if write.action == "delete":
            names["#protected"] = "deletion_protection"
            values[":false"] = False
            condition += " AND (attribute_not_exists(#protected) OR #protected = :false)"
            return {
                "Delete": {
                    "TableName": table,
                    "Key": item_key,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": to_dynamodb(values),
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        sets = {k: v for k, v in write.set_attributes.items() if k != key}
        removes = [a for a in dict.fromkeys(write.remove_attributes) if a != key]
        if set(sets) & set(removes):
            both = ", ".join(sorted(set(sets) & set(removes)))
            raise ValueError(f"{write.name}: {both} both set and removed")
        clauses = []
        for index, (attribute, value) in enumerate(sets.items()):
            names[f"#s{index}"] = attribute
            values[f":s{index}"] = value
            clauses.append(f"#s{index} = :s{index}")
        expression = f"SET {', '.join(clauses)}" if clauses else ""
        for index, attribute in enumerate(removes):
            names[f"#r{index}"] = attribute
        if removes:
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(removes)))
        if not expression:  # nothing to change: still check the record, atomically with the rest
            return {
                "ConditionCheck": {
                    "TableName": table,
                    "Key": item_key,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": to_dynamodb(values),
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        return {
            "Update": {
                "TableName": table,
                "Key": item_key,
                "UpdateExpression": expression.strip(),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": to_dynamodb(values),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    # -- the lease --------------------------------------------------------------------------

    def acquire_lock(
        self,
        holder: str,
        reason: str,
        ttl_seconds: float,
        now: datetime,
        token: str | None = None,
    ) -> Lock:
        """One conditional put: no lease, a lease that has run out, or this caller's own lease
        (``token``): the retry of a put whose answer was lost passes its own condition."""
        lock = Lock.taken(holder, reason, ttl_seconds, now, token or uuid.uuid4().hex)
        for _ in range(3):  # the holder may release between our put and our read
            try:
                self._put_lock(
                    lock,
                    "attribute_not_exists(#id) OR #expires < :now OR #token = :token",
                    {"#id": "record_id", "#expires": "expires_at", "#token": "token"},
                    {":now": {"S": format_time(now)}, ":token": {"S": lock.token}},
                )
            except ClientError:
                current = self.read_lock()
                if current is not None:
                    raise LockHeldError(current, now) from None
                continue
            return lock
        raise StoreUnavailableError("the lock kept changing hands; try again")

    def renew_lock(self, lock: Lock, ttl_seconds: float, now: datetime) -> Lock:
        """A put conditional on the lease still carrying ``lock.token`` (a PutItem, the one
        write the apply role may make on the lock)."""
        renewed = lock.renewed(now, ttl_seconds)
        try:
            self._put_lock(
                renewed,
                "#token = :token",
                {"#token": "token"},
                {":token": {"S": lock.token or "-"}},
            )
        except ClientError:
            raise LockLostError(lock, self.read_lock()) from None
        return renewed

    def _put_lock(
        self, lock: Lock, condition: str, names: dict[str, str], values: dict[str, Any]
    ) -> None:
        expires = datetime.fromisoformat(lock.expires_at)
        item = {
            "record_id": LOCK_ID,
            **lock.to_item(),
            TTL_ATTRIBUTE: int((expires + LOCK_TTL_GRACE).timestamp()),
        }
        self._call(
            "PutItem",
            lambda: self.client.put_item(
                TableName=self.control_table,
                Item=to_dynamodb(item),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            ),
            handled={CONDITION_FAILED},
            tables=[self.control_table],
        )

    def release_lock(self, holder: str, token: str | None = None) -> bool:
        condition = "#holder = :holder"
        names = {"#holder": "holder"}
        values = {":holder": {"S": holder}}
        if token is not None:
            condition += " AND #token = :token"
            names["#token"] = "token"
            values[":token"] = {"S": token}
        try:
            self._call(
                "DeleteItem",
                lambda: self.client.delete_item(
                    TableName=self.control_table,
                    Key={"record_id": {"S": LOCK_ID}},
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                ),
                handled={CONDITION_FAILED},
                tables=[self.control_table],
            )
        except ClientError:
            return False
        return True

    def read_lock(self) -> Lock | None:
        item = self.read_control(LOCK_ID)
        return Lock.from_item(item) if item else None

    def force_unlock(self, by: str, reason: str, now: datetime) -> Lock | None:
        answer = self._call(
            "DeleteItem",
            lambda: self.client.delete_item(
                TableName=self.control_table,
                Key={"record_id": {"S": LOCK_ID}},
                ReturnValues="ALL_OLD",
            ),
            tables=[self.control_table],
        )
        old = answer.get("Attributes")
        removed = Lock.from_item(from_dynamodb(old)) if old else None
        at = format_time(now)
        entry = AuditEntry(
            LOCK_RECORD,
            "force-unlock",
            by,
            at,
            reason,
            before=removed.to_item() if removed is not None else None,
        ).to_item(f"{at}#{uuid.uuid4().hex}")
        self._call(
            "PutItem",
            lambda: self.client.put_item(TableName=self.audit_table, Item=to_dynamodb(entry)),
            tables=[self.audit_table],
        )
        return removed

    # -- the operators' overrides -----------------------------------------------------------

    def read_overrides(self) -> Item | None:
        return self.read_control(OVERRIDES_ID)

    def write_overrides(self, record: Item, expected_version: int, audit: AuditEntry) -> None:
        try:
            self.write_control(OVERRIDES_ID, record, expected_version, audit)
        except WriteConflictError:
            raise WriteConflictError([OVERRIDES_RECORD], "changed meanwhile") from None


def table_indexes(variable: str) -> list[GlobalSecondaryIndexTypeDef]:
    """A table's global indexes: the audit table's by month (the newest entries)."""
    return [audit_index()] if variable == AUDIT_TABLE[0] else []


def attribute_definitions(
    keys: Sequence[KeySchemaElementTypeDef], indexes: Sequence[GlobalSecondaryIndexTypeDef]
) -> list[AttributeDefinitionTypeDef]:
    """The string attributes the table's key and its indexes' keys name, each once."""
    names = [k["AttributeName"] for k in keys]
    names += [k["AttributeName"] for i in indexes for k in i["KeySchema"]]
    return [{"AttributeName": n, "AttributeType": "S"} for n in dict.fromkeys(names)]


def _request_token(token: str, actions: Sequence[TransactWriteItemTypeDef]) -> str:
    """The ``ClientRequestToken`` of one group: the caller's token, bound to this exact request.

    DynamoDB answers a repeated token with the first outcome only when every parameter is the
    same, and refuses it (IdempotentParameterMismatch) for ten minutes otherwise. Each attempt
    of this call sends the same request and token, so a retry after a lost answer is a no-op; a
    new call for the same group (a rerun of the plan) carries new audit ids and a new time, so
    it is a new request, which the records' own version conditions make safe.
    """
    digest = hashlib.sha256(token.encode())
    digest.update(json.dumps(actions, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:36]


def _why(write: Write, item: Item | None, now: str) -> str:
    """Why a write's condition failed, from the item DynamoDB returned with the failure."""
    if write.action == "create":
        return "exists already"
    if item is None:
        return "does not exist"
    record = StoredRecord(write.kind, write.name, item)
    if record.version != write.expected_version:
        return f"is at version {record.version}, the plan expected {write.expected_version}"
    if not record.managed:
        return f"is not managed by the reconciler (managed_by {item.get('managed_by')!r})"
    if record.override_active(now):
        by = item.get("shutdown_by", "an operator")
        return f"is held by an emergency shutdown ({by}, since {item.get('shutdown_at', '?')})"
    if write.action == "delete" and record.deletion_protected:
        return "has deletion protection"
    return "failed its condition"


def _key_text(keys: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{k['AttributeName']} ({k['KeyType']})" for k in keys)
