"""Benchmark: the request-path cost of recording and admission, and store writes per item.

``python -m bench.recording`` applies the repository's manifests to a local store in a temporary
directory and times, one call at a time on one core:

- ``record_request_cost`` and ``record_ai_success`` into the in-process aggregates, the latter
  for a request type no rollout watches and for one a gated rollout watches (``vc_analysis``:
  ``vc_bedrock_live``'s, held by the rollout controller at 30%), which also decides the user's
  cohort and records the outcome in the rollout's series;
- ``should_allow_request`` within budget, and while throttled (a bucket hash more);
- the floor: one dict increment under a lock, the least any in-process aggregation does.

Then it loads the store from four threads for a few seconds with a short flush interval and
counts the writes each shard item receives per second, against the records per second served.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.timing import measure
from reconciler.apply import apply_plan
from reconciler.codec import encode
from reconciler.config import load_config
from reconciler.controllers.run import run_cost_guard
from reconciler.plan.build import build_plan
from reconciler.runtime.client import FlagClient
from reconciler.runtime.rollout_state import CONTROLLER_ID, RAMPING, Entry
from reconciler.runtime.sources import SQLiteSource
from reconciler.runtime.telemetry import Shard
from reconciler.state.local import LocalStore
from reconciler.validation import validate

REPO = Path(__file__).resolve().parent.parent
WATCHED = "vc_analysis"  # vc_bedrock_live's request type: its gated rollout watches it
UNWATCHED = "vc_summary"  # a request type of a flag without a rollout strategy
SUMMARY_FLAG = f"""\
kind: Flag
flag_name: vc_summary_live
description: Benchmark flag with no rollout strategy.
owner: team-bench
enabled: true
type: boolean
value: true
request_type: {UNWATCHED}
"""


def applied_store(work: Path) -> Path:
    root = work / "tree"
    for folder in ("flags.d", "experiments.d", "rollouts.d", "costs.d"):
        shutil.copytree(REPO / folder, root / folder)
    (root / "flags.d" / "vc_summary_live.yaml").write_text(SUMMARY_FLAG)
    result = validate(root, load_config(root))
    path = work / "state.db"
    store = LocalStore(path)
    now = datetime.now(UTC)
    plan = build_plan(encode(result.tree), store, git_commit=None, now=now)
    apply_plan(plan, store, actor="bench", now=lambda: datetime.now(UTC))
    # The rollout controller holds bedrock_gradual_rollout at 30%, as after two healthy steps.
    held = Entry(RAMPING, 30.0, now, step=2).to_item()
    record = {"strategies": {"bedrock_gradual_rollout": held}, "version": 1}
    store.write_control(CONTROLLER_ID, record, 0, None)
    store.close()
    return path


class CountingSink:
    """The real local store's shard writer, counting the writes of each shard item."""

    def __init__(self, path: Path) -> None:
        self.inner = SQLiteSource(path)
        self.writes: Counter[tuple[str, str]] = Counter()

    def write_shards(self, shards: Sequence[Shard]) -> None:
        self.inner.write_shards(shards)
        for shard in shards:
            self.writes[(shard.bucket, shard.writer)] += 1


def request_path(path: Path, calls: int) -> dict[str, dict[str, float]]:
    # In vc_bedrock_live's supported markets, so the rollout's 30% decides each user's cohort.
    contexts = [
        {"user_id": f"user-{i}", "request_type": WATCHED, "country": "DE", "plan": "pro"}
        for i in range(calls)
    ]
    unwatched = [{**c, "request_type": UNWATCHED} for c in contexts]
    flags = FlagClient(SQLiteSource(path), background=False, telemetry=None)
    assert flags.snapshot is not None
    assert not flags.snapshot.watched.get(UNWATCHED)
    assert flags.snapshot.watched.get(WATCHED) == ("vc_bedrock_live",)
    lock, counts = threading.Lock(), Counter[str]()

    def floor(_: dict[str, Any]) -> None:
        with lock:
            counts["vc_analysis"] += 80_000

    results = {
        "floor: dict increment under a lock": measure(floor, contexts),
        "record_request_cost": measure(
            lambda c: flags.record_request_cost("vc_analysis", 1500, 0.08, c), contexts
        ),
        "record_ai_success": measure(
            lambda c: flags.record_ai_success(c, 840.0, 0.08, 0.9, 1500), unwatched
        ),
        "record_ai_success, watched by a gated rollout": measure(
            lambda c: flags.record_ai_success(c, 840.0, 0.08, 0.9, 1500), contexts
        ),
        "should_allow_request, within budget": measure(
            lambda c: flags.should_allow_request("vc_analysis", 0.05, c), contexts
        ),
    }
    cohorts = Counter(flags.decide("vc_bedrock_live", c).enabled for c in contexts[:10_000])
    assert 0.25 < cohorts[True] / sum(cohorts.values()) < 0.35, cohorts  # the controller's 30%
    flags.close()  # nothing of the above is flushed: its spend would shut everything down
    store = LocalStore(path)
    flags = FlagClient(SQLiteSource(path), background=False)
    flags.record_request_cost("vc_analysis", 0, 150.0, {"user_id": "x"})  # past $100
    assert flags.flush()
    run_cost_guard(store, now=datetime.now(UTC))
    store.close()
    flags.refresh_overrides()
    assert not all(
        flags.should_allow_request("vc_analysis", 0.05, c).allowed for c in contexts[:50]
    )
    results["should_allow_request, throttled"] = measure(
        lambda c: flags.should_allow_request("vc_analysis", 0.05, c), contexts
    )
    flags.close()
    return results


def under_load(path: Path, seconds: float, interval: float) -> tuple[float, float, int]:
    """Records per second served by four threads, and the most writes any shard item got per
    second, at a flush interval of ``interval`` seconds."""
    sink = CountingSink(path)
    flags = FlagClient(SQLiteSource(path), background=True, telemetry=sink, flush_interval=interval)
    stop = threading.Event()
    served = Counter[int]()

    def work(number: int) -> None:
        context = {"user_id": f"user-{number}"}
        while not stop.is_set():
            for _ in range(1000):
                flags.record_request_cost("vc_analysis", 1500, 0.08, context)
            served[number] += 1000

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flags.close()
    busiest = max(sink.writes.values())
    return sum(served.values()) / elapsed, busiest / elapsed, flags.health().recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        path = applied_store(Path(work))
        results = request_path(path, args.calls)
        print(f"| call ({args.calls:,} calls) | p50 | p99 | p99.9 | calls/s |")
        print("| --- | --- | --- | --- | --- |")
        for name, figures in results.items():
            print(
                f"| {name} | {figures['p50']:.2f} µs | {figures['p99']:.2f} µs | "
                f"{figures['p99.9']:.1f} µs | {figures['per_second']:,.0f} |"
            )
        rate, per_item, recorded = under_load(path, args.seconds, args.flush_interval)
        print()
        print(
            f"Under load ({args.seconds:g} s, 4 threads, flush every {args.flush_interval:g} s): "
            f"{rate:,.0f} records/s served, {recorded:,} recorded; the busiest shard item took "
            f"{per_item:.2f} writes/s."
        )


if __name__ == "__main__":
    main()
