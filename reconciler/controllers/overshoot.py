"""How far spend can run past a limit before every process stops: the admission delay's bound.

A process knows the cost guard's count plus its own spend; what it cannot know is what the other
processes spent since the guard last read their flushed totals. That window is at most one flush
interval (their totals reach the store), one guard interval (the guard reads and writes its
state) and one poll interval (the process reads the state). Over the window every process may
admit requests at its full rate, and each may have one admitted request in flight when the
limit is crossed, so

    overshoot <= processes * rate * dearest request * (flush + guard + poll) + processes * dearest

The figure shrinks with shorter intervals; `controller cost` prints it with the inputs it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Overshoot:
    processes: int
    rate: Decimal  # requests per second, per process
    dearest_usd: Decimal  # the most one request costs
    flush_seconds: Decimal
    guard_seconds: Decimal
    poll_seconds: Decimal

    @property
    def delay_seconds(self) -> Decimal:
        return self.flush_seconds + self.guard_seconds + self.poll_seconds

    @property
    def bound_usd(self) -> Decimal:
        window = self.processes * self.rate * self.dearest_usd * self.delay_seconds
        return (window + self.processes * self.dearest_usd).quantize(Decimal("0.01"))

    def explain(self) -> str:
        return (
            f"{self.processes} process(es) x {self.rate:.2f} requests/s x ${self.dearest_usd} "
            f"x {_seconds(self.delay_seconds)} (flush {_seconds(self.flush_seconds)} + guard "
            f"{_seconds(self.guard_seconds)} + poll {_seconds(self.poll_seconds)}), plus one "
            "request in flight each"
        )


def _seconds(value: Decimal) -> str:
    return f"{value:f}".rstrip("0").rstrip(".") + " s" if "." in f"{value:f}" else f"{value} s"


def bound(
    processes: int,
    rate: Decimal,
    dearest_usd: Decimal,
    *,
    flush_seconds: float = 10.0,
    guard_seconds: float = 60.0,
    poll_seconds: float = 5.0,
) -> Overshoot:
    return Overshoot(
        max(processes, 1),
        rate,
        dearest_usd,
        Decimal(str(flush_seconds)),
        Decimal(str(guard_seconds)),
        Decimal(str(poll_seconds)),
    )
