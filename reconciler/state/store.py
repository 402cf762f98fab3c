"""The StateStore Protocol every backend implements, and the errors they raise."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from reconciler.errors import ReconcilerError, UserError
from reconciler.runtime.telemetry import Assignment, Shard
from reconciler.state.records import AuditEntry, Item, Lock, RecordKind, StoredRecord, Write


class StoreUnavailableError(UserError):
    """The store could not be reached or kept failing after retries."""


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

    def __init__(self, lock: Lock) -> None:
        super().__init__(
            f"another apply holds the lock: {lock.holder} since {lock.acquired_at} "
            f"(expires {lock.expires_at}); wait for it, or if it died, run "
            '`reconcile --force-unlock --reason "..."`'
        )
        self.lock = lock


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

    def apply_writes(self, writes: Sequence[Write], token: str) -> None:
        """Apply one atomic group; ``token`` makes a retried group idempotent."""

    def acquire_lock(self, holder: str, reason: str, ttl_seconds: int, now: datetime) -> Lock:
        """Take the lease, or raise ``LockHeldError``; an expired lease may be taken over."""

    def release_lock(self, holder: str) -> bool:
        """Release the lease if ``holder`` holds it; False when it did not."""

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
        """Audit entries, newest first; for one record (``flag/name``) or all."""

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
