"""The apply lease: taken once however its answers are lost, renewed while apply runs, lost
when someone breaks it, and gone by itself soon after its holder dies."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError

from reconciler.apply import ApplyResult, LeaseLostError, apply_plan
from reconciler.codec import DesiredState, encode
from reconciler.config import load_config
from reconciler.plan.build import build_plan
from reconciler.plan.model import Plan
from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.records import Lock, RecordKind, Write
from reconciler.state.store import LockHeldError, StateStore, StoreUnavailableError
from reconciler.validation import validate
from tests.conftest import REPO_ROOT


@pytest.fixture(params=["moto", "moto-server"])
def dynamo_store(request: pytest.FixtureRequest) -> DynamoDBStore:
    name = "moto_store" if request.param == "moto" else "moto_server_store"
    store: DynamoDBStore = request.getfixturevalue(name)
    return store


def utc() -> datetime:
    return datetime.now(UTC)


def desired() -> DesiredState:
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    assert result.ok
    return encode(result.tree)


def plan(store: StateStore) -> Plan:
    return build_plan(desired(), store, git_commit="c0ffee", now=utc())


def apply(store: StateStore, planned: Plan, **kwargs: Any) -> ApplyResult:
    return apply_plan(planned, store, actor="tester", now=utc, **kwargs)


def change_audits(store: StateStore) -> list[dict[str, Any]]:
    return [e for e in store.read_audit(limit=1000) if e["record"] != "lock/reconcile"]


# -- a lost answer ---------------------------------------------------------------------------


class LostLockAnswer:
    """DynamoDB applies the first PutItem on the lock, and its answer is lost on the way back
    (the connection drops): the caller sees a connection error, the table has the lease."""

    def __init__(self, store: DynamoDBStore) -> None:
        self.store = store
        self.dropped = 0
        self.sent = 0
        events = store.client.meta.events
        events.register("before-parameter-build.dynamodb.PutItem", self._mark)
        events.register("after-call.dynamodb.PutItem", self._drop)

    def _mark(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if params.get("TableName") == self.store.control_table and params.get("Item", {}).get(
            "record_id"
        ) == {"S": "lock#reconcile"}:
            context["lock_put"] = True

    def _drop(self, context: dict[str, Any], http_response: Any, **_: Any) -> None:
        if not context.get("lock_put"):
            return
        self.sent += 1
        if self.dropped == 0 and http_response.status_code == 200:
            self.dropped += 1
            raise ConnectionClosedError(endpoint_url="https://dynamodb.eu-central-1.amazonaws.com")


def test_a_lost_answer_to_the_lock_put_does_not_lock_the_applier_out(
    dynamo_store: DynamoDBStore,
) -> None:
    planned = plan(dynamo_store)
    lost = LostLockAnswer(dynamo_store)
    result = apply(dynamo_store, planned)
    assert lost.dropped == 1, "the first answer was lost after DynamoDB applied the put"
    assert lost.sent == 2, "its retry found its own lease and succeeded"
    assert len(result.written) == 5
    assert dynamo_store.read_lock() is None, "released"
    assert sorted(e["record"] for e in change_audits(dynamo_store)) == sorted(
        c.address for c in planned.pending
    ), "one audit entry per change"
    assert dynamo_store.read_audit("lock/reconcile") == []


class LostAcquireAnswer:
    """Any store: the first acquire lands, and the caller is told the store failed."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.max_group_size = inner.max_group_size
        self.calls: list[str | None] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def acquire_lock(
        self, holder: str, reason: str, ttl: float, now: datetime, token: str | None = None
    ) -> Lock:
        self.calls.append(token)
        lock = self.inner.acquire_lock(holder, reason, ttl, now, token)
        if len(self.calls) == 1:
            raise StoreUnavailableError("the connection dropped before the answer came back")
        return lock


