"""The embedded local store: one SQLite file, the default where no AWS backend is configured.

Like Terraform's local state, a missing file is an empty store; the first write creates it.
Each group of writes is one ``BEGIN IMMEDIATE`` transaction: its conditions are checked and its
writes made while SQLite's write lock is held, so concurrent applies cannot interleave.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from reconciler.runtime.sources import OVERRIDES_ID, STAMP_ID
from reconciler.state.local_experiments import EXPERIMENTS_SCHEMA, LocalExperiments
from reconciler.state.local_telemetry import TELEMETRY_SCHEMA, LocalTelemetry
from reconciler.state.records import (
    AUDIT_SHOWN,
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
from reconciler.state.sqlite import dump, transaction
from reconciler.state.store import (
    LockHeldError,
    LockLostError,
    StoreUnavailableError,
    WriteConflictError,
)

DEFAULT_PATH = Path(".reconciler") / "state.db"
SCHEMA_VERSION = 1
LOCK_ID = "lock#reconcile"

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, name TEXT NOT NULL, item TEXT NOT NULL, PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS audit (
    record TEXT NOT NULL, audit_id TEXT NOT NULL, item TEXT NOT NULL, PRIMARY KEY (record, audit_id)
);
CREATE TABLE IF NOT EXISTS control (record_id TEXT PRIMARY KEY, item TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applied_groups (token TEXT PRIMARY KEY, applied_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + TELEMETRY_SCHEMA
    + EXPERIMENTS_SCHEMA
)


P = ParamSpec("P")
R = TypeVar("R")
# Records read with their keys interned: tens of thousands of items share one copy of each.
_RECORD = json.JSONDecoder(object_pairs_hook=lambda pairs: {sys.intern(k): v for k, v in pairs})


def _serialized(method: Callable[P, R]) -> Callable[P, R]:
    """One thread at a time per store object; SQLite's own locking orders the processes."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store = args[0]
        assert isinstance(store, LocalStore)
        with store._mutex:
            return method(*args, **kwargs)

    return wrapper


class LocalStore(LocalTelemetry, LocalExperiments):
    """A StateStore in one SQLite file, safe to share between threads."""

    max_group_size = 500

    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._mutex = threading.RLock()

    def describe(self) -> str:
        return f"local store (SQLite) {self.path}"

    # -- connection -------------------------------------------------------------------------

    def _connect(self, *, create: bool) -> sqlite3.Connection | None:
        if self._connection is not None:
            return self._connection
        if not create and not self.path.exists():
            return None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA busy_timeout=30000")
            with transaction(connection):
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    connection.execute(statement)
                connection.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"cannot open the local store {self.path}: {exc}") from exc
        self._connection = connection
        return connection

    @_serialized
    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- the Protocol ---------------------------------------------------------------------------

    @_serialized
    def bootstrap(self) -> list[str]:
        existed = self.path.exists()
        self._connect(create=True)
        if existed:
            return [f"local store {self.path} exists (schema version {SCHEMA_VERSION})"]
        return [f"created local store {self.path}"]

    @_serialized
    def read_records(self, kind: RecordKind) -> dict[str, StoredRecord]:
        connection = self._connect(create=False)
        if connection is None:
            return {}
        rows = connection.execute(
            "SELECT name, item FROM records WHERE kind = ? ORDER BY name", (kind.label,)
        )
        return {name: StoredRecord(kind, name, _RECORD.decode(item)) for name, item in rows}

    @_serialized
    def read_record(self, kind: RecordKind, name: str) -> StoredRecord | None:
        connection = self._connect(create=False)
        if connection is None:
            return None
        row = connection.execute(
            "SELECT item FROM records WHERE kind = ? AND name = ?", (kind.label, name)
        ).fetchone()
        return None if row is None else StoredRecord(kind, name, json.loads(row[0]))

    @_serialized
    def apply_writes(
        self, writes: Sequence[Write], token: str, overrides_version: int | None = None
    ) -> None:
        if len(writes) > self.max_group_size:
            raise ValueError(f"a group holds at most {self.max_group_size} writes")
        connection = self._connect(create=True)
        assert connection is not None
        now = format_time(datetime.now().astimezone())
        with transaction(connection):
            done = connection.execute(
                "SELECT 1 FROM applied_groups WHERE token = ?", (token,)
            ).fetchone()
            if done:
                return  # a retried group that already landed
            failed = [
                f"{w.kind.label}/{w.name}" for w in writes if not _allowed(connection, w, now)
            ]
            details = []
            if overrides_version is not None:
                found = _overrides_version(connection)
                if found != overrides_version:
                    failed.insert(0, OVERRIDES_RECORD)
                    details.append(
                        f"{OVERRIDES_RECORD} is at version {found}, apply read version "
                        f"{overrides_version}"
                    )
            if failed:
                raise WriteConflictError(failed, "; ".join(details))
            for write in writes:
                _write(connection, write)
                if write.audit is not None:
                    audit_id = f"{write.audit.at}#{uuid.uuid4().hex}"
                    connection.execute(
                        "INSERT INTO audit (record, audit_id, item) VALUES (?, ?, ?)",
                        (write.audit.record, audit_id, dump(write.audit.to_item(audit_id))),
                    )
            connection.execute(
                "INSERT INTO applied_groups (token, applied_at) VALUES (?, ?)", (token, now)
            )
            stamp = {"record_id": STAMP_ID, "stamp": token, "applied_at": now}
            connection.execute(
                "INSERT OR REPLACE INTO control (record_id, item) VALUES (?, ?)",
                (STAMP_ID, dump(stamp)),
            )

    @_serialized
    def acquire_lock(
        self,
        holder: str,
        reason: str,
        ttl_seconds: float,
        now: datetime,
        token: str | None = None,
    ) -> Lock:
        connection = self._connect(create=True)
        assert connection is not None
        lock = Lock.taken(holder, reason, ttl_seconds, now, token or uuid.uuid4().hex)
        with transaction(connection):
            current = _read_lock(connection)
            mine = current is not None and token is not None and current.token == token
            if current is not None and not mine and current.expires_at >= format_time(now):
                raise LockHeldError(current, now)
            _write_lock(connection, lock)
        return lock

    @_serialized
    def renew_lock(self, lock: Lock, ttl_seconds: float, now: datetime) -> Lock:
        connection = self._connect(create=True)
        assert connection is not None
        renewed = lock.renewed(now, ttl_seconds)
        with transaction(connection):
            current = _read_lock(connection)
            if current is None or not lock.token or current.token != lock.token:
                raise LockLostError(lock, current)
            _write_lock(connection, renewed)
        return renewed

    @_serialized
    def release_lock(self, holder: str, token: str | None = None) -> bool:
        connection = self._connect(create=False)
        if connection is None:
            return False
        with transaction(connection):
            current = _read_lock(connection)
            if current is None or current.holder != holder:
                return False
            if token is not None and current.token != token:
                return False
            connection.execute("DELETE FROM control WHERE record_id = ?", (LOCK_ID,))
        return True

    @_serialized
    def read_lock(self) -> Lock | None:
        connection = self._connect(create=False)
        return None if connection is None else _read_lock(connection)

    @_serialized
    def force_unlock(self, by: str, reason: str, now: datetime) -> Lock | None:
        connection = self._connect(create=True)
        assert connection is not None
        at = format_time(now)
        with transaction(connection):
            current = _read_lock(connection)
            connection.execute("DELETE FROM control WHERE record_id = ?", (LOCK_ID,))
            audit_id = f"{at}#{uuid.uuid4().hex}"
            item = {
                "record": "lock/reconcile",
                "audit_id": audit_id,
                "action": "force-unlock",
                "actor": by,
                "at": at,
                "reason": reason,
                "before": current.to_item() if current else None,
            }
            connection.execute(
                "INSERT INTO audit (record, audit_id, item) VALUES (?, ?, ?)",
                (
                    "lock/reconcile",
                    audit_id,
                    dump({k: v for k, v in item.items() if v is not None}),
                ),
            )
        return current

    def read_overrides(self) -> Item | None:
        return self.read_control(OVERRIDES_ID)

    def write_overrides(self, record: Item, expected_version: int, audit: AuditEntry) -> None:
        try:
            self.write_control(OVERRIDES_ID, record, expected_version, audit)
        except WriteConflictError as exc:
            raise WriteConflictError([OVERRIDES_RECORD], str(exc)) from None

    @_serialized
    def read_audit(self, record: str | None = None, limit: int = 100) -> list[Item]:
        connection = self._connect(create=False)
        if connection is None:
            return []
        if record is None:
            rows = connection.execute(
                "SELECT item FROM audit ORDER BY audit_id DESC LIMIT ?", (limit,)
            )
        else:
            rows = connection.execute(
                "SELECT item FROM audit WHERE record = ? ORDER BY audit_id DESC LIMIT ?",
                (record, limit),
            )
        return [json.loads(item) for (item,) in rows]

    def read_recent_audit(self, limit: int = 100, now: datetime | None = None) -> list[Item]:
        return [
            {k: v for k, v in e.items() if k in AUDIT_SHOWN} for e in self.read_audit(None, limit)
        ]


