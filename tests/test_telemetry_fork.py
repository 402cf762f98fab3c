"""A client made before a fork (gunicorn --preload, multiprocessing's fork start): each child
is a writer of its own, with its own threads, and the guard counts every child's spend."""

from __future__ import annotations

import multiprocessing
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.runtime.client import FlagClient
from reconciler.runtime.sources import SQLiteSource
from reconciler.runtime.telemetry import cost_bucket, experiment_bucket, merge_shards
from reconciler.state.local import LocalStore
from tests.test_cli import invoke


def _child(flags: FlagClient) -> None:
    for _ in range(1000):
        flags.record_request_cost("vc_analysis", 10, 0.1, {"user_id": "u"})
    flags.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_children_of_a_fork_are_writers_of_their_own(
    example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = example_tree / "state.db"
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
    assert invoke("--apply", str(example_tree), "--yes")[0] == 0
    flags = FlagClient(SQLiteSource(path), flush_interval=0.05)
    flags.record_request_cost("vc_analysis", 10, 1.0, {"user_id": "parent"})  # the parent's
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_child, args=(flags,)) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    flags.close()
    store = LocalStore(path)
    shards = store.read_shards(cost_bucket(datetime.now(UTC).date().isoformat()))
    assert len({s.writer for s in shards}) == 5
    totals = merge_shards(shards)["cost:vc_analysis"]
    assert (totals.count, totals.sum) == (4 * 1000 + 1, 4 * 1000 * 100_000 + 1_000_000)
    store.close()


def _deciding_child(flags: FlagClient, first: int) -> None:
    for n in range(first, first + 100):
        flags.decide("ai_model_selection", _user(n))
    flags.close()


def _user(n: int) -> dict[str, str]:
    return {"user_id": f"user-{n}", "request_type": "vc_analysis", "country": "DE", "plan": "pro"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_exposures_queued_before_a_fork_are_the_parents_alone(
    example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent's exposures, queued and not counted yet when it forks, are counted once (by
    the parent); each child counts its own."""
    path = example_tree / "state.db"
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
    assert invoke("--apply", str(example_tree), "--yes")[0] == 0
    flags = FlagClient(SQLiteSource(path), flush_interval=3600)
    assert flags.wait_until_ready()
    for n in range(50):
        flags.decide("ai_model_selection", _user(n))
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_deciding_child, args=(flags, 1000 * (k + 1))) for k in range(4)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    flags.close()
    store = LocalStore(path)
    shards = store.read_shards(
        experiment_bucket("claude_vs_gemini", datetime.now(UTC).date().isoformat())
    )
    assert len({s.writer for s in shards}) == 5
    exposures = sum(t.count for n, t in merge_shards(shards).items() if n.startswith("exposures:"))
    assert exposures == 50 + 4 * 100
    assert sum(store.read_assignment_counts("claude_vs_gemini").values()) == 50 + 4 * 100
    store.close()
