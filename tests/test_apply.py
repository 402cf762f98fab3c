"""Apply: exactly the plan, once, safely under staleness, crashes, holds and concurrency."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.apply import ApplyRefusedError, StalePlanError, apply_plan
from reconciler.codec import DesiredState, encode
from reconciler.config import load_config
from reconciler.plan.build import build_plan
from reconciler.plan.model import Plan
from reconciler.state.records import Item, Lock, RecordKind, StoredRecord, Write
from reconciler.state.store import LockHeldError, StateStore, StoreUnavailableError
from reconciler.validation import validate
from tests.conftest import REPO_ROOT

NOW = datetime(2026, 1, 9, 10, 0, tzinfo=UTC)


def desired() -> DesiredState:
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    assert result.ok
    return encode(result.tree)


def plan(store: StateStore, state: DesiredState, **kwargs: object) -> Plan:
    return build_plan(state, store, git_commit="c0ffee", now=datetime.now(UTC), **kwargs)  # type: ignore[arg-type]


def apply(store: StateStore, planned: Plan, **kwargs: object) -> object:
    return apply_plan(planned, store, actor="tester", now=lambda: datetime.now(UTC), **kwargs)  # type: ignore[arg-type]


def flags(store: StateStore) -> dict[str, StoredRecord]:
    return store.read_records(RecordKind.FLAG)


def test_apply_then_plan_again_is_empty(store: StateStore) -> None:
    state = desired()
    first = plan(store, state)
    assert first.count("create") == 5
    result = apply(store, first)
    assert len(result.written) == 5  # type: ignore[attr-defined]
    again = plan(store, state)
    assert not again.has_changes
    assert again.count("unchanged") == 5


def test_one_field_edit_plans_exactly_that_field(store: StateStore) -> None:
    state = desired()
    apply(store, plan(store, state))
    edited = copy.deepcopy(state)
    edited[RecordKind.FLAG]["vc_bedrock_live"]["rollout_percentage"] = 30
    changed = plan(store, edited)
    [change] = changed.pending
    assert change.address == "flag/vc_bedrock_live"
    assert [(f.path, f.before, f.after) for f in change.fields] == [("rollout_percentage", 100, 30)]
    # The risk line's figure is the plan's to check (tests of the risk itself), not apply's.
    apply(store, changed)
    record = flags(store)["vc_bedrock_live"]
    assert record.item["rollout_percentage"] == 30
    assert record.version == 2
    [latest, *_] = store.read_audit("flag/vc_bedrock_live")
    assert latest["action"] == "update"
    assert latest["git_commit"] == "c0ffee"
    assert latest["before"]["rollout_percentage"] == 100
    assert latest["after"]["rollout_percentage"] == 30


def test_a_saved_plan_is_refused_when_the_store_moved(store: StateStore) -> None:
    state = desired()
    apply(store, plan(store, state))
    a, b = copy.deepcopy(state), copy.deepcopy(state)
    a[RecordKind.FLAG]["vc_bedrock_live"]["rollout_percentage"] = 30
    b[RecordKind.FLAG]["vc_bedrock_live"]["rollout_percentage"] = 60
    b[RecordKind.FLAG]["ai_model_selection"]["enabled"] = False
    stale = plan(store, b)
    apply(store, plan(store, a))
    before = flags(store)
    with pytest.raises(StalePlanError) as caught:
        apply(store, stale)
    assert caught.value.moved == ["flag/vc_bedrock_live"]
    assert flags(store) == before, "nothing of the stale plan was written"
    assert store.read_lock() is None, "the lock is released after a refusal"


def test_applying_the_same_plan_twice_writes_once(store: StateStore) -> None:
    planned = plan(store, desired())
    apply(store, planned)
    audit_count = len(store.read_audit())
    second = apply(store, planned)
    assert second.written == []  # type: ignore[attr-defined]
    assert len(second.already_applied) == 5  # type: ignore[attr-defined]
    assert len(store.read_audit()) == audit_count


class CrashAfter:
    """The real store, with the process 'killed' after a number of groups."""

    def __init__(self, inner: StateStore, groups: int) -> None:
        self.inner = inner
        self.remaining = groups
        self.max_group_size = 2

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def apply_writes(
        self, writes: Sequence[Write], token: str, overrides_version: int | None = None
    ) -> None:
        if self.remaining == 0:
            raise KeyboardInterrupt("killed")
        self.remaining -= 1
        self.inner.apply_writes(writes, token, overrides_version)


def test_a_crash_mid_apply_leaves_old_or_new_and_the_next_run_completes(
    store: StateStore,
) -> None:
    state = desired()
    planned = plan(store, state)
    crashing = CrashAfter(store, groups=1)
    with pytest.raises(KeyboardInterrupt):
        apply(crashing, planned)  # type: ignore[arg-type]
    written = {
        kind: set(store.read_records(kind)) for kind in RecordKind if store.read_records(kind)
    }
    assert sum(len(v) for v in written.values()) == 2, "exactly the first group landed"
    for kind, names in written.items():
        for name in names:
            assert store.read_records(kind)[name].item["content_hash"]
    store.force_unlock("tester", "the crashed run left its lease", NOW)
    result = apply(store, planned)  # the same saved plan completes the work
    assert len(result.already_applied) == 2  # type: ignore[attr-defined]
    assert len(result.written) == 3  # type: ignore[attr-defined]
    assert not plan(store, state).has_changes


def test_a_held_record_is_shown_and_skipped(store: StateStore, tmp_path: Path) -> None:
    state = desired()
    apply(store, plan(store, state))
    _shutdown(store, "vc_bedrock_live")
    edited = copy.deepcopy(state)
    edited[RecordKind.FLAG]["vc_bedrock_live"]["enabled"] = True
    edited[RecordKind.FLAG]["vc_bedrock_live"]["rollout_percentage"] = 5
    edited[RecordKind.FLAG]["ai_model_selection"]["rollout_percentage"] = 5
    planned = plan(store, edited)
    held = next(c for c in planned.changes if c.name == "vc_bedrock_live")
    assert held.held
    assert held.holds[0].detail == "emergency shutdown by oncall: bad answers"
    result = apply(store, planned)
    assert result.held == ["flag/vc_bedrock_live"]  # type: ignore[attr-defined]
    assert result.written == ["flag/ai_model_selection"]  # type: ignore[attr-defined]
    record = flags(store)["vc_bedrock_live"]
    assert record.item["emergency_shutdown"] is True, "apply never clears an override"
    assert record.item["rollout_percentage"] == 100, "the held change waits"


def _shutdown(store: StateStore, name: str) -> None:
    """What break-glass does to a flag record (written here through the store's own API)."""
    record = flags(store)[name]
    item: Item = {
        "emergency_shutdown": True,
        "shutdown_by": "oncall",
        "shutdown_reason": "bad answers",
        "shutdown_at": "2026-01-09T03:00:00.000000Z",
        "version": record.version + 1,
    }
    store.apply_writes([Write(RecordKind.FLAG, name, "update", record.version, item)], "shutdown")


def test_deletions_are_protected_limited_and_never_of_unmanaged_records(
    store: StateStore,
) -> None:
    state = desired()
    apply(store, plan(store, state))
    foreign = Write(
        RecordKind.FLAG,
        "legacy_flag",
        "create",
        None,
        {"flag_name": "legacy_flag", "enabled": True},
    )
    store.apply_writes([foreign], "foreign")
    without_experiment = copy.deepcopy(state)
    del without_experiment[RecordKind.EXPERIMENT]["claude_vs_gemini"]
    planned = plan(store, without_experiment)
    assert [c.address for c in planned.pending if c.action == "delete"] == [
        "experiment/claude_vs_gemini"
    ]
    assert [u.address for u in planned.unmanaged] == ["flag/legacy_flag"]
    with pytest.raises(ApplyRefusedError, match="more than the limit of 0"):
        apply(store, planned, max_deletions=0)
    apply(store, planned)
    assert "claude_vs_gemini" not in store.read_records(RecordKind.EXPERIMENT)
    assert "legacy_flag" in flags(store)


def test_a_protected_record_cannot_be_deleted_by_removing_its_file(store: StateStore) -> None:
    state = desired()
    state[RecordKind.COST_THRESHOLD]["ai_daily_budget"]["deletion_protection"] = True
    apply(store, plan(store, state))
    del state[RecordKind.COST_THRESHOLD]["ai_daily_budget"]
    planned = plan(store, state)
    [blocked] = planned.blocked
    assert blocked.address == "cost_threshold/ai_daily_budget"
    assert "deletion protection is on" in (blocked.blocked or "")
    with pytest.raises(ApplyRefusedError):
        apply(store, planned)
    assert "ai_daily_budget" in store.read_records(RecordKind.COST_THRESHOLD)


def test_an_empty_tree_deletes_nothing_unless_allowed(store: StateStore) -> None:
    apply(store, plan(store, desired()))
    empty: DesiredState = {kind: {} for kind in RecordKind}
    refused = plan(store, empty)
    assert len(refused.blocked) == 5
    with pytest.raises(ApplyRefusedError, match="git declares no manifests"):
        apply(store, refused)
    allowed = plan(store, empty, allow_empty=True)
    apply(store, allowed)
    assert all(not store.read_records(kind) for kind in RecordKind)


def test_drift_is_flagged_and_repaired(store: StateStore) -> None:
    state = desired()
    apply(store, plan(store, state))
    record = flags(store)["vc_bedrock_live"]
    hand_edit = Write(
        RecordKind.FLAG,
        "vc_bedrock_live",
        "update",
        record.version,
        {"rollout_percentage": 1, "version": record.version + 1},
    )
    store.apply_writes([hand_edit], "console")
    drifted = plan(store, state)
    [change] = drifted.pending
    assert change.drift
    assert [(f.path, f.before, f.after) for f in change.fields] == [("rollout_percentage", 1, 100)]
    apply(store, drifted)
    assert not plan(store, state).has_changes


def test_an_apply_waits_for_no_one_while_another_holds_the_lock(store: StateStore) -> None:
    store.acquire_lock("other-ci-job", "apply", 600, datetime.now(UTC))
    with pytest.raises(LockHeldError):
        apply(store, plan(store, desired()))
    assert all(not store.read_records(kind) for kind in RecordKind)


def test_concurrent_applies_never_interleave(store: StateStore) -> None:
    planned = plan(store, desired())
    outcomes: list[str] = []

    def run() -> None:
        try:
            result = apply(store, planned)
            outcomes.append(f"wrote {len(result.written)}")  # type: ignore[attr-defined]
        except LockHeldError:
            outcomes.append("locked out")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("wrote 5") == 1
    assert all(o in ("wrote 5", "wrote 0", "locked out") for o in outcomes)
    assert len(store.read_audit()) == 5, "each change audited exactly once"


def test_store_outage_surfaces_as_a_clear_error(tmp_path: Path) -> None:
    from reconciler.state.local import LocalStore

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreUnavailableError, match="cannot open the local store"):
        LocalStore(blocker / "state.db").bootstrap()


