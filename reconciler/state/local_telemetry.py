"""The local store's telemetry, cost metrics, alerts and controller records, in its SQLite file.

A mixin of ``LocalStore`` (it uses the store's connection and mutex), so the one file holds
everything, as the DynamoDB tables do.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reconciler.runtime.sources import TELEMETRY_DDL
from reconciler.runtime.telemetry import Shard
from reconciler.state.records import AuditEntry, Item, exact_cost
from reconciler.state.sqlite import dump, transaction
from reconciler.state.store import WriteConflictError

TELEMETRY_SCHEMA = f"""
{TELEMETRY_DDL};
CREATE TABLE IF NOT EXISTS cost_metrics (
    date TEXT NOT NULL, request_type TEXT NOT NULL, item TEXT NOT NULL,
    PRIMARY KEY (date, request_type)
);
CREATE TABLE IF NOT EXISTS cost_alerts (alert_id TEXT PRIMARY KEY, item TEXT NOT NULL);
"""


class LocalTelemetry:
    """Telemetry and controller records in the local store."""

    _mutex: threading.RLock

    if TYPE_CHECKING:

        def _connect(self, *, create: bool) -> sqlite3.Connection | None: ...  # LocalStore's

    # -- control records (the lock's table: overrides, controller state) ---------------------

    def read_control(self, record_id: str) -> Item | None:
        with self._mutex:
            connection = self._connect(create=False)
            if connection is None:
                return None
            row = connection.execute(
                "SELECT item FROM control WHERE record_id = ?", (record_id,)
            ).fetchone()
            return None if row is None else dict(json.loads(row[0]))

    def write_control(
        self, record_id: str, record: Item, expected_version: int, audit: AuditEntry | None
    ) -> None:
        """Replace a control record if its version is still ``expected_version`` (0: absent),
        with its audit entry in the same transaction."""
        with self._mutex:
            connection = self._connect(create=True)
            assert connection is not None
            with transaction(connection):
                row = connection.execute(
                    "SELECT item FROM control WHERE record_id = ?", (record_id,)
                ).fetchone()
                current = int(json.loads(row[0]).get("version", 0)) if row else 0
                if current != expected_version:
                    raise WriteConflictError([f"control/{record_id}"], f"at version {current}")
                connection.execute(
                    "INSERT OR REPLACE INTO control (record_id, item) VALUES (?, ?)",
                    (record_id, dump({**record, "record_id": record_id})),
                )
                if audit is not None:
                    audit_id = f"{audit.at}#{uuid.uuid4().hex}"
                    connection.execute(
                        "INSERT INTO audit (record, audit_id, item) VALUES (?, ?, ?)",
                        (audit.record, audit_id, dump(audit.to_item(audit_id))),
                    )

    # -- telemetry shards --------------------------------------------------------------------

    def write_shards(self, shards: Sequence[Shard]) -> None:
        with self._mutex:
            connection = self._connect(create=True)
            assert connection is not None
            with transaction(connection):
                for shard in shards:
                    connection.execute(
                        "INSERT INTO telemetry (bucket, writer, seq, item) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (bucket, writer) DO UPDATE SET seq = excluded.seq, "
                        "item = excluded.item WHERE excluded.seq > telemetry.seq",
                        (shard.bucket, shard.writer, shard.seq, dump(shard.to_item())),
                    )

    def read_shards(self, bucket: str) -> list[Shard]:
        with self._mutex:
            connection = self._connect(create=False)
            if connection is None:
                return []
            rows = connection.execute(
                "SELECT item FROM telemetry WHERE bucket = ? ORDER BY writer", (bucket,)
            )
            return [Shard.from_item(json.loads(item)) for (item,) in rows]

    # -- the original cost-metrics table ------------------------------------------------------

    def write_cost_metrics(self, rows: Sequence[Item]) -> None:
        """Set each (date, request_type) row to its totals, unless the stored one is ahead."""
        with self._mutex:
            connection = self._connect(create=True)
            assert connection is not None
            with transaction(connection):
                for row in rows:
                    current = connection.execute(
                        "SELECT item FROM cost_metrics WHERE date = ? AND request_type = ?",
                        (row["date"], row["request_type"]),
                    ).fetchone()
                    if current is not None and _ahead(json.loads(current[0]), row):
                        continue
                    connection.execute(
                        "INSERT OR REPLACE INTO cost_metrics (date, request_type, item) "
                        "VALUES (?, ?, ?)",
                        (row["date"], row["request_type"], dump(row)),
                    )

    def read_cost_metrics(self, date: str) -> list[Item]:
        with self._mutex:
            connection = self._connect(create=False)
            if connection is None:
                return []
            rows = connection.execute(
                "SELECT item FROM cost_metrics WHERE date = ? ORDER BY request_type", (date,)
            )
            return [exact_cost(json.loads(item)) for (item,) in rows]

    # -- the original cost-alerts table --------------------------------------------------------

    def put_alert(self, alert: Item) -> bool:
        """Record an alert unless one with its id exists; True when this call created it."""
        with self._mutex:
            connection = self._connect(create=True)
            assert connection is not None
            cursor = connection.execute(
                "INSERT OR IGNORE INTO cost_alerts (alert_id, item) VALUES (?, ?)",
                (alert["alert_id"], dump(alert)),
            )
            return cursor.rowcount == 1

    def mark_alert_published(self, alert_id: str, at: str) -> None:
        with self._mutex:
            connection = self._connect(create=True)
            assert connection is not None
            with transaction(connection):
                row = connection.execute(
                    "SELECT item FROM cost_alerts WHERE alert_id = ?", (alert_id,)
                ).fetchone()
                if row is not None:
                    item = {**json.loads(row[0]), "published": True, "published_at": at}
                    connection.execute(
                        "UPDATE cost_alerts SET item = ? WHERE alert_id = ?", (dump(item), alert_id)
                    )

    def read_alerts(self) -> list[Item]:
        with self._mutex:
            connection = self._connect(create=False)
            if connection is None:
                return []
            rows = connection.execute("SELECT item FROM cost_alerts ORDER BY alert_id")
            return [json.loads(item) for (item,) in rows]


def _ahead(stored: Item, row: Item) -> bool:
    """True when the stored totals are the new ones or past them (a newer guard run wrote
    them): the row then keeps its ``last_updated``, the time its totals last changed."""
    cost, requests = int(stored.get("cost_micros", 0)), int(stored.get("total_requests", 0))
    new_cost, new_requests = int(row["cost_micros"]), int(row["total_requests"])
    return (
        cost > new_cost or requests > new_requests or (cost, requests) == (new_cost, new_requests)
    )
