"""Holds enforced at the write: a shutdown that lands at any moment during apply holds its
flag's change, because each group is written only while the overrides record is still the one
apply decided its holds on (a ConditionCheck in the DynamoDB transaction, a read inside the
SQLite transaction)."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from moto.core.botocore_stubber import BotocoreStubber
from moto.dynamodb.models import DynamoDBBackend

from reconciler import breakglass
from reconciler.apply import ApplyResult, apply_plan
from reconciler.codec import DesiredState, encode
from reconciler.config import load_config
from reconciler.plan.build import build_plan
from reconciler.plan.model import Plan
from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD, RecordKind, Write
from reconciler.state.store import StateStore, WriteConflictError
from reconciler.validation import validate
from tests.conftest import REPO_ROOT

FLAG = "vc_bedrock_live"
OTHER = "ai_model_selection"
ITERATIONS = 200


def utc() -> datetime:
    return datetime.now(UTC)


def desired(**rollouts: int) -> DesiredState:
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    assert result.ok
    state = encode(result.tree)
    for name, percentage in rollouts.items():
        state[RecordKind.FLAG][name]["rollout_percentage"] = percentage
    return state


def plan(store: StateStore, state: DesiredState) -> Plan:
    return build_plan(state, store, git_commit="c0ffee", now=utc())


def apply(store: StateStore, planned: Plan) -> ApplyResult:
    return apply_plan(planned, store, actor="tester", now=utc)


def shut(store: StateStore, name: str) -> None:
    breakglass.shutdown(
        store, [name], reason="bad answers", by="oncall", expires_at=None, now=utc()
    )


def rollout(store: StateStore, name: str) -> Any:
    return store.read_records(RecordKind.FLAG)[name].item["rollout_percentage"]


class ShutdownBeforeTheWrite:
    """The real store; an operator shuts ``flag`` down after apply read the overrides and
    before its first group is written."""

    def __init__(self, inner: StateStore, flag: str) -> None:
        self.inner = inner
        self.flag = flag
        self.max_group_size = inner.max_group_size
        self.attempts: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def apply_writes(
        self, writes: Sequence[Write], token: str, overrides_version: int | None = None
    ) -> None:
        if not self.attempts:
            shut(self.inner, self.flag)
        try:
            self.inner.apply_writes(writes, token, overrides_version)
        except WriteConflictError as exc:
            self.attempts.append(f"refused: {', '.join(exc.records)}")
            raise
        self.attempts.append(f"wrote {', '.join(w.name for w in writes)}")


def test_a_shutdown_between_the_read_and_the_write_holds_the_change(store: StateStore) -> None:
    apply(store, plan(store, desired()))
    planned = plan(store, desired(**{FLAG: 30, OTHER: 5}))
    assert sorted(c.name for c in planned.pending) == [OTHER, FLAG]
    assert not any(c.held for c in planned.pending), "nothing was held when the plan was made"
    audits = len(store.read_audit(f"flag/{FLAG}"))
    wrapped = ShutdownBeforeTheWrite(store, FLAG)
    result = apply(wrapped, planned)  # type: ignore[arg-type]
    assert wrapped.attempts == [f"refused: {OVERRIDES_RECORD}", f"wrote {OTHER}"]
    assert result.held == [f"flag/{FLAG}"]
    assert result.written == [f"flag/{OTHER}"]
    assert rollout(store, FLAG) == 100, "nothing written to the shut-down flag"
    assert rollout(store, OTHER) == 5
    assert len(store.read_audit(f"flag/{FLAG}")) == audits
    assert store.read_lock() is None


def test_a_shutdown_of_another_flag_meanwhile_holds_nothing(store: StateStore) -> None:
    apply(store, plan(store, desired()))
    planned = plan(store, desired(**{FLAG: 30}))
    wrapped = ShutdownBeforeTheWrite(store, OTHER)
    result = apply(wrapped, planned)  # type: ignore[arg-type]
    assert wrapped.attempts == [f"refused: {OVERRIDES_RECORD}", f"wrote {FLAG}"]
    assert (result.written, result.held) == ([f"flag/{FLAG}"], [])
    assert rollout(store, FLAG) == 30


# -- the race ------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """What each iteration came to, and every violation (a change written to a flag after its
    shutdown committed)."""

    counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


class CountingConflicts:
    """The applier's store: counts groups refused because the overrides moved under them."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.max_group_size = inner.max_group_size
        self.refused = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def apply_writes(
        self, writes: Sequence[Write], token: str, overrides_version: int | None = None
    ) -> None:
        try:
            self.inner.apply_writes(writes, token, overrides_version)
        except WriteConflictError as exc:
            if OVERRIDES_RECORD in exc.records:
                self.refused += 1
            raise


