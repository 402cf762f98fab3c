"""Recording on the request path: microseconds, no I/O, never raises, bounded memory.

Values are added to in-process running totals under a short lock (an experiment's exposure, the
commonest record, under none: it is queued, and counted off the request path); a background
thread flushes them (every 10 s by default, at ``close()`` and at interpreter exit) as shards
(``reconciler.runtime.telemetry``) to a sink, and the changes since the last flush to an optional
metrics sink (CloudWatch). A failed flush loses nothing: the totals are absolute, so the next
flush carries them again. What a process can lose is what it recorded since its last successful
flush, should it die; the health report counts it while it is pending.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import operator
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import filterfalse, islice, repeat
from operator import itemgetter, ne
from typing import Protocol

from reconciler.runtime.budgets import UTC_ZONE, period_at
from reconciler.runtime.experiment_state import unit_hash
from reconciler.runtime.telemetry import (
    CLUSTER,
    COST,
    EXPOSURES,
    LATENCY,
    LATENCY_BINS,
    METRIC,
    OUTCOME,
    QUALITY,
    TOKENS,
    Assignment,
    Shard,
    Totals,
    cost_bucket,
    experiment_bucket,
    latency_bin,
    new_writer_id,
    ops_bucket,
    rollout_series,
    series_name,
)

log = logging.getLogger("reconciler.runtime")

DEFAULT_FLUSH_INTERVAL = 10.0
MAX_SERIES = 10_000
HISTORY = 64  # successful flushes remembered, for what the cost guard has seen
MAX_UNIT_LENGTH = 256  # a user id longer than this is refused by experiment recording
MAX_UNITS = 100_000  # users remembered per process (to write each one's assignment once)
EXPERIMENT_PREFIX = "ab/"
MAX_EXPERIMENT_SERIES = 20_000  # experiment series in memory, apart from cost and outcomes
MAX_BUCKET_SERIES = 3_000  # per experiment and day: ~200 KB a shard, half DynamoDB's limit
MAX_PENDING_ASSIGNMENTS = 200_000
# Exposures queued on the request path, not counted yet (about 100 bytes each): the background
# thread counts them at each flush, and as soon as half this many wait; a recorder without one
# (or a thread that falls behind) counts them in the call that fills the queue.
MAX_PENDING_EXPOSURES = 100_000
COUNT_CHUNK = 2_000  # exposures counted per hold of the lock (about a millisecond)
DAY = 86_400

Exposure = tuple[str, str, str, float]  # (recording key, variant, unit, epoch seconds)
_KEY, _VARIANT, _UNIT, _AT = (itemgetter(n) for n in range(4))


class TelemetrySink(Protocol):
    def write_shards(self, shards: Sequence[Shard]) -> None:
        """Write each shard unless the store holds the same writer's bucket at a higher or
        equal ``seq`` already (then it is a repeat: not an error)."""


class AssignmentSink(Protocol):
    def write_assignments(self, assignments: Sequence[Assignment]) -> None:
        """Store each user's variant (idempotent: the same user again is the same row)."""


class MetricsSink(Protocol):
    def emit(self, changes: Mapping[str, Totals], at: datetime) -> None:
        """Publish what was recorded since the last flush (series name -> totals)."""


@dataclass
class Health:
    """What the recorder has done, for a health endpoint or a log line."""

    recorded: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # not recorded, by why
    warnings: Counter[str] = field(default_factory=Counter)  # recorded, but worth a look
    flushes: int = 0
    failed_flushes: int = 0
    unflushed: int = 0  # records since the last successful flush: what a crash would lose
    lost: int = 0  # records that a final flush at close could not write
    metrics_failures: int = 0
    failed_assignment_writes: int = 0  # experiments' first exposures: kept, written later
    pending_assignments: int = 0
    last_error: str | None = None
    last_flush_at: str | None = None


@dataclass(frozen=True)
class CohortNames:
    """The series of one rollout cohort (``telemetry.rollout_series``), latency per bin."""

    outcome: str
    latency: tuple[str, ...]
    cost: str
    quality: str


