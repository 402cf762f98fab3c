"""What a rollout's health checks read: each watched flag's cohorts over each check's window,
summed from the ops buckets' shards (five minutes each), one read of a bucket per run.

A window of N minutes covers the buckets whose five minutes end after ``now - N``: at most five
minutes more than N, never less; and none from before the rollout's last move.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime, timedelta

from reconciler.controllers.rollout_checks import Window
from reconciler.runtime.telemetry import (
    IN,
    OPS_MINUTES,
    OUT,
    ROLLOUT,
    ROLLOUT_COST,
    ROLLOUT_LATENCY,
    ROLLOUT_QUALITY,
    Totals,
    merge_shards,
    ops_bucket,
)
from reconciler.state.store import StateStore

Windows = dict[tuple[str, int], tuple[Window, Window]]  # (flag, minutes) -> (in, out)


def read_windows(
    store: StateStore,
    flags: Collection[str],
    minutes: Iterable[int],
    now: datetime,
    since: Mapping[str, datetime] | None = None,
) -> Windows:
    """Each flag's cohorts over each window; ``since``: per flag, the moment before which
    nothing counts (its rollout's last move: only buckets that start at or after it)."""
    lengths = sorted(set(minutes))
    if not flags or not lengths:
        return {}
    now = now.astimezone(UTC)
    step = timedelta(minutes=OPS_MINUTES)
    first = now - timedelta(minutes=lengths[-1])
    moment = first.replace(
        minute=first.minute - first.minute % OPS_MINUTES, second=0, microsecond=0
    )
    buckets: list[tuple[datetime, dict[str, Totals]]] = []
    while moment <= now:
        buckets.append((moment, merge_shards(store.read_shards(ops_bucket(moment)))))
        moment += step
    found: Windows = {}
    for length in lengths:
        opens = now - timedelta(minutes=length)
        for flag in flags:
            moved = (since or {}).get(flag)
            wanted = [
                series
                for start, series in buckets
                if start + step > opens and (moved is None or start >= moved)
            ]
            found[flag, length] = (cohort(wanted, flag, IN), cohort(wanted, flag, OUT))
    return found


def cohort(buckets: Iterable[dict[str, Totals]], flag: str, name: str) -> Window:
    """One cohort's outcomes over these buckets' series."""
    requests = failures = cost = costed = 0
    quality = Totals()
    latency: dict[int, int] = {}
    outcome = f"{ROLLOUT}:{flag}:{name}"
    spend = f"{ROLLOUT_COST}:{flag}:{name}"
    score = f"{ROLLOUT_QUALITY}:{flag}:{name}"
    times = f"{ROLLOUT_LATENCY}:{flag}:{name}:"
    for series in buckets:
        for key, totals in series.items():
            if key == outcome:
                requests += totals.count
                failures += int(totals.sum)
            elif key == spend:
                costed += totals.count
                cost += int(totals.sum)
            elif key == score:
                quality.merge(totals)
            elif key.startswith(times):
                try:
                    k = int(key.removeprefix(times))
                except ValueError:
                    continue
                latency[k] = latency.get(k, 0) + totals.count
    return Window(requests, failures, latency, cost, costed, quality.count, float(quality.sum))
