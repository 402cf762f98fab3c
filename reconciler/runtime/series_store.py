"""The recorder's running totals in memory: by bucket (a day of cost per time zone, five minutes
of outcomes, a day of an experiment), each bucket's series bounded, and let go once written
and over. The methods whose docstrings say so run under the recorder's lock (``lock``)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from reconciler.runtime.budgets import UTC_ZONE, period_at
from reconciler.runtime.health import Health
from reconciler.runtime.telemetry import (
    EXPOSURES,
    Shard,
    Totals,
    cost_bucket,
    experiment_bucket,
    ops_bucket,
)

EXPERIMENT_PREFIX = "ab/"
MAX_BUCKET_SERIES = 3_000  # per experiment and day: ~200 KB a shard, half DynamoDB's limit
DAY = 86_400


class SeriesStore:
    """Totals by bucket and series name, and the buckets records go to now."""

    def __init__(
        self, lock: threading.Lock, health: Health, max_series: int, max_experiment_series: int
    ) -> None:
        self.lock = lock
        self.health = health
        self.max_series = max_series
        self.max_experiment_series = max_experiment_series
        self.buckets: dict[str, dict[str, Totals]] = {}
        self.series_count = 0  # of cost and outcomes
        self.ab_series = 0  # of experiments
        self.bucket_cost: dict[str, int] = {}
        self.ends: dict[str, float] = {}  # bucket -> the epoch second its time is over
        self.released: dict[str, float] = {}  # experiment buckets written and let go (a day)
        self.dirty: set[str] = set()
        self.changes: dict[str, Totals] = {}  # since the last flush, for the metrics sink
        self.zones: tuple[str, ...] = (UTC_ZONE,)
        self.cost_buckets: tuple[str, ...] = ()
        self.ops_bucket = ""
        self.next_cost_roll = self.next_ops_roll = self.next_ab_roll = 0.0
        self.ab_day = ""
        self.ab_ends = 0.0
        self.exposure_names: dict[tuple[str, str], tuple[str, str]] = {}  # today's

    # -- the buckets of now -------------------------------------------------------------------

    def set_zones(self, zones: Iterable[str]) -> None:
        """The time zones budgets count days in (UTC always)."""
        wanted = tuple(dict.fromkeys([UTC_ZONE, *sorted(set(zones) - {UTC_ZONE})]))
        if wanted != self.zones:
            self.zones = wanted
            self.next_cost_roll = 0.0

    def roll_cost(self, now: float) -> None:
        moment = datetime.fromtimestamp(now, UTC)
        periods = [period_at("daily", z, moment) for z in self.zones]
        buckets = tuple(cost_bucket(p.today, p.time_zone) for p in periods)
        with self.lock:
            for bucket, period in zip(buckets, periods, strict=True):
                self.ends[bucket] = period.end.timestamp()
            self.cost_buckets = buckets
        self.next_cost_roll = min(p.end.timestamp() for p in periods)

    def roll_ops(self, now: float) -> None:
        moment = datetime.fromtimestamp(now, UTC)
        bucket, ends = ops_bucket(moment), (now // 300 + 1) * 300
        with self.lock:
            self.ends[bucket] = ends
            self.ops_bucket = bucket
        self.next_ops_roll = ends

    def roll_ab(self, now: float) -> None:
        with self.lock:
            self.set_ab_day(now)

    def set_ab_day(self, now: float) -> None:
        """The UTC day experiments are recorded in (under the lock)."""
        ends = (now // DAY + 1) * DAY
        self.ab_day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        self.ab_ends = ends
        self.exposure_names = {}
        self.next_ab_roll = ends

    # -- adding (under the lock) --------------------------------------------------------------

    def room(self, buckets: Iterable[str], names: Sequence[str]) -> bool:
        """Whether the series a record needs exist or fit under ``max_series``: a record goes
        in whole or not at all (counted as ``too_many_series``)."""
        missing = 0
        for bucket in buckets:
            series = self.buckets.get(bucket) or {}
            missing += sum(1 for name in names if name not in series)
        if missing and self.series_count + missing > self.max_series:
            self.health.reject("too_many_series")
            return False
        return True

    def room_ab(self, bucket: str, names: Sequence[str]) -> bool:
        """Room for an experiment's series: a budget of their own (``max_experiment_series``
        in all, ``MAX_BUCKET_SERIES`` per experiment and day, so a shard stays well under
        DynamoDB's item size), never taken from cost and outcomes."""
        series = self.buckets.get(bucket) or {}
        missing = sum(1 for name in names if name not in series)
        if not missing:
            return True
        if (
            self.ab_series + missing > self.max_experiment_series
            or len(series) + missing > MAX_BUCKET_SERIES
        ):
            self.health.reject("too_many_experiment_series")
            return False
        self.ab_series += missing
        return True

    def add(self, bucket: str, name: str, value: int | float) -> None:
        series = self.buckets.get(bucket)
        if series is None:
            series = self.buckets[bucket] = {}
        totals = series.get(name)
        if totals is None:
            totals = series[name] = Totals()
            if not bucket.startswith(EXPERIMENT_PREFIX):  # those count in ab_series
                self.series_count += 1
        totals.add(value)
        self.dirty.add(bucket)

    def change(self, name: str, value: int | float) -> None:
        totals = self.changes.get(name)
        if totals is None:
            totals = self.changes[name] = Totals()
        totals.add(value)

    def add_exposures(
        self, key: str, variants: Mapping[str, int], day: str, ends: float
    ) -> set[str]:
        """Add an experiment's exposures (per variant, how many) to its bucket of ``day``;
        the variants refused for want of room for their series (counted as
        ``too_many_experiment_series``, each exposure)."""
        refused = set()
        cached = self.exposure_names if day == self.ab_day else {}
        counted = 0
        for variant, times in variants.items():
            names = cached.get((key, variant))
            if names is None:
                names = (experiment_bucket(key, day), f"{EXPOSURES}:{variant}")
                cached[(key, variant)] = names
            bucket, name = names
            series = self.buckets.get(bucket)
            totals = series.get(name) if series is not None else None
            if totals is None:
                if not self.room_ab(bucket, (name,)):  # counts the first refusal
                    self.health.reject("too_many_experiment_series", times - 1)
                    refused.add(variant)
                    continue
                self.ends.setdefault(bucket, ends)
                totals = self.buckets.setdefault(bucket, {})[name] = Totals()
            totals.add_repeated(1, times)
            self.dirty.add(bucket)
            counted += times
        self.health.recorded += counted
        self.health.unflushed += counted
        return refused

    # -- flushing (under the lock) ------------------------------------------------------------

    def take_dirty(self, writer: str, seq: int, stamp: str) -> tuple[list[str], list[Shard]]:
        """The buckets changed since the last flush, spend first (a shard the store refuses
        must not hold back the cost guard's input), and their shards: copies."""
        dirty = sorted(self.dirty, key=lambda b: (b.startswith(EXPERIMENT_PREFIX), b))
        shards = [Shard(b, writer, seq, _copy(self.buckets[b]), stamp) for b in dirty]
        self.dirty.clear()
        return dirty, shards

    def release(self, now: float) -> None:
        """Forget the buckets whose time is over once they are written. A bucket is kept to
        its end even when nothing records into it any more (a budget's zone left the
        configuration): should it come back, its totals go on from where they were, never
        from nothing (which, written as absolute totals, would undercount). The buckets being
        recorded into are never released: a record that read the clock a moment before a
        bucket's end still lands in it."""
        current = {*self.cost_buckets, self.ops_bucket}
        today = "/" + self.ab_day
        for bucket in [b for b, ends in self.ends.items() if ends <= now and b not in current]:
            if bucket in self.dirty or (
                bucket.startswith(EXPERIMENT_PREFIX) and bucket.endswith(today)
            ):
                continue
            released = len(self.buckets.pop(bucket, {}))
            if bucket.startswith(EXPERIMENT_PREFIX):
                self.ab_series -= released
                self.released[bucket] = self.ends[bucket]
            else:
                self.series_count -= released
            self.bucket_cost.pop(bucket, None)
            del self.ends[bucket]
        for bucket in [b for b, ends in self.released.items() if ends <= now - DAY]:
            del self.released[bucket]  # no exposure is queued that long

    # -- reading (no lock: a value a moment old is as good) -----------------------------------

    def own_cost(self, bucket: str, series: tuple[str, ...] | None) -> int:
        if series is None:
            return self.bucket_cost.get(bucket, 0)
        totals = self.buckets.get(bucket)
        if not totals:
            return 0
        return sum(int(t.sum) for name in series if (t := totals.get(name)) is not None)


def _copy(series: Mapping[str, Totals]) -> dict[str, Totals]:
    return {name: totals.copy() for name, totals in series.items()}
