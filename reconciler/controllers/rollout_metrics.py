"""Custom metrics for rollout checks, read from CloudWatch with ``GetMetricData``: metrics that
services publish elsewhere (a hallucination rate, a support-ticket count).

Each check's metric is read over its window at one-minute resolution, as sums and counts that
combine exactly however CloudWatch aligns its periods: ``Average`` is the sum over the sample
count, ``Sum``, ``SampleCount``, ``Minimum`` and ``Maximum`` what they say. The sample count is
what the check's minimum sample is compared with. One request for every check of a run (up to
500 queries a request).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from reconciler.controllers.rollout_checks import Metric
from reconciler.runtime.sources import aws_region

PERIOD = 60  # seconds: CloudWatch's resolution for standard metrics
MAX_QUERIES = 500  # a GetMetricData request's limit
_PARTS = {"Average": ("Sum",), "Sum": ("Sum",), "Minimum": ("Minimum",), "Maximum": ("Maximum",)}


class MetricSource(Protocol):
    def measure(
        self, wanted: Sequence[tuple[Metric, int]], now: datetime
    ) -> list[tuple[float | None, int, str]]:
        """For each (metric, window minutes): the statistic, its sample count, and why there is
        no value when there is none."""


class CloudWatchReader:
    """Reads custom metrics with ``GetMetricData`` (boto3's client for CloudWatch, as boto3
    finds its region and credentials unless given)."""

    def __init__(self, client: Any = None, *, region: str | None = None) -> None:
        if client is None:
            import boto3  # noqa: PLC0415 - only a controller with custom metrics needs it

            client = boto3.client("cloudwatch", region_name=region or aws_region())
        self.client = client

    def describe(self) -> str:
        return "CloudWatch GetMetricData"

    def measure(
        self, wanted: Sequence[tuple[Metric, int]], now: datetime
    ) -> list[tuple[float | None, int, str]]:
        queries: list[dict[str, Any]] = []
        for index, (metric, _minutes) in enumerate(wanted):
            for part in ("SampleCount", *_PARTS.get(metric.statistic, ())):
                queries.append(_query(f"m{index}_{part.lower()}", metric, part))
        points: dict[str, list[tuple[datetime, float]]] = {}
        longest = max((minutes for _, minutes in wanted), default=0)
        try:
            for first in range(0, len(queries), MAX_QUERIES):
                batch = queries[first : first + MAX_QUERIES]
                points.update(self._read(batch, now - timedelta(minutes=longest), now))
        except Exception as exc:  # unreadable: every check of it is insufficient, and says why
            why = f"CloudWatch: {type(exc).__name__}: {exc}"
            return [(None, 0, why) for _ in wanted]
        return [
            _combine(metric, points, f"m{index}", now - timedelta(minutes=minutes))
            for index, (metric, minutes) in enumerate(wanted)
        ]

    def _read(
        self, queries: list[dict[str, Any]], start: datetime, end: datetime
    ) -> dict[str, list[tuple[datetime, float]]]:
        found: dict[str, list[tuple[datetime, float]]] = {}
        arguments: dict[str, Any] = {
            "MetricDataQueries": queries,
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampAscending",
        }
        while True:
            page = self.client.get_metric_data(**arguments)
            for result in page.get("MetricDataResults", []):
                series = found.setdefault(str(result["Id"]), [])
                times, values = result.get("Timestamps", []), result.get("Values", [])
                series.extend((t, float(v)) for t, v in zip(times, values, strict=False))
            token = page.get("NextToken")
            if not token:
                return found
            arguments["NextToken"] = token


def _query(key: str, metric: Metric, stat: str) -> dict[str, Any]:
    return {
        "Id": key,
        "MetricStat": {
            "Metric": {
                "Namespace": metric.namespace,
                "MetricName": metric.name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in metric.dimensions],
            },
            "Period": PERIOD,
            "Stat": stat,
        },
        "ReturnData": True,
    }


def _combine(
    metric: Metric, points: dict[str, list[tuple[datetime, float]]], prefix: str, since: datetime
) -> tuple[float | None, int, str]:
    """The check's statistic over the minutes since ``since`` (a point stands for the minute
    that starts at its time: the minute in progress at ``since`` is left out)."""

    def within(part: str) -> list[float]:
        return [v for t, v in points.get(f"{prefix}_{part}", []) if t >= since]

    samples = int(sum(within("samplecount")))
    if not samples:
        return None, 0, "no data in CloudWatch"
    if metric.statistic == "SampleCount":
        return float(samples), samples, ""
    if metric.statistic in ("Average", "Sum"):
        total = sum(within("sum"))
        return (total / samples if metric.statistic == "Average" else total), samples, ""
    found = within(metric.statistic.lower())
    if not found:
        return None, samples, "no data in CloudWatch"
    return (min(found) if metric.statistic == "Minimum" else max(found)), samples, ""