def _current(connection: sqlite3.Connection, write: Write) -> Item | None:
    row = connection.execute(
        "SELECT item FROM records WHERE kind = ? AND name = ?", (write.kind.label, write.name)
    ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def _allowed(connection: sqlite3.Connection, write: Write, now: str) -> bool:
    """The same conditions DynamoDB checks in its condition expressions."""
    current = _current(connection, write)
    if write.action == "create":
        return current is None
    if current is None:
        return False
    record = StoredRecord(write.kind, write.name, current)
    if record.version != write.expected_version or current.get("managed_by") != MANAGED_BY:
        return False
    if record.override_active(now):
        return False
    return not (write.action == "delete" and record.deletion_protected)


def _write(connection: sqlite3.Connection, write: Write) -> None:
    if write.action == "delete":
        connection.execute(
            "DELETE FROM records WHERE kind = ? AND name = ?", (write.kind.label, write.name)
        )
        return
    item = _current(connection, write) or {}
    for attribute in write.remove_attributes:
        item.pop(attribute, None)
    item.update(write.set_attributes)
    item[write.kind.key] = write.name
    connection.execute(
        "INSERT OR REPLACE INTO records (kind, name, item) VALUES (?, ?, ?)",
        (write.kind.label, write.name, dump(item)),
    )


def _write_lock(connection: sqlite3.Connection, lock: Lock) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO control (record_id, item) VALUES (?, ?)",
        (LOCK_ID, dump(lock.to_item())),
    )


def _overrides_version(connection: sqlite3.Connection) -> int:
    """The overrides record's version as apply reads it (0: no record, or no version)."""
    row = connection.execute(
        "SELECT item FROM control WHERE record_id = ?", (OVERRIDES_ID,)
    ).fetchone()
    return 0 if row is None else int(json.loads(row[0]).get("version", 0))


def _read_lock(connection: sqlite3.Connection) -> Lock | None:
    row = connection.execute("SELECT item FROM control WHERE record_id = ?", (LOCK_ID,)).fetchone()
    if row is None:
        return None
    return Lock.from_item(json.loads(row[0]))
