"""The recorder's background work: count the queued exposures, write the totals as shards
(``reconciler.runtime.telemetry``) to a sink, the first sightings of users to the assignments
table, and the changes since the last flush to a metrics sink. A failed write loses nothing:
the totals are absolute, so the next flush carries them again. Nothing here raises: an error
is counted in the health report (and logged), and the thread goes on."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from reconciler.runtime.experiment_state import unit_hash
from reconciler.runtime.exposure_queue import ExposureQueue
from reconciler.runtime.health import Health
from reconciler.runtime.seen_units import SeenUnits
from reconciler.runtime.series_store import SeriesStore
from reconciler.runtime.sinks import MetricsSink, TelemetrySink
from reconciler.runtime.telemetry import COST, Assignment, Shard

log = logging.getLogger("reconciler.runtime")

HISTORY = 64  # successful flushes remembered, for what the cost guard has seen


class Flusher:
    """One writer's flushes: its sequence numbers and what its last flushes wrote of spend."""

    def __init__(
        self,
        *,
        lock: threading.Lock,
        health: Health,
        store: SeriesStore,
        seen: SeenUnits,
        queue: ExposureQueue,
        sink: TelemetrySink | None,
        metrics: MetricsSink | None,
        writer: str,
        clock: Callable[[], float],
    ) -> None:
        self.lock = lock
        self.flush_lock = threading.Lock()  # one flush at a time (and no fork during one)
        self.health = health
        self.store = store
        self.seen = seen
        self.queue = queue
        self.sink = sink
        self.metrics = metrics
        self.writer = writer
        self.clock = clock
        self.seq = 0
        self.history: deque[tuple[float, dict[str, dict[str, int]]]] = deque(maxlen=HISTORY)
        self._failed = False

    def flush(self) -> bool:
        """Write every changed bucket's totals; True when the sink took them (or nothing was
        pending). Never raises."""
        with self.flush_lock:
            try:
                return self._flush()
            except Exception as exc:  # a bug, or a clock gone wrong: the next flush tries again
                self.health.failed_flushes += 1
                self.failed("flush", exc)
                return False

    def run(self, stop: threading.Event, wake: threading.Event, interval: float) -> None:
        """Flush every ``interval``; count the exposures between flushes when woken."""
        due = time.monotonic() + interval
        while not stop.is_set():
            try:
                asked = wake.wait(max(0.0, due - time.monotonic()))
                wake.clear()
                if stop.is_set():
                    return
                if time.monotonic() >= due:
                    due = time.monotonic() + interval
                    self.flush()
                elif asked:
                    self.queue.count_all()
            except Exception as exc:  # the thread never dies: it is all the flushing there is
                self.failed("telemetry thread", exc)
                due = time.monotonic() + interval
                stop.wait(min(interval, 1.0))

    def failed(self, what: str, exc: Exception) -> None:
        self.health.last_error = f"{what}: {type(exc).__name__}: {exc}"
        if not self._failed:
            self._failed = True
            log.error("telemetry: %s failed unexpectedly", what, exc_info=exc)

    def _flush(self) -> bool:
        self.queue.count_all()
        at = datetime.fromtimestamp(self.clock(), UTC)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self.lock:
            pending = self.health.unflushed
            changes, self.store.changes = self.store.changes, {}
            seen = self.seen.take()
            forgotten = self.seen.trim()  # freed below, outside the lock
            if not self.store.dirty and not changes and not seen:
                self.store.release(self.clock())
                return True
            self.seq += 1
            dirty, shards = self.store.take_dirty(self.writer, self.seq, stamp)
        ok = True
        if self.sink is not None and shards:
            try:
                self.sink.write_shards(shards)
            except Exception as exc:  # nothing is lost: the next flush sends the totals again
                ok = False
                with self.lock:
                    self.store.dirty.update(dirty)
                self.health.failed_flushes += 1
                self.health.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("telemetry flush failed (%s); retrying at the next flush", exc)
        del forgotten
        self._write_assignments(seen)
        if ok:
            self._flushed(shards, pending, stamp)
        if self.metrics is not None and changes:
            try:
                self.metrics.emit(changes, at)
            except Exception as exc:
                self.health.metrics_failures += 1
                self.health.last_error = f"metrics: {type(exc).__name__}: {exc}"
        return ok

    def _write_assignments(self, seen: list[tuple[str, str, str, float]]) -> None:
        writer = getattr(self.sink, "write_assignments", None)
        if seen and callable(writer):
            try:
                writer([_assignment(*entry) for entry in seen])
            except Exception as exc:  # kept for the next flush (rows are idempotent)
                with self.lock:
                    self.seen.put_back(seen)
                self.health.failed_assignment_writes += 1
                self.health.last_error = f"assignments: {type(exc).__name__}: {exc}"
                log.warning("experiment assignments not written (%s); retrying", exc)
        self.health.pending_assignments = len(self.seen.assignments)

    def _flushed(self, shards: Sequence[Shard], pending: int, stamp: str) -> None:
        with self.lock:
            self.health.flushes += 1
            self.health.unflushed = max(0, self.health.unflushed - pending)
            self.health.last_flush_at = stamp
            spend = {
                s.bucket: {n: int(t.sum) for n, t in s.series.items() if n.startswith(COST + ":")}
                for s in shards
                if s.bucket.startswith(COST + "/")
            }
            previous = self.history[-1][1] if self.history else {}
            kept = {b: v for b, v in previous.items() if b in self.store.buckets}
            self.history.append((self.clock(), {**kept, **spend}))
            self.store.release(self.clock())

    def flushed_before(self, moment: float, bucket: str, series: tuple[str, ...] | None) -> int:
        """This process's spend in ``bucket`` as of its last successful flush that finished
        before ``moment``: what a reader at ``moment`` could have counted of it."""
        with self.lock:
            for finished, spend in reversed(self.history):
                if finished <= moment:
                    found = spend.get(bucket, {})
                    if series is None:
                        return sum(found.values())
                    return sum(found.get(name, 0) for name in series)
        return 0


def _assignment(key: str, variant: str, unit: str, at: float) -> Assignment:
    hashed, cluster = unit_hash(key.split("~", 1)[0], unit)
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Assignment(key, hashed, variant, cluster, stamp)
