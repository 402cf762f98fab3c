"""Break-glass: shutdowns that outrank git, reach every client, and leave a trail."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler import breakglass as core
from reconciler.cli.boundary import run
from reconciler.cli.breakglass import breakglass
from reconciler.errors import UserError
from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Reason
from reconciler.runtime.sources import DynamoDBSource, SnapshotSource, SQLiteSource
from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD, RecordKind
from reconciler.state.store import StateStore
from tests.test_apply import apply, desired, plan
from tests.test_runtime_client import PRO_DE

NOW = datetime(2026, 1, 9, 3, 0, tzinfo=UTC)


def source_for(store: StateStore) -> SnapshotSource:
    if isinstance(store, LocalStore):
        return SQLiteSource(store.path)
    assert isinstance(store, DynamoDBStore)
    return DynamoDBSource(store.client, tables=store.tables)


def test_a_second_shutdown_keeps_the_first_start_and_adds_history(store: StateStore) -> None:
    # force: these tests are about the record, not the names (the store has no flags)
    core.shutdown(
        store,
        ["vc_bedrock_live"],
        reason="bad answers",
        by="ana",
        expires_at=None,
        now=NOW,
        force=True,
    )
    later = NOW + timedelta(minutes=5)
    [held] = core.shutdown(
        store,
        ["vc_bedrock_live"],
        reason="still bad",
        by="bo",
        expires_at=None,
        now=later,
        force=True,
    )
    assert held.since == "2026-01-09T03:00:00.000000Z"
    assert held.reason == "still bad"
    assert [h["by"] for h in held.history] == ["ana", "bo"]
    assert [e["action"] for e in store.read_audit(OVERRIDES_RECORD)] == ["shutdown", "shutdown"]


def test_restore_lifts_only_what_it_names_and_is_idempotent(store: StateStore) -> None:
    core.shutdown(store, None, reason="incident", by="ana", expires_at=None, now=NOW)
    core.shutdown(
        store,
        ["vc_bedrock_live"],
        reason="incident",
        by="ana",
        expires_at=None,
        now=NOW,
        force=True,
    )
    assert core.restore(store, ["vc_bedrock_live"], reason="fixed", by="ana", now=NOW) == [
        "vc_bedrock_live"
    ]
    assert [a.target for a in core.active(store, NOW)] == [core.GLOBAL]
    # Lifted, a flag never applied is no name the store knows: a restore of it is a typo.
    with pytest.raises(core.UnknownFlagError, match="no flag 'vc_bedrock_live'"):
        core.restore(store, ["vc_bedrock_live"], reason="again", by="ana", now=NOW)
    assert core.restore(store, None, reason="all clear", by="ana", now=NOW) == [core.GLOBAL]
    assert core.restore(store, None, reason="all clear", by="ana", now=NOW) == [], "idempotent"
    assert core.active(store, NOW) == []


def test_expiry_is_honoured(store: StateStore) -> None:
    expires = core.parse_expiry("30m", NOW)
    core.shutdown(store, None, reason="drill", by="ana", expires_at=expires, now=NOW)
    assert core.active(store, NOW + timedelta(minutes=29))
    assert core.active(store, NOW + timedelta(minutes=31)) == []


def test_bad_input_writes_nothing(store: StateStore) -> None:
    with pytest.raises(UserError, match="a reason is required"):
        core.shutdown(store, None, reason="  ", by="ana", expires_at=None, now=NOW)
    with pytest.raises(UserError, match="give a duration such as 30m"):
        core.parse_expiry("soon", NOW)
    with pytest.raises(UserError, match="is in the past"):
        core.parse_expiry("2020-01-01T00:00:00Z", NOW)
    assert store.read_overrides() is None
    assert store.read_audit(OVERRIDES_RECORD) == []


def test_concurrent_operators_both_land(store: StateStore) -> None:
    def shut(flag: str) -> None:
        core.shutdown(
            store, [flag], reason="incident", by=flag, expires_at=None, now=NOW, force=True
        )

    threads = [threading.Thread(target=shut, args=(f"vc_flag_{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.target for a in core.active(store, NOW)) == [f"vc_flag_{i}" for i in range(4)]
    assert len(store.read_audit(OVERRIDES_RECORD)) == 4


def _wait_for(client: FlagClient, reason: Reason | None, enabled: bool) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < 5:
        decision = client.decide("vc_bedrock_live", PRO_DE)
        if decision.enabled == enabled and (reason is None or decision.reason is reason):
            return time.perf_counter() - started
        time.sleep(0.02)
    raise AssertionError(f"the client did not reach enabled={enabled} within 5 s")


@pytest.mark.parametrize("store", ["local", "moto-server"], indirect=True)
def test_end_to_end_git_is_outranked_until_restore(store: StateStore) -> None:
    """apply -> on; shutdown -> off within the interval; apply again (git unchanged, git
    changed) -> still off; restore -> on; the audit lists all of it."""
    state = desired()
    apply(store, plan(store, state))
    with FlagClient(source_for(store), override_interval=0.2) as client:
        assert client.wait_until_ready()
        assert client.decide("vc_bedrock_live", PRO_DE).enabled
        now = datetime.now(UTC)
        core.shutdown(store, None, reason="runaway cost", by="oncall", expires_at=None, now=now)
        delay = _wait_for(client, Reason.EMERGENCY_SHUTDOWN, enabled=False)
        assert delay < 0.2 + 0.5
        again = plan(store, state)
        assert not again.has_changes
        assert any("ALL AI features are shut down by oncall" in note for note in again.notes)
        changed = {**state, RecordKind.FLAG: {**state[RecordKind.FLAG]}}
        changed[RecordKind.FLAG]["vc_bedrock_live"] = {
            **state[RecordKind.FLAG]["vc_bedrock_live"],
            "rollout_percentage": 100,
            "enabled": True,
            "description": "changed in git during the incident",
        }
        apply(store, plan(store, changed))
        client.refresh_configuration()
        assert not client.decide("vc_bedrock_live", PRO_DE).enabled, "a merge does not turn AI on"
        core.restore(store, None, reason="cost under control", by="oncall", now=datetime.now(UTC))
        _wait_for(client, None, enabled=True)
    actions = [e["action"] for e in store.read_audit()]
    assert actions.count("shutdown") == 1
    assert actions.count("restore") == 1
    assert actions.count("update") == 1


def test_a_flag_shutdown_holds_its_git_changes(store: StateStore) -> None:
    state = desired()
    apply(store, plan(store, state))
    core.shutdown(
        store,
        ["vc_bedrock_live"],
        reason="bad answers",
        by="oncall",
        expires_at=None,
        now=datetime.now(UTC),
    )
    changed = {**state, RecordKind.FLAG: {**state[RecordKind.FLAG]}}
    changed[RecordKind.FLAG]["vc_bedrock_live"] = {
        **state[RecordKind.FLAG]["vc_bedrock_live"],
        "rollout_percentage": 5,
    }
    planned = plan(store, changed)
    [change] = planned.pending
    assert change.held
    assert change.holds[-1].detail == "emergency shutdown by oncall: bad answers"
    result = apply(store, planned)
    assert result.held == ["flag/vc_bedrock_live"]  # type: ignore[attr-defined]
    removed = {
        **state,
        RecordKind.FLAG: {
            k: v for k, v in state[RecordKind.FLAG].items() if k != "vc_bedrock_live"
        },
    }
    [blocked] = plan(store, removed).blocked
    assert "restore` it before deleting" in (blocked.blocked or "")
    forced = plan(store, removed, force_delete_held=True)
    assert forced.blocked == ()
    assert [c.address for c in forced.pending if c.action == "delete"] == ["flag/vc_bedrock_live"]


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(tmp_path / "state.db"))
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        with runner.isolation() as (out, err, _):
            code = run(breakglass, [*args, "--root", str(tmp_path)])
            return code, out.getvalue().decode() + err.getvalue().decode()

    code, out = invoke(
        "shutdown", "--all", "--reason", "runaway cost", "--by", "ana", "--expires", "2h"
    )
    assert code == 0
    assert "ALL AI features: shut down by ana since " in out
    code, out = invoke("shutdown", "--reason", "x")
    assert code == 1
    assert "give either --all or one or more --flag NAME" in out
    code, out = invoke("shutdown", "--all")
    assert code == 1
    assert "Missing option '--reason'" in out
    code, out = invoke("status", "--history")
    assert code == 0
    assert "shutdown ALL AI features by ana: runaway cost" in out
    code, out = invoke("restore", "--all", "--reason", "fixed", "--by", "ana")
    assert code == 0
    assert "Restored ALL AI features." in out.splitlines()
    code, out = invoke("status")
    assert "No shutdown in force: git's configuration decides." in out.splitlines()


def test_the_drill_measures_both_ways_and_leaves_nothing_shut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    store = LocalStore(path)
    apply(store, plan(store, desired()))
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
    with CliRunner().isolation() as (out, _, _):
        code = run(
            breakglass,
            [
                "drill",
                "--flag",
                "vc_bedrock_live",
                "--interval",
                "0.1",
                "--by",
                "drill-bot",
                "--root",
                str(tmp_path),
            ],
        )
        printed = out.getvalue().decode()
    assert code == 0, printed
    assert printed.startswith("vc_bedrock_live: the client obeyed the shutdown after ")
    assert core.active(store, datetime.now(UTC)) == []
    assert [e["action"] for e in store.read_audit(OVERRIDES_RECORD)] == ["restore", "shutdown"]
    store.close()


def test_the_drill_refuses_to_lift_a_real_shutdown(store: StateStore) -> None:
    core.shutdown(
        store, None, reason="real incident", by="oncall", expires_at=None, now=datetime.now(UTC)
    )
    with pytest.raises(UserError, match="already shut down"):
        core.drill(store, object(), "vc_bedrock_live", by="drill-bot")
    assert [a.target for a in core.active(store, datetime.now(UTC))] == [core.GLOBAL]


def test_a_shutdown_after_the_plan_still_holds_the_flag_at_apply(store: StateStore) -> None:
    state = desired()
    apply(store, plan(store, state))
    changed = {**state, RecordKind.FLAG: {**state[RecordKind.FLAG]}}
    changed[RecordKind.FLAG]["vc_bedrock_live"] = {
        **state[RecordKind.FLAG]["vc_bedrock_live"],
        "rollout_percentage": 5,
    }
    planned = plan(store, changed)
    assert not planned.pending[0].held
    core.shutdown(
        store,
        ["vc_bedrock_live"],
        reason="late",
        by="oncall",
        expires_at=None,
        now=datetime.now(UTC),
    )
    result = apply(store, planned)
    assert result.held == ["flag/vc_bedrock_live"]  # type: ignore[attr-defined]
    assert store.read_records(RecordKind.FLAG)["vc_bedrock_live"].item["rollout_percentage"] == 100


class _LoseFirstAnswer:
    """The first successful TransactWriteItems lands, and its answer is lost."""

    def __init__(self, store: DynamoDBStore) -> None:
        self.lost = 0
        store.client.meta.events.register("after-call.dynamodb.TransactWriteItems", self)

    def __call__(self, http_response: object, **_: object) -> None:
        from botocore.exceptions import ReadTimeoutError

        if not self.lost and getattr(http_response, "status_code", 0) == 200:
            self.lost += 1
            raise ReadTimeoutError(endpoint_url="http://dynamodb")


def test_a_lost_answer_is_not_applied_twice(moto_store: DynamoDBStore) -> None:
    lose = _LoseFirstAnswer(moto_store)
    held = core.shutdown(
        moto_store,
        ["vc_bedrock_live"],
        reason="bad answers",
        by="ana",
        expires_at=None,
        now=NOW,
        force=True,
    )
    assert lose.lost == 1
    assert [a.target for a in held] == ["vc_bedrock_live"]
    assert len(held[0].history) == 1, "one shutdown, one history entry"
    assert len(moto_store.read_audit(OVERRIDES_RECORD)) == 1

    lose = _LoseFirstAnswer(moto_store)
    later = NOW + timedelta(minutes=1)  # audit entries come newest first, by time
    lifted = core.restore(moto_store, ["vc_bedrock_live"], reason="fixed", by="ana", now=later)
    assert lose.lost == 1
    assert lifted == ["vc_bedrock_live"], "the restore that landed says so"
    assert [e["action"] for e in moto_store.read_audit(OVERRIDES_RECORD)] == [
        "restore",
        "shutdown",
    ]
