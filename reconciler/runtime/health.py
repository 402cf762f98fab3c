"""What the recorder has done, for a health endpoint or a log line."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MAX_KINDS = 100  # kinds of rejection (and of warning) told apart; the rest count as "other"


@dataclass
class Health:
    """What the recorder has done. Reading it counts nothing: exposures decided but not
    counted yet are ``queued_exposures`` (the background thread or the flush counts them)."""

    recorded: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # not recorded, by why
    warnings: Counter[str] = field(default_factory=Counter)  # recorded, but worth a look
    flushes: int = 0
    failed_flushes: int = 0
    unflushed: int = 0  # records since the last successful flush: what a crash would lose
    lost: int = 0  # records that a final flush at close could not write
    metrics_failures: int = 0
    failed_assignment_writes: int = 0  # experiments' first exposures: kept, written later
    pending_assignments: int = 0
    queued_exposures: int = 0  # decided, not counted yet (also lost should the process die)
    last_error: str | None = None
    last_flush_at: str | None = None

    def reject(self, why: str, times: int = 1) -> None:
        """Count ``times`` values that were not recorded, by why."""
        if times > 0:
            self.rejected[_kind(self.rejected, why)] += times

    def warn(self, why: str) -> None:
        """Count a record that went in but deserves a look."""
        self.warnings[_kind(self.warnings, why)] += 1


def _kind(counts: Counter[str], why: str) -> str:
    return why if why in counts or len(counts) < MAX_KINDS else "other"
