"""Recording on the request path: microseconds, no I/O, never raises, bounded memory.

Values are added to in-process running totals (``series_store``) under a short lock; an
experiment's exposure, the commonest record, under none: it is queued (``exposure_queue``) and
counted off the request path. A background thread (``flushing``) counts the queue and flushes
the totals every 10 s by default, at ``close()`` and at interpreter exit (``process_hooks``).
What a process can lose is what it recorded since its last successful flush, should it die;
the health report counts it while it is pending (``unflushed``, ``queued_exposures``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from reconciler.runtime import process_hooks
from reconciler.runtime.exposure_queue import COUNT_CHUNK, MAX_PENDING_EXPOSURES, ExposureQueue
from reconciler.runtime.flushing import Flusher
from reconciler.runtime.health import Health
from reconciler.runtime.ops_recording import OpsRecording
from reconciler.runtime.seen_units import SeenUnits
from reconciler.runtime.series_store import SeriesStore
from reconciler.runtime.sinks import AssignmentSink, MetricsSink, TelemetrySink
from reconciler.runtime.telemetry import CLUSTER, METRIC, experiment_bucket, new_writer_id

log = logging.getLogger("reconciler.runtime")

__all__ = [  # what callers import from here, wherever it is made
    "COUNT_CHUNK",
    "DEFAULT_FLUSH_INTERVAL",
    "MAX_PENDING_EXPOSURES",
    "AssignmentSink",
    "Health",
    "MetricsSink",
    "Recorder",
    "TelemetrySink",
]

DEFAULT_FLUSH_INTERVAL = 10.0
MAX_SERIES = 10_000
MAX_UNIT_LENGTH = 256  # a user id longer than this is refused by experiment recording
MAX_EXPERIMENT_SERIES = 20_000  # experiment series in memory, apart from cost and outcomes


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
        self.max_pending_exposures = max_pending_exposures
        # Exposures are queued only for a flush to write or publish: with neither a sink nor a
        # metrics sink, nothing would read them (nor their units), so none is kept.
        self._queues_exposures = sink is not None or metrics is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._begin(writer or new_writer_id())
        if background and self._queues_exposures:
            self._start_thread()
        self._count_at = self._queue.threshold(self._thread)
        process_hooks.opened(self)

    def _begin(self, writer: str) -> None:
        """Empty totals, fresh locks (at construction, and in a forked child)."""
        self.writer = writer
        self._health = Health()
        self._lock = threading.Lock()
        self._store = SeriesStore(
            self._lock, self._health, self.max_series, self.max_experiment_series
        )
        self._seen = SeenUnits(self._health)
        self._wake = threading.Event()  # stop, or count the exposures now: the queue is filling
        self._queue = ExposureQueue(
            self._lock,
            self._store,
            self._seen,
            self._health,
            limit=self.max_pending_exposures,
            wake=self._wake,
        )
        self._exposures = self._queue.items  # decided, not yet counted
        self._flusher = Flusher(
            lock=self._lock,
            health=self._health,
            store=self._store,
            seen=self._seen,
            queue=self._queue,
            sink=self.sink,
            metrics=self.metrics,
            writer=writer,
            clock=self.clock,
        )
        self._ops = OpsRecording(
            lock=self._lock,
            store=self._store,
            health=self._health,
            clock=self.clock,
            metrics=self.metrics,
            max_series=self.max_series,
        )

    def _start_thread(self) -> None:
        flusher, stop, wake = self._flusher, self._stop, self._wake
        self._thread = threading.Thread(
            target=flusher.run, args=(stop, wake, self.flush_interval), name="flag-telemetry"
        )
        self._thread.daemon = True
        self._thread.start()

    @property
    def health(self) -> Health:
        """What the recorder has done. Counts nothing (the exposures queued since the last
        count are ``queued_exposures``); never raises."""
        self._health.queued_exposures = len(self._exposures)
        return self._health

    # -- the request path ---------------------------------------------------------------------

    def record_cost(self, request_type: str, tokens: int, micros: int) -> None:
        """Spend and tokens of one AI call, in the day of each budget's time zone."""
        self._ops.record_cost(request_type, tokens, micros)

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
        """An AI call's outcome (``OpsRecording.record_outcome``)."""
        self._ops.record_outcome(
            request_type, failed, response_time_ms, quality, cohorts=cohorts, micros=micros
        )

    def expose(self, key: str, variant: str, unit: str) -> None:
        """A decision assigned ``variant`` of the experiment recorded under ``key``.

        The request path only queues it (one append, no lock): the background thread counts
        the queue once it is half full, and each flush counts what is left. Should the queue
        reach its bound (no thread, or one held up writing), the call that finds it full
        counts one chunk (``COUNT_CHUNK``) of it: the bound holds, and no call does more."""
        if type(unit) is not str:
            self.reject("unit_not_a_string")  # not an id: not hashable, not storable
            return
        if len(unit) > MAX_UNIT_LENGTH:
            self.reject("unit_too_long")  # not an id: kept out of memory and the tables
            return
        if not self._queues_exposures:
            return
        exposures = self._exposures
        exposures.append((key, variant, unit, self.clock()))
        if len(exposures) >= self._count_at:
            self._queue.filling(self._thread)

    def record_metric(
        self, key: str, variant: str, unit: str, values: Sequence[tuple[str, float]]
    ) -> None:
        """Values of an experiment's metrics for one user (in ``variant``)."""
        if type(unit) is not str:
            self.reject("unit_not_a_string")
            return
        if len(unit) > MAX_UNIT_LENGTH:
            self.reject("unit_too_long")
            return
        store, seen = self._store, self._seen
        now = self.clock()
        if now >= store.next_ab_roll:
            store.roll_ab(now)
        with self._lock:
            bucket = experiment_bucket(key, store.ab_day)
            cluster = seen.cluster(key, unit)
            seen.saw(key, unit, variant, now)
            names = [
                (f"{METRIC}:{variant}:{metric}", f"{CLUSTER}:{variant}:{metric}:{cluster}", value)
                for metric, value in values
            ]
            if not store.room_ab(bucket, [n for whole, part, _ in names for n in (whole, part)]):
                return
            store.ends.setdefault(bucket, store.ab_ends)
            for whole, part, value in names:
                store.add(bucket, whole, value)
                store.add(bucket, part, value)
            self._health.recorded += 1
            self._health.unflushed += 1

    def warn(self, why: str) -> None:
        """Count a record that went in but deserves a look (a call without its context)."""
        self._health.warn(why)

    def reject(self, why: str) -> None:
        """Count a value that was not recorded (bad input), by why (at most 100 kinds)."""
        self._health.reject(why)

    def set_zones(self, zones: Iterable[str]) -> None:
        """The time zones budgets count days in (UTC always): each cost record goes to the day
        of each zone."""
        self._store.set_zones(zones)

    # -- what the cost guard has not seen yet --------------------------------------------------

    def own_cost(self, bucket: str, series: tuple[str, ...] | None) -> int:
        """This process's spend in a cost bucket (micro-dollars), of the given cost series or
        of all. Read without the lock: a value a moment old is as good."""
        return self._store.own_cost(bucket, series)

    def flushed_before(self, moment: float, bucket: str, series: tuple[str, ...] | None) -> int:
        """This process's spend in ``bucket`` as of its last successful flush that finished
        before ``moment``: what a reader at ``moment`` could have counted of it."""
        return self._flusher.flushed_before(moment, bucket, series)

    # -- flushing, closing, forking -----------------------------------------------------------

    def flush(self) -> bool:
        """Count the queued exposures and write every changed bucket's totals; True when the
        sink took them (or nothing was pending). Never raises."""
        return self._flusher.flush()

    def close(self) -> None:
        """Stop the thread and flush what is left; what cannot be written is counted as lost."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_interval + 5)
        self._count_at = self._queue.threshold(self._thread)  # no thread now: the queue's own bound
        if not self.flush() and self._health.unflushed:
            self._health.lost += self._health.unflushed
            log.error(
                "telemetry: %d record(s) could not be flushed at close (%s)",
                self._health.unflushed,
                self._health.last_error,
            )
        process_hooks.closed(self)

    def hold_for_fork(self) -> None:
        self._flusher.flush_lock.acquire()

    def release_after_fork(self) -> None:
        if self._flusher.flush_lock.locked():
            self._flusher.flush_lock.release()

    def start_over(self) -> None:
        """In a forked child: a writer of its own, no totals (the queued exposures are the
        parent's), new locks, a live thread."""
        self._begin(new_writer_id())
        if self._thread is not None and not self._stop.is_set():
            self._start_thread()
        self._count_at = self._queue.threshold(self._thread)
        process_hooks.flush_at_process_exit(self)
