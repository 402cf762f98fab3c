"""Where alerts go besides the cost-alerts table: an SNS topic, when one is configured."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from reconciler.state.records import format_time
from reconciler.state.store import StateStore

TOPIC_VARIABLE = "COST_ALERTS_TOPIC_ARN"


class Alert(Protocol):
    """What every controller's alerts have (cost budgets, experiments)."""

    @property
    def alert_id(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def point(self) -> str: ...
    @property
    def message(self) -> str: ...
    def to_item(self) -> dict[str, Any]: ...


class AlertPublisher(Protocol):
    def publish(self, alert: Any) -> None: ...


REPUBLISH_AFTER = timedelta(minutes=5)  # an alert its recorder did not publish by then


def left_behind(store: StateStore, kind: str, claim: str, now: datetime) -> list[dict[str, Any]]:
    """The alerts of one controller (those with a ``kind`` attribute: ``experiment_id``,
    ``strategy_name``) recorded by another run that has not published them within
    ``REPUBLISH_AFTER``: its publisher died; this run publishes them."""
    stale = format_time(now - REPUBLISH_AFTER)
    return [
        item
        for item in store.read_alerts()
        if item.get(kind)
        and not item.get("published")
        and item.get("recorded_by") != claim
        and str(item.get("at", "")) <= stale
    ]


def publish_each(
    store: StateStore, publisher: AlertPublisher, alerts: Iterable[Alert], at: str
) -> tuple[list[str], list[str]]:
    """Publish each alert (claimed in the alerts table already) and mark it published: the
    ids published, and what failed (those stay unpublished: a later run publishes them)."""
    published, errors = [], []
    for alert in alerts:
        try:
            publisher.publish(alert)
        except Exception as exc:  # claimed, not out: a later run publishes it
            errors.append(f"{alert.alert_id}: {type(exc).__name__}: {exc}")
            continue
        store.mark_alert_published(alert.alert_id, at)
        published.append(alert.alert_id)
    return published, errors


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
            "Subject": alert.subject[:100],
            "Message": json.dumps({"default": alert.message, "json": json.dumps(message)}),
            "MessageStructure": "json",
            "MessageAttributes": {
                "source": {"DataType": "String", "StringValue": alert.group},
                "level": {"DataType": "String", "StringValue": alert.point},
            },
        }
        if self.topic_arn.endswith(".fifo"):
            arguments["MessageGroupId"] = alert.group
            arguments["MessageDeduplicationId"] = alert.alert_id.replace("@", "-")[:128]
        self.client.publish(**arguments)


def _region_of(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None
