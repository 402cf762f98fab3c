"""How far spend can run past a limit before every process stops: the admission delay's bound.

A process knows the cost guard's count plus its own spend; what it cannot know is what the other
processes spent since the guard last read their flushed totals. That window is at most one flush
interval (their totals reach the store), one guard interval (the guard reads and writes its
state) and one poll interval (the process reads the state). Over the window the whole fleet may
spend at its full rate, and each process may have one admitted request in flight when the limit
is crossed, so

    overshoot <= burn rate * (flush + guard + poll) + processes * dearest request

where the burn rate is the fleet's spend per second (processes x requests per second x cost per
request, when those are given). The figure shrinks with shorter intervals; `controller cost`
prints it with the inputs it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from reconciler.runtime.budgets import format_usd, to_micros


@dataclass(frozen=True)
class Overshoot:
    burn_usd_per_second: Decimal  # the fleet's spend rate
    processes: int
    dearest_usd: Decimal  # the most one request costs
    flush_seconds: Decimal
    guard_seconds: Decimal
    poll_seconds: Decimal
    source: str = "given"  # given on the command line, or observed in today's telemetry

    @property
    def delay_seconds(self) -> Decimal:
        return self.flush_seconds + self.guard_seconds + self.poll_seconds

    @property
    def bound_usd(self) -> Decimal:
        window = self.burn_usd_per_second * self.delay_seconds
        return (window + self.processes * self.dearest_usd).quantize(Decimal("0.01"))

    def explain(self) -> str:
        return (
            f"{_money(self.burn_usd_per_second)}/s of spend ({self.source}) x "
            f"{_seconds(self.delay_seconds)} (flush {_seconds(self.flush_seconds)} + guard "
            f"{_seconds(self.guard_seconds)} + poll {_seconds(self.poll_seconds)}), plus one "
            f"request in flight in each of {self.processes:,} process(es) at "
            f"{_money(self.dearest_usd)}"
        )

    @property
    def bound_text(self) -> str:
        return format_usd(to_micros(self.bound_usd))


def _money(value: Decimal) -> str:
    return f"${value:,.4f}".rstrip("0").rstrip(".") if value < 1 else format_usd(to_micros(value))


def _seconds(value: Decimal) -> str:
    text = f"{value:f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + " s"


def bound(
    processes: int,
    rate: Decimal,
    dearest_usd: Decimal,
    *,
    flush_seconds: float = 10.0,
    guard_seconds: float = 60.0,
    poll_seconds: float = 5.0,
    burn_usd_per_second: Decimal | None = None,
    source: str = "given",
) -> Overshoot:
    """The bound for ``processes`` each making ``rate`` requests a second of at most
    ``dearest_usd``; or for a fleet spending ``burn_usd_per_second`` when that is known."""
    processes = max(processes, 1)
    burn = (
        burn_usd_per_second if burn_usd_per_second is not None else processes * rate * dearest_usd
    )
    return Overshoot(
        burn,
        processes,
        dearest_usd,
        Decimal(str(flush_seconds)),
        Decimal(str(guard_seconds)),
        Decimal(str(poll_seconds)),
        source,
    )
