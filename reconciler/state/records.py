"""What the stores hold: records of four kinds, the writes that change them, and audit entries.

A record is a plain item (a dict of JSON values) keyed by its name in its kind's table. Items keep
the original system's field names. Attributes are owned:

- git (through ``reconcile --apply``) owns the attributes the codec produces, plus the metadata
  below; the reconciler writes only those, and only on records it manages;
- operators own the override attributes (``emergency_shutdown`` and ``shutdown_*``);
- controllers own ``controller_state``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from reconciler.runtime.sources import ASSIGNMENTS_TABLE, TELEMETRY_TABLE

Item = dict[str, Any]

MANAGED_BY = "reconciler"

# Metadata the reconciler writes on every record it manages.
META_FIELDS = (
    "managed_by",
    "content_hash",
    "version",
    "updated_by",
    "updated_at",
    "git_commit",
    "created_at",
)
# Attributes of other owners: never written by reconcile, shown by plan as held.
OVERRIDE_FIELDS = (
    "emergency_shutdown",
    "shutdown_by",
    "shutdown_reason",
    "shutdown_at",
    "shutdown_expires_at",
)
CONTROLLER_FIELDS = ("controller_state",)


class RecordKind(enum.Enum):
    """A kind of record, its table (by environment variable) and its key attribute."""

    FLAG = ("flag", "FEATURE_FLAGS_TABLE", "bedrock-feature-flags", "flag_name")
    EXPERIMENT = ("experiment", "AB_EXPERIMENTS_TABLE", "bedrock-ab-experiments", "experiment_id")
    ROLLOUT = (
        "rollout_strategy",
        "ROLLOUT_STRATEGIES_TABLE",
        "bedrock-rollout-strategies",
        "strategy_name",
    )
    COST_THRESHOLD = (
        "cost_threshold",
        "COST_THRESHOLDS_TABLE",
        "bedrock-cost-thresholds",
        "threshold_name",
    )

    def __init__(self, label: str, table_env: str, default_table: str, key: str) -> None:
        self.label = label
        self.table_env = table_env
        self.default_table = default_table
        self.key = key


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
AUDIT_MONTH = "audit_month"  # an audit entry's month, the key of the newest entries' index
# What a list of entries shows (``read_recent_audit``): the entry without the records.
AUDIT_SHOWN = ("record", "audit_id", "action", "actor", "at", "reason", "git_commit", "plan_id")
OVERRIDES_RECORD = "overrides/breakglass"  # its name in the audit trail


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds: every stored time has this one shape, so stored
    times compare correctly as strings (in DynamoDB condition expressions too)."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


# Tables beside the four record tables: audit trail, control records (lock, overrides, the
# controllers' state), the telemetry shards, and the original cost-metrics and cost-alerts tables.
AUDIT_TABLE = ("AUDIT_TABLE", "bedrock-flag-audit")
CONTROL_TABLE = ("CONTROL_TABLE", "bedrock-flag-control")
COST_METRICS_TABLE = ("COST_METRICS_TABLE", "bedrock-cost-metrics")
COST_ALERTS_TABLE = ("COST_ALERTS_TABLE", "bedrock-cost-alerts")
AB_RESULTS_TABLE = ("AB_RESULTS_TABLE", "bedrock-ab-results")
OTHER_TABLES = (
    AUDIT_TABLE,
    CONTROL_TABLE,
    TELEMETRY_TABLE,
    COST_METRICS_TABLE,
    COST_ALERTS_TABLE,
    ASSIGNMENTS_TABLE,
    AB_RESULTS_TABLE,
)


def table_names(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every table's name: the environment variable's value, else the original default."""
    env = os.environ if environ is None else environ
    names = {kind.table_env: env.get(kind.table_env, kind.default_table) for kind in RecordKind}
    for variable, default in OTHER_TABLES:
        names[variable] = env.get(variable, default)
    return names