def race(
    applier: StateStore,
    operator: StateStore,
    commits: Any,
    outcomes: Outcomes,
    between: Any = lambda: None,
) -> None:
    """Iterations of: plan a change to FLAG; then, at once, apply it in one thread and shut
    FLAG down in another, the shutdown at a random moment within apply's run. ``commits()``
    gives what committed since the last call, in commit order: ("flag", version) and
    ("shutdown", None) events."""
    apply(applier, plan(applier, desired()))
    runs = []
    for percentage in (41, 42, 43, 44, 45):  # how long one apply takes here, once warm
        planned = plan(applier, desired(**{FLAG: percentage}))
        started = time.perf_counter()
        apply(applier, planned)
        runs.append(time.perf_counter() - started)
    window = sorted(runs)[len(runs) // 2]  # the shutdown starts somewhere within one apply
    counting = CountingConflicts(applier)
    rng = random.Random(11)
    for iteration in range(ITERATIONS):
        if iteration % 20 == 0:
            between()
        breakglass.restore(operator, [FLAG], reason="next round", by="oncall", now=utc())
        current = rollout(applier, FLAG)
        planned = plan(applier, desired(**{FLAG: 31 if current != 31 else 32}))
        assert [c.name for c in planned.pending] == [FLAG]
        commits()
        gate = threading.Barrier(2)
        results: list[ApplyResult] = []
        refused_before = counting.refused

        def applying(
            planned: Plan = planned,
            gate: threading.Barrier = gate,
            results: list[ApplyResult] = results,
        ) -> None:
            gate.wait()
            results.append(apply(counting, planned))  # type: ignore[arg-type]

        def shutting(delay: float = rng.uniform(0, window), gate: threading.Barrier = gate) -> None:
            gate.wait()
            time.sleep(delay)
            shut(operator, FLAG)

        threads = [threading.Thread(target=applying), threading.Thread(target=shutting)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        [result] = results
        events = [kind for kind, _ in commits()]
        if "shutdown" in events and "flag" in events:
            if events.index("shutdown") < events.index("flag"):
                outcomes.violations.append(f"iteration {iteration}: {events}")
            outcomes.add("written, then shut down")
        elif result.held:
            late = counting.refused > refused_before
            outcomes.add("held at the write" if late else "held at the read")
        else:
            outcomes.add(f"other: {events} {result}")


def test_a_late_shutdown_never_lets_a_change_through_on_the_local_store(
    tmp_path: Any,
) -> None:
    path = tmp_path / "state.db"
    applier, operator = LocalStore(path), LocalStore(path)  # two processes' connections
    applier.bootstrap()
    with sqlite3.connect(path) as db:  # the commit order, as SQLite serialises the writes
        db.executescript(
            """
            CREATE TABLE commit_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, item TEXT);
            CREATE TRIGGER log_flag AFTER INSERT ON records WHEN NEW.name = 'vc_bedrock_live'
            BEGIN INSERT INTO commit_log (kind, item) VALUES ('flag', NEW.item); END;
            CREATE TRIGGER log_overrides AFTER INSERT ON control WHEN NEW.record_id = 'overrides'
            BEGIN INSERT INTO commit_log (kind, item) VALUES ('overrides', NEW.item); END;
            """
        )
    seen = [0]

    def commits() -> list[tuple[str, Any]]:
        with sqlite3.connect(path) as db:
            rows = db.execute(
                "SELECT seq, kind, item FROM commit_log WHERE seq > ? ORDER BY seq", (seen[0],)
            ).fetchall()
        if rows:
            seen[0] = rows[-1][0]
        return list(_events((kind, json.loads(item)) for _, kind, item in rows))

    outcomes = Outcomes()
    try:
        race(applier, operator, commits, outcomes)
    finally:
        applier.close()
        operator.close()
    print(outcomes.counts)
    assert outcomes.violations == []
    assert sum(outcomes.counts.values()) == ITERATIONS
    assert not any(k.startswith("other") for k in outcomes.counts), outcomes.counts
    assert outcomes.counts.get("held at the write", 0) > 0, outcomes.counts


def _events(rows: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    for kind, item in rows:
        if kind == "flag":
            yield "flag", item.get("version")
        elif FLAG in (item.get("flags") or {}):
            yield "shutdown", None


@pytest.fixture
def serialised_moto(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """moto in-process, each request handled whole before the next (DynamoDB applies a
    transaction atomically; moto checks and writes its items one by one, and another thread's
    request could run in between), with a log of the transactions in the order they
    committed."""
    lock = threading.RLock()
    log: list[tuple[str, Any]] = []
    process = BotocoreStubber.process_request
    transact = DynamoDBBackend.transact_write_items

    def one_at_a_time(self: Any, request: Any) -> Any:
        with lock:
            return process(self, request)

    def logged(self: Any, transact_items: list[dict[str, Any]]) -> None:
        transact(self, transact_items)
        for action in transact_items:
            [(operation, body)] = action.items()
            if operation == "Update" and body["Key"].get("flag_name") == {"S": FLAG}:
                log.append(("flag", {}))
            elif operation == "Put" and body["Item"].get("record_id") == {"S": "overrides"}:
                flags = body["Item"].get("flags", {}).get("M", {})
                log.append(("overrides", {"flags": dict.fromkeys(flags, 1)}))

    monkeypatch.setattr(BotocoreStubber, "process_request", one_at_a_time)
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", logged)
    return log


def test_a_late_shutdown_never_lets_a_change_through_on_dynamodb(
    serialised_moto: list[tuple[str, Any]], moto_store: DynamoDBStore
) -> None:
    operator = DynamoDBStore(moto_store.client, tables=moto_store.tables, sleep=lambda _: None)
    seen = [0]

    def commits() -> list[tuple[str, Any]]:
        rows = serialised_moto[seen[0] :]
        seen[0] = len(serialised_moto)
        return list(_events(iter(rows)))

    def trim_audit() -> None:
        """Keep the audit table small: moto copies every table a transaction touches (its
        rollback), so a growing audit table would make each iteration slower."""
        client, table = moto_store.client, moto_store.audit_table
        for item in client.scan(TableName=table)["Items"]:
            key = {"record": item["record"], "audit_id": item["audit_id"]}
            client.delete_item(TableName=table, Key=key)

    outcomes = Outcomes()
    race(moto_store, operator, commits, outcomes, between=trim_audit)
    print(outcomes.counts)
    assert outcomes.violations == []
    assert sum(outcomes.counts.values()) == ITERATIONS
    assert not any(k.startswith("other") for k in outcomes.counts), outcomes.counts
    assert outcomes.counts.get("held at the write", 0) > 0, outcomes.counts
