"""Telemetry records: mergeable sums, written as per-process shards that a retry cannot double.

Each process (a *writer*) keeps, per time bucket, the running totals of every series it
recorded, and writes them whole, as absolute values, in one shard item per bucket with a
sequence number that only grows. Writing absolute totals makes a retried or repeated write a
no-op (unlike DynamoDB's ADD); the sequence condition keeps a late, older write from replacing a
newer one. A writer's shard is written at most once per flush, so no item is hot however many
requests the process serves, and a crash loses only what was recorded since the last flush.

Buckets: ``cost/2026-12-01@UTC`` is a day of spend in a time zone (one per zone a budget uses);
``ops/2026-12-01T09:05Z`` is five minutes of outcomes (errors, response times, quality);
``ab/claude_vs_gemini/2026-12-01`` is a UTC day of an experiment.

Series: ``cost:<request_type>`` (count = requests, sum = micro-dollars),
``tokens:<request_type>``, ``outcome:<request_type>`` (count = outcomes, sum = failures),
``latency:<request_type>`` (milliseconds) and ``quality:<request_type>``; in an experiment's
bucket ``exposures:<variant>`` (count = decisions that assigned the variant),
``metric:<variant>:<metric>`` (the metric's values) and ``cluster:<variant>:<metric>:<n>`` (the
values of the users of cluster n; see ``reconciler.runtime.experiment_state.unit_hash``); in
an ops bucket, for each flag a gated rollout watches and each cohort (``in``: the users the flag
was on for, ``out``: the others), ``rollout:<flag>:<cohort>`` (count = outcomes, sum =
failures), ``rollout_latency:<flag>:<cohort>:<bin>`` (the response times in one bin of
``reconciler.controllers.rollout_checks.latency_bin``), ``rollout_cost:<flag>:<cohort>``
(count = costed requests, sum = micro-dollars) and ``rollout_quality:<flag>:<cohort>``.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from reconciler.runtime.budgets import UTC_ZONE

TINY = 1e-120  # stored as 0: below what DynamoDB's numbers hold (1e-130), and below any measure
SHARD_SPREAD = 8  # shards of one bucket spread over this many partition keys
SHARD_TTL = timedelta(days=45)  # DynamoDB removes raw shards after this; rollups stay
ASSIGNMENT_TTL = timedelta(days=180)  # and assignments this long after a process first saw them
OPS_MINUTES = 5
COST = "cost"
TOKENS = "tokens"
OUTCOME = "outcome"
LATENCY = "latency"
QUALITY = "quality"
EXPERIMENT = "ab"
ROLLOUT = "rollout"
ROLLOUT_LATENCY = "rollout_latency"
ROLLOUT_COST = "rollout_cost"
ROLLOUT_QUALITY = "rollout_quality"
IN, OUT = "in", "out"  # a rollout's cohorts: the users with the feature, and the others
LATENCY_BINS = 80  # response-time bins: upper edges 1 ms * 2**(k/4), k = 0 .. 79
EXPOSURES = "exposures"
METRIC = "metric"
CLUSTER = "cluster"


class Totals:
    """count, sum, sum of squares, minimum and maximum of one series: mergeable by addition."""

    __slots__ = ("count", "hi", "lo", "sq", "sum")

    def __init__(
        self,
        count: int = 0,
        total: int | float = 0,
        sq: float = 0.0,
        lo: float | None = None,
        hi: float | None = None,
    ) -> None:
        self.count = count
        self.sum = total
        self.sq = sq
        self.lo = lo
        self.hi = hi

    def add(self, value: int | float) -> None:
        self.count += 1
        self.sum += value
        self.sq += value * value
        if self.lo is None or value < self.lo:
            self.lo = value
        if self.hi is None or value > self.hi:
            self.hi = value

    def add_repeated(self, value: int, times: int) -> None:
        """``add(value)`` ``times`` times over, at once (exact: ``value`` is an integer)."""
        if times <= 0:
            return
        self.count += times
        self.sum += value * times
        self.sq += value * value * times
        if self.lo is None or value < self.lo:
            self.lo = value
        if self.hi is None or value > self.hi:
            self.hi = value

    def merge(self, other: Totals) -> None:
        self.count += other.count
        self.sum += other.sum
        self.sq += other.sq
        for low in (other.lo,):
            if low is not None and (self.lo is None or low < self.lo):
                self.lo = low
        for high in (other.hi,):
            if high is not None and (self.hi is None or high > self.hi):
                self.hi = high

    def copy(self) -> Totals:
        return Totals(self.count, self.sum, self.sq, self.lo, self.hi)

    def to_list(self) -> list[Any]:
        return [self.count, self.sum, self.sq, self.lo, self.hi]

    @classmethod
    def from_list(cls, values: Any) -> Totals:
        count, total, sq, lo, hi = [*list(values), 0, 0, 0.0, None, None][:5]
        return cls(int(count), total, float(sq), lo, hi)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Totals) and self.to_list() == other.to_list()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Totals({self.count}, {self.sum}, {self.sq}, {self.lo}, {self.hi})"


def cost_bucket(day: str, time_zone: str = UTC_ZONE) -> str:
    return f"{COST}/{day}@{time_zone}"


def ops_bucket(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    start = moment.replace(minute=moment.minute - moment.minute % OPS_MINUTES, second=0)
    return "ops/" + start.strftime("%Y-%m-%dT%H:%MZ")


def latency_bin(milliseconds: float) -> int:
    """The bin of a response time: the smallest k with ms <= 2**(k/4) (clamped)."""
    if milliseconds <= 1:
        return 0
    return min(LATENCY_BINS - 1, math.ceil(4 * math.log2(milliseconds)))


def rollout_series(flag: str, cohort: str) -> tuple[str, str, str, str]:
    """The names of a rollout cohort's outcome, latency (a prefix: ``<name>:<bin>``), cost and
    quality series."""
    return (
        f"{ROLLOUT}:{flag}:{cohort}",
        f"{ROLLOUT_LATENCY}:{flag}:{cohort}",
        f"{ROLLOUT_COST}:{flag}:{cohort}",
        f"{ROLLOUT_QUALITY}:{flag}:{cohort}",
    )


def experiment_bucket(key: str, day: str) -> str:
    """The bucket of one UTC day of an experiment (``key``: its recording key)."""
    return f"{EXPERIMENT}/{key}/{day}"


def series_name(kind: str, request_type: str) -> str:
    return f"{kind}:{request_type}"


def split_series(name: str) -> tuple[str, str]:
    kind, _, request_type = name.partition(":")
    return kind, request_type


def new_writer_id() -> str:
    """A writer id unique to this process's life: a restart is a new writer."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:10]}"


