"""Apply a plan: the only code that writes git's desired state into a store.

Under the store's lease lock, every change is checked against the store once more — as planned
(the version the plan saw), already applied (a run that died halfway), held by an override
(skipped), or moved (the whole plan is refused, nothing written) — and the rest is written in
atomic groups, each conditional on those versions and carrying its audit entries.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.codec import content_hash, git_owned
from reconciler.errors import UserError
from reconciler.plan.model import Change, Plan
from reconciler.runtime.sources import overrides_from_item
from reconciler.state.records import (
    MANAGED_BY,
    AuditEntry,
    Item,
    RecordKind,
    StoredRecord,
    Write,
    format_time,
)
from reconciler.state.store import StateStore, WriteConflictError

LOCK_TTL_SECONDS = 30 * 60
DEFAULT_MAX_DELETIONS = 10


class StalePlanError(UserError):
    """The store changed since the plan was made."""

    def __init__(self, moved: Sequence[str]) -> None:
        super().__init__(
            "the store changed since the plan was made; nothing was written. Records that "
            f"moved: {', '.join(moved)}. Make a new plan."
        )
        self.moved = list(moved)


class ApplyRefusedError(UserError):
    """The plan asks for something apply will not do."""


@dataclass
class ApplyResult:
    written: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    groups: int = 0

    def summary(self) -> str:
        text = f"Apply complete: {len(self.written)} written in {self.groups} group(s)"
        if self.already_applied:
            text += f", {len(self.already_applied)} already applied"
        if self.held:
            text += f", {len(self.held)} held by an override (left waiting)"
        return text + "."


def default_actor() -> str:
    """Who applies: $RECONCILER_ACTOR, then $GITHUB_ACTOR, then the OS user."""
    for variable in ("RECONCILER_ACTOR", "GITHUB_ACTOR"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def apply_plan(
    plan: Plan,
    store: StateStore,
    *,
    actor: str,
    now: Callable[[], datetime],
    max_deletions: int = DEFAULT_MAX_DELETIONS,
    progress: Callable[[str], None] = lambda _: None,
) -> ApplyResult:
    if plan.blocked:
        lines = "; ".join(f"{c.address}: {c.blocked}" for c in plan.blocked)
        raise ApplyRefusedError(f"the plan has blocked changes, so nothing was applied: {lines}")
    deletions = [c for c in plan.pending if c.action == "delete"]
    if len(deletions) > max_deletions:
        raise ApplyRefusedError(
            f"the plan deletes {len(deletions)} records, more than the limit of {max_deletions} "
            "per run; raise it with --max-deletions if that is meant"
        )
    holder = f"{actor}@{socket.gethostname()} pid {os.getpid()} plan {plan.plan_id}"
    store.acquire_lock(holder, f"apply plan {plan.plan_id}", LOCK_TTL_SECONDS, now())
    try:
        return _apply_locked(plan, store, actor=actor, now=now, progress=progress)
    finally:
        store.release_lock(holder)


def _apply_locked(
    plan: Plan,
    store: StateStore,
    *,
    actor: str,
    now: Callable[[], datetime],
    progress: Callable[[str], None],
) -> ApplyResult:
    result = ApplyResult()
    kinds = {c.kind for c in plan.pending}
    current: dict[RecordKind, dict[str, StoredRecord]] = {k: store.read_records(k) for k in kinds}
    at = format_time(now())
    # As of now, not as planned: a shutdown that came after the plan holds its flag too.
    shut_down = overrides_from_item(store.read_overrides()).in_force(now()).flags
    writes: list[Write] = []
    moved: list[str] = []
    for change in plan.pending:
        record = current[change.kind].get(change.name)
        overridden = change.kind is RecordKind.FLAG and change.name in shut_down
        if change.held or overridden or (record is not None and record.override_active(at)):
            result.held.append(change.address)
        elif _already_applied(change, record):
            result.already_applied.append(change.address)
        elif not _as_planned(change, record):
            moved.append(change.address)
        else:
            writes.append(_write_for(change, record, actor=actor, at=at, plan=plan))
    if moved:
        raise StalePlanError(moved)
    size = store.max_group_size
    for start in range(0, len(writes), size):
        group = writes[start : start + size]
        token = _token(plan.plan_id, start, group)
        try:
            store.apply_writes(group, token)
        except WriteConflictError:
            # A retried group whose first attempt landed (its answer was lost) fails its own
            # conditions: if every record is now exactly what the group wrote, it is done.
            if not _landed(store, group):
                raise
        result.groups += 1
        result.written.extend(f"{w.kind.label}/{w.name}" for w in group)
        if len(writes) > size:
            progress(f"applied {len(result.written)}/{len(writes)} changes")
    return result


def _landed(store: StateStore, group: Sequence[Write]) -> bool:
    current = {kind: store.read_records(kind) for kind in {w.kind for w in group}}
    for write in group:
        record = current[write.kind].get(write.name)
        if write.action == "delete":
            if record is not None:
                return False
        elif record is None or any(
            record.item.get(key) != write.set_attributes.get(key)
            for key in ("version", "content_hash", "updated_at")
        ):
            return False
    return True


def _already_applied(change: Change, record: StoredRecord | None) -> bool:
    if change.action == "delete":
        return record is None
    return (
        record is not None
        and record.managed
        and record.content_hash == change.desired_hash
        and content_hash(record.item) == change.desired_hash
    )


def _as_planned(change: Change, record: StoredRecord | None) -> bool:
    if change.action == "create":
        return record is None
    return record is not None and record.version == change.expected_version


def _write_for(
    change: Change, record: StoredRecord | None, *, actor: str, at: str, plan: Plan
) -> Write:
    audit = AuditEntry(
        record=change.address,
        action=change.action,
        actor=actor,
        at=at,
        reason=f"reconcile --apply (plan {plan.plan_id})",
        git_commit=plan.git_commit,
        plan_id=plan.plan_id,
        before=change.before if change.action != "create" else None,
        after=change.after,
    )
    if change.action == "delete":
        return Write(change.kind, change.name, "delete", change.expected_version, audit=audit)
    assert change.after is not None
    assert change.desired_hash is not None
    meta: Item = {
        "managed_by": MANAGED_BY,
        "content_hash": change.desired_hash,
        "version": (change.expected_version or 0) + 1,
        "updated_by": actor,
        "updated_at": at,
    }
    if plan.git_commit:
        meta["git_commit"] = plan.git_commit
    if change.action == "create":
        meta["created_at"] = at
        return Write(change.kind, change.name, "create", None, {**change.after, **meta}, (), audit)
    assert record is not None
    stale = tuple(sorted(set(git_owned(record.item)) - set(change.after)))
    attributes = {k: v for k, v in change.after.items() if k != change.kind.key}  # keys stay
    return Write(
        change.kind,
        change.name,
        "update",
        change.expected_version,
        {**attributes, **meta},
        stale,
        audit,
    )


def _token(plan_id: str, start: int, group: Sequence[Write]) -> str:
    """The same group of the same plan always gets the same idempotency token."""
    names = ",".join(f"{w.kind.label}/{w.name}" for w in group)
    return hashlib.sha256(f"{plan_id}:{start}:{names}".encode()).hexdigest()[:32]
