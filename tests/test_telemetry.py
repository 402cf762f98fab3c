"""Cost telemetry: per-process shards of absolute totals that a retry, a repeat or a crash
cannot count twice, summed exactly to the micro-dollar.

The stores are the real ones (local SQLite, DynamoDB under moto in-process and through moto's
HTTP server); processes are real processes (``multiprocessing``, spawn), writing to the same
store file or the same server. Faults are injected at the edge: a sink whose write lands and
whose answer is lost, botocore resending a PutItem that landed (``needs-retry``), an answer
dropped after the write (``after-call``).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import ConnectionClosedError
from botocore.parsers import create_parser

from reconciler.controllers.spend import read_spend
from reconciler.runtime.budgets import budgets_from_items, to_micros
from reconciler.runtime.client import FlagClient
from reconciler.runtime.recorder import Recorder
from reconciler.runtime.sources import DynamoDBSource, SQLiteSource
from reconciler.runtime.telemetry import (
    SHARD_SPREAD,
    Shard,
    Totals,
    cost_bucket,
    merge_shards,
    spread_of,
)
from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.local import LocalStore
from reconciler.state.records import AuditEntry, format_time
from reconciler.state.store import StateStore, WriteConflictError
from tests.conftest import REPO_ROOT

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
TODAY = NOW.date().isoformat()
BUCKET = cost_bucket(TODAY)
STAMP = format_time(NOW)
CONTEXT = {"user_id": "user-7", "request_type": "vc_analysis"}
KNOWN = "vc_analysis"  # the request type of the repository's example flags
PRICES = ("0.01", "0.07", "0.1", "0.2", "0.3", "1.15", "0.000001", "0.123456")
TYPES = ("summary", "analysis", "chat")
REGION = "eu-central-1"


# -- helpers ---------------------------------------------------------------------------------


def totals(*values: int | float) -> Totals:
    found = Totals()
    for value in values:
        found.add(value)
    return found


def shard(writer: str, seq: int, bucket: str = BUCKET, **series: Totals) -> Shard:
    named = {name.replace("__", ":"): t for name, t in series.items()}
    return Shard(bucket, writer, seq, named, STAMP)


def sums(series: Mapping[str, Totals]) -> dict[str, tuple[int, int | float]]:
    """Each series as (count, sum): what money and request counts are made of."""
    return {name: (t.count, t.sum) for name, t in sorted(series.items())}


def stored(store: StateStore, bucket: str = BUCKET) -> dict[str, tuple[int, int | float]]:
    return sums(merge_shards(store.read_shards(bucket)))


def writers_over_every_spread(per_spread: int = 2) -> list[str]:
    """Writer ids whose shards fall under every one of a bucket's partition keys."""
    chosen: dict[int, list[str]] = {n: [] for n in range(SHARD_SPREAD)}
    for n in range(10_000):
        name = f"host-{n}:{1000 + n}:{n:010x}"
        spread = chosen[spread_of(name)]
        if len(spread) < per_spread:
            spread.append(name)
        if all(len(v) == per_spread for v in chosen.values()):
            break
    return sorted(w for names in chosen.values() for w in names)


def fixed_clock() -> float:
    return NOW.timestamp()


class Counting:
    """The real store as a sink, counting each write_shards call and the shards in it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[list[tuple[str, str, int]]] = []
        self._lock = threading.Lock()

    def write_shards(self, shards: Sequence[Shard]) -> None:
        with self._lock:
            self.calls.append([(s.bucket, s.writer, s.seq) for s in shards])
        self.inner.write_shards(shards)


class AnswerLost:
    """The write lands in the real store, then the answer is lost: the caller sees an error."""

    def __init__(self, inner: Any, losses: int = 1) -> None:
        self.inner = inner
        self.losses = losses
        self.seqs: list[list[int]] = []

    def write_shards(self, shards: Sequence[Shard]) -> None:
        self.inner.write_shards(shards)
        self.seqs.append([s.seq for s in shards])
        if self.losses > 0:
            self.losses -= 1
            raise ConnectionResetError("connection reset before the answer arrived")


class Flaky:
    """The real store behind a link that is down for the next ``failures`` writes."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.attempts = 0

    def write_shards(self, shards: Sequence[Shard]) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError("store unreachable")
        self.inner.write_shards(shards)


class Resend:
    """botocore sends a PutItem again after it landed, as it does when the answer is taken for
    lost: ``needs-retry`` answers "retry now" after the first ``times`` successes. Keeps the
    answer of every attempt."""

    def __init__(self, client: Any, times: int = 1) -> None:
        self.left = times
        self.answers: list[str] = []
        client.meta.events.register("needs-retry.dynamodb.PutItem", self)

    def __call__(self, response: Any = None, caught_exception: Any = None, **_: Any) -> Any:
        if response is None:
            self.answers.append(type(caught_exception).__name__)
            return None
        code = response[1].get("Error", {}).get("Code", "OK")
        self.answers.append(code)
        if code == "OK" and self.left > 0:
            self.left -= 1
            return 0  # sleep 0, then the same request again
        return None


