"""Where alerts go besides the cost-alerts table: an SNS topic, when one is configured."""

from __future__ import annotations

import json
from typing import Any

from reconciler.controllers.cost_guard import Alert

TOPIC_VARIABLE = "COST_ALERTS_TOPIC_ARN"


class SnsPublisher:
    """Publishes each alert once per call; on a FIFO topic the alert id is also SNS's
    deduplication id, so a repeat within five minutes is dropped by SNS itself."""

    def __init__(self, topic_arn: str, client: Any = None, *, region: str | None = None) -> None:
        self.topic_arn = topic_arn
        if client is None:
            import boto3  # noqa: PLC0415 - only a guard with a topic needs SNS

            client = boto3.client("sns", region_name=region or _region_of(topic_arn))
        self.client = client

    def describe(self) -> str:
        return f"SNS topic {self.topic_arn}"

    def publish(self, alert: Alert) -> None:
        message = {
            "default": alert.message,
            "alert": {k: v for k, v in alert.to_item().items() if k != "published"},
        }
        arguments: dict[str, Any] = {
            "TopicArn": self.topic_arn,
            "Subject": f"AI cost: {alert.budget} {alert.point}"[:100],
            "Message": json.dumps({"default": alert.message, "json": json.dumps(message)}),
            "MessageStructure": "json",
            "MessageAttributes": {
                "budget": {"DataType": "String", "StringValue": alert.budget},
                "level": {"DataType": "String", "StringValue": alert.point},
            },
        }
        if self.topic_arn.endswith(".fifo"):
            arguments["MessageGroupId"] = alert.budget
            arguments["MessageDeduplicationId"] = alert.alert_id.replace("@", "-")[:128]
        self.client.publish(**arguments)


def _region_of(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None
