"""Experiment exposures: queued on the request path, counted off it, none lost, none twice.

A decision's exposure is one append to a bounded queue; the recorder counts the queue at each
flush (and as soon as it is half full, on its background thread; without one, a chunk at a time
in the calls that find it full): each exposure in its day's totals, each unit's first sighting
in a variant queued for the assignments table once. The sink is a fake that keeps what a store
keeps: per bucket and writer the shard of the highest ``seq``, and every assignment row written.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from reconciler.runtime import seen_units
from reconciler.runtime.experiment_state import unit_hash
from reconciler.runtime.recorder import Recorder
from reconciler.runtime.telemetry import EXPOSURES, Assignment, Shard, experiment_bucket

KEY = "split_test"
MIDNIGHT = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
DAY_BEFORE, DAY_AFTER = "2026-12-01", "2026-12-02"


class Store:
    """What the telemetry and assignments tables keep of a recorder's writes."""

    def __init__(self) -> None:
        self.shards: dict[tuple[str, str], Shard] = {}
        self.rows: list[Assignment] = []
        self._lock = threading.Lock()

    def write_shards(self, shards: Sequence[Shard]) -> None:
        with self._lock:
            for shard in shards:
                held = self.shards.get((shard.bucket, shard.writer))
                if held is None or shard.seq > held.seq:
                    self.shards[(shard.bucket, shard.writer)] = shard

    def write_assignments(self, assignments: Sequence[Assignment]) -> None:
        with self._lock:
            self.rows.extend(assignments)

    def exposures(self, day: str, key: str = KEY) -> dict[str, int]:
        """Exposures per variant in the day's bucket, summed over writers."""
        found: Counter[str] = Counter()
        for (bucket, _), shard in self.shards.items():
            if bucket == experiment_bucket(key, day):
                for name, totals in shard.series.items():
                    if name.startswith(f"{EXPOSURES}:"):
                        found[name.split(":", 1)[1]] += totals.count
        return dict(found)

    def variants(self) -> dict[str, str]:
        """Each user's variant as the assignments table holds it (the last row written)."""
        return {row.user_hash: row.variant for row in self.rows}


def hashed(unit: str) -> str:
    return unit_hash(KEY, unit)[0]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_every_exposure_is_counted_and_every_user_assigned_once() -> None:
    store = Store()
    recorder = Recorder(store, background=False, clock=Clock(MIDNIGHT - 3600), writer="w")
    for n in range(10):
        for unit in ("u1", "u2", "u3"):
            recorder.expose(KEY, "a" if unit != "u3" else "b", unit)
        if n in (3, 7):
            assert recorder.flush()
    assert (recorder.health.recorded, recorder.health.queued_exposures) == (24, 6)
    assert recorder.flush()
    assert (recorder.health.recorded, recorder.health.queued_exposures) == (30, 0)
    assert store.exposures(DAY_BEFORE) == {"a": 20, "b": 10}
    assert sorted(r.user_hash for r in store.rows) == sorted(map(hashed, ("u1", "u2", "u3")))
    assert {r.variant for r in store.rows if r.user_hash == hashed("u3")} == {"b"}
    assert recorder.health.rejected == Counter()
    recorder.close()


def test_reading_health_counts_nothing_and_tells_what_is_queued() -> None:
    """Health is read on a caller's thread: it counts nothing (the flush or the thread does)."""
    recorder = Recorder(Store(), background=False, clock=Clock(MIDNIGHT - 60))
    for unit in ("u1", "u2"):
        recorder.expose(KEY, "a", unit)
    health = recorder.health
    assert len(recorder._exposures) == 2, "reading health counted the queue"
    assert (health.recorded, health.unflushed, health.queued_exposures) == (0, 0, 2)
    recorder.expose(KEY, "a", "x" * 257)
    assert recorder.health.rejected == Counter({"unit_too_long": 1})
    assert recorder.flush()
    health = recorder.health
    assert (health.recorded, health.unflushed, health.queued_exposures) == (2, 0, 0)
    recorder.close()


def test_without_a_sink_or_metrics_no_exposure_is_queued() -> None:
    """Nothing would ever read them: not kept, not counted (not even on a request thread)."""
    recorder = Recorder(None, background=False, clock=Clock(MIDNIGHT - 60))
    for n in range(50):
        recorder.expose(KEY, "a", f"u{n}")
    assert len(recorder._exposures) == 0
    assert recorder.health.recorded == 0
    recorder.close()