class DropAnswer:
    """The PutItem lands and its answer is dropped on the way back: the first ``times``
    successful calls raise ConnectionClosedError to the caller after the write."""

    def __init__(self, client: Any, times: int = 1) -> None:
        self.left = times
        self.statuses: list[int] = []
        client.meta.events.register("after-call.dynamodb.PutItem", self)

    def __call__(self, http_response: Any, **_: Any) -> None:
        self.statuses.append(http_response.status_code)
        if http_response.status_code == 200 and self.left > 0:
            self.left -= 1
            raise ConnectionClosedError(endpoint_url="http://injected")


class NumberLimits:
    """DynamoDB's limits on numbers (38 significant digits, magnitude below 1E+126), which moto
    does not check inside maps and lists: a PutItem holding a number beyond them is answered
    with DynamoDB's ValidationException, parsed by botocore's own parser; nothing is stored."""

    def __init__(self, client: Any) -> None:
        self.refused = 0
        client.meta.events.register("before-call.dynamodb.PutItem", self)

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> Any:
        numbers = list(_numbers(json.loads(params["body"])))
        if all(_storable(n) for n in numbers):
            return None
        self.refused += 1
        status, headers = 400, {"content-type": "application/x-amz-json-1.0"}
        body = json.dumps(
            {
                "__type": "com.amazon.coral.validate#ValidationException",
                "message": "Attempting to store more than 38 significant digits in a Number",
            }
        ).encode()
        answer = {"status_code": status, "headers": headers, "body": body}
        parsed = create_parser(model.service_model.resolved_protocol).parse(
            answer, model.output_shape
        )
        http = AWSResponse(params["url"], status, HTTPHeaders.from_dict(headers), _Body(body))
        return http, parsed