class Recorder:
    """In-process aggregates of cost and outcomes, flushed in the background."""

    def __init__(
        self,
        sink: TelemetrySink | None,
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        metrics: MetricsSink | None = None,
        clock: Callable[[], float] = time.time,
        max_series: int = MAX_SERIES,
        max_experiment_series: int = MAX_EXPERIMENT_SERIES,
        background: bool = True,
        writer: str | None = None,
        max_pending_exposures: int = MAX_PENDING_EXPOSURES,
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.flush_interval = flush_interval
        self.clock = clock
        self.max_series = max_series
        self.max_experiment_series = max_experiment_series
        self._ab_series = 0
        self.writer = writer or new_writer_id()
        self._health = Health()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._buckets: dict[str, dict[str, Totals]] = {}
        self._series_count = 0
        self._bucket_cost: dict[str, int] = {}
        self._names: dict[str, tuple[str, ...]] = {}
        self._rollout_names: dict[tuple[str, str], CohortNames] = {}
        self._ends: dict[str, float] = {}  # bucket -> the epoch second its time is over
        self._released: dict[str, float] = {}  # experiment buckets written and let go (a day)
        self._dirty: set[str] = set()
        self._changes: dict[str, Totals] = {}
        self._seq = 0
        self._zones: tuple[str, ...] = (UTC_ZONE,)
        self._cost_buckets: tuple[str, ...] = ()
        self._ops_bucket = ""
        self._next_cost_roll = 0.0
        self._next_ops_roll = 0.0
        self._history: deque[tuple[float, dict[str, dict[str, int]]]] = deque(maxlen=HISTORY)
        # key -> unit -> variant, for the units this process has seen (their assignment written
        # once; ``_unit_count`` of them in all), and (key, unit) -> cluster, for those it
        # recorded metrics of (the id hashed once)
        self._units: dict[str, dict[str, str]] = {}
        self._unit_count = 0
        self._clusters: dict[tuple[str, str], int] = {}
        self._assignments: list[Exposure] = []  # units seen, their assignment not yet written
        self.max_pending_exposures = max_pending_exposures
        self._exposures: deque[Exposure] = deque()  # decided, not yet counted
        self._exposure_names: dict[tuple[str, str], tuple[str, str]] = {}
        self._ab_day = ""
        self._ab_ends = 0.0
        self._next_ab_roll = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop, or count the exposures now: the queue is filling
        self._thread: threading.Thread | None = None
        if background and (sink is not None or metrics is not None):
            self._thread = threading.Thread(target=self._run, name="flag-telemetry", daemon=True)
            self._thread.start()
        self._count_at = self._counting_threshold()
        _open.add(self)
        _flush_at_process_exit(self)

    @property
    def health(self) -> Health:
        """What the recorder has done, the exposures queued since the last flush counted."""
        self._count_exposures()
        return self._health

    # -- the request path ---------------------------------------------------------------------

    def record_cost(self, request_type: str, tokens: int, micros: int) -> None:
        now = self.clock()
        if now >= self._next_cost_roll:
            self._roll_cost(now)
        names = self._names.get(request_type) or self._names_of(request_type)
        cost, token = names[0], names[1]
        with self._lock:
            for bucket in self._cost_buckets:
                series = self._buckets.get(bucket)
                if series is None or cost not in series or token not in series:
                    if not self._room(self._cost_buckets, (cost, token)):
                        return
                    break  # new series, and room for them
            for bucket in self._cost_buckets:
                self._add(bucket, cost, micros)
                self._add(bucket, token, tokens)
                self._bucket_cost[bucket] = self._bucket_cost.get(bucket, 0) + micros
            if self.metrics is not None:
                self._change(cost, micros)
                self._change(token, tokens)
            self._health.recorded += 1
            self._health.unflushed += 1

    def record_outcome(
        self,
        request_type: str,
        failed: bool,
        response_time_ms: float | None,
        quality: float | None,
        *,
        cohorts: Sequence[tuple[str, str]] = (),
        micros: int | None = None,
    ) -> None:
        """An AI call's outcome for its request type and, for the rollouts watching it, in
        each of ``cohorts`` ((flag, ``in`` or ``out``): errors, the response time's histogram
        bin, ``micros`` spent and quality), under one lock."""
        now = self.clock()
        if now >= self._next_ops_roll:
            self._roll_ops(now)
        bucket = self._ops_bucket
        names = self._names.get(request_type) or self._names_of(request_type)
        outcome, latency, score = names[2], names[3], names[4]
        failure = 1 if failed else 0
        changes = self.metrics is not None
        wanted = [outcome]
        if response_time_ms is not None:
            wanted.append(latency)
        if quality is not None:
            wanted.append(score)
        rollout: list[tuple[str, str | None, str, str]] = []
        if cohorts:
            slot = latency_bin(response_time_ms) if response_time_ms is not None else None
            for key in cohorts:
                cohort = self._cohort_names(key)
                times = cohort.latency[slot] if slot is not None else None
                rollout.append((cohort.outcome, times, cohort.cost, cohort.quality))
                wanted.append(cohort.outcome)
                if times is not None:
                    wanted.append(times)
                if micros is not None:
                    wanted.append(cohort.cost)
                if quality is not None:
                    wanted.append(cohort.quality)
        with self._lock:
            if not self._room((bucket,), wanted):
                return
            self._add(bucket, outcome, failure)
            if response_time_ms is not None:
                self._add(bucket, latency, response_time_ms)
            if quality is not None:
                self._add(bucket, score, quality)
            for counted, times, spent, scored in rollout:
                self._add(bucket, counted, failure)
                if times is not None and response_time_ms is not None:
                    self._add(bucket, times, response_time_ms)
                if micros is not None:
                    self._add(bucket, spent, micros)
                if quality is not None:
                    self._add(bucket, scored, quality)
            if changes:
                self._change(outcome, failure)
                if response_time_ms is not None:
                    self._change(latency, response_time_ms)
                if quality is not None:
                    self._change(score, quality)
            self._health.recorded += 1
            self._health.unflushed += 1

    def _cohort_names(self, key: tuple[str, str]) -> CohortNames:
        """A rollout cohort's series names, made once (the latency bins' names too)."""
        found = self._rollout_names.get(key)
        if found is None:
            outcome, latency, cost, quality = rollout_series(*key)
            bins = tuple(f"{latency}:{k}" for k in range(LATENCY_BINS))
            found = CohortNames(outcome, bins, cost, quality)
            if len(self._rollout_names) < self.max_series:
                self._rollout_names[key] = found
        return found

    def expose(self, key: str, variant: str, unit: str) -> None:
        """A decision assigned ``variant`` of the experiment recorded under ``key``.

        The request path only queues it (one append, no lock): it is counted, and the unit's
        first sighting queued for the assignments table, off the request path
        (``_count_exposures``: at each flush, when the queue is half full, at ``health``)."""
        if len(unit) > MAX_UNIT_LENGTH:
            self.reject("unit_too_long")  # not an id: kept out of memory and the tables
            return
        exposures = self._exposures
        exposures.append((key, variant, unit, self.clock()))
        if len(exposures) >= self._count_at:
            self._queue_full()

    def _counting_threshold(self) -> int:
        """How many queued exposures have them counted before the next flush: half the queue
        for the background thread to count, else the whole queue, by the call that fills it."""
        if self._thread is not None and self._thread.is_alive():
            return max(1, self.max_pending_exposures // 2)
        return max(1, self.max_pending_exposures)

    def _queue_full(self) -> None:
        thread = self._thread
        if (
            thread is not None
            and thread.is_alive()
            and len(self._exposures) < self.max_pending_exposures
        ):
            if not self._wake.is_set():
                self._wake.set()  # counted by the background thread, now
            return
        self._count_exposures()  # no thread, or one that fell behind: the bound holds

    def record_metric(
        self, key: str, variant: str, unit: str, values: Sequence[tuple[str, float]]
    ) -> None:
        """Values of an experiment's metrics for one user (in ``variant``)."""
        if len(unit) > MAX_UNIT_LENGTH:
            self.reject("unit_too_long")
            return
        now = self.clock()
        if now >= self._next_ab_roll:
            self._roll_ab(now)
        with self._lock:
            bucket = experiment_bucket(key, self._ab_day)
            pair = (key, unit)
            cluster = self._clusters.get(pair)
            if cluster is None:
                cluster = unit_hash(key.split("~", 1)[0], unit)[1]
                if len(self._clusters) < MAX_UNITS:
                    self._clusters[pair] = cluster
            if self._units.get(key, {}).get(unit) != variant:
                self._first_seen(key, unit, variant, now)
            names = [
                (f"{METRIC}:{variant}:{metric}", f"{CLUSTER}:{variant}:{metric}:{cluster}", value)
                for metric, value in values
            ]
            if not self._room_ab(bucket, [n for whole, part, _ in names for n in (whole, part)]):
                return
            self._ends.setdefault(bucket, self._ab_ends)
            for whole, part, value in names:
                self._add(bucket, whole, value)
                self._add(bucket, part, value)
            self._health.recorded += 1
            self._health.unflushed += 1

    def _first_seen(self, key: str, unit: str, variant: str, now: float) -> None:
        """The first time this process sees the unit in the experiment (or in another
        variant): its assignment is queued for the next flush, which hashes the id (under the
        lock; the table of units seen is trimmed by the flush, off the request path)."""
        units = self._units.setdefault(key, {})
        if unit in units:
            units[unit] = variant
        elif self._unit_count < MAX_UNITS:
            units[unit] = variant
            self._unit_count += 1
        if len(self._assignments) < MAX_PENDING_ASSIGNMENTS:
            self._assignments.append((key, variant, unit, now))
        else:
            self.reject("assignments_backlog")

    # -- counting the exposures (off the request path) -----------------------------------------

    def _count_exposures(self) -> None:
        """Count the exposures queued so far, in chunks, each under the lock: added to their
        day's totals, and each unit not seen before in its variant queued for the assignments
        table (the last variant it was seen in, at the first time it was seen in the chunk)."""
        queue = self._exposures
        left = len(queue)  # those queued after this call began wait for the next
        while left > 0:
            with self._lock:
                take = min(left, len(queue), COUNT_CHUNK)
                if take <= 0:
                    return
                batch = list(map(operator.call, repeat(queue.popleft, take)))
                self._count_batch(batch)
            left -= take

    def _count_batch(self, batch: list[Exposure]) -> None:
        """Count exposures taken from the queue, experiment by experiment (under the lock)."""
        latest_at = max(map(_AT, batch))
        if latest_at >= self._ab_ends:
            self._set_ab_day(latest_at)  # the first exposures of a new day
        if len(set(map(_KEY, batch))) == 1:  # one experiment (the common case)
            self._count_experiment(batch[0][0], batch)
            return
        by_key: dict[str, list[Exposure]] = {}
        for entry in batch:
            by_key.setdefault(entry[0], []).append(entry)
        for key, entries in by_key.items():
            self._count_experiment(key, entries)

    def _count_experiment(self, key: str, batch: list[Exposure]) -> None:
        """The exposures of one experiment: counted in their day's buckets, and its units not
        seen before in their variant queued for the assignments table."""
        ends = self._ab_ends
        if min(map(_AT, batch)) >= ends - DAY:  # all of today (the common case)
            refused = self._count_in(key, batch, self._ab_day, ends)
        else:
            refused = set()
            for (day, day_ends), entries in self._by_day(key, batch).items():
                refused |= self._count_in(key, entries, day, day_ends)
        if refused:
            batch = [e for e in batch if e[1] not in refused]
        self._remember(key, batch)

    def _remember(self, key: str, batch: list[Exposure]) -> None:
        """Queue for the assignments table the experiment's units that this process has not
        seen in their variant (in the last variant each was seen in, at the first time), and
        remember them."""
        units = self._units.get(key)
        if units is None:
            units = self._units[key] = {}
        queued: list[Exposure]
        if not any(map(units.__contains__, map(_UNIT, batch))):
            # None seen before (new users, the dearest case): the last variant of each is
            # its variant; each seen once, its entry is its first sighting.
            if len(batch) <= MAX_UNITS - self._unit_count:
                before = len(units)
                units.update(zip(map(_UNIT, batch), map(_VARIANT, batch), strict=True))
                self._unit_count += len(units) - before
                unique, variant_of = len(units) - before == len(batch), units.__getitem__
            else:
                latest = dict(zip(map(_UNIT, batch), map(_VARIANT, batch), strict=True))
                self._keep(units, latest.items(), len(latest))
                unique, variant_of = len(latest) == len(batch), latest.__getitem__
            if unique:
                queued = batch
            else:
                first = _first_times(batch)
                rows = zip(repeat(key), map(variant_of, first), first, first.values(), strict=False)
                queued = list(rows)
        else:
            if not any(map(ne, map(units.get, map(_UNIT, batch)), map(_VARIANT, batch))):
                return  # all seen before, each in its variant (returning users)
            latest = dict(zip(map(_UNIT, batch), map(_VARIANT, batch), strict=True))
            # Not seen before, or seen in another variant: their assignment to be written.
            fresh = list(filterfalse(units.items().__contains__, latest.items()))
            if not fresh:
                return
            self._keep(units, fresh, len(fresh))
            first = _first_times(batch)
            queued = [(key, variant, unit, first[unit]) for unit, variant in fresh]
        room = MAX_PENDING_ASSIGNMENTS - len(self._assignments)
        if len(queued) > room:
            self._reject_many("assignments_backlog", len(queued) - max(0, room))
            queued = queued[: max(0, room)]
        self._assignments.extend(queued)

    def _keep(self, units: dict[str, str], seen: Iterable[tuple[str, str]], count: int) -> None:
        """Remember ``count`` units in their variants, as many as ``MAX_UNITS`` leaves room
        for (the flush forgets the older half of a full table)."""
        room = MAX_UNITS - self._unit_count
        if room <= 0:
            return
        before = len(units)
        units.update(seen if count <= room else islice(seen, room))
        self._unit_count += len(units) - before

    def _by_day(self, key: str, batch: list[Exposure]) -> dict[tuple[str, float], list[Exposure]]:
        """Exposures of several days (a queue counted after midnight): each in its day's
        bucket, unless this process has written and released that one, then in today's (a
        day is never started again from nothing: its absolute totals would shrink)."""
        found: dict[tuple[str, float], list[Exposure]] = {}
        today = (self._ab_day, self._ab_ends)
        for entry in batch:
            at, where = entry[3], today
            if not today[1] - DAY <= at < today[1]:
                ends = (at // DAY + 1) * DAY
                day = datetime.fromtimestamp(ends - DAY, UTC).strftime("%Y-%m-%d")
                if experiment_bucket(key, day) not in self._released:
                    where = (day, ends)
            found.setdefault(where, []).append(entry)
        return found

    def _count_in(self, key: str, batch: list[Exposure], day: str, ends: float) -> set[str]:
        """Add the experiment's exposures to its bucket of ``day``; the variants refused for
        want of room for their series (counted as ``too_many_experiment_series``, each
        exposure)."""
        refused = set()
        cached = self._exposure_names if day == self._ab_day else {}
        counted = 0
        for variant, times in Counter(map(_VARIANT, batch)).items():
            names = cached.get((key, variant))
            if names is None:
                names = cached[(key, variant)] = (
                    experiment_bucket(key, day),
                    f"{EXPOSURES}:{variant}",
                )
            bucket, name = names
            series = self._buckets.get(bucket)
            totals = series.get(name) if series is not None else None
            if totals is None:
                if not self._room_ab(bucket, (name,)):  # counts the first refusal
                    self._reject_many("too_many_experiment_series", times - 1)
                    refused.add(variant)
                    continue
                self._ends.setdefault(bucket, ends)
                totals = self._buckets.setdefault(bucket, {})[name] = Totals()
            totals.add_repeated(1, times)
            self._dirty.add(bucket)
            counted += times
        self._health.recorded += counted
        self._health.unflushed += counted
        return refused

    def _names_of(self, request_type: str) -> tuple[str, ...]:
        """The series names of a request type, made once (at most ``max_series`` of them)."""
        names = tuple(
            series_name(kind, request_type) for kind in (COST, TOKENS, OUTCOME, LATENCY, QUALITY)
        )
        if len(self._names) < self.max_series:
            self._names[request_type] = names
        return names

    def warn(self, why: str) -> None:
        """Count a record that went in but deserves a look (a call without its context)."""
        warnings = self._health.warnings
        warnings[why if why in warnings or len(warnings) < 100 else "other"] += 1

    def reject(self, why: str) -> None:
        """Count a value that was not recorded (bad input), by why (at most 100 kinds)."""
        rejected = self._health.rejected
        if why in rejected or len(rejected) < 100:
            rejected[why] += 1
        else:
            rejected["other"] += 1

    def _reject_many(self, why: str, times: int) -> None:
        if times > 0:
            rejected = self._health.rejected
            rejected[why if why in rejected or len(rejected) < 100 else "other"] += times

    def _room(self, buckets: Iterable[str], names: Sequence[str]) -> bool:
        """Whether the series a record needs exist or fit under ``max_series``: a record goes
        in whole or not at all (counted as ``too_many_series``)."""
        missing = 0
        for bucket in buckets:
            series = self._buckets.get(bucket) or {}
            missing += sum(1 for name in names if name not in series)
        if missing and self._series_count + missing > self.max_series:
            self._health.rejected["too_many_series"] += 1
            return False
        return True

    def _room_ab(self, bucket: str, names: Sequence[str]) -> bool:
        """Room for an experiment's series: a budget of their own (``max_experiment_series``
        in all, ``MAX_BUCKET_SERIES`` per experiment and day, so a shard stays well under
        DynamoDB's item size), never taken from cost and outcomes."""
        series = self._buckets.get(bucket) or {}
        missing = sum(1 for name in names if name not in series)
        if not missing:
            return True
        if (
            self._ab_series + missing > self.max_experiment_series
            or len(series) + missing > MAX_BUCKET_SERIES
        ):
            self._health.rejected["too_many_experiment_series"] += 1
            return False
        self._ab_series += missing
        return True

    def _add(self, bucket: str, name: str, value: int | float) -> None:
        series = self._buckets.get(bucket)
        if series is None:
            series = self._buckets[bucket] = {}
        totals = series.get(name)
        if totals is None:
            totals = series[name] = Totals()
            if not bucket.startswith(EXPERIMENT_PREFIX):  # those count in _ab_series
                self._series_count += 1
        totals.add(value)
        self._dirty.add(bucket)

    def _change(self, name: str, value: int | float) -> None:
        totals = self._changes.get(name)
        if totals is None:
            totals = self._changes[name] = Totals()
        totals.add(value)

    # -- buckets ------------------------------------------------------------------------------

    def set_zones(self, zones: Iterable[str]) -> None:
        """The time zones budgets count days in (UTC always): each cost record goes to the day
        of each zone."""
        wanted = tuple(dict.fromkeys([UTC_ZONE, *sorted(set(zones) - {UTC_ZONE})]))
        if wanted != self._zones:
            self._zones = wanted
            self._next_cost_roll = 0.0

    def _roll_cost(self, now: float) -> None:
        moment = datetime.fromtimestamp(now, UTC)
        periods = [period_at("daily", z, moment) for z in self._zones]
        buckets = tuple(cost_bucket(p.today, p.time_zone) for p in periods)
        with self._lock:
            for bucket, period in zip(buckets, periods, strict=True):
                self._ends[bucket] = period.end.timestamp()
            self._cost_buckets = buckets
        self._next_cost_roll = min(p.end.timestamp() for p in periods)

    def _roll_ab(self, now: float) -> None:
        with self._lock:
            self._set_ab_day(now)

    def _set_ab_day(self, now: float) -> None:
        """The UTC day experiments are recorded in (under the lock)."""
        ends = (now // DAY + 1) * DAY
        self._ab_day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        self._ab_ends = ends
        self._exposure_names = {}
        self._next_ab_roll = ends

    def _roll_ops(self, now: float) -> None:
        moment = datetime.fromtimestamp(now, UTC)
        bucket, ends = ops_bucket(moment), (now // 300 + 1) * 300
        with self._lock:
            self._ends[bucket] = ends
            self._ops_bucket = bucket
        self._next_ops_roll = ends

    # -- what the cost guard has not seen yet --------------------------------------------------

    def own_cost(self, bucket: str, series: tuple[str, ...] | None) -> int:
        """This process's spend in a cost bucket (micro-dollars), of the given cost series or
        of all. Read without the lock: a value a moment old is as good."""
        if series is None:
            return self._bucket_cost.get(bucket, 0)
        totals = self._buckets.get(bucket)
        if not totals:
            return 0
        return sum(int(t.sum) for name in series if (t := totals.get(name)) is not None)

    def flushed_before(self, moment: float, bucket: str, series: tuple[str, ...] | None) -> int:
        """This process's spend in ``bucket`` as of its last successful flush that finished
        before ``moment``: what a reader at ``moment`` could have counted of it."""
        with self._lock:
            for finished, spend in reversed(self._history):
                if finished <= moment:
                    found = spend.get(bucket, {})
                    if series is None:
                        return sum(found.values())
                    return sum(found.get(name, 0) for name in series)
        return 0

    # -- flushing -----------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write every changed bucket's totals; True when the sink took them (or nothing was
        pending). Never raises."""
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> bool:
        forgotten: object = None
        self._count_exposures()
        with self._lock:
            # Spend first: a shard the store refuses must not hold back the cost guard's input.
            dirty = sorted(self._dirty, key=lambda b: (b.startswith(EXPERIMENT_PREFIX), b))
            pending = self._health.unflushed
            changes, self._changes = self._changes, {}
            seen, self._assignments = self._assignments, []
            if self._unit_count >= MAX_UNITS:  # forget the older half, freed outside the lock
                forgotten = self._units
                self._units = {
                    k: dict(list(u.items())[len(u) // 2 :]) for k, u in forgotten.items()
                }
                self._unit_count = sum(map(len, self._units.values()))
            if len(self._clusters) >= MAX_UNITS:
                forgotten = (forgotten, self._clusters)
                self._clusters = dict(list(self._clusters.items())[MAX_UNITS // 2 :])
            if not dirty and not changes and not seen:
                self._release()
                return True
            self._seq += 1
            seq = self._seq
            at = datetime.fromtimestamp(self.clock(), UTC)
            stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            shards = [Shard(b, self.writer, seq, _copy(self._buckets[b]), stamp) for b in dirty]
            self._dirty.clear()
        ok = True
        if self.sink is not None and shards:
            try:
                self.sink.write_shards(shards)
            except Exception as exc:  # nothing is lost: the next flush sends the totals again
                ok = False
                with self._lock:
                    self._dirty.update(dirty)
                self._health.failed_flushes += 1
                self._health.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("telemetry flush failed (%s); retrying at the next flush", exc)
        del forgotten  # the units table trimmed above, freed without holding the lock
        assignments = [_assignment(*entry) for entry in seen]
        writer = getattr(self.sink, "write_assignments", None)
        if assignments and callable(writer):
            try:
                writer(assignments)
            except Exception as exc:  # kept for the next flush (rows are idempotent)
                with self._lock:
                    room = MAX_PENDING_ASSIGNMENTS - len(self._assignments)
                    self._assignments[:0] = seen[:room]
                self._health.failed_assignment_writes += 1
                self._health.last_error = f"assignments: {type(exc).__name__}: {exc}"
                log.warning("experiment assignments not written (%s); retrying", exc)
        self._health.pending_assignments = len(self._assignments)
        if ok:
            self._flushed(shards, pending, stamp)
        if self.metrics is not None and changes:
            try:
                self.metrics.emit(changes, at)
            except Exception as exc:
                self._health.metrics_failures += 1
                self._health.last_error = f"metrics: {type(exc).__name__}: {exc}"
        return ok

    def _flushed(self, shards: Sequence[Shard], pending: int, stamp: str) -> None:
        with self._lock:
            self._health.flushes += 1
            self._health.unflushed = max(0, self._health.unflushed - pending)
            self._health.last_flush_at = stamp
            spend = {
                s.bucket: {n: int(t.sum) for n, t in s.series.items() if n.startswith(COST + ":")}
                for s in shards
                if s.bucket.startswith(COST + "/")
            }
            previous = self._history[-1][1] if self._history else {}
            kept = {b: v for b, v in previous.items() if b in self._buckets}
            self._history.append((self.clock(), {**kept, **spend}))
            self._release()

    def _release(self) -> None:
        """Forget the buckets whose time is over once they are written (under the lock). A
        bucket is kept to its end even when nothing records into it any more (a budget's zone
        left the configuration): should it come back, its totals go on from where they were,
        never from nothing (which, written as absolute totals, would undercount). The buckets
        being recorded into are never released: a record that read the clock a moment before
        a bucket's end still lands in it."""
        now = self.clock()
        current = {*self._cost_buckets, self._ops_bucket}
        today = "/" + self._ab_day
        for bucket in [b for b, ends in self._ends.items() if ends <= now and b not in current]:
            if bucket in self._dirty or (
                bucket.startswith(EXPERIMENT_PREFIX) and bucket.endswith(today)
            ):
                continue
            released = len(self._buckets.pop(bucket, {}))
            if bucket.startswith(EXPERIMENT_PREFIX):
                self._ab_series -= released
                self._released[bucket] = self._ends[bucket]
            else:
                self._series_count -= released
            self._bucket_cost.pop(bucket, None)
            del self._ends[bucket]
        for bucket in [b for b, ends in self._released.items() if ends <= now - DAY]:
            del self._released[bucket]  # no exposure is queued that long

    def _run(self) -> None:
        """Flush every ``flush_interval``; count the exposures between flushes when asked."""
        due = time.monotonic() + self.flush_interval
        while not self._stop.is_set():
            asked = self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            if time.monotonic() >= due:
                self.flush()
                due = time.monotonic() + self.flush_interval
            elif asked:
                self._count_exposures()

    def _start_over(self) -> None:
        """In a forked child: a writer of its own, no totals, new locks, a live thread."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.writer = new_writer_id()
        self._seq = 0
        self._buckets, self._dirty, self._changes = {}, set(), {}
        self._series_count = self._ab_series = 0
        self._bucket_cost, self._ends, self._released = {}, {}, {}
        self._history.clear()
        self._units, self._unit_count, self._clusters, self._assignments = {}, 0, {}, []
        self._exposures, self._exposure_names = deque(), {}  # queued ones: the parent's
        self._next_cost_roll = self._next_ops_roll = self._next_ab_roll = 0.0
        self._health = Health()
        self._wake = threading.Event()
        if self._thread is not None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="flag-telemetry", daemon=True)
            self._thread.start()
        self._count_at = self._counting_threshold()
        _flush_at_process_exit(self)

    def close(self) -> None:
        """Stop the thread and flush what is left; what cannot be written is counted as lost."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_interval + 5)
        self._count_at = self._counting_threshold()  # no thread now: the queue's own bound
        if not self.flush() and self._health.unflushed:
            self._health.lost += self._health.unflushed
            log.error(
                "telemetry: %d record(s) could not be flushed at close (%s)",
                self._health.unflushed,
                self._health.last_error,
            )
        _open.discard(self)


def _assignment(key: str, variant: str, unit: str, at: float) -> Assignment:
    hashed, cluster = unit_hash(key.split("~", 1)[0], unit)
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Assignment(key, hashed, variant, cluster, stamp)


def _first_times(batch: list[Exposure]) -> dict[str, float]:
    """Each unit of the exposures, with the time it was first seen among them."""
    return dict(zip(map(_UNIT, reversed(batch)), map(_AT, reversed(batch)), strict=True))


def _copy(series: Mapping[str, Totals]) -> dict[str, Totals]:
    return {name: totals.copy() for name, totals in series.items()}


_open: set[Recorder] = set()  # held until closed, so that exit flushes every one


@atexit.register
def _flush_at_exit() -> None:
    for recorder in list(_open):
        recorder.close()


def _flush_at_process_exit(recorder: Recorder) -> None:
    """A multiprocessing child ends with os._exit, past atexit: its finalizers still run."""
    multiprocessing.util.Finalize(recorder, recorder.close, exitpriority=100)


def _after_fork() -> None:
    """A forked child (gunicorn --preload, multiprocessing) is a new writer: it starts from
    nothing (what it inherited is the parent's to flush) with fresh locks and its own thread."""
    for recorder in list(_open):
        recorder._start_over()


def _before_fork() -> None:
    """No fork in the middle of a flush: a child would inherit the store's driver state of a
    write in progress (SQLite's locks on the file), and its own writes would wait on a lock no
    one holds. The flush finishes first; the child starts with fresh locks."""
    for recorder in list(_open):
        recorder._flush_lock.acquire()


def _after_fork_in_parent() -> None:
    for recorder in list(_open):
        if recorder._flush_lock.locked():
            recorder._flush_lock.release()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork
)