def test_a_user_assigned_another_variant_is_written_again_in_it() -> None:
    """New weights move a user: the assignments table ends with the variant last seen, within
    one flush window and across them."""
    store = Store()
    recorder = Recorder(store, background=False, clock=Clock(MIDNIGHT - 60), writer="w")
    recorder.expose(KEY, "a", "u1")
    recorder.expose(KEY, "b", "u1")  # the same window: one row, the later variant
    assert recorder.flush()
    assert [r.variant for r in store.rows] == ["b"]
    recorder.expose(KEY, "b", "u1")  # seen again in it: nothing new to write
    assert recorder.flush()
    assert len(store.rows) == 1
    recorder.expose(KEY, "a", "u1")  # moved back
    assert recorder.flush()
    assert store.variants() == {hashed("u1"): "a"}
    assert store.exposures(DAY_BEFORE) == {"a": 2, "b": 2}
    recorder.close()


def test_the_queue_is_bounded_and_counted_when_full_without_a_thread() -> None:
    store = Store()
    recorder = Recorder(
        store, background=False, clock=Clock(MIDNIGHT - 60), max_pending_exposures=10
    )
    for n in range(95):
        recorder.expose(KEY, "ab"[n % 2], f"u{n}")
        assert len(recorder._exposures) < 10
    assert recorder.flush()
    assert store.exposures(DAY_BEFORE) == {"a": 48, "b": 47}
    assert len(store.rows) == len({r.user_hash for r in store.rows}) == 95
    recorder.close()


def test_the_background_thread_counts_a_filling_queue_before_its_flush() -> None:
    store = Store()
    recorder = Recorder(
        store, flush_interval=3600, clock=Clock(MIDNIGHT - 60), max_pending_exposures=8
    )
    for n in range(4):  # half the queue: the thread is woken
        recorder.expose(KEY, "a", f"u{n}")
    for _ in range(200):
        if not recorder._exposures:
            break
        threading.Event().wait(0.01)
    assert not recorder._exposures, "the thread did not count the queue"
    assert store.shards == {}, "counted, not flushed: the flush keeps its interval"
    recorder.close()
    assert store.exposures(DAY_BEFORE) == {"a": 4}


def test_exposures_from_many_threads_during_flushes_are_each_counted_once() -> None:
    store = Store()
    recorder = Recorder(
        store, flush_interval=0.002, clock=Clock(MIDNIGHT - 3600), max_pending_exposures=64
    )
    threads, per_thread, users = 4, 5000, 700

    def serve(n: int) -> None:
        for i in range(per_thread):
            unit = f"u{(i * 3 + n) % users}"
            recorder.expose(KEY, "a" if hash(unit) % 2 else "b", unit)

    workers = [threading.Thread(target=serve, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    recorder.close()

    assert sum(store.exposures(DAY_BEFORE).values()) == threads * per_thread
    assert recorder.health.recorded == threads * per_thread
    assert (recorder.health.unflushed, recorder.health.lost) == (0, 0)
    written = Counter(r.user_hash for r in store.rows)
    assert set(written) == {hashed(f"u{n}") for n in range(users)}
    assert set(written.values()) == {1}, "a user was written twice"


def test_exposures_queued_before_midnight_count_in_their_day() -> None:
    """The queue is counted after midnight: what was decided before it counts in its day,
    while this process still holds that day's totals; once the day is written and released,
    a late one counts in the new day rather than start the old one again from nothing (whose
    absolute totals, written anew, would replace the day's)."""
    store = Store()
    clock = Clock(MIDNIGHT - 10)
    recorder = Recorder(store, background=False, clock=clock, writer="w")
    recorder.expose(KEY, "a", "u1")
    recorder.expose(KEY, "a", "u2")
    clock.now = MIDNIGHT + 5
    recorder.expose(KEY, "a", "u3")
    assert recorder.flush()
    assert store.exposures(DAY_BEFORE) == {"a": 2}
    assert store.exposures(DAY_AFTER) == {"a": 1}
    assert recorder.flush()  # the day before is written and over: released

    clock.now = MIDNIGHT - 1  # a decision that read the clock before midnight, queued late
    recorder.expose(KEY, "b", "u4")
    clock.now = MIDNIGHT + 20
    assert recorder.flush()
    assert store.exposures(DAY_BEFORE) == {"a": 2}, "the day's totals were started again"
    assert store.exposures(DAY_AFTER) == {"a": 1, "b": 1}
    recorder.close()


def test_the_users_table_is_bounded_and_forgets_the_older_half(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(seen_units, "MAX_UNITS", 10)
    store = Store()
    recorder = Recorder(store, background=False, clock=Clock(MIDNIGHT - 60))
    for n in range(25):
        recorder.expose(KEY, "a", f"u{n}")
    recorder._queue.count_all()  # counted: the table is full
    assert recorder._seen.count == 10
    assert recorder.flush()  # written; the older half forgotten
    assert recorder._seen.count == 5
    assert len(store.rows) == 25
    for n in range(25):  # seen again: those remembered are not written again
        recorder.expose(KEY, "a", f"u{n}")
    assert recorder.flush()
    assert len(store.rows) == 25 + 20
    recorder.close()
