"""The model-selection experiment end to end on DynamoDB: apply the repository's manifests,
decide and record through a FlagClient over DynamoDBSource, flush, count the assignments, run
the analyser; flushes repeated and retried, an operator's stop and resume, an analyser verdict
honoured, and the tables bootstrap creates. On moto in-process and on moto's HTTP server."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from reconciler import experiment_operators
from reconciler.controllers.analyser_run import analyse_experiment, run_experiment_analyser
from reconciler.controllers.experiment_analysis import Analysis, MetricResult
from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Reason
from reconciler.runtime.experiment_state import ANALYSER_ID, operators_from_item, unit_hash
from reconciler.runtime.sources import ASSIGNMENTS_TABLE, DynamoDBSource
from reconciler.runtime.telemetry import Assignment, Shard
from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.records import AB_RESULTS_TABLE, RecordKind, format_time
from tests.dynamodb_fixtures import REGION
from tests.test_cli import invoke

EXPERIMENT = "claude_vs_gemini"
FLAG = "ai_model_selection"
USERS = [{"user_id": f"user-{i}", "country": "DE", "plan": "pro"} for i in range(400)]
BASE_QUALITY = {"claude": 0.75, "gemini": 0.80}  # gemini +0.05


@dataclass
class Deployment:
    store: DynamoDBStore
    source: DynamoDBSource
    moment: datetime  # the clients' clock: a moment after the apply

    def client(self) -> FlagClient:
        """A service process (a writer of its own), flushing only when told."""
        return FlagClient(self.source, background=False, clock=lambda: self.moment)

    @property
    def later(self) -> datetime:
        return self.moment + timedelta(minutes=1)


@pytest.fixture(params=["moto", "moto-server"])
def deployment(
    request: pytest.FixtureRequest, example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> Deployment:
    """The repository's manifests applied with ``reconcile --apply`` to fresh tables."""
    store: DynamoDBStore = request.getfixturevalue(request.param.replace("-", "_") + "_store")
    monkeypatch.setenv("RECONCILER_STORE", "dynamodb")
    for variable, table in store.tables.items():
        monkeypatch.setenv(variable, table)
    if store.endpoint_url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", store.endpoint_url)
    code, out, err = invoke("--apply", str(example_tree), "--yes")
    assert code == 0, out + err
    client = boto3.client("dynamodb", endpoint_url=store.endpoint_url, region_name=REGION)
    return Deployment(store, DynamoDBSource(client, tables=store.tables), datetime.now(UTC))


def decide_all(flags: FlagClient) -> dict[str, str]:
    """Every user's variant, each decided once and assigned by the experiment."""
    decisions = {str(u["user_id"]): flags.decide(FLAG, u) for u in USERS}
    assert {d.reason for d in decisions.values()} == {Reason.EXPERIMENT_ASSIGNED}
    return {user: str(d.variant) for user, d in decisions.items()}


def record_all(flags: FlagClient, variants: dict[str, str], seed: int = 7) -> Counter[str]:
    """One to three responses per user (quality around its variant's base); the number of
    response_quality values recorded per variant."""
    rng = random.Random(seed)
    recorded: Counter[str] = Counter()
    for i, user in enumerate(USERS):
        variant = variants[str(user["user_id"])]
        for _ in range(1 + i % 3):
            quality = BASE_QUALITY[variant] + rng.uniform(-0.1, 0.1)
            flags.record_response_quality(
                EXPERIMENT, user, quality, 1200 + rng.uniform(-100, 100), 0.02
            )
            recorded[variant] += 1
    return recorded


def expected_counts(variants: dict[str, str]) -> dict[tuple[str, int], int]:
    """Users per (variant, cluster), as the assignments table should count them."""
    return dict(Counter((v, unit_hash(EXPERIMENT, user)[1]) for user, v in variants.items()))


def per_variant(counts: dict[tuple[str, int], int]) -> Counter[str]:
    found: Counter[str] = Counter()
    for (variant, _), n in counts.items():
        found[variant] += n
    return found


def experiment_item(store: DynamoDBStore) -> dict[str, Any]:
    return dict(store.read_records(RecordKind.EXPERIMENT)[EXPERIMENT].item)


