"""What an experiment's services recorded, summed: per day, variant and metric, from the
telemetry shards of recent days and from the results rows of days long past.

The shell reads; everything here but :func:`read_experiment_data` is pure. A day's totals are
the sum over writers of their shards (``reconciler.runtime.telemetry``); from the day after
tomorrow on, its results rows in ``AB_RESULTS_TABLE`` stand for it, provided they were written
from the shards after the day was over (every analyser run writes them while the day is recent;
rows written earlier are replaced from the shards, kept 45 days), so long experiments read a
handful of items, not weeks of shards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from reconciler.runtime.telemetry import (
    CLUSTER,
    EXPOSURES,
    METRIC,
    Totals,
    experiment_bucket,
    merge_shards,
)
from reconciler.state.records import Item, format_time
from reconciler.state.store import StateStore

MAX_DAYS = 400  # the longest experiment read
EXPOSURE_SERIES = "exposures"


@dataclass
class MetricData:
    """One variant's values of one metric: their totals, and per user cluster (count, sum)."""

    totals: Totals = field(default_factory=Totals)
    clusters: dict[int, Totals] = field(default_factory=dict)

    def merge(self, other: MetricData) -> None:
        self.totals.merge(other.totals)
        for cluster, totals in other.clusters.items():
            self.clusters.setdefault(cluster, Totals()).merge(totals)


@dataclass
class ExperimentData:
    """Everything recorded for one recording key, over the days read."""

    key: str
    days: list[str] = field(default_factory=list)
    days_with_data: list[str] = field(default_factory=list)
    exposures: dict[str, int] = field(default_factory=dict)  # variant -> decisions
    metrics: dict[tuple[str, str], MetricData] = field(default_factory=dict)  # (variant, metric)
    users: dict[tuple[str, int], int] = field(default_factory=dict)  # (variant, cluster) -> users
    read_at: str = ""

    def users_of(self, variant: str) -> int:
        return sum(n for (v, _), n in self.users.items() if v == variant)


def day_series(series: Mapping[str, Totals]) -> dict[tuple[str, str], MetricData]:
    """One day's merged series, by (variant, metric); exposures under ``EXPOSURE_SERIES``."""
    found: dict[tuple[str, str], MetricData] = {}
    for name, totals in series.items():
        kind, _, rest = name.partition(":")
        if kind == EXPOSURES:
            found.setdefault((rest, EXPOSURE_SERIES), MetricData()).totals.merge(totals)
        elif kind == METRIC:
            variant, _, metric = rest.partition(":")
            found.setdefault((variant, metric), MetricData()).totals.merge(totals)
        elif kind == CLUSTER:
            variant, metric, number = _cluster_parts(rest)
            if number is not None:
                data = found.setdefault((variant, metric), MetricData())
                data.clusters.setdefault(number, Totals()).merge(totals)
    return found


def _cluster_parts(rest: str) -> tuple[str, str, int | None]:
    head, _, number = rest.rpartition(":")
    variant, _, metric = head.partition(":")
    try:
        return variant, metric, int(number)
    except ValueError:
        return variant, metric, None


def to_rows(key: str, day: str, data: Mapping[tuple[str, str], MetricData], at: str) -> list[Item]:
    """A day's results rows (the original ``AB_RESULTS_TABLE``): per variant and metric, the
    count, sum and sum of squares, and the clusters' counts and sums; then the day's seal."""
    rows: list[Item] = [
        {
            "experiment_id": key,
            "result_key": f"{day}#{variant}#{metric}",
            "day": day,
            "variant": variant,
            "metric": metric,
            "count": found.totals.count,
            "sum": found.totals.sum,
            "sum_sq": found.totals.sq,
            "clusters": {
                str(n): [t.count, t.sum] for n, t in sorted(found.clusters.items()) if t.count
            },
            "updated_at": at,
        }
        for (variant, metric), found in sorted(data.items())
    ]
    # The day's seal, written last: rows stand for the day only under a seal written after it
    # ended (a run that failed halfway leaves the old seal, and the day is read again).
    rows.append(
        {"experiment_id": key, "result_key": f"{day}#", "day": day, "count": 0, "updated_at": at}
    )
    return rows


def from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[tuple[str, str], MetricData]]:
    """Results rows back into per-day data (days with only a marker row map to nothing)."""
    days: dict[str, dict[tuple[str, str], MetricData]] = {}
    for row in rows:
        day = str(row.get("day", ""))
        found = days.setdefault(day, {})
        if not row.get("variant"):
            continue
        data = MetricData(
            Totals(int(row["count"]), float(row["sum"]), float(row.get("sum_sq", 0.0))),
            {
                int(n): Totals(int(pair[0]), float(pair[1]))
                for n, pair in (row.get("clusters") or {}).items()
            },
        )
        found[(str(row["variant"]), str(row["metric"]))] = data
    return days


def days_between(start: date, today: date) -> list[str]:
    start = max(start, today - timedelta(days=MAX_DAYS - 1))
    return [(start + timedelta(days=n)).isoformat() for n in range((today - start).days + 1)]


def read_experiment_data(
    store: StateStore, key: str, start: date, now: datetime
) -> tuple[ExperimentData, list[Item]]:
    """The experiment's data from ``start`` (a UTC day) to today, and the results rows to write
    for the days read from shards."""
    today = now.date()
    settled = (today - timedelta(days=1)).isoformat()  # days before it are read from rows
    results = store.read_results(key)
    stored = from_rows(results)
    sealed = {
        str(row.get("day", "")): str(row.get("updated_at", ""))
        for row in results
        if not row.get("variant")
    }
    data = ExperimentData(key, read_at=format_time(now))
    rows: list[Item] = []
    at = format_time(now)
    for day in days_between(start, today):
        sealed_after = sealed.get(day, "") >= _closed(day)
        found = stored.get(day) if day < settled and sealed_after else None
        if found is None:
            found = day_series(merge_shards(store.read_shards(experiment_bucket(key, day))))
            rows.extend(to_rows(key, day, found, at))
        data.days.append(day)
        if found:
            data.days_with_data.append(day)
        for (variant, metric), values in found.items():
            if metric == EXPOSURE_SERIES:
                data.exposures[variant] = data.exposures.get(variant, 0) + values.totals.count
            else:
                data.metrics.setdefault((variant, metric), MetricData()).merge(values)
    data.users = store.read_assignment_counts(key)
    return data, rows


def _closed(day: str) -> str:
    """When a day's rows, written from then on, hold every shard of it: an hour after its end
    (shards are flushed every few seconds; a process more than an hour late is not waited for)."""
    end = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1, hours=1)
    return format_time(end)


def cluster_pairs(
    data: ExperimentData, variant: str, metric: str, *, per_user: bool
) -> Sequence[tuple[float, float]]:
    """(Y_b, N_b) per cluster of a variant: the sum of values, and the number of values (or,
    ``per_user``, of users: a count metric's denominator, users without events included)."""
    found = data.metrics.get((variant, metric), MetricData())
    clusters = {n for (v, n) in data.users if v == variant} | set(found.clusters)
    pairs = []
    for n in sorted(clusters):
        totals = found.clusters.get(n, Totals())
        size = data.users.get((variant, n), 0) if per_user else totals.count
        pairs.append((float(totals.sum), float(size)))
    return pairs
