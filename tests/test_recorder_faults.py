"""The recorder under faults and load: a bad exposure, a broken clock, a full queue, a sink
that hangs. Nothing raises into the caller, the telemetry thread never dies, and no call on a
request thread counts more than one chunk of the queue (work counted, not time)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from reconciler.runtime.recorder import COUNT_CHUNK, Recorder
from tests.test_telemetry_exposures import KEY, MIDNIGHT, Clock, Store

DAY_BEFORE = "2026-12-01"


def wait_for(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError(what)


def stored_cost(store: Store) -> int:
    return sum(
        int(totals.sum)
        for (bucket, _), shard in store.shards.items()
        if bucket.startswith("cost/")
        for name, totals in shard.series.items()
        if name.startswith("cost:")
    )


def test_a_unit_that_is_not_a_string_is_refused_on_the_request_path() -> None:
    recorder = Recorder(Store(), background=False, clock=Clock(MIDNIGHT - 60))
    recorder.expose(KEY, "a", ["x"])  # type: ignore[arg-type]
    recorder.record_metric(KEY, "a", ["x"], [("m", 1.0)])  # type: ignore[arg-type]
    assert len(recorder._exposures) == 0
    assert recorder.health.rejected == Counter({"unit_not_a_string": 2})
    assert recorder.flush()
    recorder.close()


def test_a_poisoned_exposure_keeps_the_thread_alive_and_cost_still_flushes() -> None:
    """One exposure that cannot be counted (an unhashable variant) is dropped with its chunk,
    counted as rejected; the thread goes on counting and flushing."""
    store = Store()
    recorder = Recorder(
        store, flush_interval=3600, clock=Clock(MIDNIGHT - 60), max_pending_exposures=2
    )
    recorder.expose(KEY, ["a"], "u1")  # type: ignore[arg-type]  # wakes the thread
    wait_for(lambda: not recorder._exposures, "the thread did not count the queue")
    assert recorder._thread is not None
    assert recorder._thread.is_alive()
    assert recorder.health.rejected == Counter({"internal": 1})
    recorder.expose(KEY, "a", "u2")
    wait_for(lambda: not recorder._exposures, "the thread stopped counting")
    recorder.record_cost("vc_analysis", 10, 5_000)
    assert recorder.flush()
    assert stored_cost(store) == 5_000
    assert store.exposures(DAY_BEFORE) == {"a": 1}
    recorder.close()
    assert recorder.health.lost == 0


def test_a_clock_that_is_not_epoch_seconds_never_raises() -> None:
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    recorder = Recorder(
        Store(),
        background=False,
        clock=lambda: moment,  # type: ignore[arg-type, return-value]
        max_pending_exposures=4,
    )
    for n in range(10):
        recorder.expose(KEY, "a", f"u{n}")  # the full queue counted here: dropped, not raised
    assert recorder.flush() is False
    health = recorder.health
    assert health.rejected["internal"] == 10
    assert (health.failed_flushes, health.lost) == (1, 0)
    assert health.last_error is not None
    recorder.close()


def test_a_full_queue_makes_each_call_count_one_chunk_at_most() -> None:
    """Without a thread, the call that finds the queue full counts one chunk of it; nothing
    is lost, and the queue stays within its bound."""
    bound = 3 * COUNT_CHUNK
    store = Store()
    recorder = Recorder(
        store, background=False, clock=Clock(MIDNIGHT - 60), max_pending_exposures=bound
    )
    most = 0
    for n in range(4 * bound):
        before = len(recorder._exposures)
        recorder.expose(KEY, "ab"[n % 2], f"u{n}")
        most = max(most, before + 1 - len(recorder._exposures))
        assert len(recorder._exposures) <= bound
    assert most == COUNT_CHUNK, "one call counted more (or less) than one chunk"
    assert recorder.flush()
    assert store.exposures(DAY_BEFORE) == {"a": 2 * bound, "b": 2 * bound}
    assert len(store.rows) == 4 * bound
    recorder.close()


class HungStore(Store):
    """A store whose writes wait until released: the background thread stuck in its flush."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write_shards(self, shards: Any) -> None:
        self.entered.set()
        self.release.wait(30)
        super().write_shards(shards)


def test_a_thread_stuck_writing_leaves_request_calls_one_chunk_each() -> None:
    bound = 2 * COUNT_CHUNK
    store = HungStore()
    recorder = Recorder(
        store, flush_interval=0.01, clock=Clock(MIDNIGHT - 60), max_pending_exposures=bound
    )
    recorder.record_cost("vc_analysis", 1, 100)
    assert store.entered.wait(10), "the thread did not flush"
    most = 0
    for n in range(3 * bound):
        before = len(recorder._exposures)
        recorder.expose(KEY, "a", f"u{n}")
        most = max(most, before + 1 - len(recorder._exposures))
    assert most <= COUNT_CHUNK
    assert len(recorder._exposures) <= bound
    store.release.set()
    recorder.close()
    assert store.exposures(DAY_BEFORE) == {"a": 3 * bound}
    assert (recorder.health.lost, recorder.health.unflushed) == (0, 0)