class _Body:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _numbers(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "N" and isinstance(inner, str):
                yield inner
            else:
                yield from _numbers(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _numbers(inner)


def _storable(text: str) -> bool:
    number = Decimal(text)
    if number == 0:
        return True
    significant = "".join(map(str, number.as_tuple().digits)).strip("0")
    return len(significant) <= 38 and -130 <= number.adjusted() <= 125


class PutItems:
    """Counts PutItem calls of a client, by table."""

    def __init__(self, client: Any) -> None:
        self.tables: Counter[str] = Counter()
        client.meta.events.register("before-call.dynamodb.PutItem", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        self.tables[json.loads(params["body"])["TableName"]] += 1


def runtime_writer(store: StateStore) -> Any:
    """The runtime's own shard writer on the store's tables or file."""
    if isinstance(store, LocalStore):
        return SQLiteSource(store.path)
    assert isinstance(store, DynamoDBStore)
    return DynamoDBSource(store.client, tables=store.tables)


@pytest.fixture(params=["store", "runtime"])
def writer(request: pytest.FixtureRequest, store: StateStore) -> Any:
    """What writes shards: the store (the cost guard's side) or the runtime's source."""
    return store if request.param == "store" else runtime_writer(store)


@pytest.fixture(params=["moto", "moto-server"])
def dynamo(request: pytest.FixtureRequest) -> DynamoDBStore:
    name = "moto_store" if request.param == "moto" else "moto_server_store"
    found: DynamoDBStore = request.getfixturevalue(name)
    return found


@pytest.fixture(params=["local", "moto-server"])
def shared(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[StateStore, dict[str, Any]]]:
    """A store other processes can write to, and how they reach it."""
    if request.param == "local":
        path = tmp_path / "state.db"
        local = LocalStore(path)
        local.bootstrap()
        yield local, {"kind": "sqlite", "path": str(path)}
        local.close()
    else:
        server: DynamoDBStore = request.getfixturevalue("moto_server_store")
        endpoint = request.getfixturevalue("moto_server")
        yield server, {"kind": "dynamodb", "endpoint": endpoint, "tables": dict(server.tables)}


@pytest.fixture
def applied(tmp_path: Path) -> Path:
    """A local store holding the repository's example manifests, applied."""
    # Imported here: the processes these tests start import this module, and need none of it.
    from reconciler.apply import apply_plan
    from reconciler.codec import encode
    from reconciler.config import load_config
    from reconciler.plan.build import build_plan
    from reconciler.validation import validate

    path = tmp_path / "state.db"
    local = LocalStore(path)
    result = validate(REPO_ROOT, load_config(REPO_ROOT))
    planned = build_plan(encode(result.tree), local, git_commit=None, now=datetime.now(UTC))
    apply_plan(planned, local, actor="tests", now=lambda: datetime.now(UTC))
    local.close()
    return path


# -- the processes ---------------------------------------------------------------------------

Plan = list[list[tuple[str, int, str, bool]]]  # batches of (request type, tokens, USD, decimal)


def make_plan(seed: int, batches: int, per_batch: int) -> Plan:
    rng = random.Random(seed)
    return [
        [
            (rng.choice(TYPES), rng.randrange(0, 5000), rng.choice(PRICES), rng.random() < 0.2)
            for _ in range(per_batch)
        ]
        for _ in range(batches)
    ]


def expected(plans: Sequence[Plan]) -> dict[str, tuple[int, int]]:
    """The series the plans' records make, summed exactly (prices read as decimal text)."""
    found: dict[str, list[int]] = {}
    for plan in plans:
        for batch in plan:
            for request_type, tokens, price, _ in batch:
                cost = found.setdefault(f"cost:{request_type}", [0, 0])
                cost[0] += 1
                cost[1] += to_micros(price)
                used = found.setdefault(f"tokens:{request_type}", [0, 0])
                used[0] += 1
                used[1] += tokens
    return {name: (count, total) for name, (count, total) in sorted(found.items())}


def _guard_child() -> None:
    """The parent's guards in a child: fake AWS credentials, loopback only."""
    from tests import conftest

    conftest.pytest_configure(None)  # type: ignore[arg-type]


def _source(target: Mapping[str, Any]) -> Any:
    if target["kind"] == "sqlite":
        return SQLiteSource(target["path"])
    client = boto3.client("dynamodb", endpoint_url=target["endpoint"], region_name=REGION)
    return DynamoDBSource(client, tables=target["tables"])


def _child(target: Mapping[str, Any], plan: Plan, ending: str, background: bool, now: str) -> None:
    """One service process: records the plan's batches at the parent's ``now``, flushing after
    each but the last, then ends: ``close`` (and checks its health), ``crash`` (os._exit, no
    close, nothing more flushed) or ``exit`` (returns: the interpreter exits, no close)."""
    _guard_child()
    at = datetime.fromisoformat(now)
    client = FlagClient(
        _source(target),
        background=background,
        flush_interval=0.01 if ending == "close" else 3600.0,
        clock=lambda: at,
    )
    for number, batch in enumerate(plan, start=1):
        for request_type, tokens, price, exact in batch:
            cost = Decimal(price) if exact else float(price)
            client.record_request_cost(request_type, tokens, cost, {"user_id": "u"})
        if number < len(plan) and not client.flush():
            os._exit(2)
    if ending == "crash":
        os._exit(1)
    if ending == "close":
        client.close()
        health = client.health()
        records = sum(len(b) for b in plan)
        assert (health.recorded, health.lost, health.unflushed) == (records, 0, 0), health
        assert health.failed_flushes == 0, health
        assert not health.rejected, health


def run_children(jobs: Sequence[tuple[Any, ...]], timeout: float = 60) -> list[int | None]:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_child, args=job) for job in jobs]
    for process in processes:
        process.start()
    codes = []
    for process in processes:
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            codes.append(None)
        else:
            codes.append(process.exitcode)
        process.close()
    return codes


# -- 1. the shard contract, every store, both writers ------------------------------------------


def test_shards_round_trip_under_every_partition_key(store: StateStore, writer: Any) -> None:
    writers = writers_over_every_spread()
    assert {spread_of(w) for w in writers} == set(range(SHARD_SPREAD))
    written = [
        shard(
            w,
            n + 1,
            cost__summary=totals(*range(10_000, 10_000 + n + 1)),
            tokens__summary=totals(n, 7),
            latency__summary=totals(0.1, 0.2, 12.5),
        )
        for n, w in enumerate(writers)
    ]
    writer.write_shards(written[:5])
    writer.write_shards(written[5:])
    yesterday, before = (cost_bucket((NOW - timedelta(days=d)).date().isoformat()) for d in (1, 2))
    writer.write_shards([shard(writers[0], 1, yesterday, cost__x=totals(1))])

    assert store.read_shards(BUCKET) == written
    assert [s.writer for s in store.read_shards(yesterday)] == [writers[0]]
    assert store.read_shards(before) == []


def test_the_same_shard_written_twice_is_stored_once(store: StateStore, writer: Any) -> None:
    first = shard("w1", 3, cost__summary=totals(70_000, 100_000))
    writer.write_shards([first])
    writer.write_shards([first])
    writer.write_shards([first, first])
    same_seq_other_totals = shard("w1", 3, cost__summary=totals(1, 2, 3))
    writer.write_shards([same_seq_other_totals])

    assert store.read_shards(BUCKET) == [first]
    assert stored(store) == {"cost:summary": (2, 170_000)}


def test_only_a_higher_seq_replaces_a_shard(store: StateStore, writer: Any) -> None:
    newer = shard("w1", 5, cost__summary=totals(10_000, 20_000, 30_000))
    writer.write_shards([newer])
    older = shard("w1", 4, cost__summary=totals(10_000, 20_000))
    writer.write_shards([older])
    assert store.read_shards(BUCKET) == [newer]

    newest = shard("w1", 6, cost__summary=totals(10_000, 20_000, 30_000, 40_000))
    writer.write_shards([newest])
    assert store.read_shards(BUCKET) == [newest]
    writer.write_shards([newer, older])  # late, in one call
    assert store.read_shards(BUCKET) == [newest]


def test_merged_shards_sum_exactly(store: StateStore, writer: Any) -> None:
    prices = [to_micros(p) for p in PRICES]
    writers = writers_over_every_spread(per_spread=1)
    for n, w in enumerate(writers):
        writer.write_shards(
            [shard(w, 1, cost__chat=totals(*prices[: n + 1]), tokens__chat=totals(n * 1000))]
        )
    merged = merge_shards(store.read_shards(BUCKET))

    cost = merged["cost:chat"]
    assert (cost.count, cost.sum) == (
        sum(n + 1 for n in range(len(writers))),
        sum(sum(prices[: n + 1]) for n in range(len(writers))),
    )
    assert isinstance(cost.sum, int)
    assert (cost.lo, cost.hi) == (min(prices), max(prices))
    assert sums({"tokens:chat": merged["tokens:chat"]}) == {
        "tokens:chat": (len(writers), sum(n * 1000 for n in range(len(writers))))
    }


# -- 2. cost metrics, alerts, control records ---------------------------------------------------


def metrics_row(cost: int, requests: int, request_type: str = "summary") -> dict[str, Any]:
    return {
        "date": TODAY,
        "request_type": request_type,
        "daily_cost": Decimal(cost) / 1_000_000,
        "cost_micros": cost,
        "total_requests": requests,
        "total_tokens": requests * 10,
        "time_zone": "UTC",
        "last_updated": STAMP,
    }


def read_metrics(store: StateStore) -> list[tuple[str, int, int]]:
    return [
        (str(r["request_type"]), int(r["cost_micros"]), int(r["total_requests"]))
        for r in store.read_cost_metrics(TODAY)
    ]


def test_cost_metrics_never_move_backwards(store: StateStore) -> None:
    store.write_cost_metrics([metrics_row(500_000, 5), metrics_row(70_000, 1, "chat")])
    assert read_metrics(store) == [("chat", 70_000, 1), ("summary", 500_000, 5)]

    store.write_cost_metrics([metrics_row(400_000, 6)])  # less money: a slower guard's
    store.write_cost_metrics([metrics_row(600_000, 4)])  # fewer requests
    assert read_metrics(store) == [("chat", 70_000, 1), ("summary", 500_000, 5)]

    store.write_cost_metrics([metrics_row(500_000, 5)])  # the same run again
    store.write_cost_metrics([metrics_row(600_000, 7)])
    assert read_metrics(store) == [("chat", 70_000, 1), ("summary", 600_000, 7)]
    [row] = [r for r in store.read_cost_metrics(TODAY) if r["request_type"] == "summary"]
    assert int(row["total_tokens"]) == 70
    assert store.read_cost_metrics("2020-01-01") == []


def test_an_alert_is_created_once(store: StateStore) -> None:
    alert = {"alert_id": f"daily#{TODAY}#80", "budget": "daily", "level": 80, "at": STAMP}
    assert store.put_alert(alert) is True
    assert store.put_alert({**alert, "level": 100}) is False
    assert store.read_alerts() == [alert]

    store.mark_alert_published(alert["alert_id"], STAMP)
    [published] = store.read_alerts()
    assert (published["published"], published["published_at"], published["level"]) == (
        True,
        STAMP,
        80,
    )
    assert store.put_alert(alert) is False


def test_write_control_conflicts_on_a_stale_version_and_audits_atomically(
    store: StateStore,
) -> None:
    def entry(n: int) -> AuditEntry:
        at = format_time(NOW + timedelta(microseconds=n))
        return AuditEntry("control/cost_guard", "cost-state", "tests", at, after={"n": n})

    store.write_control("cost_guard", {"version": 1, "level": "ok"}, 0, entry(1))
    with pytest.raises(WriteConflictError):
        store.write_control("cost_guard", {"version": 1, "level": "throttle"}, 0, entry(2))
    with pytest.raises(WriteConflictError):
        store.write_control("cost_guard", {"version": 6, "level": "throttle"}, 5, entry(3))
    with pytest.raises(WriteConflictError):
        store.write_control("cost_guard", {"version": 6, "level": "throttle"}, 5, None)
    assert store.read_control("cost_guard") == {
        "record_id": "cost_guard",
        "version": 1,
        "level": "ok",
    }
    assert [e["after"] for e in store.read_audit("control/cost_guard")] == [{"n": 1}]

    store.write_control("cost_guard", {"version": 2, "level": "throttle"}, 1, entry(4))
    assert store.read_control("cost_guard") == {
        "record_id": "cost_guard",
        "version": 2,
        "level": "throttle",
    }
    assert [e["after"] for e in store.read_audit("control/cost_guard")] == [{"n": 4}, {"n": 1}]
    assert store.read_control("absent") is None


# -- 3. eight processes at once -----------------------------------------------------------------


def test_eight_processes_sum_exactly_to_the_micro_dollar(
    shared: tuple[StateStore, dict[str, Any]],
) -> None:
    store, target = shared
    plans = [make_plan(seed, batches=5, per_batch=300) for seed in range(8)]
    jobs = [(target, plan, "close", n % 2 == 1, NOW.isoformat()) for n, plan in enumerate(plans)]

    assert run_children(jobs) == [0] * 8

    want = expected(plans)
    shards = store.read_shards(BUCKET)
    assert len({s.writer for s in shards}) == len(shards) == 8
    assert stored(store) == want

    thresholds = [
        {"threshold_name": "all", "applies_to": "all", "throttle": {"amount_usd": 10_000}},
        {
            "threshold_name": "chat",
            "applies_to": {"request_types": ["chat"]},
            "throttle": {"amount_usd": 10_000},
        },
    ]
    everything, chat = budgets_from_items(thresholds, [])
    reading = read_spend(store, [everything, chat], NOW)
    costs = {n: total for n, (_, total) in want.items() if n.startswith("cost:")}
    assert reading.budget_spend(everything, NOW) == sum(costs.values())
    assert reading.budget_spend(chat, NOW) == costs["cost:chat"]
    assert sorted((d.request_type, d.cost_micros, d.requests, d.tokens) for d in reading.live) == [
        (t, want[f"cost:{t}"][1], want[f"cost:{t}"][0], want[f"tokens:{t}"][1])
        for t in sorted(TYPES)
    ]
    assert len(reading.writers) == 8


# -- 4. a lost answer is not counted twice --------------------------------------------------------


def test_a_write_whose_answer_was_lost_is_not_counted_twice(store: StateStore) -> None:
    sink = AnswerLost(store)
    recorder = Recorder(sink, background=False, clock=fixed_clock, writer="w-lost")
    for micros in (10_000, 70_000, 100_000):
        recorder.record_cost("summary", 5, micros)

    assert recorder.flush() is False
    health = recorder.health
    assert (health.failed_flushes, health.flushes, health.unflushed) == (1, 0, 3)
    assert "ConnectionResetError" in (health.last_error or "")
    assert stored(store) == {"cost:summary": (3, 180_000), "tokens:summary": (3, 15)}

    assert recorder.flush() is True  # the same totals again, at a higher seq
    assert sink.seqs == [[1], [2]]
    assert [s.seq for s in store.read_shards(BUCKET)] == [2]
    assert stored(store) == {"cost:summary": (3, 180_000), "tokens:summary": (3, 15)}
    assert (health.failed_flushes, health.flushes, health.unflushed) == (1, 1, 0)

    recorder.record_cost("summary", 1, 1)
    assert recorder.flush() is True
    assert stored(store) == {"cost:summary": (4, 180_001), "tokens:summary": (4, 16)}
    recorder.close()
    assert health.lost == 0


def test_a_put_resent_after_it_landed_is_a_no_op(dynamo: DynamoDBStore) -> None:
    source = DynamoDBSource(dynamo.client, tables=dynamo.tables)
    first = shard("w1", 1, cost__summary=totals(70_000))
    resend = Resend(dynamo.client, times=1)
    source.write_shards([first])
    assert resend.answers == ["OK", "ConditionalCheckFailedException"]
    assert dynamo.read_shards(BUCKET) == [first]

    second = shard("w1", 2, cost__summary=totals(70_000, 10_000))
    resend.left = 1
    dynamo.write_shards([second])  # the store's writer, through its own retry helper
    assert resend.answers[2:] == ["OK", "ConditionalCheckFailedException"]
    assert dynamo.read_shards(BUCKET) == [second]


def test_a_recorder_over_resent_puts_counts_each_cost_once(dynamo: DynamoDBStore) -> None:
    resend = Resend(dynamo.client, times=3)
    recorder = Recorder(
        DynamoDBSource(dynamo.client, tables=dynamo.tables),
        background=False,
        clock=fixed_clock,
    )
    for round_ in range(3):
        for price in PRICES:
            recorder.record_cost("chat", round_, to_micros(price))
        assert recorder.flush() is True
    assert resend.answers == ["OK", "ConditionalCheckFailedException"] * 3
    assert recorder.health.failed_flushes == 0
    assert stored(dynamo) == {
        "cost:chat": (3 * len(PRICES), 3 * sum(to_micros(p) for p in PRICES)),
        "tokens:chat": (3 * len(PRICES), len(PRICES) * (0 + 1 + 2)),
    }
    recorder.close()


def test_an_answer_dropped_after_the_put_is_neither_an_error_nor_a_double(
    dynamo: DynamoDBStore,
) -> None:
    dropped = DropAnswer(dynamo.client, times=1)
    puts = PutItems(dynamo.client)
    first = shard("w1", 1, cost__summary=totals(100_000))
    dynamo.write_shards([first])  # retried by the store: the repeat's condition fails
    assert dropped.statuses == [200, 400]
    assert puts.tables[dynamo.telemetry_table] == 2
    assert dynamo.read_shards(BUCKET) == [first]

    # The runtime's writer has no retry of its own: the flush fails, the next one resends.
    dropped.left = 1
    recorder = Recorder(
        DynamoDBSource(dynamo.client, tables=dynamo.tables),
        background=False,
        clock=fixed_clock,
        writer="w2",
    )
    recorder.record_cost("summary", 3, 70_000)
    assert recorder.flush() is False
    assert recorder.flush() is True
    assert recorder.health.failed_flushes == 1
    assert stored(dynamo) == {"cost:summary": (2, 170_000), "tokens:summary": (1, 3)}
    assert {s.writer: s.seq for s in dynamo.read_shards(BUCKET)} == {"w1": 1, "w2": 2}
    recorder.close()


# -- 5. crashes ----------------------------------------------------------------------------------


def test_a_crash_loses_at_most_what_came_after_the_last_flush(
    shared: tuple[StateStore, dict[str, Any]],
) -> None:
    store, target = shared
    plan = make_plan(seed=42, batches=3, per_batch=200)

    assert run_children([(target, plan, "crash", False, NOW.isoformat())]) == [1]

    assert stored(store) == expected([plan[:2]])


def test_an_interpreter_exit_without_close_flushes_everything(
    shared: tuple[StateStore, dict[str, Any]],
) -> None:
    store, target = shared
    plan = make_plan(seed=7, batches=3, per_batch=200)

    assert run_children([(target, plan, "exit", True, NOW.isoformat())]) == [0]

    assert stored(store) == expected([plan])
    [written] = store.read_shards(BUCKET)
    assert written.seq == 3  # two flushes in the run, one at exit


# -- 6. a hot key ------------------------------------------------------------------------------


def test_one_write_per_item_per_flush_however_many_requests(store: StateStore) -> None:
    sink = Counting(store)
    dynamo = isinstance(store, DynamoDBStore)
    puts = PutItems(store.client) if dynamo else None
    limits = NumberLimits(store.client) if dynamo else None
    recorder = Recorder(sink, background=False, clock=fixed_clock, writer="w-hot")
    rounds, threads, per_round = 5, 4, 1000
    barrier = threading.Barrier(threads + 1, timeout=30)

    def serve(n: int) -> None:
        for r in range(rounds):
            for i in range(per_round):
                recorder.record_cost("chat", 1, to_micros(PRICES[(n + r + i) % len(PRICES)]))
            barrier.wait()  # the round is recorded
            barrier.wait()  # and flushed

    workers = [threading.Thread(target=serve, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    flushed = []
    for _ in range(rounds):
        barrier.wait()
        flushed.append(recorder.flush())
        barrier.wait()
    for worker in workers:
        worker.join()

    assert flushed == [True] * rounds

    assert sink.calls == [[(BUCKET, "w-hot", seq)] for seq in range(1, rounds + 1)]
    if puts is not None and limits is not None:
        assert puts.tables == {store.telemetry_table: rounds}
        assert limits.refused == 0, "every total fits DynamoDB's numbers"
    total = sum(
        to_micros(PRICES[(n + r + i) % len(PRICES)])
        for n in range(threads)
        for r in range(rounds)
        for i in range(per_round)
    )
    records = rounds * threads * per_round
    assert stored(store) == {"cost:chat": (records, total), "tokens:chat": (records, records)}
    recorder.close()
    assert len(sink.calls) == rounds, "nothing was left for close to write"


def test_background_flushes_during_recording_write_each_item_once_each(
    store: StateStore,
) -> None:
    sink = Counting(store)
    recorder = Recorder(sink, flush_interval=0.002, clock=fixed_clock, writer="w-bg")

    def serve(n: int) -> None:
        for i in range(5000):
            recorder.record_cost(TYPES[n % 2], 2, to_micros(PRICES[i % len(PRICES)]))

    workers = [threading.Thread(target=serve, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    recorder.close()

    assert all(len(call) == 1 for call in sink.calls)
    seqs = [call[0][2] for call in sink.calls]
    assert seqs == sorted(set(seqs))
    assert len(sink.calls) == recorder.health.flushes
    per_type = 2 * 5000
    cost = sum(to_micros(PRICES[i % len(PRICES)]) for i in range(5000)) * 2
    assert stored(store) == {
        "cost:analysis": (per_type, cost),
        "cost:summary": (per_type, cost),
        "tokens:analysis": (per_type, 2 * per_type),
        "tokens:summary": (per_type, 2 * per_type),
    }
    assert (recorder.health.unflushed, recorder.health.lost) == (0, 0)


# -- 7. bad values -------------------------------------------------------------------------------


def client_over(applied: Path, **options: Any) -> FlagClient:
    at = NOW
    return FlagClient(SQLiteSource(applied), background=False, clock=lambda: at, **options)


def test_bad_costs_are_counted_not_recorded(applied: Path) -> None:
    client = client_over(applied)
    assert KNOWN in {f.request_type for f in client.snapshot.flags.values()}  # type: ignore[union-attr]
    client.record_request_cost(KNOWN, 120, 0.07, CONTEXT)

    bad_costs: list[Any] = [
        -0.01,
        -1,
        math.nan,
        math.inf,
        -math.inf,
        True,
        False,
        "0.01",
        None,
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-0.5"),
        [0.01],
    ]
    for cost in bad_costs:
        client.record_request_cost(KNOWN, 10, cost, CONTEXT)
    bad_tokens: list[Any] = [-1, 1.5, 2.0, True, "10", None, math.nan]
    for tokens in bad_tokens:
        client.record_request_cost(KNOWN, tokens, 0.01, CONTEXT)
    for request_type in ("", None, 42, b"vc_analysis"):
        client.record_request_cost(request_type, 10, 0.01, CONTEXT)  # type: ignore[arg-type]
    client.record_request_cost("vc_unknown", 10, 0.01, CONTEXT)

    health = client.health()
    assert health.rejected == Counter(
        {
            "invalid_cost": len(bad_costs),
            "invalid_tokens": len(bad_tokens),
            "missing_request_type": 4,
            "unknown_request_type:vc_unknown": 1,
        }
    )
    assert (health.recorded, health.unflushed) == (1, 1)
    assert client.flush() is True
    store = LocalStore(applied)
    assert stored(store) == {"cost:vc_analysis": (1, 70_000), "tokens:vc_analysis": (1, 120)}
    client.close()
    store.close()


def test_bad_outcomes_are_counted_not_recorded(applied: Path) -> None:
    client = client_over(applied)
    for context in (None, {}, [], {"request_type": ""}, {"request_type": 5}, "vc_analysis"):
        client.record_ai_success(context, 120.0, 0.01, 0.9, 10)  # type: ignore[arg-type]
        client.record_ai_failure(context, RuntimeError("x"), 30.0)  # type: ignore[arg-type]
    assert client.health().rejected == Counter({"missing_request_type": 12})
    assert client.health().recorded == 0

    client.record_ai_success(CONTEXT, 120.0, -0.5, 0.9, 10)  # the call happened, its cost is bad
    client.record_ai_success(CONTEXT, -1.0, 0.01, math.nan, 10)
    client.record_ai_success(CONTEXT, math.inf, 0.01, None, -3)
    client.record_ai_failure(CONTEXT, "timeout", True)  # type: ignore[arg-type]
    client.record_ai_failure(CONTEXT, "timeout", "slow")  # type: ignore[arg-type]

    assert client.health().rejected == Counter(
        {
            "missing_request_type": 12,
            "invalid_cost": 1,
            "invalid_tokens": 1,
            "invalid_response_time": 4,
            "invalid_quality": 1,
        }
    )
    assert client.flush() is True
    store = LocalStore(applied)
    assert stored(store) == {"cost:vc_analysis": (1, 10_000), "tokens:vc_analysis": (1, 10)}
    [ops] = {s.bucket for s in shards_of(store)} - {BUCKET}
    # vc_bedrock_live's gated rollout watches vc_analysis: the context (no country) is outside
    # its targeting, so every call is in the cohort without the feature; spend only where the
    # cost itself was recorded.
    assert stored(store, ops) == {
        "outcome:vc_analysis": (5, 2),  # five calls, two failed
        "quality:vc_analysis": (1, 0.9),
        "latency:vc_analysis": (1, 120.0),
        "rollout:vc_bedrock_live:out": (5, 2),
        "rollout_quality:vc_bedrock_live:out": (1, 0.9),
        "rollout_cost:vc_bedrock_live:out": (1, 10_000),  # as cost:vc_analysis
        "rollout_latency:vc_bedrock_live:out:28": (1, 120.0),  # 2**(27/4) < 120 <= 2**(28/4)
    }
    client.close()
    store.close()


def shards_of(store: LocalStore) -> list[Shard]:
    """Every shard in the local store, whatever its bucket."""
    with sqlite3.connect(store.path) as connection:
        rows = connection.execute("SELECT item FROM telemetry").fetchall()
    return [Shard.from_item(json.loads(item)) for (item,) in rows]


def test_an_unknown_request_type_is_recorded_by_no_call(applied: Path) -> None:
    client = client_over(applied)
    unknown = {"user_id": "u", "request_type": "vc_unknown"}
    client.record_request_cost("vc_unknown", 10, 0.01, unknown)
    client.record_ai_success(unknown, 120.0, 0.01, 0.5, 10)
    client.record_ai_failure(unknown, RuntimeError("boom"), 30.0)

    health = client.health()
    assert health.recorded == 0
    assert health.rejected == Counter({"unknown_request_type:vc_unknown": 3})
    assert client.flush() is True
    store = LocalStore(applied)
    assert shards_of(store) == []
    client.close()
    store.close()


def test_a_cost_too_large_to_add_is_rejected_whole(applied: Path) -> None:
    client = client_over(applied)
    client.record_request_cost(KNOWN, 120, 0.07, CONTEXT)
    client.record_request_cost(KNOWN, 1, 1e300, CONTEXT)  # finite, its square is not
    client.record_request_cost(KNOWN, 1, 10**400, CONTEXT)

    health = client.health()
    assert health.recorded == 1
    assert sum(health.rejected.values()) == 2
    assert client.flush() is True
    store = LocalStore(applied)
    assert stored(store) == {"cost:vc_analysis": (1, 70_000), "tokens:vc_analysis": (1, 120)}
    client.close()
    store.close()


def test_a_cost_no_store_can_hold_does_not_stop_the_flushes(dynamo: DynamoDBStore) -> None:
    limits = NumberLimits(dynamo.client)
    source = DynamoDBSource(dynamo.client, tables=dynamo.tables)
    client = FlagClient(source, background=False, clock=lambda: NOW)
    client.record_request_cost(KNOWN, 120, 0.07, CONTEXT)
    client.record_request_cost(KNOWN, 1, 1e35, CONTEXT)  # finite: 1e41 micro-dollars, 42 digits
    client.record_request_cost(KNOWN, 120, 0.01, CONTEXT)

    flushed = [client.flush(), client.flush()]
    health = client.health()
    assert (flushed, health.failed_flushes, limits.refused) == ([True, True], 0, 0), (
        health.last_error
    )
    assert stored(dynamo) == {"cost:vc_analysis": (2, 80_000), "tokens:vc_analysis": (2, 240)}
    assert health.recorded == 2
    assert sum(health.rejected.values()) == 1
    client.close()
    assert client.health().lost == 0


def test_rejection_kinds_are_bounded(applied: Path) -> None:
    client = client_over(applied)
    for n in range(500):
        client.record_request_cost(f"vc_unknown_{n:03d}", 10, 0.01, CONTEXT)
    rejected = client.health().rejected
    assert len(rejected) == 101
    assert rejected["other"] == 400
    assert sum(rejected.values()) == 500
    assert client.health().recorded == 0
    client.close()


def test_series_beyond_the_cap_are_rejected_and_counted(store: StateStore) -> None:
    recorder = Recorder(store, background=False, clock=fixed_clock, max_series=4, writer="w")
    for request_type in ("a", "b", "c", "a", "d", "b"):
        recorder.record_cost(request_type, 1, 10)
    health = recorder.health
    assert health.rejected == Counter({"too_many_series": 2})
    assert health.recorded == 4
    assert recorder.flush() is True
    assert stored(store) == {
        "cost:a": (2, 20),
        "cost:b": (2, 20),
        "tokens:a": (2, 2),
        "tokens:b": (2, 2),
    }
    recorder.close()


def test_a_recorder_at_its_cap_records_again_once_the_day_is_written(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "state.db")
    now = [NOW.timestamp()]
    recorder = Recorder(store, background=False, clock=lambda: now[0], max_series=2, writer="w")
    recorder.record_cost("a", 1, 10)
    assert recorder.flush() is True

    now[0] += 86_400  # the next day: its bucket needs series of its own
    for _ in range(3):
        recorder.record_cost("a", 1, 10)
        assert recorder.flush() is True
    tomorrow = cost_bucket((NOW + timedelta(days=1)).date().isoformat())
    assert stored(store) == {"cost:a": (1, 10), "tokens:a": (1, 1)}
    assert stored(store, tomorrow) != {}, (
        "the previous day, written and over, still holds the series cap: "
        f"{recorder.health.rejected}"
    )
    recorder.close()
    store.close()


# -- 8. a flush that keeps failing ---------------------------------------------------------------


def test_a_failing_flush_loses_nothing_while_the_process_lives(store: StateStore) -> None:
    sink = Flaky(store, failures=3)
    recorder = Recorder(sink, background=False, clock=fixed_clock, writer="w-flaky")
    for i in range(100):
        recorder.record_cost("chat", 1, to_micros(PRICES[i % len(PRICES)]))
    for attempt in range(1, 4):
        assert recorder.flush() is False
        health = recorder.health
        assert (health.failed_flushes, health.unflushed, health.flushes) == (attempt, 100, 0)
    assert health.last_error == "ConnectionRefusedError: store unreachable"
    assert store.read_shards(BUCKET) == []
    for i in range(50):
        recorder.record_cost("chat", 1, to_micros(PRICES[i % len(PRICES)]))
    assert recorder.flush() is True

    cost = sum(to_micros(PRICES[i % len(PRICES)]) for i in (*range(100), *range(50)))
    assert stored(store) == {"cost:chat": (150, cost), "tokens:chat": (150, 150)}
    assert [s.seq for s in store.read_shards(BUCKET)] == [4]
    assert (health.unflushed, health.flushes, sink.attempts) == (0, 1, 4)
    recorder.close()
    assert health.lost == 0


def test_close_counts_what_the_final_flush_could_not_write(applied: Path, tmp_path: Path) -> None:
    local = LocalStore(tmp_path / "telemetry.db")
    local.bootstrap()
    sink = Flaky(local, failures=0)
    client = client_over(applied, telemetry=sink)
    for _ in range(5):
        client.record_request_cost(KNOWN, 10, 0.1, CONTEXT)
    assert client.flush() is True
    for _ in range(3):
        client.record_request_cost(KNOWN, 10, 0.1, CONTEXT)
    sink.failures = 10**6  # the store goes away for good
    assert client.flush() is False

    client.close()
    health = client.health()
    assert (health.lost, health.unflushed, health.flushes) == (3, 3, 1)
    assert health.failed_flushes == 2
    client.close()
    assert client.health().lost == 3, "a second close counts nothing again"
    assert stored(local) == {"cost:vc_analysis": (5, 500_000), "tokens:vc_analysis": (5, 50)}
    local.close()


def test_close_loses_nothing_when_the_final_flush_works(applied: Path) -> None:
    client = client_over(applied)
    for _ in range(3):
        client.record_request_cost(KNOWN, 10, 0.1, CONTEXT)
    client.close()
    assert (client.health().lost, client.health().unflushed) == (0, 0)
    store = LocalStore(applied)
    assert stored(store) == {"cost:vc_analysis": (3, 300_000), "tokens:vc_analysis": (3, 30)}
    store.close()


def test_a_record_a_moment_before_midnight_lands_in_its_day_even_if_a_flush_runs_first(
    tmp_path: Path,
) -> None:
    """The clock read just before a day's end, a flush at the end, then the record: the day's
    bucket is still there (the bucket being recorded into is never released), so the day's
    total is not replaced by a new, nearly empty one."""
    from reconciler.runtime.recorder import Recorder
    from reconciler.runtime.telemetry import cost_bucket as bucket_of

    store = LocalStore(tmp_path / "state.db")
    store.bootstrap()
    end = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
    now = [end - 60.0]
    recorder = Recorder(store, background=False, clock=lambda: now[0])
    recorder.record_cost("vc_analysis", 0, 100_000_000)
    assert recorder.flush()
    now[0] = end - 0.001
    recorder.record_cost("vc_analysis", 0, 1)  # rolls nothing: still 1 December
    now[0] = end
    assert recorder.flush()  # the day is over, but the bucket is still being recorded into
    recorder._store.next_cost_roll = end + 1  # as if this record read the clock before the end
    recorder.record_cost("vc_analysis", 0, 50_000)
    assert recorder.flush()
    (shard,) = store.read_shards(bucket_of("2026-12-01", "UTC"))
    assert shard.series["cost:vc_analysis"].sum == 100_050_001
    recorder.close()
    store.close()
