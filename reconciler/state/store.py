"""The StateStore Protocol every backend implements, and the errors they raise."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from reconciler.errors import ReconcilerError, UserError
from reconciler.runtime.telemetry import Assignment, Shard
from reconciler.state.records import (
    AuditEntry,
    Item,
    Lock,
    RecordKind,
    StoredRecord,
    Write,
    parse_time,
)


class StoreUnavailableError(UserError):
    """The store could not be reached or kept failing after retries."""

    # Whether asking again later may succeed (an outage, a lost answer); not for a request
    # the store refuses as such (permissions, validation).
    retryable = True


class TablesMissingError(UserError):
    """The store has not been bootstrapped."""

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(
            f"missing table(s): {', '.join(missing)}; run `reconcile --bootstrap` to create them"
        )
        self.missing = list(missing)


class WriteConflictError(UserError):
    """A conditional write failed: a record changed since it was planned, or is held."""

    def __init__(self, records: Sequence[str], detail: str = "") -> None:
        names = ", ".join(records) if records else "a record in the group"
        suffix = f" ({detail})" if detail else ""
        super().__init__(
            f"{names} changed since the plan was made, or is held by an override{suffix}; "
            "nothing in this group was written: plan again"
        )
        self.records = list(records)


class LockHeldError(UserError):
    """Another apply holds the lease."""

    def __init__(self, lock: Lock, now: datetime | None = None) -> None:
        super().__init__(_held_message(lock, now))
        self.lock = lock


class LockLostError(UserError):
    """The lease this apply held is no longer its own (broken by --force-unlock, or run out
    and taken over)."""

    def __init__(self, lock: Lock, current: Lock | None) -> None:
        if current is None:
            why = "it was removed (reconcile --force-unlock?)"
        else:
            why = f"it is now held by {current.holder} since {current.acquired_at}"
        super().__init__(f"the apply lock of {lock.holder} was lost: {why}")
        self.lock = lock
        self.current = current


def _held_message(lock: Lock, now: datetime | None) -> str:
    def ago(text: str) -> str:
        return f" ({_duration(now - parse_time(text))} ago)" if now is not None else ""

    reason = f" ({lock.reason})" if lock.reason else ""
    renewed = (
        f"last renewed at {lock.renewed_at}{ago(lock.renewed_at)}"
        if lock.renewed_at
        else "not renewed since"
    )
    left = f" (in {_duration(parse_time(lock.expires_at) - now)})" if now is not None else ""
    return (
        f"another apply holds the lock: {lock.holder}{reason}, taken at "
        f"{lock.acquired_at}{ago(lock.acquired_at)}, {renewed}; its lease runs out at "
        f"{lock.expires_at}{left}. A running apply renews its lease until it ends: if it is "
        "still running, wait for it and apply again; if it died, the lease runs out by itself "
        "and the next apply after that proceeds. To break it now (only if you are sure it is "
        'dead): reconcile --force-unlock --reason "..."'
    )


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class StoreBugError(ReconcilerError):
    """A store answered in a way the contract does not allow."""


class StateStore(Protocol):
    """A place that holds the records, the audit trail and the apply lease.

    ``apply_writes`` is atomic: every write of the group lands, or none does; each write's
    conditions (see ``Write``) are checked by the store in the same atomic step.
    """

    max_group_size: int

    def describe(self) -> str:
        """One line naming the backend and where it is (file, endpoint, tables)."""

    def bootstrap(self) -> list[str]:
        """Create whatever is missing, idempotently; returns what was done."""

    def read_records(self, kind: RecordKind) -> dict[str, StoredRecord]:
        """Every record of a kind, read in pages."""

    def read_record(self, kind: RecordKind, name: str) -> StoredRecord | None:
        """One record of a kind by its name (one read), or None."""

    def apply_writes(
        self, writes: Sequence[Write], token: str, overrides_version: int | None = None
    ) -> None:
        """Apply one atomic group; ``token`` makes a retried group idempotent.

        With ``overrides_version``, the group lands only while the overrides record (the
        operators' shutdowns) is still at that version (0: no record, or one without a
        version), checked in the same atomic step as the writes; otherwise nothing is written
        and ``WriteConflictError`` names ``overrides/breakglass``. The caller decided which
        changes an operator holds from the record at that version; the check makes that
        decision hold at the moment the group commits."""

    def acquire_lock(
        self,
        holder: str,
        reason: str,
        ttl_seconds: float,
        now: datetime,
        token: str | None = None,
    ) -> Lock:
        """Take the lease for ``ttl_seconds``, or raise ``LockHeldError``. A lease that has run
        out may be taken over; a lease that carries ``token`` already is the caller's own (a
        retry whose first answer was lost) and is taken again, not refused. Without ``token``
        the store makes one up (every call is then a new taker)."""

    def renew_lock(self, lock: Lock, ttl_seconds: float, now: datetime) -> Lock:
        """Extend the caller's lease (the one carrying ``lock.token``) to ``ttl_seconds`` from
        ``now``; ``LockLostError`` when the stored lease is no longer it."""

    def release_lock(self, holder: str, token: str | None = None) -> bool:
        """Release the lease if ``holder`` (and, when given, ``token``) holds it; False when it
        did not."""

    def read_lock(self) -> Lock | None:
        """The current lease, if any (expired or not)."""

    def force_unlock(self, by: str, reason: str, now: datetime) -> Lock | None:
        """Remove any lease, recording who and why in the audit trail; returns the removed one."""

    def read_overrides(self) -> Item | None:
        """The operators' overrides record (break-glass shutdowns), if there is one."""

    def write_overrides(self, record: Item, expected_version: int, audit: AuditEntry) -> None:
        """Replace the overrides record, with its audit entry, atomically and only if its
        version is still ``expected_version`` (0: no record yet); ``WriteConflictError``
        otherwise."""

    def read_audit(self, record: str | None = None, limit: int = 100) -> list[Item]:
        """Audit entries, newest first; for one record (``flag/name``) or all (on DynamoDB a
        scan of the whole table: complete and consistent)."""

    def read_recent_audit(self, limit: int = 100, now: datetime | None = None) -> list[Item]:
        """The newest entries of every record, newest first, each without the record before
        and after: what a list of entries shows (on DynamoDB, from an index by month: cheap,
        and eventually consistent)."""

    def read_control(self, record_id: str) -> Item | None:
        """A control-table record (lock, overrides, a controller's state), read consistently."""

    def write_control(
        self, record_id: str, record: Item, expected_version: int, audit: AuditEntry | None
    ) -> None:
        """Replace a control record only if its version is still ``expected_version`` (0: no
        record yet), with its audit entry atomically; ``WriteConflictError`` otherwise."""

    def write_shards(self, shards: Sequence[Shard]) -> None:
        """Store telemetry shards; one already stored at the same or a later ``seq`` stays."""

    def read_shards(self, bucket: str) -> list[Shard]:
        """Every writer's shard of a telemetry bucket."""

    def write_cost_metrics(self, rows: Sequence[Item]) -> None:
        """Set cost-metrics rows (per date and request type) to their totals; a stored row
        that is ahead of the new one stays."""

    def read_cost_metrics(self, date: str) -> list[Item]:
        """The cost-metrics rows of one ``date`` key."""

    def put_alert(self, alert: Item) -> bool:
        """Record a cost alert unless its ``alert_id`` exists; True when this call made it."""

    def mark_alert_published(self, alert_id: str, at: str) -> None:
        """Note that an alert went out."""

    def read_alerts(self) -> list[Item]:
        """Every cost alert, by id."""

    def write_assignments(self, assignments: Sequence[Assignment]) -> None:
        """Store users' variants (hashed ids); the same user again is the same row."""

    def read_assignment_counts(self, experiment: str) -> dict[tuple[str, int], int]:
        """Users per (variant, cluster) of an experiment's recording key."""

    def write_results(self, rows: Sequence[Item]) -> None:
        """Set experiment result rows (per experiment, day, variant, metric) to their totals;
        a stored row with a higher ``count`` stays."""

    def read_results(self, experiment: str) -> list[Item]:
        """Every result row of an experiment's recording key."""

    def close(self) -> None:
        """Release connections and files."""