@dataclass(frozen=True)
class StoredRecord:
    """A record as read from a store."""

    kind: RecordKind
    name: str
    item: Item

    @property
    def version(self) -> int:
        return int(self.item.get("version", 0))

    @property
    def managed(self) -> bool:
        return self.item.get("managed_by") == MANAGED_BY

    @property
    def content_hash(self) -> str | None:
        value = self.item.get("content_hash")
        return str(value) if value is not None else None

    @property
    def deletion_protected(self) -> bool:
        """Protected unless the attribute is absent or exactly false, as DynamoDB's delete
        condition reads it."""
        return "deletion_protection" in self.item and self.item["deletion_protection"] is not False

    def override_active(self, now_iso: str) -> bool:
        """True while an operator's shutdown holds this record (and has not expired)."""
        if self.item.get("emergency_shutdown") is not True:
            return False
        expires = self.item.get("shutdown_expires_at")
        return expires is None or str(expires) > now_iso


@dataclass(frozen=True)
class AuditEntry:
    """Who changed what, why and when, with the record before and after."""

    record: str  # "flag/vc_bedrock_live"
    action: str  # create | update | delete | shutdown | restore | force-unlock
    actor: str
    at: str  # RFC 3339, UTC
    reason: str = ""
    git_commit: str | None = None
    plan_id: str | None = None
    before: Item | None = None
    after: Item | None = None

    def to_item(self, audit_id: str) -> Item:
        item: Item = {
            "record": self.record,
            "audit_id": audit_id,
            AUDIT_MONTH: self.at[:7],  # YYYY-MM: the newest entries' index (any store's)
            "action": self.action,
            "actor": self.actor,
            "at": self.at,
            "reason": self.reason,
        }
        for key in ("git_commit", "plan_id", "before", "after"):
            value = getattr(self, key)
            if value is not None:
                item[key] = value
        return item


@dataclass(frozen=True)
class Write:
    """One conditional change to one record, with its audit entry.

    ``expected_version`` is the version the plan saw; ``None`` means the record must not exist.
    Updates and deletes also require the record to be managed by the reconciler and free of an
    active override; deletes require it to be unprotected. Stores enforce all of it in the write
    itself (condition expressions, or one SQL transaction), never by a read before the write.
    """

    kind: RecordKind
    name: str
    action: Literal["create", "update", "delete"]
    expected_version: int | None
    set_attributes: Item = field(default_factory=dict)
    remove_attributes: tuple[str, ...] = ()
    audit: AuditEntry | None = None


@dataclass(frozen=True)
class Lock:
    """The apply lease: who holds it, since when, until when.

    ``token`` is the holder's own id for this lease, written with it: a holder that asks again
    (a retry after a lost answer, a heartbeat) is recognised by it. ``renewed_at`` is the last
    heartbeat (empty until the first).
    """

    holder: str
    acquired_at: str
    expires_at: str
    reason: str = ""
    token: str = ""
    renewed_at: str = ""

    def to_item(self) -> Item:
        item: Item = {
            "holder": self.holder,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
            "reason": self.reason,
        }
        if self.token:
            item["token"] = self.token
        if self.renewed_at:
            item["renewed_at"] = self.renewed_at
        return item

    @classmethod
    def from_item(cls, item: Item) -> Lock:
        return cls(
            str(item["holder"]),
            str(item["acquired_at"]),
            str(item["expires_at"]),
            str(item.get("reason", "")),
            str(item.get("token", "")),
            str(item.get("renewed_at", "")),
        )

    @classmethod
    def taken(cls, holder: str, reason: str, ttl_seconds: float, now: datetime, token: str) -> Lock:
        """A new lease, from ``now`` for ``ttl_seconds``."""
        expires = format_time(now + timedelta(seconds=ttl_seconds))
        return cls(holder, format_time(now), expires, reason, token)

    def renewed(self, now: datetime, ttl_seconds: float) -> Lock:
        """The same lease, extended to ``ttl_seconds`` from ``now``."""
        return replace(
            self,
            expires_at=format_time(now + timedelta(seconds=ttl_seconds)),
            renewed_at=format_time(now),
        )


def exact_cost(row: Item) -> Item:
    """A cost-metrics row with ``daily_cost`` as an exact Decimal (from ``cost_micros``),
    whichever way the store kept it."""
    if "cost_micros" in row:
        row["daily_cost"] = Decimal(int(row["cost_micros"])) / 1_000_000
    return row
