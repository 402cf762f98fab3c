"""Benchmark: one decision, in-process, against GrowthBook's Python SDK evaluating locally.

    python -m bench.decisions [--decisions 200000]

Cases: the floor (one hash and a compare: what a percentage decision costs at least, against
which the others are ratios); (a) a plain flag; (b) country targeting and a 30% rollout; (c)
targeting, rollout, a 50/50 experiment, a cost throttle and the override checks; (d) targeting
and a gated rollout strategy the rollout controller holds at 30%; (e) targeting and an ungated
strategy whose schedule is at 30%; and a plain 50/50 split. Reports latency percentiles per
decision and decisions per second, GrowthBook's figures for (b) and the split measured in the
same run, and the load time and memory of a 10,000-flag snapshot read from the local store."""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from growthbook import GrowthBook

from bench.generate import generate
from bench.timing import measure
from reconciler.apply import apply_plan
from reconciler.codec import encode
from reconciler.config import load_config
from reconciler.plan.build import build_plan
from reconciler.runtime.bucketing import bucket
from reconciler.runtime.client import FlagClient
from reconciler.runtime.cost_state import CostState, FlagCost
from reconciler.runtime.recorder import Recorder
from reconciler.runtime.rollout_state import RAMPING, Entry, RolloutStates, stamp
from reconciler.runtime.snapshot import Shutdown, build_snapshot, with_rollout_states
from reconciler.runtime.sources import SQLiteSource
from reconciler.runtime.telemetry import Shard
from reconciler.state.local import LocalStore
from reconciler.validation import validate

MARKETS = ["DE", "FR", "GB", "NO", "SE", "US"]
RULE = {
    "name": "markets",
    "action": "include",
    "when": {"attribute": "country", "operator": "in", "values": MARKETS},
}


def flag(name: str, **extra: Any) -> dict[str, Any]:
    return {"flag_name": name, "enabled": True, "flag_type": "boolean", "value": True, **extra}


def strategy(name: str, start: datetime, *, percentage: float, gated: bool) -> dict[str, Any]:
    """A flag item's ``rollout``, as the codec writes it: from ``percentage`` by 10 points a
    day, from ``start``."""
    return {
        "strategy_name": name,
        "rollout_type": "percentage",
        "configuration": {
            "percentage": percentage,
            "increment_percentage": 10,
            "increment_interval_hours": 24,
            "max_percentage": 100,
            "start_time": stamp(start),
        },
        "gated": gated,
    }


STARTED = datetime.now(UTC) - timedelta(hours=1)  # the schedules' first step lasts a day more
GATED = "gated_ramp"  # (d): the controller's entry says 30%, whatever the schedule says
CONTROLLER = RolloutStates(entries={GATED: Entry(RAMPING, 30.0, STARTED, step=2)})
FLAGS = [
    flag("plain"),
    flag("targeted", rollout_percentage=30, targeting={"rules": [RULE]}),
    flag(
        "full",
        rollout_percentage=30,
        targeting={"rules": [RULE]},
        ab_test_config={
            "test_name": "full_test",
            "status": "active",
            "variants": [
                {"name": "control", "weight": 50, "config": {"model": "claude"}},
                {"name": "treatment", "weight": 50, "config": {"model": "gemini"}},
            ],
        },
    ),
    flag(
        "gated",
        request_type="bench_requests",
        targeting={"rules": [RULE]},
        rollout=strategy(GATED, STARTED - timedelta(days=2), percentage=10, gated=True),
    ),
    flag(
        "scheduled",
        targeting={"rules": [RULE]},
        rollout=strategy("ungated_ramp", STARTED, percentage=30, gated=False),
    ),
    flag(
        "split",
        ab_test_config={
            "test_name": "split_test",
            "status": "active",
            "variants": [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}],
        },
    ),
]
THRESHOLDS = [
    {
        "threshold_name": "budget",
        "applies_to": "all",
        "throttle": {"amount_usd": 100, "rollout_factor": 0.5},
        "emergency": {"amount_usd": 500},
    }
]
GROWTHBOOK_FEATURES = {
    "targeted": {
        "defaultValue": False,
        "rules": [
            {
                "condition": {"country": {"$in": MARKETS}},
                "force": True,
                "coverage": 0.3,
                "hashAttribute": "id",
            }
        ],
    },
    "split": {
        "defaultValue": "a",
        "rules": [{"key": "split_test", "variations": ["a", "b"], "weights": [0.5, 0.5]}],
    },
}


class Discard:
    """A telemetry sink that keeps nothing."""

    def write_shards(self, shards: Sequence[Shard]) -> None:
        pass


def contexts(count: int) -> list[dict[str, Any]]:
    return [
        {"user_id": f"user-{i}", "country": MARKETS[i % 8] if i % 8 < 6 else "BR", "plan": "pro"}
        for i in range(count)
    ]


