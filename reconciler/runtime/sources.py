"""Where a client reads its snapshot from: the local SQLite store or DynamoDB, read-only.

Two reads of different weight: the configuration (every flag and cost threshold, in pages, every
few minutes) and the overrides (one small item in the control table, every few seconds), so an
emergency shutdown reaches every client quickly without thousands of processes scanning tables.

Reads give up quickly: a store that accepts connections and never answers costs a refresh a few
seconds (DynamoDB: ``CONNECT_TIMEOUT``, ``READ_TIMEOUT``, ``MAX_ATTEMPTS``; SQLite:
``SQLITE_READ_TIMEOUT``), and the client keeps serving what it had meanwhile.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from reconciler.runtime.attributes import plain_item
from reconciler.runtime.cost_state import COST_GUARD_ID, CostState, cost_state_from_item
from reconciler.runtime.experiment_state import (
    ANALYSER_ID,
    ExperimentStates,
    operators_from_item,
    verdicts_from_item,
)
from reconciler.runtime.rollout_state import (
    CONTROLLER_ID,
    RolloutStates,
    actions_from_item,
    entries_from_item,
)
from reconciler.runtime.snapshot import Shutdown
from reconciler.runtime.telemetry import Assignment, Shard, dynamodb_item

OVERRIDES_ID = "overrides"  # the control-table record break-glass writes
# The control-table record every apply rewrites with its group's token, in the same write as
# the records: a client rereads its configuration only when the stamp has moved.
STAMP_ID = "configuration"
# A DynamoDB call that takes longer is given up, and tried once more: at most ~5 s a call.
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
MAX_ATTEMPTS = 2  # in all, the first included
# Shards the store did not answer: the assignments written right after them (the same flush)
# are not sent, within as long as one unanswered call takes.
QUIET_AFTER_NO_ANSWER = MAX_ATTEMPTS * READ_TIMEOUT
SQLITE_READ_TIMEOUT = 1.0  # waiting on a lock: the file is local, a writer holds it briefly
Item = dict[str, Any]
TELEMETRY_TABLE = ("TELEMETRY_TABLE", "bedrock-flag-telemetry")
TELEMETRY_DDL = (
    "CREATE TABLE IF NOT EXISTS telemetry (bucket TEXT NOT NULL, writer TEXT NOT NULL, "
    "seq INTEGER NOT NULL, item TEXT NOT NULL, PRIMARY KEY (bucket, writer))"
)
# Absolute totals, kept only when newer: a repeated flush changes nothing.
_UPSERT_SHARD = (
    "INSERT INTO telemetry (bucket, writer, seq, item) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (bucket, writer) DO UPDATE SET seq = excluded.seq, item = excluded.item "
    "WHERE excluded.seq > telemetry.seq"
)
ASSIGNMENTS_TABLE = ("AB_ASSIGNMENTS_TABLE", "bedrock-ab-assignments")
ASSIGNMENTS_DDL = (
    "CREATE TABLE IF NOT EXISTS ab_assignments (experiment_id TEXT NOT NULL, "
    "user_hash TEXT NOT NULL, variant TEXT NOT NULL, cluster INTEGER NOT NULL, "
    "seen_at TEXT NOT NULL, PRIMARY KEY (experiment_id, user_hash))"
)
# A user seen again keeps the first time; a changed variant (new weights) is the latest.
UPSERT_ASSIGNMENT = (
    "INSERT INTO ab_assignments (experiment_id, user_hash, variant, cluster, seen_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (experiment_id, user_hash) DO UPDATE SET "
    "variant = excluded.variant, cluster = excluded.cluster WHERE variant != excluded.variant"
)


@dataclass(frozen=True)
class Configuration:
    flags: list[Item]
    thresholds: list[Item]


@dataclass(frozen=True)
class Overrides:
    """The operators' shutdowns: one for everything, and per flag."""

    global_shutdown: Shutdown | None = None
    flags: Mapping[str, Shutdown] = field(default_factory=dict)
    version: int = 0
    cost: CostState = field(default_factory=CostState)  # the cost guard's, read with them
    experiments: ExperimentStates = field(default_factory=ExperimentStates)  # analyser, operators
    rollouts: RolloutStates = field(default_factory=RolloutStates)  # controller, operators
    stamp: str | None = None  # the configuration's (None: a store that keeps none)

    def in_force(self, now: datetime) -> Overrides:
        """Only the shutdowns that have not expired at ``now``."""
        everything = self.global_shutdown
        return Overrides(
            everything if everything is not None and everything.active(now) else None,
            {name: s for name, s in self.flags.items() if s.active(now)},
            self.version,
            self.cost,
            self.experiments,
            self.rollouts,
            self.stamp,
        )


class SnapshotSource(Protocol):
    def read_configuration(self) -> Configuration: ...

    def read_overrides(self) -> Overrides: ...

    def describe(self) -> str: ...