def analysis_now(store: DynamoDBStore, now: datetime, *, write_rows: bool = False) -> Analysis:
    action = operators_from_item((store.read_overrides() or {}).get("experiments")).get(EXPERIMENT)
    found = analyse_experiment(store, experiment_item(store), action, now, write_rows=write_rows)
    assert found is not None
    return found


def quality(analysis: Analysis) -> MetricResult:
    (result,) = analysis.of("response_quality")
    return result


def counted(rows: Sequence[dict[str, Any]], day: str) -> dict[str, int]:
    """The results rows of one day: result key -> count."""
    return {str(r["result_key"]): int(r["count"]) for r in rows if r.get("day") == day}


def failing_once(method: Callable[..., None]) -> tuple[Callable[..., None], list[int]]:
    """``method``, raising a throttling error at its first call (after doing nothing)."""
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
                "PutItem",
            )
        method(*args, **kwargs)

    return wrapped, calls


# -- 1. recorded, counted, analysed ---------------------------------------------------------


def test_decisions_and_responses_reach_the_assignments_results_and_analysis(
    deployment: Deployment,
) -> None:
    store = deployment.store
    with deployment.client() as flags:
        variants = decide_all(flags)
        recorded = record_all(flags, variants)
        assert flags.flush()
        assert flags.health().rejected == Counter()
    users = Counter(variants.values())
    assert set(users) == {"claude", "gemini"}
    assert min(users.values()) > 150  # 50/50 weights

    counts = store.read_assignment_counts(EXPERIMENT)
    assert sum(counts.values()) == len(USERS)
    assert per_variant(counts) == users
    assert counts == expected_counts(variants)  # each user in their own variant and cluster

    run = run_experiment_analyser(store, now=deployment.later)
    assert run.written
    assert run.not_started == []
    state = store.read_control(ANALYSER_ID)
    assert state is not None
    entry = state["experiments"][EXPERIMENT]
    assert (entry["state"], int(entry["epoch"])) == ("running", 0)  # 400 users, not 7 days yet
    assert any(w.startswith("minimum duration") for w in entry["waiting"])

    day = deployment.moment.date().isoformat()
    rows = counted(store.read_results(EXPERIMENT), day)
    for variant, n in users.items():
        assert rows[f"{day}#{variant}#exposures"] == n  # one decision per user
        assert rows[f"{day}#{variant}#response_quality"] == recorded[variant]
        assert rows[f"{day}#{variant}#response_time_ms"] == recorded[variant]
        assert rows[f"{day}#{variant}#cost_usd"] == recorded[variant]

    analysis = analysis_now(store, deployment.later)
    assert analysis.key == EXPERIMENT
    assert dict(analysis.users) == dict(users)
    assert dict(analysis.exposures) == dict(users)
    assert not analysis.srm.mismatch
    result = quality(analysis)
    assert result.variant == "gemini"
    assert result.comparison.relative > 0
    assert result.comparison.relative == pytest.approx(0.05 / 0.75, abs=0.02)
    assert result.anytime_relative[0] > 0  # the anytime-valid interval excludes no change
    assert result.verdict == "better"
    assert (result.observations, result.control_observations) == (
        recorded["gemini"],
        recorded["claude"],
    )
    assert {r.verdict for r in analysis.results if r.metric.role == "guardrail"} <= {
        "inconclusive",
        "within limit",
        "better",
        "worse",
    }  # neither guardrail breached: the same time and cost
    assert analysis.decision == "continue"


# -- 2. idempotence ----------------------------------------------------------------------------


