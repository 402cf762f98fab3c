"""The client: answers from the store after an apply, survives faults, sees overrides fast."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.apply import apply_plan
from reconciler.codec import encode
from reconciler.config import load_config
from reconciler.plan.build import build_plan
from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Reason
from reconciler.runtime.sources import (
    OVERRIDES_ID,
    Configuration,
    DynamoDBSource,
    Overrides,
    SQLiteSource,
)
from reconciler.state.dynamodb import DynamoDBStore, to_dynamodb
from reconciler.state.local import LocalStore
from reconciler.state.store import StateStore
from reconciler.validation import validate
from tests.conftest import REPO_ROOT

PRO_DE = {"user_id": "user-0", "country": "DE", "plan": "pro"}


def applied(store: StateStore) -> None:
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    planned = build_plan(encode(result.tree), store, git_commit=None, now=datetime.now(UTC))
    apply_plan(planned, store, actor="tests", now=lambda: datetime.now(UTC))


@pytest.fixture
def local(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    store = LocalStore(path)
    applied(store)
    store.close()
    return path


def test_decisions_from_the_local_store_after_apply(local: Path) -> None:
    with FlagClient(SQLiteSource(local), background=False) as client:
        decision = client.decide("vc_bedrock_live", PRO_DE)
        assert (decision.enabled, decision.reason) == (True, Reason.TARGETING_MATCH)
        assert client.is_bedrock_enabled(PRO_DE)
        assert client.is_feature_enabled("vc_bedrock_live", {**PRO_DE, "plan": "free"}) is False
        assert client.get_user_variant("claude_vs_gemini", {"user_id": "user-1"}) in {
            "claude",
            "gemini",
        }
        integration = client.should_enable_bedrock(PRO_DE)
        assert integration.enabled
        assert integration.variant in {"claude", "gemini"}
        assert integration.variant_config["model"] in {"claude-3.5-sonnet", "gemini-pro"}
        assert client.failed_refreshes == 0
        assert client.ready, "background=False: loaded in the constructor"
        assert client.wait_until_ready(0)


class FaultySource:
    """The real source, made to fail the way stores fail, on demand."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.mode: str | None = None
        self.release = threading.Event()

    def describe(self) -> str:
        return "faulty " + self.inner.describe()

    def _fault(self) -> None:
        if self.mode == "raise":
            raise ConnectionError("store down")
        if self.mode == "hang":
            self.release.wait(10)
            raise TimeoutError("store timed out")

    def read_configuration(self) -> Configuration:
        self._fault()
        if self.mode == "garbage":
            return Configuration("not a list", None)  # type: ignore[arg-type]
        return self.inner.read_configuration()  # type: ignore[no-any-return]

    def read_overrides(self) -> Overrides:
        self._fault()
        return self.inner.read_overrides()  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["raise", "garbage", "hang"])
def test_the_last_good_snapshot_keeps_answering(local: Path, mode: str) -> None:
    source = FaultySource(SQLiteSource(local))
    client = FlagClient(source, background=False)
    good = client.snapshot
    source.mode = mode
    refresher = threading.Thread(target=client.refresh_configuration)
    refresher.start()
    started = time.perf_counter()
    decision = client.decide("vc_bedrock_live", PRO_DE)
    assert time.perf_counter() - started < 0.05, "a request never waits for a refresh"
    assert decision.enabled
    source.release.set()
    refresher.join()
    assert client.snapshot is good
    assert client.failed_refreshes == 1
    assert client.last_error is not None


def test_with_no_snapshot_at_all_the_callers_default_decides(tmp_path: Path) -> None:
    client = FlagClient(SQLiteSource(tmp_path / "missing.db"), background=False)
    assert client.failed_refreshes == 2
    assert client.snapshot is None
    assert not client.ready
    assert client.wait_until_ready() is False, "nothing loads in the background: no waiting"
    assert client.is_enabled("vc_bedrock_live", PRO_DE, default=True) is True
    assert client.decide("vc_bedrock_live", PRO_DE, default="fallback").value == "fallback"