def overrides_from_item(item: Mapping[str, Any] | None) -> Overrides:
    """The overrides record: ``{"global": {...}, "flags": {name: {...}}, "version": n}``."""
    if not item:
        return Overrides()

    def shutdown(entry: Any) -> Shutdown | None:
        if not isinstance(entry, Mapping) or not entry.get("active", True):
            return None
        return Shutdown(
            str(entry.get("by", "")),
            str(entry.get("reason", "")),
            entry.get("since"),
            entry.get("expires_at"),
        )

    flags = {}
    for name, entry in (item.get("flags") or {}).items():
        found = shutdown(entry)
        if found is not None:
            flags[str(name)] = found
    return Overrides(
        shutdown(item.get("global")),
        flags,
        int(item.get("version", 0)),
        experiments=ExperimentStates(operators=operators_from_item(item.get("experiments"))),
        rollouts=RolloutStates(operators=actions_from_item(item.get("rollouts"))),
    )


CONTROL_RECORDS = (OVERRIDES_ID, COST_GUARD_ID, ANALYSER_ID, CONTROLLER_ID, STAMP_ID)  # together


def with_controllers(overrides: Overrides, records: Mapping[str, Mapping[str, Any]]) -> Overrides:
    """The overrides with the controllers' records read alongside them."""
    states = replace(overrides.experiments, verdicts=verdicts_from_item(records.get(ANALYSER_ID)))
    rollouts = replace(overrides.rollouts, entries=entries_from_item(records.get(CONTROLLER_ID)))
    stamp = (records.get(STAMP_ID) or {}).get("stamp")
    return replace(
        overrides,
        cost=cost_state_from_item(records.get(COST_GUARD_ID)),
        experiments=states,
        rollouts=rollouts,
        stamp=str(stamp) if stamp else None,
    )


