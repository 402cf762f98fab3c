"""A client never blocks its caller: construction returns at once whatever the store does, the
first load runs in the background, store reads give up quickly and close() returns promptly.

The store that never answers is a TCP server on loopback that accepts connections and says
nothing (what a black-holed endpoint, a stuck proxy or an overloaded load balancer does).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import ErrorCode, Reason
from reconciler.runtime.sources import (
    CONNECT_TIMEOUT,
    MAX_ATTEMPTS,
    READ_TIMEOUT,
    SQLITE_READ_TIMEOUT,
    Configuration,
    DynamoDBSource,
    Overrides,
    SQLiteSource,
)
from reconciler.runtime.telemetry import Shard, Totals
from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.local import LocalStore
from tests.test_runtime_client import PRO_DE, applied

AT_ONCE = 0.5  # construction, with or without a bootstrap file
CLOSE = 1.0
# One DynamoDB call against a store that never answers: every attempt waits out the read
# timeout, with the retry's back-off (at most a second) in between.
ONE_CALL = MAX_ATTEMPTS * READ_TIMEOUT + 1.0


class Endpoint:
    """A TCP server on loopback that accepts connections and never answers, until ``answer()``:
    from then on new connections are forwarded to ``upstream`` (host, port)."""

    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.accepted = 0
        self._answering = threading.Event()
        self._closed = threading.Event()
        self._held: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._server.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def answer(self) -> None:
        assert self.upstream is not None
        self._answering.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._answering.is_set() and self.upstream is not None:
                self._forward(connection, socket.create_connection(self.upstream))
            else:
                self._held.append(connection)  # open, read by no one, never answered

    def _forward(self, client: socket.socket, server: socket.socket) -> None:
        def pipe(source: socket.socket, target: socket.socket) -> None:
            try:
                while chunk := source.recv(65536):
                    target.sendall(chunk)
            except OSError:
                pass
            finally:
                for end in (source, target):
                    end.close()

        threading.Thread(target=pipe, args=(client, server), daemon=True).start()
        threading.Thread(target=pipe, args=(server, client), daemon=True).start()

    def wait_for_a_connection(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.accepted == 0:
            assert time.monotonic() < deadline, "the client never tried the store"
            time.sleep(0.01)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        for connection in self._held:
            connection.close()


@pytest.fixture
def silent() -> Iterator[Endpoint]:
    endpoint = Endpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def configuration(tmp_path: Path) -> Configuration:
    """The repository's manifests as the store holds them after an apply."""
    store = LocalStore(tmp_path / "seed.db")
    applied(store)
    store.close()
    return SQLiteSource(tmp_path / "seed.db").read_configuration()


def write_bootstrap(path: Path, configuration: Configuration, **changes: Any) -> Path:
    """A bootstrap file of ``configuration``, with ``vc_bedrock_live``'s fields changed."""
    flags = [
        {**item, **changes} if item["flag_name"] == "vc_bedrock_live" else item
        for item in configuration.flags
    ]
    path.write_text(json.dumps({"flags": flags, "thresholds": configuration.thresholds}))
    return path


