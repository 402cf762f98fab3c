"""Recording on the request path: microseconds, no I/O, never raises, bounded memory.

Values are added to in-process running totals under a short lock; a background thread flushes
them (every 10 s by default, at ``close()`` and at interpreter exit) as shards
(``reconciler.runtime.telemetry``) to a sink, and the changes since the last flush to an optional
metrics sink (CloudWatch). A failed flush loses nothing: the totals are absolute, so the next
flush carries them again. What a process can lose is what it recorded since its last successful
flush, should it die; the health report counts it while it is pending.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.flush_interval = flush_interval
        self.clock = clock
        self.max_series = max_series
        self.max_experiment_series = max_experiment_series
        self._ab_series = 0
        self.writer = writer or new_writer_id()
        self.health = Health()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._buckets: dict[str, dict[str, Totals]] = {}
        self._series_count = 0
        self._bucket_cost: dict[str, int] = {}
        self._names: dict[str, tuple[str, ...]] = {}
        self._rollout_names: dict[tuple[str, str], CohortNames] = {}
        self._ends: dict[str, float] = {}  # bucket -> the epoch second its time is over
        self._dirty: set[str] = set()
        self._changes: dict[str, Totals] = {}
        self._seq = 0
        self._zones: tuple[str, ...] = (UTC_ZONE,)
        self._cost_buckets: tuple[str, ...] = ()
        self._ops_bucket = ""
        self._next_cost_roll = 0.0
        self._next_ops_roll = 0.0
        self._history: deque[tuple[float, dict[str, dict[str, int]]]] = deque(maxlen=HISTORY)
        # (key, unit) -> (cluster if known, variant), for the units this process has seen
        self._units: dict[tuple[str, str], tuple[int | None, str]] = {}
        self._assignments: list[tuple[str, str, str, float]] = []  # seen, not yet written
        self._exposure_names: dict[tuple[str, str], tuple[str, str]] = {}
        self._ab_day = ""
        self._ab_ends = 0.0
        self._next_ab_roll = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background and (sink is not None or metrics is not None):
            self._thread = threading.Thread(target=self._run, name="flag-telemetry", daemon=True)
            self._thread.start()
        _open.add(self)
        _flush_at_process_exit(self)

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
            self.health.recorded += 1
            self.health.unflushed += 1

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
            self.health.recorded += 1
            self.health.unflushed += 1

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
        """A decision assigned ``variant`` of the experiment recorded under ``key``."""
        if len(unit) > MAX_UNIT_LENGTH:
            self.reject("unit_too_long")  # not an id: kept out of memory and the tables
            return
        now = self.clock()
        if now >= self._next_ab_roll:
            self._roll_ab(now)
        with self._lock:  # the day's bucket read under the lock: a roll cannot come between
            names = self._exposure_names.get((key, variant))
            if names is None:
                names = self._exposure_names[(key, variant)] = (
                    experiment_bucket(key, self._ab_day),
                    f"{EXPOSURES}:{variant}",
                )
            bucket, name = names
            series = self._buckets.get(bucket)
            totals = series.get(name) if series is not None else None
            if totals is None:
                if not self._room_ab(bucket, (name,)):
                    return
                self._ends.setdefault(bucket, self._ab_ends)
                self._add(bucket, name, 1)
            else:
                totals.add(1)
                self._dirty.add(bucket)
            known = self._units.get((key, unit))
            if known is None or known[1] != variant:
                self._first_seen(key, unit, variant, now, None)
            self.health.recorded += 1
            self.health.unflushed += 1

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
            known = self._units.get((key, unit))
            if known is not None and known[1] == variant and known[0] is not None:
                cluster = known[0]
            else:
                cluster = unit_hash(key.split("~", 1)[0], unit)[1]
                if known is None or known[1] != variant:
                    self._first_seen(key, unit, variant, now, cluster)
                elif len(self._units) < MAX_UNITS:
                    self._units[(key, unit)] = (cluster, variant)
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
            self.health.recorded += 1
            self.health.unflushed += 1

    def _first_seen(
        self, key: str, unit: str, variant: str, now: float, cluster: int | None
    ) -> None:
        """The first time this process sees the unit in the experiment (or in another
        variant): its assignment is queued for the next flush, which hashes the id (under the
        lock; the table of units seen is trimmed by the flush, off the request path)."""
        if len(self._units) < MAX_UNITS:
            self._units[(key, unit)] = (cluster, variant)
        if len(self._assignments) < MAX_PENDING_ASSIGNMENTS:
            self._assignments.append((key, unit, variant, now))
        else:
            self.reject("assignments_backlog")

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
        warnings = self.health.warnings
        warnings[why if why in warnings or len(warnings) < 100 else "other"] += 1

    def reject(self, why: str) -> None:
        """Count a value that was not recorded (bad input), by why (at most 100 kinds)."""
        rejected = self.health.rejected
        if why in rejected or len(rejected) < 100:
            rejected[why] += 1
        else:
            rejected["other"] += 1

    def _room(self, buckets: Iterable[str], names: Sequence[str]) -> bool:
        """Whether the series a record needs exist or fit under ``max_series``: a record goes
        in whole or not at all (counted as ``too_many_series``)."""
        missing = 0
        for bucket in buckets:
            series = self._buckets.get(bucket) or {}
            missing += sum(1 for name in names if name not in series)
        if missing and self._series_count + missing > self.max_series:
            self.health.rejected["too_many_series"] += 1
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
            self.health.rejected["too_many_experiment_series"] += 1
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
        moment = datetime.fromtimestamp(now, UTC)
        ends = (now // 86400 + 1) * 86400
        day = moment.strftime("%Y-%m-%d")
        with self._lock:
            self._ab_day = day
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
        with self._lock:
            # Spend first: a shard the store refuses must not hold back the cost guard's input.
            dirty = sorted(self._dirty, key=lambda b: (b.startswith(EXPERIMENT_PREFIX), b))
            pending = self.health.unflushed
            changes, self._changes = self._changes, {}
            seen, self._assignments = self._assignments, []
            if len(self._units) >= MAX_UNITS:  # forget the older half, freed outside the lock
                forgotten = self._units
                kept = list(forgotten.items())[MAX_UNITS // 2 :]
                self._units = dict(kept)
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
                self.health.failed_flushes += 1
                self.health.last_error = f"{type(exc).__name__}: {exc}"
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
                self.health.failed_assignment_writes += 1
                self.health.last_error = f"assignments: {type(exc).__name__}: {exc}"
                log.warning("experiment assignments not written (%s); retrying", exc)
        self.health.pending_assignments = len(self._assignments)
        if ok:
            self._flushed(shards, pending, stamp)
        if self.metrics is not None and changes:
            try:
                self.metrics.emit(changes, at)
            except Exception as exc:
                self.health.metrics_failures += 1
                self.health.last_error = f"metrics: {type(exc).__name__}: {exc}"
        return ok

    def _flushed(self, shards: Sequence[Shard], pending: int, stamp: str) -> None:
        with self._lock:
            self.health.flushes += 1
            self.health.unflushed = max(0, self.health.unflushed - pending)
            self.health.last_flush_at = stamp
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
            else:
                self._series_count -= released
            self._bucket_cost.pop(bucket, None)
            del self._ends[bucket]

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def _start_over(self) -> None:
        """In a forked child: a writer of its own, no totals, new locks, a live thread."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.writer = new_writer_id()
        self._seq = 0
        self._buckets, self._dirty, self._changes = {}, set(), {}
        self._series_count = self._ab_series = 0
        self._bucket_cost, self._ends = {}, {}
        self._history.clear()
        self._units, self._assignments, self._exposure_names = {}, [], {}
        self._next_cost_roll = self._next_ops_roll = self._next_ab_roll = 0.0
        self.health = Health()
        if self._thread is not None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="flag-telemetry", daemon=True)
            self._thread.start()
        _flush_at_process_exit(self)

    def close(self) -> None:
        """Stop the thread and flush what is left; what cannot be written is counted as lost."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_interval + 5)
        if not self.flush() and self.health.unflushed:
            self.health.lost += self.health.unflushed
            log.error(
                "telemetry: %d record(s) could not be flushed at close (%s)",
                self.health.unflushed,
                self.health.last_error,
            )
        _open.discard(self)


def _assignment(key: str, unit: str, variant: str, at: float) -> Assignment:
    hashed, cluster = unit_hash(key.split("~", 1)[0], unit)
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Assignment(key, hashed, variant, cluster, stamp)


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
