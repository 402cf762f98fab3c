"""The audit trail in DynamoDB: one record's entries (a query of its partition, consistent) and
the newest entries of every record (a query of the month index, newest month first).

The audit table's key is the record and the entry's id (its time, then a random part), so one
record's trail is one partition. The newest entries across records come from the global index
``by_month`` (partition: the entry's month, ``audit_month``; sort: its id), which projects what
a list of entries shows and leaves the records before and after in the table. An index is
eventually consistent, and entries written before it existed carry no month: ``read_audit``
without a record still scans the whole table, complete and consistent, for whoever needs that.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.state.dynamodb_client import error_code, from_dynamodb
from reconciler.state.dynamodb_experiments import DynamoDBExperiments
from reconciler.state.records import AUDIT_MONTH, AUDIT_SHOWN, Item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import GlobalSecondaryIndexTypeDef

AUDIT_INDEX = "by_month"
# The table's key attributes (record, audit_id) are projected anyway.
PROJECTED = [name for name in AUDIT_SHOWN if name not in ("record", "audit_id")]
MONTHS_BACK = 24  # how far back the newest entries are looked for


def audit_index() -> GlobalSecondaryIndexTypeDef:
    return {
        "IndexName": AUDIT_INDEX,
        "KeySchema": [
            {"AttributeName": AUDIT_MONTH, "KeyType": "HASH"},
            {"AttributeName": "audit_id", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": PROJECTED},
    }


def months_before(now: datetime, count: int) -> list[str]:
    """``now``'s month (``YYYY-MM``) and the ``count - 1`` before it, newest first."""
    year, month = now.year, now.month
    found = []
    for _ in range(count):
        found.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return found


class DynamoDBAudit(DynamoDBExperiments):
    def read_audit(self, record: str | None = None, limit: int = 100) -> list[Item]:
        if limit <= 0:
            return []
        if record is None:
            entries = sorted(
                self._scan(self.audit_table), key=lambda e: str(e["audit_id"]), reverse=True
            )
            return entries[:limit]
        return self._query_audit(
            {
                "KeyConditionExpression": "#record = :record",
                "ExpressionAttributeNames": {"#record": "record"},
                "ExpressionAttributeValues": {":record": {"S": record}},
                "ConsistentRead": True,
            },
            limit,
        )

    def read_recent_audit(self, limit: int = 100, now: datetime | None = None) -> list[Item]:
        """The newest entries of every record, without the records before and after (from the
        month index; eventually consistent). A table without the index yet (``reconcile
        --bootstrap`` adds it) is scanned instead."""
        entries: list[Item] = []
        try:
            for month in months_before(now or datetime.now(UTC), MONTHS_BACK):
                if len(entries) >= limit:
                    break
                entries += self._query_audit(
                    {
                        "IndexName": AUDIT_INDEX,
                        "KeyConditionExpression": "#month = :month",
                        "ExpressionAttributeNames": {"#month": AUDIT_MONTH},
                        "ExpressionAttributeValues": {":month": {"S": month}},
                    },
                    limit - len(entries),
                    handled={"ValidationException"},
                )
        except ClientError as exc:
            if error_code(exc) != "ValidationException":
                raise
            return [
                {k: v for k, v in e.items() if k in AUDIT_SHOWN}
                for e in self.read_audit(None, limit)
            ]
        return entries[:limit]

    def _query_audit(
        self, condition: dict[str, Any], limit: int, handled: set[str] | None = None
    ) -> list[Item]:
        entries: list[Item] = []
        arguments: dict[str, Any] = {
            "TableName": self.audit_table,
            "ScanIndexForward": False,
            **condition,
        }
        while len(entries) < limit:
            page = self._call(
                "Query",
                lambda arguments=arguments: self.client.query(  # type: ignore[misc]
                    **arguments, Limit=limit - len(entries)
                ),
                tables=[self.audit_table],
                handled=handled or (),
            )
            entries.extend(from_dynamodb(raw) for raw in page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if not start:
                break
            arguments = {**arguments, "ExclusiveStartKey": start}
        return entries[:limit]
