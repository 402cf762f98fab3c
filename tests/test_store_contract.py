"""One contract, every store: the local SQLite store, DynamoDB under moto in-process, and
DynamoDB through moto's HTTP server (a real endpoint over the wire)."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.state.records import AuditEntry, RecordKind, Write, format_time
from reconciler.state.store import LockHeldError, LockLostError, StateStore, WriteConflictError

NOW = datetime(2026, 1, 9, 10, 0, tzinfo=UTC)


def flag_item(name: str, version: int = 1, **extra: object) -> dict[str, object]:
    return {
        "flag_name": name,
        "enabled": True,
        "rollout_percentage": 50,
        "ab_test_config": {
            "variants": [{"name": "a", "weight": 50.5, "config": {}}],
            "active": True,
        },
        "tags": [],
        "managed_by": "reconciler",
        "version": version,
        "content_hash": "sha256:x",
        **extra,
    }


_clock = itertools.count()


def audit(name: str, action: str) -> AuditEntry:
    """An audit entry a microsecond after the previous one, as successive applies would be."""
    at = format_time(NOW + timedelta(microseconds=next(_clock)))
    return AuditEntry(f"flag/{name}", action, "tester", at, before=None, after={"n": 1})


def create(name: str, **extra: object) -> Write:
    return Write(
        RecordKind.FLAG, name, "create", None, flag_item(name, **extra), (), audit(name, "create")
    )


def update(name: str, expected: int, **attributes: object) -> Write:
    return Write(
        RecordKind.FLAG,
        name,
        "update",
        expected,
        {"version": expected + 1, **attributes},
        ("tags",),
        audit(name, "update"),
    )


def delete(name: str, expected: int) -> Write:
    return Write(RecordKind.FLAG, name, "delete", expected, audit=audit(name, "delete"))


def test_empty_store_reads_nothing(store: StateStore) -> None:
    for kind in RecordKind:
        assert store.read_records(kind) == {}
    assert store.read_lock() is None
    assert store.read_audit() == []
    assert store.read_record(RecordKind.FLAG, "vc_a") is None


def test_create_update_delete_round_trip(store: StateStore) -> None:
    store.apply_writes([create("vc_a"), create("vc_b")], "t1")
    records = store.read_records(RecordKind.FLAG)
    assert sorted(records) == ["vc_a", "vc_b"]
    assert records["vc_a"].item == flag_item("vc_a")
    assert records["vc_a"].version == 1

    store.apply_writes([update("vc_a", 1, rollout_percentage=75.5, enabled=False)], "t2")
    item = store.read_records(RecordKind.FLAG)["vc_a"].item
    assert item["rollout_percentage"] == 75.5
    assert item["enabled"] is False
    assert item["version"] == 2
    assert "tags" not in item, "remove_attributes are removed"
    assert item["ab_test_config"] == flag_item("vc_a")["ab_test_config"], "others untouched"

    one = store.read_record(RecordKind.FLAG, "vc_a")
    assert one is not None
    assert one == store.read_records(RecordKind.FLAG)["vc_a"], "one read, the same record"
    assert store.read_record(RecordKind.EXPERIMENT, "vc_a") is None, "only its own kind"

    store.apply_writes([delete("vc_a", 2)], "t3")
    assert sorted(store.read_records(RecordKind.FLAG)) == ["vc_b"]
    assert store.read_record(RecordKind.FLAG, "vc_a") is None


def test_update_keeps_other_owners_attributes(store: StateStore) -> None:
    store.apply_writes([create("vc_a", controller_state={"stage": "canary"})], "t1")
    store.apply_writes([update("vc_a", 1, rollout_percentage=10)], "t2")
    item = store.read_records(RecordKind.FLAG)["vc_a"].item
    assert item["controller_state"] == {"stage": "canary"}


@pytest.mark.parametrize(
    ("setup", "write"),
    [
        pytest.param({}, create("vc_a"), id="create-existing"),
        pytest.param({}, update("vc_a", 7), id="update-wrong-version"),
        pytest.param({}, delete("vc_a", 7), id="delete-wrong-version"),
        pytest.param({}, update("vc_missing", 1), id="update-missing"),
        pytest.param({"managed_by": "someone-else"}, update("vc_a", 1), id="update-unmanaged"),
        pytest.param({"emergency_shutdown": True}, update("vc_a", 1), id="update-overridden"),
        pytest.param({"emergency_shutdown": True}, delete("vc_a", 1), id="delete-overridden"),
        pytest.param({"deletion_protection": True}, delete("vc_a", 1), id="delete-protected"),
    ],
)
def test_conditions_refuse_and_write_nothing(
    store: StateStore, setup: dict[str, object], write: Write
) -> None:
    store.apply_writes([create("vc_a", **setup)], "setup")
    before = store.read_records(RecordKind.FLAG)
    audit_before = store.read_audit()
    with pytest.raises(WriteConflictError) as caught:
        store.apply_writes([create("vc_other"), write], "group")
    assert caught.value.records == [f"flag/{write.name}"]
    assert store.read_records(RecordKind.FLAG) == before, "the whole group is refused"
    assert store.read_audit() == audit_before


def test_an_expired_override_does_not_hold(store: StateStore) -> None:
    expired = format_time(datetime.now(UTC) - timedelta(minutes=1))
    store.apply_writes([create("vc_a", emergency_shutdown=True, shutdown_expires_at=expired)], "t1")
    store.apply_writes([update("vc_a", 1, enabled=False)], "t2")
    assert store.read_records(RecordKind.FLAG)["vc_a"].item["enabled"] is False


def test_a_retried_group_is_applied_once(store: StateStore, request: pytest.FixtureRequest) -> None:
    if "moto" in request.node.callspec.id:
        pytest.skip(
            "moto does not implement ClientRequestToken idempotency; DynamoDB does, for 10 "
            "minutes, and apply skips records already applied on any later run"
        )
    store.apply_writes([create("vc_a")], "same-token")
    store.apply_writes([create("vc_a")], "same-token")  # a retry after a lost answer
    assert list(store.read_records(RecordKind.FLAG)) == ["vc_a"]
    assert len(store.read_audit("flag/vc_a")) == 1


def test_audit_entries_land_with_their_writes(store: StateStore) -> None:
    store.apply_writes([create("vc_a")], "t1")
    store.apply_writes([update("vc_a", 1, enabled=False)], "t2")
    entries = store.read_audit("flag/vc_a")
    assert [e["action"] for e in entries] == ["update", "create"], "newest first"
    assert entries[1]["actor"] == "tester"
    assert entries[1]["after"] == {"n": 1}
    assert store.read_audit("flag/vc_other") == []


def test_many_records_page_through(store: StateStore) -> None:
    size = min(store.max_group_size, 50)
    for start in range(0, 150, size):
        names = range(start, min(start + size, 150))
        store.apply_writes([create(f"vc_{i:04d}") for i in names], f"t{start}")
    assert len(store.read_records(RecordKind.FLAG)) == 150


def test_lock_is_exclusive_until_released_or_expired(store: StateStore) -> None:
    lock = store.acquire_lock("alice", "apply", 60, NOW)
    assert store.read_lock() == lock
    with pytest.raises(LockHeldError) as held:
        store.acquire_lock("bob", "apply", 60, NOW + timedelta(seconds=30))
    assert held.value.lock.holder == "alice"
    assert store.release_lock("bob") is False, "only the holder releases"
    assert store.release_lock("alice") is True
    assert store.read_lock() is None
    store.acquire_lock("alice", "apply", 60, NOW)
    taken = store.acquire_lock("bob", "apply", 60, NOW + timedelta(seconds=61))
    assert taken.holder == "bob", "an expired lease can be taken over"


def test_force_unlock_is_audited(store: StateStore) -> None:
    store.acquire_lock("ci-job-17", "apply", 600, NOW)
    removed = store.force_unlock("oncall", "job was killed", NOW)
    assert removed is not None
    assert removed.holder == "ci-job-17"
    assert store.read_lock() is None
    [entry] = store.read_audit("lock/reconcile")
    assert (entry["action"], entry["actor"], entry["reason"]) == (
        "force-unlock",
        "oncall",
        "job was killed",
    )


def test_concurrent_lock_takers_get_one_winner(store: StateStore) -> None:
    winners: list[str] = []
    losers: list[str] = []

    def take(name: str) -> None:
        try:
            store.acquire_lock(name, "apply", 60, NOW)
            winners.append(name)
        except LockHeldError:
            losers.append(name)

    threads = [threading.Thread(target=take, args=(f"worker-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(losers) == 5


def test_a_lease_taken_again_with_its_own_token_is_the_same_lease(store: StateStore) -> None:
    first = store.acquire_lock("alice", "apply", 60, NOW, token="t-1")
    again = store.acquire_lock("alice", "apply", 60, NOW + timedelta(seconds=1), token="t-1")
    assert (again.holder, again.token) == ("alice", "t-1"), "a retry finds its own lease"
    assert store.read_lock() == again
    assert first.token == "t-1"
    with pytest.raises(LockHeldError):
        store.acquire_lock("alice", "apply", 60, NOW + timedelta(seconds=2), token="t-2")
    with pytest.raises(LockHeldError):
        store.acquire_lock("alice", "apply", 60, NOW + timedelta(seconds=2))
    assert store.release_lock("alice", "t-2") is False, "another lease of the same holder"
    assert store.release_lock("alice", "t-1") is True
    assert store.read_lock() is None


def test_a_held_lock_says_who_since_when_until_when_and_what_to_do(store: StateStore) -> None:
    store.acquire_lock("ci@runner-7 pid 42 plan p1", "apply plan p1", 60, NOW, token="t")
    store.renew_lock(store.read_lock(), 60, NOW + timedelta(seconds=15))  # type: ignore[arg-type]
    with pytest.raises(LockHeldError) as held:
        store.acquire_lock("bob", "apply", 60, NOW + timedelta(seconds=20))
    message = str(held.value)
    assert message.startswith(
        "another apply holds the lock: ci@runner-7 pid 42 plan p1 (apply plan p1), taken at "
        "2026-01-09T10:00:00.000000Z (20 s ago), last renewed at 2026-01-09T10:00:15.000000Z "
        "(5 s ago); its lease runs out at 2026-01-09T10:01:15.000000Z (in 55 s)."
    ), message
    assert "if it died, the lease runs out by itself" in message
    assert 'reconcile --force-unlock --reason "..."' in message


def test_a_renewed_lease_outlives_its_first_expiry(store: StateStore) -> None:
    lock = store.acquire_lock("alice", "apply", 60, NOW, token="t")
    renewed = store.renew_lock(lock, 60, NOW + timedelta(seconds=45))
    assert renewed.expires_at == format_time(NOW + timedelta(seconds=105))
    assert renewed.renewed_at == format_time(NOW + timedelta(seconds=45))
    assert renewed.acquired_at == lock.acquired_at
    assert store.read_lock() == renewed
    with pytest.raises(LockHeldError):
        store.acquire_lock("bob", "apply", 60, NOW + timedelta(seconds=90))
    taken = store.acquire_lock("bob", "apply", 60, NOW + timedelta(seconds=106), token="b")
    with pytest.raises(LockLostError) as lost:
        store.renew_lock(renewed, 60, NOW + timedelta(seconds=107))
    assert lost.value.current == taken
    assert "now held by bob" in str(lost.value)
    assert store.read_lock() == taken, "a lost lease's renewal changes nothing"


def test_a_lease_broken_by_force_unlock_cannot_be_renewed(store: StateStore) -> None:
    lock = store.acquire_lock("alice", "apply", 60, NOW, token="t")
    store.force_unlock("oncall", "stuck", NOW)
    with pytest.raises(LockLostError, match="it was removed"):
        store.renew_lock(lock, 60, NOW + timedelta(seconds=15))
    assert store.read_lock() is None, "renewal never takes a lease again"


def _overrides(store: StateStore, version: int, flags: dict[str, object]) -> None:
    at = format_time(NOW)
    entry = AuditEntry("overrides/breakglass", "shutdown", "oncall", at, reason="test")
    store.write_overrides({"flags": flags, "version": version + 1}, version, entry)


def test_a_group_checks_the_overrides_record_it_was_decided_on(store: StateStore) -> None:
    store.apply_writes([create("vc_a")], "t0", overrides_version=0)  # no record yet: version 0
    _overrides(store, 0, {"vc_other": {"by": "oncall", "reason": "r"}})
    before = store.read_records(RecordKind.FLAG)
    audit_before = store.read_audit()
    with pytest.raises(WriteConflictError) as caught:
        store.apply_writes([update("vc_a", 1), create("vc_b")], "t1", overrides_version=0)
    assert caught.value.records[0] == "overrides/breakglass"
    assert "overrides/breakglass is at version 1" in str(caught.value)
    assert store.read_records(RecordKind.FLAG) == before, "nothing of the group is written"
    assert store.read_audit() == audit_before
    store.apply_writes([update("vc_a", 1), create("vc_b")], "t2", overrides_version=1)
    assert sorted(store.read_records(RecordKind.FLAG)) == ["vc_a", "vc_b"]
    store.apply_writes([update("vc_a", 2)], "t3")  # without a version: no check


def test_the_newest_entries_of_every_record_without_their_records(store: StateStore) -> None:
    """What the dashboard's audit trail lists: newest first across records, each entry without
    the records before and after (on DynamoDB, from the index by month)."""
    store.apply_writes([create("vc_a"), create("vc_b")], "t1")
    store.apply_writes([update("vc_a", 1, description="changed")], "t2")
    everything = store.read_audit()
    recent = store.read_recent_audit(limit=10, now=NOW + timedelta(days=1))
    assert [e["audit_id"] for e in recent] == [e["audit_id"] for e in everything]
    assert (recent[0]["record"], recent[0]["action"]) == ("flag/vc_a", "update")
    assert all("before" not in e and "after" not in e for e in recent)
    assert recent[0]["actor"] == "tester"
    assert [e["audit_id"] for e in store.read_recent_audit(limit=2, now=NOW)] == [
        e["audit_id"] for e in everything[:2]
    ]


def test_the_newest_entries_reach_back_over_months(store: StateStore) -> None:
    """An entry of an earlier month, after a month with none."""
    old = AuditEntry("flag/vc_old", "create", "tester", "2025-11-30T23:59:59.000000Z")
    item = flag_item("vc_old")
    store.apply_writes([Write(RecordKind.FLAG, "vc_old", "create", None, item, (), old)], "t0")
    store.apply_writes([create("vc_new")], "t1")
    recent = store.read_recent_audit(limit=10, now=NOW)
    assert [e["record"] for e in recent] == ["flag/vc_new", "flag/vc_old"]
