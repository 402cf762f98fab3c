"""The local store's experiment records: first exposures (hashed ids) and daily results.

A mixin of ``LocalStore``, like its telemetry: the one SQLite file holds the original
``AB_ASSIGNMENTS_TABLE`` and ``AB_RESULTS_TABLE`` as two tables.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reconciler.runtime.sources import ASSIGNMENTS_DDL, UPSERT_ASSIGNMENT
from reconciler.runtime.telemetry import Assignment
from reconciler.state.records import Item
from reconciler.state.sqlite import dump, transaction

EXPERIMENTS_SCHEMA = f"""
{ASSIGNMENTS_DDL};
CREATE TABLE IF NOT EXISTS ab_results (
    experiment_id TEXT NOT NULL, result_key TEXT NOT NULL, item TEXT NOT NULL,
    PRIMARY KEY (experiment_id, result_key)
);
"""


class LocalExperiments:
    """Experiment assignments and results in the local store."""

    _mutex: threading.RLock

    if TYPE_CHECKING:

        def _connect(self, *, create: bool) -> sqlite3.Connection | None: ...  # LocalStore's

    def write_assignments(self, assignments: Sequence[Assignment]) -> None:
        with self._mutex:
            connection = self._connect(create=True)
            assert connection is not None
            with transaction(connection):
                connection.executemany(
                    UPSERT_ASSIGNMENT,
                    [
                        (a.experiment, a.user_hash, a.variant, a.cluster, a.seen_at)
                        for a in assignments
                    ],
                )

    def read_assignment_counts(self, experiment: str) -> dict[tuple[str, int], int]:
        """Users per (variant, cluster) of an experiment's recording key."""
        with self._mutex:
            connection = self._connect(create=False)
            if connection is None:
                return {}
            rows = connection.execute(
                "SELECT variant, cluster, count(*) FROM ab_assignments "
                "WHERE experiment_id = ? GROUP BY variant, cluster",
                (experiment,),
            )
            return {(str(v), int(c)): int(n) for v, c, n in rows}

    def write_results(self, rows: Sequence[Item]) -> None:
        """Set each row to its totals unless the stored one counts more (a slower run's older
        reading never moves a row back)."""
        with self._mutex:
            connection = self._connect(create=True)
            assert connection is not None
            with transaction(connection):
                for row in rows:
                    key = (row["experiment_id"], row["result_key"])
                    current = connection.execute(
                        "SELECT item FROM ab_results WHERE experiment_id = ? AND result_key = ?",
                        key,
                    ).fetchone()
                    if current is not None and int(json.loads(current[0])["count"]) > int(
                        row["count"]
                    ):
                        continue
                    connection.execute(
                        "INSERT OR REPLACE INTO ab_results (experiment_id, result_key, item) "
                        "VALUES (?, ?, ?)",
                        (*key, dump(row)),
                    )

    def read_results(self, experiment: str) -> list[Item]:
        with self._mutex:
            connection = self._connect(create=False)
            if connection is None:
                return []
            rows = connection.execute(
                "SELECT item FROM ab_results WHERE experiment_id = ? ORDER BY result_key",
                (experiment,),
            )
            return [json.loads(item) for (item,) in rows]