def test_lock_dataclass_is_what_stores_return(store: StateStore) -> None:
    lock = store.acquire_lock("x", "why", 5, NOW)
    assert isinstance(lock, Lock)


class LostAnswer:
    """The real store, where the first answer to a group is lost after the group landed,
    so the caller's retry runs into the group's own conditions."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.max_group_size = inner.max_group_size
        self.lost = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def apply_writes(
        self, writes: Sequence[Write], token: str, overrides_version: int | None = None
    ) -> None:
        self.inner.apply_writes(writes, token, overrides_version)
        if not self.lost:
            self.lost = True
            # the retry, as a new request
            self.inner.apply_writes(writes, token + "-retry", overrides_version)


def test_a_retry_after_a_lost_answer_is_recognised_as_done(store: StateStore) -> None:
    state = desired()
    result = apply(LostAnswer(store), plan(store, state))  # type: ignore[arg-type]
    assert len(result.written) == 5  # type: ignore[attr-defined]
    assert not plan(store, state).has_changes


def test_a_real_conflict_is_still_an_error(store: StateStore) -> None:
    from reconciler.state.store import WriteConflictError

    state = desired()
    planned = plan(store, state)

    class Racing(LostAnswer):
        def apply_writes(
            self, writes: Sequence[Write], token: str, overrides_version: int | None = None
        ) -> None:
            # Someone else creates one of the records between the plan's check and the write.
            first = writes[0]
            other = Write(first.kind, first.name, "create", None, {"managed_by": "reconciler"})
            self.inner.apply_writes([other], "someone-else")
            self.inner.apply_writes(writes, token, overrides_version)

    with pytest.raises(WriteConflictError):
        apply(Racing(store), planned)  # type: ignore[arg-type]


def test_a_boolean_edited_to_a_number_outside_git_is_drift(store: StateStore) -> None:
    """``enabled: 1`` in the store is not git's ``enabled: true``, though Python's == says so."""
    state = desired()
    apply(store, plan(store, state))
    record = flags(store)["vc_bedrock_live"]
    assert record.item["enabled"] is True
    hand_edit = Write(
        RecordKind.FLAG,
        "vc_bedrock_live",
        "update",
        record.version,
        {"enabled": 1, "version": record.version + 1},
    )
    store.apply_writes([hand_edit], "console")
    drifted = plan(store, state)
    [change] = drifted.pending
    assert change.drift
    apply(store, drifted)
    assert flags(store)["vc_bedrock_live"].item["enabled"] is True
    assert not plan(store, state).has_changes
