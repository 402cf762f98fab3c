"""Reading spend: the live shards of the recent days, the stored rollups of older ones.

Today's and yesterday's spend (in every time zone a budget uses) is summed from the writers'
shards, which is exact and current; those sums are also what the guard writes to the original
cost-metrics table (one row per date and request type). Older days of a monthly period are read
back from those rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from reconciler.runtime.budgets import UTC_ZONE, Budget, period_at, usd
from reconciler.runtime.telemetry import (
    COST,
    TOKENS,
    Shard,
    Totals,
    cost_bucket,
    merge_shards,
    split_series,
)
from reconciler.state.records import Item, format_time
from reconciler.state.store import StateStore


@dataclass(frozen=True)
class DaySpend:
    """One request type's spend on one local date of one time zone."""

    date: str
    time_zone: str
    request_type: str
    cost_micros: int
    requests: int
    tokens: int
    max_request_micros: int = 0

    @property
    def key(self) -> str:
        """The cost-metrics table's ``date``: the date for UTC (the original's items), the date
        and zone for another zone."""
        return self.date if self.time_zone == UTC_ZONE else f"{self.date}@{self.time_zone}"

    def to_row(self, now: datetime) -> Item:
        return {
            "date": self.key,
            "request_type": self.request_type,
            "daily_cost": usd(self.cost_micros),
            "cost_micros": self.cost_micros,
            "total_requests": self.requests,
            "total_tokens": self.tokens,
            "time_zone": self.time_zone,
            "last_updated": format_time(now),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> DaySpend:
        key = str(row["date"])
        date, _, zone = key.partition("@")
        return cls(
            date,
            zone or UTC_ZONE,
            str(row["request_type"]),
            int(str(row.get("cost_micros", 0))),
            int(str(row.get("total_requests", 0))),
            int(str(row.get("total_tokens", 0))),
        )


@dataclass(frozen=True)
class SpendReading:
    read_at: datetime
    days: Sequence[DaySpend]  # every (zone, date, request type) read
    live: Sequence[DaySpend]  # those summed from shards just now (the rows to write)
    writers: Mapping[str, str] = field(default_factory=dict)  # writer -> last flush, today UTC
    rolled_up: Mapping[str, str] = field(default_factory=dict)  # zone -> last day summed whole

    def by_type(self, time_zone: str, dates: Iterable[str]) -> dict[str, int]:
        wanted = set(dates)
        spend: dict[str, int] = {}
        for day in self.days:
            if day.time_zone == time_zone and day.date in wanted:
                spend[day.request_type] = spend.get(day.request_type, 0) + day.cost_micros
        return spend

    def budget_spend(self, budget: Budget, now: datetime) -> int:
        period = budget.period_at(now)
        return budget.spent(self.by_type(budget.time_zone, period.days))


def day_spend(date: str, time_zone: str, shards: Sequence[Shard]) -> list[DaySpend]:
    merged: Mapping[str, Totals] = merge_shards(shards)
    types = sorted({split_series(name)[1] for name in merged if name.startswith(COST + ":")})
    days = []
    for request_type in types:
        cost = merged[f"{COST}:{request_type}"]
        tokens = merged.get(f"{TOKENS}:{request_type}")
        days.append(
            DaySpend(
                date,
                time_zone,
                request_type,
                int(cost.sum),
                cost.count,
                int(tokens.sum) if tokens else 0,
                int(cost.hi or 0),
            )
        )
    return days


def read_spend(
    store: StateStore,
    budgets: Sequence[Budget],
    now: datetime,
    rolled_up: Mapping[str, str] | None = None,
) -> SpendReading:
    """Everything the budgets need at ``now``, read from ``store`` (a StateStore).

    Today and yesterday come from the shards; an older day of a period from its stored rows
    once the guard has summed it whole (``rolled_up``: per zone, the last such day), and from
    its shards until then, so a day no guard saw while it was recent is still counted."""
    done = dict(rolled_up or {})
    read_at = now
    zones = sorted({UTC_ZONE, *(b.time_zone for b in budgets)})
    live: list[DaySpend] = []
    writers: dict[str, str] = {}
    recent: set[tuple[str, str]] = set()
    for zone in zones:
        today = period_at("daily", zone, now).today
        yesterday = period_at("daily", zone, now - timedelta(days=1)).today
        for date in (yesterday, today):
            shards = store.read_shards(cost_bucket(date, zone))
            live.extend(day_spend(date, zone, shards))
            recent.add((zone, date))
            if zone == UTC_ZONE and date == today:
                writers = {s.writer: s.updated_at for s in shards}
    older: list[DaySpend] = []
    wanted = {(b.time_zone, d) for b in budgets for d in b.period_at(now).days} - recent
    marks = dict(done)
    for zone, date in sorted(wanted):
        if date <= done.get(zone, ""):
            key = date if zone == UTC_ZONE else f"{date}@{zone}"
            older.extend(DaySpend.from_row(r) for r in store.read_cost_metrics(key))
            continue
        live.extend(day_spend(date, zone, store.read_shards(cost_bucket(date, zone))))
        marks[zone] = max(marks.get(zone, ""), date)  # summed whole: its rows are final
    return SpendReading(read_at, [*older, *live], live, writers, marks)


def observed_rate(
    reading: SpendReading, now: datetime, recent_burn_micros: Decimal = Decimal(0)
) -> tuple[int, Decimal, Decimal]:
    """From the telemetry: the processes that flushed in the last five minutes, the fleet's
    spend in USD per second, and the dearest request today (USD). The spend rate is the higher
    of today's average and ``recent_burn_micros`` (micro-dollars a second since the guard's
    last reading), so a burst is not averaged away."""
    today = period_at("daily", UTC_ZONE, now)
    rows = [d for d in reading.live if d.time_zone == UTC_ZONE and d.date == today.today]
    elapsed = max((now - today.start).total_seconds(), 1.0)
    average = Decimal(sum(d.cost_micros for d in rows)) / Decimal(str(elapsed))
    recent = format_time(now - timedelta(minutes=5))
    active = sum(1 for stamp in reading.writers.values() if stamp >= recent)
    dearest = usd(max((d.max_request_micros for d in rows), default=0))
    return max(active, 1), max(average, recent_burn_micros) / 1_000_000, dearest
