"""Cost and outcome records on the request path: each added to the running totals of its
request type (and of the rollout cohorts watching it) under one short lock, or refused whole
when its series would not fit. The series names are made once per request type and cohort."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler.runtime.health import Health
from reconciler.runtime.series_store import SeriesStore
from reconciler.runtime.sinks import MetricsSink
from reconciler.runtime.telemetry import (
    COST,
    LATENCY,
    LATENCY_BINS,
    OUTCOME,
    QUALITY,
    TOKENS,
    latency_bin,
    rollout_series,
    series_name,
)


@dataclass(frozen=True)
class CohortNames:
    """The series of one rollout cohort (``telemetry.rollout_series``), latency per bin."""

    outcome: str
    latency: tuple[str, ...]
    cost: str
    quality: str


class OpsRecording:
    """Records of spend, errors, response times and quality into a ``SeriesStore``."""

    def __init__(
        self,
        *,
        lock: threading.Lock,
        store: SeriesStore,
        health: Health,
        clock: Callable[[], float],
        metrics: MetricsSink | None,
        max_series: int,
    ) -> None:
        self._lock = lock
        self._store = store
        self._health = health
        self.clock = clock
        self.metrics = metrics  # the changes since the last flush kept for it, if any
        self.max_series = max_series
        self._names: dict[str, tuple[str, ...]] = {}
        self._rollout_names: dict[tuple[str, str], CohortNames] = {}

    def record_cost(self, request_type: str, tokens: int, micros: int) -> None:
        store = self._store
        now = self.clock()
        if now >= store.next_cost_roll:
            store.roll_cost(now)
        names = self._names.get(request_type) or self._names_of(request_type)
        cost, token = names[0], names[1]
        with self._lock:
            for bucket in store.cost_buckets:
                series = store.buckets.get(bucket)
                if series is None or cost not in series or token not in series:
                    if not store.room(store.cost_buckets, (cost, token)):
                        return
                    break  # new series, and room for them
            for bucket in store.cost_buckets:
                store.add(bucket, cost, micros)
                store.add(bucket, token, tokens)
                store.bucket_cost[bucket] = store.bucket_cost.get(bucket, 0) + micros
            if self.metrics is not None:
                store.change(cost, micros)
                store.change(token, tokens)
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
        store = self._store
        now = self.clock()
        if now >= store.next_ops_roll:
            store.roll_ops(now)
        bucket = store.ops_bucket
        names = self._names.get(request_type) or self._names_of(request_type)
        outcome, latency, score = names[2], names[3], names[4]
        failure = 1 if failed else 0
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
            if not store.room((bucket,), wanted):
                return
            store.add(bucket, outcome, failure)
            if response_time_ms is not None:
                store.add(bucket, latency, response_time_ms)
            if quality is not None:
                store.add(bucket, score, quality)
            for counted, times, spent, scored in rollout:
                store.add(bucket, counted, failure)
                if times is not None and response_time_ms is not None:
                    store.add(bucket, times, response_time_ms)
                if micros is not None:
                    store.add(bucket, spent, micros)
                if quality is not None:
                    store.add(bucket, scored, quality)
            if self.metrics is not None:
                store.change(outcome, failure)
                if response_time_ms is not None:
                    store.change(latency, response_time_ms)
                if quality is not None:
                    store.change(score, quality)
            self._health.recorded += 1
            self._health.unflushed += 1

    def _names_of(self, request_type: str) -> tuple[str, ...]:
        """The series names of a request type, made once (at most ``max_series`` of them)."""
        names = tuple(
            series_name(kind, request_type) for kind in (COST, TOKENS, OUTCOME, LATENCY, QUALITY)
        )
        if len(self._names) < self.max_series:
            self._names[request_type] = names
        return names

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
