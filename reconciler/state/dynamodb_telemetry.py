"""DynamoDB's telemetry shards, cost metrics, cost alerts and controller records.

A mixin of ``DynamoDBStore``: every call goes through the store's one retry helper. Shards are
read with one Query per partition key of a bucket (``SHARD_SPREAD`` of them); the cost-metrics
rows are the original table's items per date and request type, set to absolute totals so a
repeated guard run writes the same values, and never moved backwards by a slower one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from reconciler.runtime.attributes import plain_item
from reconciler.runtime.sources import TELEMETRY_TABLE
from reconciler.runtime.telemetry import Shard, dynamodb_item, partition_keys
from reconciler.state.dynamodb_client import DynamoDBBase
from reconciler.state.records import (
    COST_ALERTS_TABLE,
    COST_METRICS_TABLE,
    AuditEntry,
    Item,
    exact_cost,
)
from reconciler.state.store import StoreUnavailableError, WriteConflictError

if TYPE_CHECKING:
    pass

T = TypeVar("T")
CONDITION_FAILED = "ConditionalCheckFailedException"


class DynamoDBTelemetry(DynamoDBBase):
    """Telemetry and controller records in DynamoDB."""

    @property
    def telemetry_table(self) -> str:
        return self.tables[TELEMETRY_TABLE[0]]

    @property
    def cost_metrics_table(self) -> str:
        return self.tables[COST_METRICS_TABLE[0]]

    @property
    def cost_alerts_table(self) -> str:
        return self.tables[COST_ALERTS_TABLE[0]]

    # -- control records ------------------------------------------------------------------------

    def read_control(self, record_id: str) -> Item | None:
        """One record of the control table (the lock, the overrides, a controller's state),
        read consistently."""
        answer = self._call(
            "GetItem",
            lambda: self.client.get_item(
                TableName=self.control_table,
                Key={"record_id": {"S": record_id}},
                ConsistentRead=True,
            ),
            tables=[self.control_table],
        )
        raw = answer.get("Item")
        return plain_item(raw) if raw else None

    def write_control(
        self, record_id: str, record: Item, expected_version: int, audit: AuditEntry | None
    ) -> None:
        condition = (
            "attribute_not_exists(record_id) OR #version = :expected"
            if expected_version == 0
            else "#version = :expected"
        )
        put: dict[str, Any] = {
            "TableName": self.control_table,
            "Item": dynamodb_item({**record, "record_id": record_id}),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#version": "version"},
            "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}},
        }
        conflict = WriteConflictError([f"control/{record_id}"], "changed meanwhile")
        if audit is None:
            try:
                self._call(
                    "PutItem",
                    lambda: self.client.put_item(**put),
                    handled={CONDITION_FAILED},
                    tables=[self.control_table],
                )
            except ClientError:
                raise conflict from None
            return
        entry: dict[str, Any] = {
            "TableName": self.audit_table,
            "Item": dynamodb_item(audit.to_item(f"{audit.at}#{uuid.uuid4().hex}")),
            "ConditionExpression": "attribute_not_exists(audit_id)",
        }
        try:
            self._call(
                "TransactWriteItems",
                lambda: self.client.transact_write_items(
                    TransactItems=[{"Put": put}, {"Put": entry}]  # type: ignore[typeddict-item]
                ),
                handled={"TransactionCanceledException"},
                tables=[self.control_table, self.audit_table],
            )
        except ClientError as exc:
            reasons = exc.response.get("CancellationReasons", [])
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                raise conflict from None
            detail = "; ".join(str(r.get("Code")) for r in reasons) or str(exc)
            raise StoreUnavailableError(
                f"DynamoDB refused the {record_id} write: {detail}"
            ) from None

    # -- telemetry shards -----------------------------------------------------------------------

    def write_shards(self, shards: Sequence[Shard]) -> None:
        """Each shard on its own: one refused does not keep the others out (raised after)."""
        failed: Exception | None = None
        for shard in shards:
            try:
                self._call(
                    "PutItem",
                    lambda shard=shard: self.client.put_item(  # type: ignore[misc]
                        TableName=self.telemetry_table,
                        Item=dynamodb_item(shard.to_item()),
                        ConditionExpression="attribute_not_exists(seq) OR seq < :seq",
                        ExpressionAttributeValues={":seq": {"N": str(shard.seq)}},
                    ),
                    handled={CONDITION_FAILED},
                    tables=[self.telemetry_table],
                )
            except ClientError:
                continue  # stored at this seq or a later one already
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def read_shards(self, bucket: str) -> list[Shard]:
        shards = []
        for key in partition_keys(bucket):
            for item in self._query(self.telemetry_table, "shard_key", key):
                shards.append(Shard.from_item(item))
        return sorted(shards, key=lambda s: s.writer)

    def _query(self, table: str, attribute: str, value: str) -> list[Item]:
        arguments: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "#key = :value",
            "ExpressionAttributeNames": {"#key": attribute},
            "ExpressionAttributeValues": {":value": {"S": value}},
            "ConsistentRead": True,
        }
        items: list[Item] = []
        while True:
            page = self._call(
                "Query",
                lambda arguments=arguments: self.client.query(**arguments),  # type: ignore[misc]
                tables=[table],
            )
            items.extend(plain_item(raw) for raw in page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if not start:
                return items
            arguments = {**arguments, "ExclusiveStartKey": start}

    # -- the original cost-metrics table ----------------------------------------------------------

    def write_cost_metrics(self, rows: Sequence[Item]) -> None:
        for row in rows:
            values = {k: v for k, v in row.items() if k not in ("date", "request_type")}
            names = {f"#a{i}": k for i, k in enumerate(values)}
            expression = "SET " + ", ".join(f"#a{i} = :a{i}" for i in range(len(values)))
            attribute_values = {
                f":a{i}": dynamodb_item({"v": (v)})["v"] for i, v in enumerate(values.values())
            }
            try:
                self._call(
                    "UpdateItem",
                    lambda row=row, names=names, expression=expression, av=attribute_values: (  # type: ignore[misc]
                        self.client.update_item(
                            TableName=self.cost_metrics_table,
                            Key={
                                "date": {"S": str(row["date"])},
                                "request_type": {"S": str(row["request_type"])},
                            },
                            UpdateExpression=expression,
                            ConditionExpression=(  # forward only; equal totals keep their time
                                "attribute_not_exists(#c) OR "
                                "(#c <= :c AND #n <= :n AND (#c < :c OR #n < :n))"
                            ),
                            ExpressionAttributeNames={
                                **names,
                                "#c": "cost_micros",
                                "#n": "total_requests",
                            },
                            ExpressionAttributeValues={
                                **av,
                                ":c": {"N": str(row["cost_micros"])},
                                ":n": {"N": str(row["total_requests"])},
                            },
                        )
                    ),
                    handled={CONDITION_FAILED},
                    tables=[self.cost_metrics_table],
                )
            except ClientError:
                continue  # a newer count is stored already

    def read_cost_metrics(self, date: str) -> list[Item]:
        rows = [exact_cost(r) for r in self._query(self.cost_metrics_table, "date", date)]
        return sorted(rows, key=lambda r: str(r.get("request_type")))

    # -- the original cost-alerts table -----------------------------------------------------------

    def put_alert(self, alert: Item) -> bool:
        """True when this call recorded the alert; a retry whose first answer was lost finds
        its own ``recorded_by`` in the item and says so too."""
        try:
            self._call(
                "PutItem",
                lambda: self.client.put_item(
                    TableName=self.cost_alerts_table,
                    Item=dynamodb_item(alert),
                    ConditionExpression="attribute_not_exists(alert_id)",
                ),
                handled={CONDITION_FAILED},
                tables=[self.cost_alerts_table],
            )
        except ClientError:
            answer = self._call(
                "GetItem",
                lambda: self.client.get_item(
                    TableName=self.cost_alerts_table,
                    Key={"alert_id": {"S": str(alert["alert_id"])}},
                    ConsistentRead=True,
                ),
                tables=[self.cost_alerts_table],
            )
            stored = plain_item(answer["Item"]) if answer.get("Item") else {}
            mine = alert.get("recorded_by")
            return mine is not None and stored.get("recorded_by") == mine
        return True

    def mark_alert_published(self, alert_id: str, at: str) -> None:
        self._call(
            "UpdateItem",
            lambda: self.client.update_item(
                TableName=self.cost_alerts_table,
                Key={"alert_id": {"S": alert_id}},
                UpdateExpression="SET published = :true, published_at = :at",
                ExpressionAttributeValues={":true": {"BOOL": True}, ":at": {"S": at}},
            ),
            tables=[self.cost_alerts_table],
        )

    def read_alerts(self) -> list[Item]:
        return sorted(self._scan(self.cost_alerts_table), key=lambda a: str(a["alert_id"]))
