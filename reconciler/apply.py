"""Apply a plan: the only code that writes git's desired state into a store.

Under the store's lease (taken idempotently, renewed by a heartbeat while apply runs), every
change is checked against the store once more — as planned (the version the plan saw), already
applied (a run that died halfway), held by an override (skipped), or moved (the whole plan is
refused, nothing written) — and the rest is written in atomic groups, each conditional on those
versions and on the overrides record being as apply read it, and carrying its audit entries. A
shutdown that lands while apply runs fails that condition: the group's holds are decided again
from the new record and only what is still free is written.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

from reconciler.codec import content_hash, git_owned
from reconciler.errors import UserError
from reconciler.plan.model import Change, Plan
from reconciler.runtime.sources import overrides_from_item
from reconciler.state.records import (
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
    LockLostError,
    StateStore,
    StoreUnavailableError,
    WriteConflictError,
)

LEASE_SECONDS = 60.0  # renewed every quarter of it while apply runs
ACQUIRE_ATTEMPTS = 3
REDECIDE_ATTEMPTS = 5
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


class LeaseLostError(UserError):
    """The lease was lost while apply ran: it stops before the next group."""

    def __init__(self, cause: Exception, written: int, total: int) -> None:
        super().__init__(
            f"{cause}; apply stopped: {written} of {total} change(s) were written, the rest "
            "were not. Make a new plan and apply it."
        )


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


class Lease:
    """The apply lock, for as long as apply runs.

    Taken with a token of its own, sent with every attempt: a retry whose first answer was lost
    finds its own lease and succeeds. Renewed every quarter of its length by a heartbeat thread,
    so it is short (a minute by default) and still outlasts any apply; a killed apply renews
    nothing, and its lease runs out within one length. A heartbeat that finds the lease gone
    (``--force-unlock``, or run out and taken over) marks it ``lost``. Released at the end.
    """

    def __init__(
        self,
        store: StateStore,
        holder: str,
        reason: str,
        *,
        seconds: float,
        now: Callable[[], datetime],
        warn: Callable[[str], None] = lambda _: None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if seconds <= 0:
            raise ValueError("a lease lasts a positive number of seconds")
        self.store = store
        self.holder = holder
        self.reason = reason
        self.seconds = seconds
        self.renew_every = seconds / 4
        self.token = uuid.uuid4().hex
        self.lock: Lock | None = None
        self.lost: Exception | None = None
        self._now = now
        self._warn = warn
        self._sleep = sleep
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> Lease:
        self.lock = self._acquire()
        self._heartbeat = threading.Thread(target=self._beat, name="apply-lease", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            # A renewal still on its way cannot outlive the release: it needs the lease.
            self._heartbeat.join(timeout=5)
        try:
            self.store.release_lock(self.holder, self.token)
        except StoreUnavailableError as exc:
            expires = self.lock.expires_at if self.lock else "?"
            self._warn(
                f"warning: the apply lock was not released ({exc}); it runs out by itself "
                f"at {expires}"
            )

    def _acquire(self) -> Lock:
        for attempt in range(1, ACQUIRE_ATTEMPTS + 1):
            try:
                return self.store.acquire_lock(
                    self.holder, self.reason, self.seconds, self._now(), token=self.token
                )
            except StoreUnavailableError as exc:
                if not exc.retryable or attempt == ACQUIRE_ATTEMPTS:
                    raise
            self._sleep(0.2 * attempt)  # the same token again: it may have landed
        raise AssertionError("unreachable")

    def _beat(self) -> None:
        while not self._stop.wait(self.renew_every):
            assert self.lock is not None
            try:
                self.lock = self.store.renew_lock(self.lock, self.seconds, self._now())
            except LockLostError as exc:
                self.lost = exc
                return
            except StoreUnavailableError:
                continue  # the lease outlasts three missed beats; the next one tries again
            except Exception as exc:  # a bug: stop writing rather than run without a lease
                self.lost = exc
                return


def apply_plan(
    plan: Plan,
    store: StateStore,
    *,
    actor: str,
    now: Callable[[], datetime],
    max_deletions: int = DEFAULT_MAX_DELETIONS,
    progress: Callable[[str], None] = lambda _: None,
    lease_seconds: float = LEASE_SECONDS,
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
    reason = f"apply plan {plan.plan_id}"
    with Lease(store, holder, reason, seconds=lease_seconds, now=now, warn=progress) as lease:
        return _apply_locked(plan, store, actor=actor, now=now, progress=progress, lease=lease)


@dataclass(frozen=True)
class _Holds:
    """The operators' shutdowns as apply read them: the record's version and the flags held."""

    version: int
    flags: frozenset[str]


def _read_holds(store: StateStore, now: datetime) -> _Holds:
    overrides = overrides_from_item(store.read_overrides())
    return _Holds(overrides.version, frozenset(overrides.in_force(now).flags))


def _held(change: Change, record: StoredRecord | None, holds: _Holds, at: str) -> bool:
    overridden = change.kind is RecordKind.FLAG and change.name in holds.flags
    return change.held or overridden or (record is not None and record.override_active(at))


def _apply_locked(
    plan: Plan,
    store: StateStore,
    *,
    actor: str,
    now: Callable[[], datetime],
    progress: Callable[[str], None],
    lease: Lease,
) -> ApplyResult:
    result = ApplyResult()
    kinds = {c.kind for c in plan.pending}
    current: dict[RecordKind, dict[str, StoredRecord]] = {k: store.read_records(k) for k in kinds}
    at = format_time(now())
    # As of now, not as planned: a shutdown that came after the plan holds its flag too.
    holds = _read_holds(store, now())
    planned: list[tuple[Change, Write]] = []
    moved: list[str] = []
    for change in plan.pending:
        record = current[change.kind].get(change.name)
        if _held(change, record, holds, at):
            result.held.append(change.address)
        elif _already_applied(change, record):
            result.already_applied.append(change.address)
        elif not _as_planned(change, record):
            moved.append(change.address)
        else:
            planned.append((change, _write_for(change, record, actor=actor, at=at, plan=plan)))
    if moved:
        raise StalePlanError(moved)
    size = store.max_group_size
    for start in range(0, len(planned), size):
        if lease.lost is not None:
            raise LeaseLostError(lease.lost, len(result.written), len(planned))
        group = planned[start : start + size]
        holds = _write_group(
            store,
            group,
            plan_id=plan.plan_id,
            start=start,
            holds=holds,
            result=result,
            now=now,
        )
        if len(planned) > size:
            progress(f"applied {len(result.written)}/{len(planned)} changes")
    return result


def _write_group(
    store: StateStore,
    group: list[tuple[Change, Write]],
    *,
    plan_id: str,
    start: int,
    holds: _Holds,
    result: ApplyResult,
    now: Callable[[], datetime],
) -> _Holds:
    """Write one group, conditional on the overrides record being at the version read. When
    the group fails its conditions, it either landed already (a retry whose first answer was
    lost: done), or an operator held one of its records since (decide its holds again and write
    what is still free), or a record moved (``WriteConflictError``). Returns the holds as now
    read."""
    for _ in range(REDECIDE_ATTEMPTS):
        if not group:
            return holds
        writes = [w for _, w in group]
        # Only flags are held by break-glass: a group without one need not check the record.
        version = holds.version if any(w.kind is RecordKind.FLAG for w in writes) else None
        try:
            store.apply_writes(writes, _token(plan_id, start, writes), version)
        except WriteConflictError:
            records = {kind: store.read_records(kind) for kind in {w.kind for w in writes}}
            if not _landed(records, writes):
                fresh = _read_holds(store, now())
                at = format_time(now())
                held = [c for c, _ in group if _held(c, records[c.kind].get(c.name), fresh, at)]
                if not held and fresh.version == holds.version:
                    raise  # a record moved, not the holds: plan again
                holds = fresh
                result.held.extend(c.address for c in held)
                group = [(c, w) for c, w in group if c not in held]
                continue
        result.groups += 1
        result.written.extend(f"{w.kind.label}/{w.name}" for w in writes)
        return holds
    raise UserError(
        f"{OVERRIDES_RECORD} kept changing while apply wrote a group; {len(result.written)} "
        "change(s) were written. Apply again."
    )


def _landed(current: dict[RecordKind, dict[str, StoredRecord]], group: Sequence[Write]) -> bool:
    """Every record of the group is exactly what the group wrote."""
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
        # What the store held, not what the plan says it held: the trail is the store's.
        before=git_owned(record.item) if record is not None and change.action != "create" else None,
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
