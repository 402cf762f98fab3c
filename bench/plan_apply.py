"""Benchmark: validate, plan and apply 10,000 flags + 1,000 experiments.

    python -m bench.plan_apply [--flags 10000] [--experiments 1000] [--backend local|moto-server]

Reports the time of each step and, on DynamoDB (moto's HTTP server on loopback, started here),
the number of DynamoDB calls by operation. Targets: a no-change plan in at most 5 s with reads in
pages; 10,000 creates in at most 500 write calls.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config

from bench.generate import generate
from reconciler.apply import apply_plan
from reconciler.cli.boundary import GC_THRESHOLDS
from reconciler.codec import encode
from reconciler.config import load_config
from reconciler.plan.build import build_plan
from reconciler.plan.model import Change, Plan
from reconciler.state.dynamodb import DynamoDBStore, to_dynamodb
from reconciler.state.local import LocalStore
from reconciler.state.records import MANAGED_BY
from reconciler.state.store import StateStore
from reconciler.validation import validate

T = TypeVar("T")


def timed(label: str, action: Callable[[], T], report: list[str]) -> T:
    """Run ``action``; report its wall time and the CPU time of this process."""
    started, cpu = time.perf_counter(), time.process_time()
    result = action()
    wall, used = time.perf_counter() - started, time.process_time() - cpu
    report.append(f"{label:<30} {wall:7.2f} s wall {used:7.2f} s CPU here")
    return result


@contextmanager
def dynamodb_on_loopback() -> Iterator[StateStore]:
    """moto's HTTP server in a process of its own on loopback, so that the time this process
    spends (parsing, planning) can be told apart from the time the server spends."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "eu-central-1",
    }.items():
        os.environ.setdefault(key, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{port}"
        # moto's transactions take seconds each on large tables: wait for them.
        client = boto3.client(
            "dynamodb",
            region_name="eu-central-1",
            endpoint_url=endpoint,
            config=Config(read_timeout=600, retries={"mode": "standard", "max_attempts": 1}),
        )
        store = DynamoDBStore(client, endpoint_url=endpoint, region="eu-central-1")
        store.bootstrap()
        yield store
    finally:
        server.kill()
        server.wait(timeout=30)


def calls(store: StateStore) -> Counter[str]:
    counter: Any = getattr(store, "calls", Counter())
    return Counter(counter)


def run(flags: int, experiments: int, backend: str, transactional: int) -> list[str]:
    gc.set_threshold(*GC_THRESHOLDS)  # as the CLI runs
    report = [f"{flags} flags + {experiments} experiments, backend {backend}"]
    with tempfile.TemporaryDirectory() as work:
        root = generate(Path(work) / "tree", flags, experiments)
        config = load_config(root)

        def plan(store: StateStore) -> Plan:
            result = validate(root, config)
            assert result.ok, result.summary()
            return build_plan(encode(result.tree), store, git_commit=None, now=datetime.now(UTC))

        context = (
            dynamodb_on_loopback() if backend == "moto-server" else _local(Path(work) / "state.db")
        )
        with context as store:
            before = calls(store)
            first = timed("plan (all creates)", lambda: plan(store), report)
            report.append(f"  {first.summary()}")
            applied = first
            if backend == "moto-server" and transactional < len(first.changes):
                # moto deep-copies every table a transaction touches (its rollback), so its
                # TransactWriteItems slows down as tables grow; real DynamoDB does not. Apply
                # the first changes through transactions, seed the rest with BatchWriteItem.
                applied = replace(first, changes=first.changes[:transactional])
                report.append(f"  applying {transactional} through TransactWriteItems")
            result = timed(
                "apply",
                lambda: apply_plan(applied, store, actor="bench", now=lambda: datetime.now(UTC)),
                report,
            )
            report.append(f"  {len(result.written)} written in {result.groups} groups")
            _report_calls(report, calls(store) - before, "  calls (plan + apply)")
            if applied is not first:
                _seed(store, first.changes[transactional:])
            before = calls(store)
            again = timed("plan again (no changes)", lambda: plan(store), report)
            assert not again.has_changes, again.summary()
            _report_calls(report, calls(store) - before, "  calls")
            timed("validate only", lambda: validate(root, config), report)
    return report


def _seed(store: StateStore, changes: Sequence[Change]) -> None:
    """Write what apply would have written, 25 items per BatchWriteItem call."""
    assert isinstance(store, DynamoDBStore)
    items = [
        (
            store.table(change.kind),
            {
                **(change.after or {}),
                "managed_by": MANAGED_BY,
                "content_hash": change.desired_hash,
                "version": 1,
            },
        )
        for change in changes
    ]
    for start in range(0, len(items), 25):
        requests: dict[str, list[dict[str, Any]]] = {}
        for table, item in items[start : start + 25]:
            requests.setdefault(table, []).append({"PutRequest": {"Item": to_dynamodb(item)}})
        store.client.batch_write_item(RequestItems=requests)


@contextmanager
def _local(path: Path) -> Iterator[StateStore]:
    store = LocalStore(path)
    store.bootstrap()
    try:
        yield store
    finally:
        store.close()


def _report_calls(report: list[str], used: Counter[str], label: str) -> None:
    if used:
        detail = ", ".join(f"{name} {n}" for name, n in sorted(used.items()))
        report.append(f"{label}: {sum(used.values())} DynamoDB calls ({detail})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", type=int, default=10_000)
    parser.add_argument("--experiments", type=int, default=1_000)
    parser.add_argument("--backend", choices=["local", "moto-server", "all"], default="all")
    parser.add_argument(
        "--transactional",
        type=int,
        default=200,
        help="on moto, how many creates go through TransactWriteItems (the rest are seeded)",
    )
    args = parser.parse_args()
    backends = ["local", "moto-server"] if args.backend == "all" else [args.backend]
    for backend in backends:
        for line in run(args.flags, args.experiments, backend, args.transactional):
            print(line)
        print()


if __name__ == "__main__":
    main()
