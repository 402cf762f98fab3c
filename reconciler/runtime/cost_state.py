"""The cost guard's state: what spend means now, as the guard writes it and the runtime reads it.

One record of the control table (``cost_guard``), written only by the cost guard, read by every
runtime client on its short poll. Per budget: the period, the spend the guard counted and when it
read it, the level reached. Per flag: throttled (by a factor) or shut down, until the period
ends: a client lifts an expired state by itself at midnight, before the guard's next run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

COST_GUARD_ID = "cost_guard"
LEVELS = ("ok", "warning", "throttled", "emergency")  # in rising order


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class BudgetState:
    name: str
    period: str  # 2026-12-01, or 2026-12 for a monthly budget
    time_zone: str
    period_end: str
    spent_micros: int
    level: str  # one of LEVELS
    since: str  # when this level was reached

    def to_item(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "time_zone": self.time_zone,
            "period_end": self.period_end,
            "spent_micros": self.spent_micros,
            "level": self.level,
            "since": self.since,
        }


@dataclass(frozen=True)
class FlagCost:
    """A flag throttled or shut down by a budget, until ``until``."""

    flag: str
    state: str  # throttled | emergency
    budget: str
    factor: float  # the share of users kept: 0 when shut down
    until: str
    detail: str
    since: str

    def to_item(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "budget": self.budget,
            "factor": self.factor,
            "until": self.until,
            "detail": self.detail,
            "since": self.since,
        }

    def in_force(self, now: datetime) -> bool:
        until = parse_time(self.until)
        return until is None or now < until


@dataclass(frozen=True)
class CostState:
    version: int = 0
    read_at: str = ""  # when the guard read the telemetry these figures come from
    updated_at: str = ""
    budgets: Mapping[str, BudgetState] = field(default_factory=dict)
    flags: Mapping[str, FlagCost] = field(default_factory=dict)

    def to_item(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "read_at": self.read_at,
            "updated_at": self.updated_at,
            "budgets": {name: b.to_item() for name, b in sorted(self.budgets.items())},
            "flags": {name: f.to_item() for name, f in sorted(self.flags.items())},
        }

    @property
    def read_time(self) -> datetime | None:
        return parse_time(self.read_at)


def cost_state_from_item(item: Mapping[str, Any] | None) -> CostState:
    """The record as stored; entries that cannot be read are left out, never raised."""
    if not item:
        return CostState()
    budgets = {}
    for name, entry in (item.get("budgets") or {}).items():
        try:
            budgets[str(name)] = BudgetState(
                str(name),
                str(entry["period"]),
                str(entry.get("time_zone", "UTC")),
                str(entry.get("period_end", "")),
                int(entry.get("spent_micros", 0)),
                str(entry.get("level", "ok")),
                str(entry.get("since", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    flags = {}
    for name, entry in (item.get("flags") or {}).items():
        try:
            flags[str(name)] = FlagCost(
                str(name),
                str(entry["state"]),
                str(entry.get("budget", "")),
                float(entry.get("factor", 1.0)),
                str(entry.get("until", "")),
                str(entry.get("detail", "")),
                str(entry.get("since", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return CostState(
        int(item.get("version", 0)),
        str(item.get("read_at", "")),
        str(item.get("updated_at", "")),
        budgets,
        flags,
    )