def growthbook_decider(feature: str) -> Callable[[dict[str, Any]], Any]:
    book = GrowthBook(features=GROWTHBOOK_FEATURES)

    def decide(context: dict[str, Any]) -> Any:
        book.set_attributes({"id": context["user_id"], "country": context["country"]})
        return book.eval_feature(feature).value

    return decide


def snapshot_load(flags: int) -> tuple[float, float]:
    """Seconds and MB to load a snapshot of ``flags`` flags from the local store."""
    with tempfile.TemporaryDirectory() as work:
        root = generate(Path(work) / "tree", flags, 0)
        result = validate(root, load_config(root))
        store = LocalStore(Path(work) / "state.db")
        plan = build_plan(encode(result.tree), store, git_commit=None, now=datetime.now(UTC))
        apply_plan(plan, store, actor="bench", now=lambda: datetime.now(UTC))
        store.close()
        source = SQLiteSource(Path(work) / "state.db")
        gc.collect()
        started = time.perf_counter()
        client = FlagClient(source, background=False)
        seconds = time.perf_counter() - started  # timed without tracemalloc, which slows it
        assert client.snapshot is not None
        assert len(client.snapshot.flags) == flags
        del client
        gc.collect()
        tracemalloc.start()
        loaded = FlagClient(source, background=False)
        held = tracemalloc.get_traced_memory()[0]  # what the loaded snapshot keeps
        tracemalloc.stop()
        assert loaded.snapshot is not None
        return seconds, held / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--flags", type=int, default=10_000)
    args = parser.parse_args()
    users = contexts(args.decisions)
    throttled = FlagCost("full", "throttled", "bench_budget", 0.5, "", "", "")
    snapshot = build_snapshot(
        "bench", FLAGS, THRESHOLDS, cost_state=CostState(1, flags={"full": throttled})
    )
    snapshot = snapshot.__class__(
        **{**snapshot.__dict__, "flag_shutdowns": {"other_flag": Shutdown("oncall", "drill")}}
    )
    snapshot = with_rollout_states(snapshot, CONTROLLER)  # as a refresh of the overrides does
    client = FlagClient.__new__(FlagClient)  # a client over a fixed snapshot: no source needed
    client._snapshot = snapshot
    client.clock = lambda: datetime.now(UTC)  # what a service pays for the time, each decision
    # Exposures of experiment decisions are queued and counted in process, as in a service. With
    # no background thread here, the decisions that find the queue full (100,000) count it, one
    # chunk (2,000) each: the figures include the counting. The sink takes nothing (a recorder
    # with no sink at all would not queue exposures): the flush (the ids hashed, the writes) is
    # not on the request path.
    client.recorder = Recorder(Discard(), background=False)
    results = {
        # The floor: what any decision of a percentage costs at least, one hash and a compare.
        "floor: hash and compare": measure(
            lambda c: bucket("targeted", c["user_id"]) * 100 < 30, users
        ),
        "(a) plain flag": measure(lambda c: client.decide("plain", c), users),
        "(b) targeting + 30% rollout": measure(lambda c: client.decide("targeted", c), users),
        "(c) + 50/50 experiment + cost + overrides": measure(
            lambda c: client.decide("full", c), users
        ),
        "(d) targeting + gated rollout (controller)": measure(
            lambda c: client.decide("gated", c), users
        ),
        "(e) targeting + ungated rollout schedule": measure(
            lambda c: client.decide("scheduled", c), users
        ),
        "50/50 split": measure(lambda c: client.decide("split", c), users),
        "GrowthBook (b)": measure(growthbook_decider("targeted"), users),
        "GrowthBook 50/50 split": measure(growthbook_decider("split"), users),
    }
    print(f"{args.decisions:,} decisions per case, one core")
    print(f"{'case':<44}{'p50 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}{'decisions/s':>14}")
    print(f"{'(latency less the timer; throughput from a tight loop)':<44}")
    for case, figures in results.items():
        print(
            f"{case:<44}{figures['p50']:>9.2f}{figures['p99']:>9.2f}{figures['p99.9']:>10.2f}"
            f"{figures['per_second']:>14,.0f}"
        )
    floor = results["floor: hash and compare"]["mean"]
    for case, target in (
        ("(b) targeting + 30% rollout", 2.0),
        ("50/50 split", 3.0),
        ("(c) + 50/50 experiment + cost + overrides", 3.0),
    ):
        ratio = results[case]["mean"] / floor
        print(f"{case}: {ratio:.1f}x the floor (target: at most {target:.0f}x)")
    for ours, theirs in (
        ("(b) targeting + 30% rollout", "GrowthBook (b)"),
        ("50/50 split", "GrowthBook 50/50 split"),
    ):
        ratio = results[theirs]["mean"] / results[ours]["mean"]
        print(f"{ours}: {ratio:.1f}x the decisions per second of GrowthBook")
    seconds, megabytes = snapshot_load(args.flags)
    where = f"snapshot of {args.flags:,} flags from the local store"
    print(f"{where}: {seconds:.2f} s, {megabytes:.1f} MB")


if __name__ == "__main__":
    main()