def test_a_bootstrap_file_serves_a_cold_start(local: Path, tmp_path: Path) -> None:
    configuration = SQLiteSource(local).read_configuration()
    bootstrap = tmp_path / "flags.json"
    bootstrap.write_text(
        json.dumps({"flags": configuration.flags, "thresholds": configuration.thresholds})
    )
    client = FlagClient(
        SQLiteSource(tmp_path / "unreachable.db"), bootstrap=bootstrap, background=False
    )
    assert client.decide("vc_bedrock_live", PRO_DE).enabled


def _write_overrides_local(path: Path, record: dict[str, Any]) -> None:
    """What break-glass writes: the one overrides record the clients poll."""
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT OR REPLACE INTO control (record_id, item) VALUES (?, ?)",
            (OVERRIDES_ID, json.dumps(record)),
        )


def _measure_propagation(clients: list[FlagClient], write: Any, flag: str) -> float:
    assert all(c.decide(flag, PRO_DE).enabled for c in clients)
    written = time.perf_counter()
    write()
    deadline = written + 5
    while time.perf_counter() < deadline:
        if all(c.decide(flag, PRO_DE).reason is Reason.EMERGENCY_SHUTDOWN for c in clients):
            return time.perf_counter() - written
        time.sleep(0.01)
    raise AssertionError("the override did not reach every client within 5 s")


def test_an_override_reaches_every_client_within_the_interval(local: Path) -> None:
    clients = [FlagClient(SQLiteSource(local), override_interval=0.2) for _ in range(3)]
    try:
        assert all(c.wait_until_ready() for c in clients)
        record = {"flags": {"vc_bedrock_live": {"by": "oncall", "reason": "drill"}}, "version": 1}
        delay = _measure_propagation(
            clients, lambda: _write_overrides_local(local, record), "vc_bedrock_live"
        )
        assert delay < 0.2 + 0.3
        print(f"override propagation to 3 local clients: {delay * 1000:.0f} ms")
        assert clients[0].decide("ai_model_selection", {"user_id": "u"}).enabled, "only that flag"
        _write_overrides_local(
            local, {"global": {"by": "oncall", "reason": "all off"}, "version": 2}
        )
        time.sleep(0.5)
        assert (
            clients[1].decide("ai_model_selection", {"user_id": "u"}).reason
            is Reason.EMERGENCY_SHUTDOWN
        )
    finally:
        for client in clients:
            client.close()


def test_an_override_reaches_dynamodb_clients(moto_server_store: DynamoDBStore) -> None:
    store = moto_server_store
    applied(store)
    source = DynamoDBSource(store.client, tables=store.tables)
    clients = [FlagClient(source, override_interval=0.2) for _ in range(2)]
    assert all(c.wait_until_ready() for c in clients)

    def write() -> None:
        record = {
            "record_id": OVERRIDES_ID,
            "global": {"by": "oncall", "reason": "drill"},
            "version": 1,
        }
        store.client.put_item(TableName=store.control_table, Item=to_dynamodb(record))

    try:
        delay = _measure_propagation(clients, write, "vc_bedrock_live")
        assert delay < 0.2 + 0.5
        print(f"override propagation to 2 DynamoDB clients: {delay * 1000:.0f} ms")
    finally:
        for client in clients:
            client.close()


def test_close_stops_the_refresh_thread(local: Path) -> None:
    client = FlagClient(SQLiteSource(local), override_interval=0.05)
    thread = client._thread
    assert thread is not None
    assert thread.is_alive()
    client.close()
    assert not thread.is_alive()


def test_a_dynamodb_source_reads_the_region_as_reconcile_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only ``AWS_REGION`` set (as Lambda sets it): the source's client is made in it, as the
    control plane's is, instead of failing with NoRegionError."""
    from reconciler.runtime.sources import DynamoDBSource

    for variable in ("AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert DynamoDBSource().client.meta.region_name == "eu-west-3"
