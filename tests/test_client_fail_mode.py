"""``fail_mode`` is the flag's own answer when the client knows the flag but cannot use its
stored item; with no snapshot at all the client knows no flag, and the caller's default
decides. A bootstrap file is a snapshot: its flags decide by their rules until the store's
first load replaces it."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import ErrorCode, Reason
from reconciler.runtime.sources import Configuration, SQLiteSource
from reconciler.state.local import LocalStore
from tests.test_runtime_client import PRO_DE, applied

FLAG = "vc_bedrock_live"
UNUSABLE = {"targeting": {"rules": [{"name": "no action, no condition"}]}}


@pytest.fixture
def configuration(tmp_path: Path) -> Configuration:
    store = LocalStore(tmp_path / "seed.db")
    applied(store)
    store.close()
    return SQLiteSource(tmp_path / "seed.db").read_configuration()


def client_with(tmp_path: Path, configuration: Configuration, **changes: Any) -> FlagClient:
    """A client whose store is unreachable, from a bootstrap file with ``FLAG`` changed."""
    flags = [{**i, **changes} if i["flag_name"] == FLAG else i for i in configuration.flags]
    bootstrap = tmp_path / "flags.json"
    bootstrap.write_text(json.dumps({"flags": flags, "thresholds": configuration.thresholds}))
    return FlagClient(
        SQLiteSource(tmp_path / "unreachable.db"), bootstrap=bootstrap, background=False
    )


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_with_no_snapshot_at_all_the_callers_default_decides_whatever_the_fail_mode(
    tmp_path: Path, fail_mode: str
) -> None:
    path = tmp_path / "state.db"
    store = LocalStore(path)
    applied(store)
    store.close()
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(
            "UPDATE records SET item = json_set(item, '$.fail_mode', ?) "
            "WHERE kind = 'flag' AND name = ?",
            (fail_mode, FLAG),
        )
    reachable = FlagClient(SQLiteSource(path), background=False)
    assert reachable.snapshot is not None
    assert reachable.snapshot.flags[FLAG].fail_open is (fail_mode == "open")
    path.rename(tmp_path / "elsewhere.db")  # the store holds the flag; a new client cannot read it
    client = FlagClient(SQLiteSource(path), background=False)
    assert client.snapshot is None
    for default in (True, False):
        decision = client.decide(FLAG, PRO_DE, default=default)
        assert (decision.enabled, decision.value) == (default, default)
        assert (decision.reason, decision.error_code) == (Reason.ERROR, ErrorCode.NO_SNAPSHOT)


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_a_flag_known_from_the_bootstrap_decides_by_its_rules(
    tmp_path: Path, configuration: Configuration, fail_mode: str
) -> None:
    client = client_with(tmp_path, configuration, fail_mode=fail_mode)
    assert client.decide(FLAG, PRO_DE).reason is Reason.TARGETING_MATCH
    assert client.decide(FLAG, {**PRO_DE, "plan": "free"}).enabled is False
    assert not client.ready, "the store was not read"


def test_a_known_flag_whose_item_cannot_be_used_fails_open(
    tmp_path: Path, configuration: Configuration
) -> None:
    client = client_with(tmp_path, configuration, fail_mode="open", **UNUSABLE)
    for default in (True, False):
        decision = client.decide(FLAG, PRO_DE, default=default)
        assert decision.enabled is True, "open: on, whatever the caller's default"
        assert (decision.reason, decision.error_code) == (Reason.ERROR, ErrorCode.GENERAL)
        assert "KeyError" in decision.detail


def test_a_known_flag_whose_item_cannot_be_used_fails_closed(
    tmp_path: Path, configuration: Configuration
) -> None:
    client = client_with(tmp_path, configuration, fail_mode="closed", **UNUSABLE)
    for default in (True, False):
        decision = client.decide(FLAG, PRO_DE, default=default)
        assert decision.enabled is False, "closed: off, whatever the caller's default"
        assert (decision.reason, decision.error_code) == (Reason.ERROR, ErrorCode.GENERAL)
    assert client.decide(FLAG, PRO_DE, default="fallback").value == "fallback"


def test_a_flag_the_snapshot_does_not_hold_takes_the_callers_default(
    tmp_path: Path, configuration: Configuration
) -> None:
    client = client_with(tmp_path, configuration)
    decision = client.decide("vc_not_a_flag", PRO_DE, default=True)
    assert (decision.enabled, decision.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)


def test_a_fail_open_flag_whose_item_cannot_be_used_keeps_its_type_and_value() -> None:
    from datetime import UTC, datetime

    from reconciler.runtime.evaluate import evaluate
    from reconciler.runtime.snapshot import build_snapshot

    broken = {
        "flag_name": "model",
        "enabled": True,
        "flag_type": "string",
        "value": "claude-3.5-sonnet",
        "fail_mode": "open",
        "rollout_percentage": "not a number",
    }
    now = datetime.now(UTC)
    decision = evaluate(build_snapshot("v", [broken]), "model", {"user_id": "u"}, now)
    assert decision.enabled
    assert decision.value == "claude-3.5-sonnet"