def test_a_lost_answer_to_acquire_is_retried_into_the_same_lease(store: StateStore) -> None:
    planned = plan(store)
    wrapped = LostAcquireAnswer(store)
    result = apply(wrapped, planned)  # type: ignore[arg-type]
    assert len(wrapped.calls) == 2
    assert wrapped.calls[0] is not None, "apply names its lease"
    assert wrapped.calls[0] == wrapped.calls[1], "and asks again with the same token"
    assert len(result.written) == 5
    assert store.read_lock() is None
    assert len(change_audits(store)) == 5


def test_an_apply_still_refuses_a_lease_that_is_not_its_own(store: StateStore) -> None:
    store.acquire_lock("other-ci-job", "apply", 60, utc(), token="theirs")
    with pytest.raises(LockHeldError, match="other-ci-job"):
        apply(store, plan(store))
    assert store.read_lock().holder == "other-ci-job"  # type: ignore[union-attr]


# -- the heartbeat ---------------------------------------------------------------------------


class Slow:
    """The real store, with every group taking ``seconds`` before it is written, in groups
    of ``size``; ``during`` runs after the first group landed."""

    def __init__(
        self, inner: StateStore, seconds: float, size: int = 50, during: Any = None
    ) -> None:
        self.inner = inner
        self.seconds = seconds
        self.max_group_size = size
        self.during = during
        self.groups = 0
        self.busy = threading.Event()  # set while a group is being written

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def apply_writes(
        self, writes: Sequence[Write], token: str, overrides_version: int | None = None
    ) -> None:
        self.busy.set()
        time.sleep(self.seconds)
        self.inner.apply_writes(writes, token, overrides_version)
        self.busy.clear()
        self.groups += 1
        if self.groups == 1 and self.during is not None:
            self.during()


def test_a_lease_is_renewed_for_as_long_as_apply_runs(store: StateStore) -> None:
    planned = plan(store)
    slow = Slow(store, 0.5, size=2)
    seen: list[Lock] = []
    refused: list[str] = []
    done = threading.Event()

    def other_applies() -> None:
        while not done.is_set():
            if not slow.busy.wait(0.01):
                continue  # only while the apply is in the middle of a group
            lock = store.read_lock()
            assert lock is not None
            seen.append(lock)
            group = slow.groups
            try:
                store.acquire_lock("another-apply", "apply", 0.4, utc())
                if slow.busy.is_set() and slow.groups == group:
                    refused.append("taken!")  # while the same group was still being written
                store.release_lock("another-apply")
            except LockHeldError:
                refused.append("refused")
            time.sleep(0.05)

    watcher = threading.Thread(target=other_applies)
    watcher.start()
    try:
        started = time.perf_counter()
        result = apply(slow, planned, lease_seconds=0.4)  # type: ignore[arg-type]
        took = time.perf_counter() - started
    finally:
        done.set()
        watcher.join()
    assert took > 3 * 0.4, "apply ran for several lease lengths"
    assert len(result.written) == 5
    assert refused.count("refused") >= 10
    assert "taken!" not in refused, "no one took the lease while its holder ran"
    renewals = {lock.renewed_at for lock in seen if lock.renewed_at}
    assert len(renewals) >= 4, f"renewed every 0.1 s: {sorted(renewals)}"
    assert len({lock.token for lock in seen}) == 1
    assert store.read_lock() is None


def test_apply_stops_before_the_next_group_when_its_lease_is_broken(store: StateStore) -> None:
    planned = plan(store)

    def break_it() -> None:
        store.force_unlock("oncall", "testing", utc())
        time.sleep(0.4)  # a few heartbeats: the next one finds the lease gone

    slow = Slow(store, 0.0, size=2, during=break_it)
    with pytest.raises(LeaseLostError) as caught:
        apply(slow, planned, lease_seconds=0.4)  # type: ignore[arg-type]
    assert str(caught.value).startswith("the apply lock of tester@")
    assert "it was removed" in str(caught.value)
    assert "2 of 5 change(s) were written, the rest were not" in str(caught.value)
    assert slow.groups == 1
    assert sum(len(store.read_records(kind)) for kind in RecordKind) == 2
    assert store.read_lock() is None