class SQLiteSource:
    """Reads the local store's file (``.reconciler/state.db``), opening it read-only."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"local store (SQLite) {self.path}"

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            raise FileNotFoundError(f"no local store at {self.path}; run reconcile --apply")
        uri = f"file:{self.path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=SQLITE_READ_TIMEOUT)) as connection:
            return connection.execute(sql, args).fetchall()

    def read_configuration(self) -> Configuration:
        rows = self._query(
            "SELECT kind, item FROM records WHERE kind IN ('flag', 'cost_threshold')"
        )
        flags = [json.loads(item) for kind, item in rows if kind == "flag"]
        thresholds = [json.loads(item) for kind, item in rows if kind == "cost_threshold"]
        return Configuration(flags, thresholds)

    def read_overrides(self) -> Overrides:
        rows = {
            record: json.loads(item)
            for record, item in self._query(
                "SELECT record_id, item FROM control WHERE record_id IN (?, ?, ?, ?, ?)",
                *CONTROL_RECORDS,
            )
        }
        return with_controllers(overrides_from_item(rows.get(OVERRIDES_ID)), rows)

    def write_shards(self, shards: Sequence[Shard]) -> None:
        if not self.path.exists():
            raise FileNotFoundError(f"no local store at {self.path}; run reconcile --apply")
        with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as connection:
            connection.execute("PRAGMA busy_timeout=10000")
            connection.execute(TELEMETRY_DDL)
            connection.execute("BEGIN IMMEDIATE")
            try:
                for shard in shards:
                    item = shard.to_item()
                    connection.execute(
                        _UPSERT_SHARD,
                        (shard.bucket, shard.writer, shard.seq, json.dumps(item, sort_keys=True)),
                    )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def write_assignments(self, assignments: Sequence[Assignment]) -> None:
        if not self.path.exists():
            raise FileNotFoundError(f"no local store at {self.path}; run reconcile --apply")
        with closing(sqlite3.connect(self.path, timeout=10)) as connection, connection:
            connection.execute("PRAGMA busy_timeout=10000")
            connection.execute(ASSIGNMENTS_DDL)
            connection.executemany(
                UPSERT_ASSIGNMENT,
                [(a.experiment, a.user_hash, a.variant, a.cluster, a.seen_at) for a in assignments],
            )


class DynamoDBSource:
    """Reads the flag, cost-threshold and control tables (boto3 is needed for this one).

    Without ``client``, one of its own with short timeouts (see ``CONNECT_TIMEOUT``), at
    ``endpoint_url`` if given (else as boto3 finds it: ``AWS_ENDPOINT_URL_DYNAMODB``, ...).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        tables: Mapping[str, str] | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        env = {**os.environ, **(tables or {})}
        self.flags_table = env.get("FEATURE_FLAGS_TABLE", "bedrock-feature-flags")
        self.thresholds_table = env.get("COST_THRESHOLDS_TABLE", "bedrock-cost-thresholds")
        self.control_table = env.get("CONTROL_TABLE", "bedrock-flag-control")
        self.telemetry_table = env.get(*TELEMETRY_TABLE)
        self.assignments_table = env.get(*ASSIGNMENTS_TABLE)
        self.endpoint_url = endpoint_url
        self._unanswered_at: float | None = None  # the last shards' write the store ignored
        self._owns_client = client is None
        self.client = client if client is not None else _client(endpoint_url)

    def after_fork(self) -> None:
        """In a forked child: a client of its own, unless the caller gave one."""
        if self._owns_client:
            self.client = _client(self.endpoint_url)

    def describe(self) -> str:
        return f"DynamoDB tables {self.flags_table}, {self.thresholds_table}, {self.control_table}"

    def _scan(self, table: str) -> list[Item]:
        items: list[Item] = []
        # Consistent: read right after the stamp moved, it must see what moved it.
        arguments: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = self.client.scan(**arguments)
            items.extend(plain_item(raw) for raw in page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                return items
            arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def read_configuration(self) -> Configuration:
        return Configuration(self._scan(self.flags_table), self._scan(self.thresholds_table))

    def read_overrides(self) -> Overrides:
        """The overrides, the controllers' records and the configuration's stamp: five small
        items in one request."""
        keys = [{"record_id": {"S": r}} for r in CONTROL_RECORDS]
        request: dict[str, Any] = {self.control_table: {"Keys": keys}}
        found: dict[str, Item] = {}
        for _ in range(3):  # unprocessed keys (throttling) are asked for again, briefly
            answer = self.client.batch_get_item(RequestItems=request)
            for raw in answer.get("Responses", {}).get(self.control_table, []):
                item = plain_item(raw)
                found[str(item.get("record_id"))] = item
            request = answer.get("UnprocessedKeys") or {}
            if not request:
                break
        else:
            raise RuntimeError("the control records stayed unprocessed (throttled)")
        return with_controllers(overrides_from_item(found.get(OVERRIDES_ID)), found)

    def write_shards(self, shards: Sequence[Shard]) -> None:
        """Each shard on its own: one the table refuses does not keep the others out (it is
        raised once the rest are written). A store that does not answer in time is not asked
        for the rest: each would wait as long (the next flush carries them all again)."""
        self._unanswered_at = None
        failed: Exception | None = None
        for shard in shards:
            try:
                self.client.put_item(
                    TableName=self.telemetry_table,
                    Item=dynamodb_item(shard.to_item()),
                    ConditionExpression="attribute_not_exists(seq) OR seq < :seq",
                    ExpressionAttributeValues={":seq": {"N": str(shard.seq)}},
                )
            except Exception as exc:
                if _unanswered(exc):
                    self._unanswered_at = time.monotonic()
                    raise
                if not _condition_failed(exc):  # else: this flush or a later one is stored
                    failed = failed or exc
        if failed is not None:
            raise failed

    def write_assignments(self, assignments: Sequence[Assignment]) -> None:
        """Right after shards the store did not answer (the same flush), fail at once: a flush,
        the one at ``close()`` too, waits for one unanswered call, not two. The recorder keeps
        the assignments for its next flush."""
        silent, self._unanswered_at = self._unanswered_at, None
        if silent is not None and time.monotonic() - silent < QUIET_AFTER_NO_ANSWER:
            raise TimeoutError(f"{self.describe()} did not answer the shards just written")
        write_assignment_items(self.client.batch_write_item, self.assignments_table, assignments)


def write_assignment_items(batch_write: Any, table: str, assignments: Sequence[Assignment]) -> None:
    """Put the rows in batches of 25 (a repeated row is the same row: no condition needed),
    asking again for what DynamoDB leaves unprocessed."""
    unique = {(a.experiment, a.user_hash): a for a in assignments}
    requests = [{"PutRequest": {"Item": dynamodb_item(a.to_item())}} for a in unique.values()]
    for start in range(0, len(requests), 25):
        pending: Any = {table: requests[start : start + 25]}
        for attempt in range(5):
            answer = batch_write(RequestItems=pending)
            pending = answer.get("UnprocessedItems") or {}
            if not pending:
                break
            time.sleep(0.05 * 2**attempt)  # throttled: back off (the flush thread, not a request)
        else:
            raise RuntimeError("assignment writes stayed unprocessed (throttled)")


def aws_region() -> str | None:
    """The region as ``reconcile`` reads it: ``AWS_REGION``, else ``AWS_DEFAULT_REGION`` (else
    None: boto3's own configuration, a profile's region)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def _client(endpoint_url: str | None = None) -> Any:
    import boto3  # noqa: PLC0415 - only services reading DynamoDB need boto3
    from botocore.config import Config  # noqa: PLC0415

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    )
    return boto3.client(
        "dynamodb", config=config, endpoint_url=endpoint_url, region_name=aws_region()
    )


def _unanswered(exc: Exception) -> bool:
    """The store did not answer in time (a timeout, after the client's retries), as opposed to
    an answer, a refused connection or a dropped one: those end quickly."""
    if isinstance(exc, TimeoutError):
        return True
    try:
        from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError  # noqa: PLC0415
    except ImportError:  # a client of the caller's, without botocore
        return False
    return isinstance(exc, ConnectTimeoutError | ReadTimeoutError)


def _condition_failed(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = (response or {}).get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code == "ConditionalCheckFailedException"