def test_repeated_flushes_and_rewritten_rows_change_no_count(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, source = deployment.store, deployment.source
    written: list[Assignment] = []
    shards: list[Shard] = []
    real_assignments, real_shards = source.write_assignments, source.write_shards

    def keep_assignments(assignments: Sequence[Assignment]) -> None:
        written.extend(assignments)
        real_assignments(assignments)

    def keep_shards(batch: Sequence[Shard]) -> None:
        shards.extend(batch)
        real_shards(batch)

    monkeypatch.setattr(source, "write_assignments", keep_assignments)
    monkeypatch.setattr(source, "write_shards", keep_shards)
    flags = deployment.client()
    variants = decide_all(flags)
    recorded = record_all(flags, variants)
    assert flags.flush()
    assert flags.flush()  # nothing new: nothing written
    assert len(written) == len(USERS)
    assert len(shards) == 1  # one bucket, one writer
    expected = expected_counts(variants)
    assert store.read_assignment_counts(EXPERIMENT) == expected

    # The same rows again, through the service's sink and through the store.
    real_assignments(list(written))
    store.write_assignments(list(written))
    real_shards(list(shards))  # the same shard, the same seq: a repeat
    assert store.read_assignment_counts(EXPERIMENT) == expected
    before = analysis_now(store, deployment.later)
    assert quality(before).observations == recorded["gemini"]

    # A second process sees the same users: the same rows, written again.
    with deployment.client() as other:
        assert decide_all(other) == variants
    assert len(written) == 2 * len(USERS)
    assert store.read_assignment_counts(EXPERIMENT) == expected

    # The first process records more; its older shard, arriving late, does not win.
    record_all(flags, variants, seed=8)
    assert flags.flush()
    real_shards(shards[:1])  # seq 1, after seq 2 is stored
    after = analysis_now(store, deployment.later)
    assert quality(after).observations == 2 * recorded["gemini"]
    assert quality(after).control_observations == 2 * recorded["claude"]
    assert dict(after.exposures) == {v: 2 * n for v, n in Counter(variants.values()).items()}
    flags.close()

    day = deployment.moment.date().isoformat()
    first = run_experiment_analyser(store, now=deployment.later)
    rows = counted(store.read_results(EXPERIMENT), day)
    second = run_experiment_analyser(store, now=deployment.later + timedelta(seconds=5))
    assert first.written
    assert not second.written  # the same data, the same state
    assert counted(store.read_results(EXPERIMENT), day) == rows  # set, not added to
    assert rows[f"{day}#gemini#response_quality"] == 2 * recorded["gemini"]
    assert store.read_assignment_counts(EXPERIMENT) == expected


# -- 3. a retried flush --------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["write_shards", "write_assignments"])
def test_a_failed_flush_is_retried_and_loses_nothing(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store, source = deployment.store, deployment.source
    wrapped, calls = failing_once(getattr(source, failing))
    monkeypatch.setattr(source, failing, wrapped)
    flags = deployment.client()
    variants = decide_all(flags)
    recorded = record_all(flags, variants)
    if failing == "write_shards":
        assert not flags.flush()  # throttled
        health = flags.health()
        assert (health.failed_flushes, health.flushes) == (1, 0)
        assert health.unflushed > 0
        assert flags.flush()  # the retry
        health = flags.health()
        assert (health.failed_flushes, health.flushes, health.unflushed) == (1, 1, 0)
    else:
        # The shards (spend, outcomes, experiment totals) landed: the flush succeeded, and
        # the assignments wait for the next one.
        assert flags.flush()
        health = flags.health()
        assert (health.failed_flushes, health.failed_assignment_writes) == (0, 1)
        assert health.pending_assignments == len(variants)
        assert flags.flush()  # the retry
        assert flags.health().pending_assignments == 0
    assert calls[0] == 2
    flags.close()

    assert store.read_assignment_counts(EXPERIMENT) == expected_counts(variants)
    analysis = analysis_now(store, deployment.later)
    result = quality(analysis)
    assert (result.observations, result.control_observations) == (
        recorded["gemini"],
        recorded["claude"],
    )
    assert dict(analysis.exposures) == dict(Counter(variants.values()))


def test_assignments_half_written_before_a_failure_are_written_again_once(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second batch of 25 fails (the first landed): the retry writes every row again,
    and each user is still counted once."""
    store, source = deployment.store, deployment.source
    real = source.client.batch_write_item
    calls = [0]

    def batch_write_item(**kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise ClientError(
                {"Error": {"Code": "InternalServerError", "Message": "try again"}},
                "BatchWriteItem",
            )
        return real(**kwargs)

    monkeypatch.setattr(source.client, "batch_write_item", batch_write_item)
    flags = deployment.client()
    variants = decide_all(flags)
    assert flags.flush()  # the shards landed; the assignments wait
    assert flags.health().failed_assignment_writes == 1
    assert sum(store.read_assignment_counts(EXPERIMENT).values()) == 25
    assert flags.flush()
    flags.close()
    assert store.read_assignment_counts(EXPERIMENT) == expected_counts(variants)


def test_a_tiny_metric_value_does_not_break_the_analyser(deployment: Deployment) -> None:
    store = deployment.store
    with deployment.client() as flags:
        decide_all(flags)
        flags.record_response_quality(EXPERIMENT, USERS[0], 1e-70, 1000, 0.01)
        assert flags.flush()
    run = run_experiment_analyser(store, now=deployment.later)
    assert EXPERIMENT in run.analyses


def test_a_day_recorded_after_the_last_run_of_that_day_is_counted_later(
    deployment: Deployment,
) -> None:
    store = deployment.store
    with deployment.client() as flags:
        variants = decide_all(flags)
        first = record_all(flags, variants)
        assert flags.flush()
        run_experiment_analyser(store, now=deployment.later)  # rows for the day, mid-day
        second = record_all(flags, variants, seed=8)  # the same day, after that run
        assert flags.flush()
    two_days_on = deployment.moment + timedelta(days=2)  # no run in between (an outage)
    result = quality(analysis_now(store, two_days_on))
    assert result.observations == first["gemini"] + second["gemini"]


# -- 4. an operator's stop and resume ------------------------------------------------------


def test_stop_serves_the_control_and_resume_brings_the_same_users_back_under_a_new_key(
    deployment: Deployment,
) -> None:
    store = deployment.store
    flags = deployment.client()
    variants = decide_all(flags)
    record_all(flags, variants)
    assert flags.flush()
    before = store.read_assignment_counts(EXPERIMENT)
    nothing = experiment_operators.resume(
        store, EXPERIMENT, reason="nothing held", by="oncall", now=deployment.moment
    )
    assert nothing == 0  # nothing held it: nothing written
    assert store.read_overrides() is None

    assert experiment_operators.stop(
        store, EXPERIMENT, reason="quality incident", by="oncall", now=deployment.moment
    )
    assert not experiment_operators.stop(
        store, EXPERIMENT, reason="again", by="oncall", now=deployment.moment
    )
    assert flags.refresh_overrides()
    stopped = [flags.decide(FLAG, u) for u in USERS]
    assert {(d.reason, d.variant) for d in stopped} == {(Reason.EXPERIMENT_EXCLUDED, "claude")}
    assert {d.variant_config["model"] for d in stopped} == {"claude-3.5-sonnet"}
    flags.record_response_quality(EXPERIMENT, USERS[0], 0.9, 1000, 0.01)
    assert flags.health().warnings["not_in_experiment"] == 1  # not recorded while stopped
    held = run_experiment_analyser(store, now=deployment.later)  # analysed, never decided
    entry = (store.read_control(ANALYSER_ID) or {})["experiments"][EXPERIMENT]
    assert entry.pop("started")
    assert entry == {
        "state": "held",
        "epoch": 0,
        "waiting": ["operator"],
    }
    assert held.analyses[EXPERIMENT].key == EXPERIMENT

    resumed_at = deployment.moment + timedelta(seconds=10)
    epoch = experiment_operators.resume(
        store, EXPERIMENT, reason="fixed", by="oncall", now=resumed_at
    )
    assert epoch == 1
    assert flags.refresh_overrides()
    assert decide_all(flags) == variants  # the same users in the same variants
    recorded = record_all(flags, variants, seed=9)
    assert flags.flush()
    flags.close()

    key = f"{EXPERIMENT}~1"
    assert store.read_assignment_counts(EXPERIMENT) == before  # the old epoch's, untouched
    again = store.read_assignment_counts(key)
    assert sum(again.values()) == len(USERS)
    assert per_variant(again) == Counter(variants.values())

    run = run_experiment_analyser(store, now=deployment.later)
    analysis = run.analyses[EXPERIMENT]
    assert analysis.key == key
    # Its days count from the analyser's first look at the new epoch, after the resume.
    assert analysis.since == deployment.later.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert analysis.since >= resumed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert dict(analysis.exposures) == dict(Counter(variants.values()))  # since the resume
    result = quality(analysis)
    assert (result.observations, result.control_observations) == (
        recorded["gemini"],
        recorded["claude"],
    )
    day = deployment.moment.date().isoformat()
    assert (
        counted(store.read_results(key), day)[f"{day}#gemini#response_quality"]
        == (recorded["gemini"])
    )
    entry = (store.read_control(ANALYSER_ID) or {})["experiments"][EXPERIMENT]
    assert (entry["state"], int(entry["epoch"])) == ("running", 1)


# -- 5. the analyser's verdict -------------------------------------------------------------


def test_a_concluded_verdict_serves_the_winner_to_everyone(deployment: Deployment) -> None:
    store = deployment.store
    with deployment.client() as flags:
        variants = decide_all(flags)
        assert set(variants.values()) == {"claude", "gemini"}
        verdict = {
            "state": "concluded",
            "winner": "gemini",
            "epoch": 0,
            "reason": "test",
            "since": format_time(deployment.moment),
        }
        store.write_control(
            ANALYSER_ID, {"experiments": {EXPERIMENT: verdict}, "version": 1}, 0, None
        )
        assert flags.refresh_overrides()
        decided = [flags.decide(FLAG, u) for u in USERS]
        assert {(d.reason, d.variant) for d in decided} == {(Reason.EXPERIMENT_CONCLUDED, "gemini")}
        assert {d.variant_config["model"] for d in decided} == {"gemini-pro"}
        assert flags.get_user_variant(EXPERIMENT, USERS[0]) == "gemini"
        flags.record_response_quality(EXPERIMENT, USERS[0], 0.9, 1000, 0.01)
        assert flags.health().warnings["not_in_experiment"] == 1
        assert flags.flush()

    # Final for its epoch: the analyser's next run keeps it.
    run = run_experiment_analyser(store, now=deployment.later)
    assert not run.written
    kept = (store.read_control(ANALYSER_ID) or {})["experiments"][EXPERIMENT]
    assert (kept["state"], kept["winner"]) == ("concluded", "gemini")

    # An operator's resume voids the verdict: the users are back in their variants, epoch 1.
    assert (
        experiment_operators.resume(
            store, EXPERIMENT, reason="look again", by="oncall", now=deployment.moment
        )
        == 1
    )
    with deployment.client() as flags:
        assert decide_all(flags) == variants
        assert flags.flush()
    assert per_variant(store.read_assignment_counts(f"{EXPERIMENT}~1")) == Counter(
        variants.values()
    )


# -- 6. bootstrap --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["moto_store", "moto_server_store"])
def test_bootstrap_creates_the_assignments_table_with_ttl_and_the_results_table(
    request: pytest.FixtureRequest, which: str
) -> None:
    store: DynamoDBStore = request.getfixturevalue(which)  # bootstrapped by the fixture
    client = store.client
    assignments = store.tables[ASSIGNMENTS_TABLE[0]]
    results = store.tables[AB_RESULTS_TABLE[0]]
    assert (store.assignments_table, store.results_table) == (assignments, results)

    table = client.describe_table(TableName=assignments)["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": "assignment_key", "KeyType": "HASH"},
        {"AttributeName": "user_hash", "KeyType": "RANGE"},
    ]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName=assignments)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "ttl")

    table = client.describe_table(TableName=results)["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": "experiment_id", "KeyType": "HASH"},
        {"AttributeName": "result_key", "KeyType": "RANGE"},
    ]
    assert table["TableStatus"] == "ACTIVE"

    assert store.bootstrap()[-1] == "nothing to change: every table is in place"

    # An assignment row carries the ttl bootstrap turned on.
    row = Assignment(EXPERIMENT, "ab" * 16, "gemini", 9, "2026-01-02T03:04:05Z")
    store.write_assignments([row])
    item = client.get_item(
        TableName=assignments,
        Key={"assignment_key": {"S": f"{EXPERIMENT}#1"}, "user_hash": {"S": "ab" * 16}},
    )["Item"]
    assert int(item["ttl"]["N"]) == int(datetime(2026, 7, 1, 3, 4, 5, tzinfo=UTC).timestamp())
    assert store.read_assignment_counts(EXPERIMENT) == {("gemini", 9): 1}
