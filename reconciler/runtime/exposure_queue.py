"""Experiment exposures between the request path and their totals: each decision appends one
to a deque (no lock); they are counted off it, a chunk at a time under the recorder's lock:
added to their day's totals, and each unit not seen before in its variant queued for the
assignments table. Counting never raises: a chunk that cannot be counted (a bad value that
slipped past ``Recorder.expose``, a clock that returns something else than epoch seconds) is
dropped and counted as rejected (``internal``; what of it was counted before the error stays
counted), and logged the first time."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from datetime import UTC, datetime
from operator import itemgetter

from reconciler.runtime.health import Health
from reconciler.runtime.seen_units import Exposure, SeenUnits
from reconciler.runtime.series_store import DAY, SeriesStore
from reconciler.runtime.telemetry import experiment_bucket

log = logging.getLogger("reconciler.runtime")

# A queued exposure holds about 165 bytes (its tuple, its own unit string of a dozen characters,
# its time and its slot in the deque; the key and variant strings are shared).
MAX_PENDING_EXPOSURES = 100_000
COUNT_CHUNK = 2_000  # exposures counted per hold of the lock (0.6 to 0.9 ms, new users)
_KEY, _VARIANT, _AT = itemgetter(0), itemgetter(1), itemgetter(3)  # of an Exposure


class ExposureQueue:
    """The exposures decided and not counted yet (``items``), and their counting."""

    def __init__(
        self,
        lock: threading.Lock,
        store: SeriesStore,
        seen: SeenUnits,
        health: Health,
        *,
        limit: int,
        wake: threading.Event,
    ) -> None:
        self.items: deque[Exposure] = deque()
        self.limit = limit  # the queue's bound
        self.wake = wake  # set: the background thread counts the queue
        self.lock = lock
        self.store = store
        self.seen = seen
        self.health = health
        self._failed = False

    def threshold(self, thread: threading.Thread | None) -> int:
        """How many queued exposures have them counted before the next flush: half the bound
        for a live background thread to count, else the bound."""
        if thread is not None and thread.is_alive():
            return max(1, self.limit // 2)
        return max(1, self.limit)

    def filling(self, thread: threading.Thread | None) -> None:
        """The queue reached its threshold (on a request thread): a live background thread is
        woken to count it; without one, or with the queue at its bound all the same (a thread
        held up writing), one chunk is counted here: the bound holds, and no call does more."""
        if thread is not None and thread.is_alive() and len(self.items) < self.limit:
            if not self.wake.is_set():
                self.wake.set()
            return
        self.count_chunk()

    def count_all(self) -> None:
        """Count the exposures queued so far, chunk by chunk (those queued meanwhile wait)."""
        left = len(self.items)
        while left > 0:
            taken = self.count_chunk()
            if not taken:
                return
            left -= taken

    def count_chunk(self, most: int = COUNT_CHUNK) -> int:
        """Count at most ``most`` of the oldest exposures, under the lock; how many were taken.
        Never raises."""
        with self.lock:
            batch: list[Exposure] = []
            try:
                popleft = self.items.popleft
                batch = [popleft() for _ in range(min(most, len(self.items)))]
                if batch:
                    self._count(batch)
            except Exception as exc:  # dropped: nothing else may stop for it
                self._dropped(batch, exc)
            return len(batch)

    def _dropped(self, batch: list[Exposure], exc: Exception) -> None:
        self.health.reject("internal", len(batch))
        self.health.last_error = f"exposures: {type(exc).__name__}: {exc}"
        if not self._failed:
            self._failed = True
            log.error(
                "telemetry: %d exposure(s) could not be counted and were dropped",
                len(batch),
                exc_info=exc,
            )

    def _count(self, batch: list[Exposure]) -> None:
        """Count exposures taken from the queue, experiment by experiment."""
        store = self.store
        latest = max(map(_AT, batch))
        if latest >= store.ab_ends:
            store.set_ab_day(latest)  # the first exposures of a new day
        keys = set(map(_KEY, batch))
        if len(keys) == 1:  # one experiment (the common case)
            self._count_experiment(keys.pop(), batch)
            return
        by_key: dict[str, list[Exposure]] = {key: [] for key in keys}
        for entry in batch:
            by_key[entry[0]].append(entry)
        for key, entries in by_key.items():
            self._count_experiment(key, entries)

    def _count_experiment(self, key: str, batch: list[Exposure]) -> None:
        """The exposures of one experiment: counted in their day's buckets, and its units not
        seen before in their variant queued for the assignments table."""
        store = self.store
        ends = store.ab_ends
        if min(map(_AT, batch)) >= ends - DAY:  # all of today (the common case)
            variants = Counter(map(_VARIANT, batch))
            refused = store.add_exposures(key, variants, store.ab_day, ends)
        else:
            refused = set()
            for (day, day_ends), entries in self._by_day(key, batch).items():
                variants = Counter(map(_VARIANT, entries))
                refused |= store.add_exposures(key, variants, day, day_ends)
        if refused:
            batch = [entry for entry in batch if entry[1] not in refused]
        self.seen.remember(key, batch)

    def _by_day(self, key: str, batch: list[Exposure]) -> dict[tuple[str, float], list[Exposure]]:
        """Exposures of several days (a queue counted after midnight): each in its day's
        bucket, unless this process has written and released that one, then in today's (a
        day is never started again from nothing: its absolute totals would shrink)."""
        found: dict[tuple[str, float], list[Exposure]] = {}
        today = (self.store.ab_day, self.store.ab_ends)
        for entry in batch:
            at, where = entry[3], today
            if not today[1] - DAY <= at < today[1]:
                ends = (at // DAY + 1) * DAY
                day = datetime.fromtimestamp(ends - DAY, UTC).strftime("%Y-%m-%d")
                if experiment_bucket(key, day) not in self.store.released:
                    where = (day, ends)
            found.setdefault(where, []).append(entry)
        return found
