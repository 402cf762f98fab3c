"""Where the recorder writes: the telemetry and assignments tables, and a metrics service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from reconciler.runtime.telemetry import Assignment, Shard, Totals


class TelemetrySink(Protocol):
    def write_shards(self, shards: Sequence[Shard]) -> None:
        """Write each shard unless the store holds the same writer's bucket at a higher or
        equal ``seq`` already (then it is a repeat: not an error)."""


class AssignmentSink(Protocol):
    def write_assignments(self, assignments: Sequence[Assignment]) -> None:
        """Store each user's variant (idempotent: the same user again is the same row)."""


class MetricsSink(Protocol):
    def emit(self, changes: Mapping[str, Totals], at: datetime) -> None:
        """Publish what was recorded since the last flush (series name -> totals)."""