def spread_of(writer: str) -> int:
    return hashlib.sha256(writer.encode()).digest()[0] % SHARD_SPREAD


def partition_keys(bucket: str) -> list[str]:
    """Every partition key a bucket's shards may sit under."""
    return [f"{bucket}#{n}" for n in range(SHARD_SPREAD)]


@dataclass(frozen=True)
class Shard:
    """One writer's absolute totals for one bucket, as of its flush number ``seq``."""

    bucket: str
    writer: str
    seq: int
    series: Mapping[str, Totals]
    updated_at: str

    def to_item(self) -> dict[str, Any]:
        expires = _bucket_day(self.bucket) + SHARD_TTL
        return {
            "shard_key": f"{self.bucket}#{spread_of(self.writer)}",
            "writer": self.writer,
            "bucket": self.bucket,
            "seq": self.seq,
            "series": {name: totals.to_list() for name, totals in sorted(self.series.items())},
            "updated_at": self.updated_at,
            "ttl": int(expires.timestamp()),
        }

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Shard:
        series = {str(k): Totals.from_list(v) for k, v in (item.get("series") or {}).items()}
        return cls(
            str(item["bucket"]),
            str(item["writer"]),
            int(item["seq"]),
            series,
            str(item.get("updated_at", "")),
        )


@dataclass(frozen=True)
class Assignment:
    """A user's variant in an experiment, as the assignments table keeps it: the user's id
    hashed (``experiment_state.unit_hash``), never the id itself."""

    experiment: str  # the recording key
    user_hash: str
    variant: str
    cluster: int
    seen_at: str

    def to_item(self) -> dict[str, Any]:
        seen = datetime.fromisoformat(self.seen_at.replace("Z", "+00:00"))
        return {
            "assignment_key": f"{self.experiment}#{self.cluster % SHARD_SPREAD}",
            "user_hash": self.user_hash,
            "experiment_id": self.experiment,
            "variant": self.variant,
            "cluster": self.cluster,
            "seen_at": self.seen_at,
            "ttl": int((seen + ASSIGNMENT_TTL).timestamp()),
        }


def _bucket_day(bucket: str) -> datetime:
    day = bucket.rsplit("/", 1)[-1][:10]
    try:
        return datetime.fromisoformat(day).replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC)


def merge_shards(shards: Iterable[Shard]) -> dict[str, Totals]:
    """The sum over writers of every series in these shards (of one bucket)."""
    merged: dict[str, Totals] = {}
    for shard in shards:
        for name, totals in shard.series.items():
            merged.setdefault(name, Totals()).merge(totals)
    return merged


def dynamodb_value(value: Any) -> dict[str, Any]:
    """A plain value as DynamoDB's JSON (numbers in their exact decimal text)."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if value is None:
        return {"NULL": True}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be stored")
        if abs(value) < TINY:
            value = 0.0  # DynamoDB refuses numbers smaller than 1e-130 in magnitude
        return {"N": repr(value)}
    if isinstance(value, Decimal):
        return {"N": format(value, "f")}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, Mapping):
        return {"M": {str(k): dynamodb_value(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [dynamodb_value(v) for v in value]}
    raise TypeError(f"cannot store a {type(value).__name__}")


def dynamodb_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: dynamodb_value(value) for key, value in item.items()}