def timed(work: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


# -- construction and close against a store that never answers -------------------------------


@pytest.mark.parametrize("bootstrapped", [True, False], ids=["bootstrap", "no-bootstrap"])
@pytest.mark.parametrize("endpoint_from", ["environment", "argument"])
def test_construction_returns_at_once_when_the_store_never_answers(
    *,
    silent: Endpoint,
    configuration: Configuration,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bootstrapped: bool,
    endpoint_from: str,
) -> None:
    if endpoint_from == "environment":
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", silent.url)
        source = DynamoDBSource()
    else:
        source = DynamoDBSource(endpoint_url=silent.url)
    bootstrap = write_bootstrap(tmp_path / "flags.json", configuration) if bootstrapped else None

    client, took = timed(lambda: FlagClient(source, bootstrap=bootstrap, override_interval=0.2))
    assert took < AT_ONCE, f"the constructor took {took:.2f} s"
    silent.wait_for_a_connection()  # the first load is under way, in the background

    decision, took = timed(lambda: client.decide("vc_bedrock_live", PRO_DE, default=False))
    assert took < 0.05
    if bootstrapped:
        assert (decision.enabled, decision.reason) == (True, Reason.TARGETING_MATCH)
    else:
        assert (decision.enabled, decision.error_code) == (False, ErrorCode.NO_SNAPSHOT)
        assert client.is_enabled("vc_bedrock_live", PRO_DE, default=True) is True
        assert client.decide("vc_bedrock_live", PRO_DE, default="fallback").value == "fallback"
    assert not client.ready

    ready, took = timed(lambda: client.wait_until_ready(0.2))
    assert ready is False
    assert took < 0.5

    _, took = timed(client.close)
    assert took < CLOSE, f"close() took {took:.2f} s"
    assert client.wait_until_ready() is False, "closed: no waiting"


def test_the_first_load_comes_in_the_background_once_the_store_answers(
    moto_server_store: DynamoDBStore, moto_server: str
) -> None:
    store = moto_server_store
    applied(store)
    host, port = moto_server.removeprefix("http://").split(":")
    gate = Endpoint(upstream=(host, int(port)))
    try:
        source = DynamoDBSource(endpoint_url=gate.url, tables=store.tables)
        client, took = timed(lambda: FlagClient(source, override_interval=0.2))
        assert took < AT_ONCE
        gate.wait_for_a_connection()
        assert client.decide("vc_bedrock_live", PRO_DE, default=False).enabled is False
        gate.answer()  # the store is back: its next connection is answered
        deadline = time.monotonic() + 3 * ONE_CALL
        while not client.ready:
            assert time.monotonic() < deadline, f"not loaded: {client.last_error}"
            time.sleep(0.05)
        decision = client.decide("vc_bedrock_live", PRO_DE, default=False)
        assert (decision.enabled, decision.reason) == (True, Reason.TARGETING_MATCH)
        assert client.wait_until_ready(0) is True
        _, took = timed(client.close)
        assert took < CLOSE
    finally:
        gate.close()


def test_a_local_store_that_appears_later_replaces_the_bootstrap(
    configuration: Configuration, tmp_path: Path
) -> None:
    bootstrap = write_bootstrap(tmp_path / "flags.json", configuration, enabled=False)
    path = tmp_path / "state.db"  # not there yet
    client, took = timed(
        lambda: FlagClient(SQLiteSource(path), bootstrap=bootstrap, override_interval=0.05)
    )
    assert took < AT_ONCE
    assert client.wait_until_ready() is False, "the first load was tried, and failed"
    assert client.decide("vc_bedrock_live", PRO_DE).reason is Reason.DISABLED  # the bootstrap's
    building = tmp_path / "building.db"
    store = LocalStore(building)
    applied(store)
    store.close()
    building.replace(path)  # the store appears whole (a half-built one would be read as it is)
    deadline = time.monotonic() + 5
    while not client.ready:  # the configuration is asked for at every turn until it comes
        assert time.monotonic() < deadline, f"not loaded: {client.last_error}"
        time.sleep(0.02)
    assert client.decide("vc_bedrock_live", PRO_DE).reason is Reason.TARGETING_MATCH
    _, took = timed(client.close)
    assert took < CLOSE


def test_a_background_client_on_a_reachable_store_is_ready_when_waited_for(
    configuration: Configuration, tmp_path: Path
) -> None:
    client = FlagClient(SQLiteSource(tmp_path / "seed.db"))
    assert client.wait_until_ready()
    assert client.decide("vc_bedrock_live", PRO_DE).reason is Reason.TARGETING_MATCH
    assert client.failed_refreshes == 0
    client.close()


# -- the final flush ------------------------------------------------------------------------


def test_close_still_flushes_and_waits_only_for_one_unanswered_write(
    silent: Endpoint, configuration: Configuration, tmp_path: Path
) -> None:
    """Pending telemetry and a store that does not answer: the final flush is tried (the
    recorder's close() writes synchronously), and costs one call's timeouts, not one per
    kind of record: spend and exposure shards, then the experiment's assignments."""
    bootstrap = write_bootstrap(tmp_path / "flags.json", configuration)
    source = DynamoDBSource(endpoint_url=silent.url)
    client = FlagClient(source, bootstrap=bootstrap, override_interval=0.2)
    client.record_request_cost("vc_analysis", 1500, 0.08, {"user_id": "u"})
    assert client.get_user_variant("claude_vs_gemini", PRO_DE) in {"claude", "gemini"}
    _, took = timed(client.close)
    assert took < ONE_CALL + CLOSE, f"close() took {took:.2f} s"
    health = client.health()
    assert (health.lost, health.failed_flushes) == (2, 1), "the flush was tried, and counted"
    assert health.failed_assignment_writes == 1, "not sent after the shards went unanswered"
    assert "did not answer the shards just written" in str(health.last_error)


def test_a_store_that_does_not_answer_is_not_asked_for_every_shard() -> None:
    class Unanswered:
        calls = 0

        def put_item(self, **_: Any) -> None:
            self.calls += 1
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9")

    class Refusing:
        calls = 0

        def put_item(self, **_: Any) -> None:
            self.calls += 1
            raise ClientError({"Error": {"Code": "ValidationException"}}, "PutItem")

    shards = [
        Shard(f"cost/2026-01-0{day}", "writer", 1, {"cost:x": Totals(1, 5)}, "now")
        for day in (1, 2, 3)
    ]
    for client, asked in ((Unanswered(), 1), (Refusing(), 3)):
        source = DynamoDBSource(client)
        for flush in (1, 2):  # the next flush asks again
            with pytest.raises((ReadTimeoutError, ClientError)):
                source.write_shards(shards)
            assert client.calls == asked * flush


# -- the reads' timeouts --------------------------------------------------------------------


def test_dynamodb_reads_give_up_within_their_timeouts(silent: Endpoint) -> None:
    source = DynamoDBSource(endpoint_url=silent.url)
    config = source.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (CONNECT_TIMEOUT, READ_TIMEOUT)
    assert 1 <= CONNECT_TIMEOUT <= 2
    assert READ_TIMEOUT == 2
    assert config.retries["total_max_attempts"] == MAX_ATTEMPTS <= 3
    started = time.perf_counter()
    with pytest.raises(ReadTimeoutError):
        source.read_overrides()
    assert time.perf_counter() - started < ONE_CALL


def test_a_locked_local_store_costs_a_read_about_a_second(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")  # readers wait on a writer's lock
    holder.execute("CREATE TABLE control (record_id TEXT PRIMARY KEY, item TEXT)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            SQLiteSource(path).read_overrides()
        assert time.perf_counter() - started < SQLITE_READ_TIMEOUT + 0.5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- fork safety ----------------------------------------------------------------------------


class SlowSource:
    """A source whose first overrides read takes ``delay`` seconds."""

    def __init__(self, inner: SQLiteSource, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.reading = threading.Event()
        self.read_ended = 0.0

    def describe(self) -> str:
        return "slow " + self.inner.describe()

    def read_overrides(self) -> Overrides:
        if not self.reading.is_set():
            self.reading.set()
            time.sleep(self.delay)
            self.read_ended = time.perf_counter()
        return self.inner.read_overrides()

    def read_configuration(self) -> Configuration:
        return self.inner.read_configuration()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_no_fork_in_the_middle_of_the_first_loads_read(
    configuration: Configuration, tmp_path: Path
) -> None:
    source = SlowSource(SQLiteSource(tmp_path / "seed.db"), delay=0.3)
    client = FlagClient(source, override_interval=0.05)
    assert source.reading.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: nothing to do here
        os._exit(0)
    forked = time.perf_counter()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert source.read_ended, "the read ended"
    assert forked >= source.read_ended, "the fork waited for the read"
    assert client.wait_until_ready()
    client.close()
