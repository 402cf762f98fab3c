"""DynamoDB's experiment records: first exposures (``AB_ASSIGNMENTS_TABLE``) and daily results
(``AB_RESULTS_TABLE``).

A mixin of ``DynamoDBStore``. Assignments sit under ``SHARD_SPREAD`` partition keys per
experiment (``<key>#<n>``), so first exposures of a popular experiment spread their writes;
results are one item per experiment, day, variant and metric, set to absolute totals and never
moved back by a slower analyser run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from reconciler.runtime.sources import ASSIGNMENTS_TABLE, write_assignment_items
from reconciler.runtime.telemetry import SHARD_SPREAD, Assignment, dynamodb_item
from reconciler.state.dynamodb_telemetry import CONDITION_FAILED, DynamoDBTelemetry
from reconciler.state.records import AB_RESULTS_TABLE, Item


class DynamoDBExperiments(DynamoDBTelemetry):
    """Experiment assignments and results in DynamoDB."""

    @property
    def assignments_table(self) -> str:
        return self.tables[ASSIGNMENTS_TABLE[0]]

    @property
    def results_table(self) -> str:
        return self.tables[AB_RESULTS_TABLE[0]]

    def write_assignments(self, assignments: Sequence[Assignment]) -> None:
        self._call(
            "BatchWriteItem",
            lambda: write_assignment_items(
                self.client.batch_write_item, self.assignments_table, assignments
            ),
            tables=[self.assignments_table],
        )

    def read_assignment_counts(self, experiment: str) -> dict[tuple[str, int], int]:
        """Users per (variant, cluster): one paginated Query per partition key, projecting
        only the two attributes it counts."""
        counts: dict[tuple[str, int], int] = {}
        for n in range(SHARD_SPREAD):
            arguments: dict[str, Any] = {
                "TableName": self.assignments_table,
                "KeyConditionExpression": "assignment_key = :key",
                "ExpressionAttributeValues": {":key": {"S": f"{experiment}#{n}"}},
                "ProjectionExpression": "variant, #cluster",
                "ExpressionAttributeNames": {"#cluster": "cluster"},
            }
            while True:
                page = self._call(
                    "Query",
                    lambda arguments=arguments: self.client.query(**arguments),  # type: ignore[misc]
                    tables=[self.assignments_table],
                )
                for raw in page.get("Items", []):
                    key = (raw["variant"]["S"], int(raw["cluster"]["N"]))
                    counts[key] = counts.get(key, 0) + 1
                start = page.get("LastEvaluatedKey")
                if not start:
                    break
                arguments = {**arguments, "ExclusiveStartKey": start}
        return counts

    def write_results(self, rows: Sequence[Item]) -> None:
        for row in rows:
            try:
                self._call(
                    "PutItem",
                    lambda row=row: self.client.put_item(  # type: ignore[misc]
                        TableName=self.results_table,
                        Item=dynamodb_item(row),
                        ConditionExpression="attribute_not_exists(#count) OR #count <= :count",
                        ExpressionAttributeNames={"#count": "count"},
                        ExpressionAttributeValues={":count": {"N": str(int(row["count"]))}},
                    ),
                    handled={CONDITION_FAILED},
                    tables=[self.results_table],
                )
            except ClientError:
                continue  # a run with a newer reading wrote more already

    def read_results(self, experiment: str) -> list[Item]:
        rows = self._query(self.results_table, "experiment_id", experiment)
        return sorted(rows, key=lambda r: str(r.get("result_key")))
