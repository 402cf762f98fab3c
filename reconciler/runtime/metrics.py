"""The original system's CloudWatch metrics of AI calls, published off the request path.

The recorder hands each flush's changes (series name -> totals) to a metrics sink; this module
turns them into metrics, per request type (dimension ``RequestType``, plus any fixed dimensions a
service names, such as ``{"Service": "vc-api"}``):

- ``BedrockAI/Costs``: ``RequestCost`` (US dollars per request, unit None), ``TokenUsage``
  (tokens per request, unit Count), ``Spend`` (US dollars, unit None: one sample per flush, the
  flush's total cost) and ``RequestCount`` (requests costed, unit Count: one sample per flush);
- ``BedrockAI/Operations``: ``ErrorRate`` (unit Percent: each outcome is a sample of 0 or 100,
  so the Average is the error rate), ``ResponseTime`` (unit Milliseconds), ``OutcomeCount`` and
  ``ErrorCount`` (outcomes, and failed ones, unit Count: one sample per flush).

Every metric is published three ways: with ``RequestType`` and the fixed dimensions; with
``RequestType`` alone (only when there are fixed dimensions, so that an alarm on some request
types need not know every service's); and as a roll-up without any dimension (all request types
of all services: what an alarm on all AI spend or on the error rate reads). The alarms
(``reconciler.deploy.alarms``) read the metrics whose Sum is exact in both sinks: ``Spend``,
``OutcomeCount`` and ``ErrorCount``.

Money stays integer micro-dollars everywhere else; it becomes a float of dollars only here,
because CloudWatch takes doubles. Series this module does not know (quality scores), empty ones
and ones CloudWatch would refuse (a request type that is no valid dimension value, a value out of
range) are left out; transport errors are the caller's (the recorder counts them).

Two sinks, chosen by where the service runs:

``CloudWatchMetrics`` calls ``PutMetricData`` with ``StatisticValues``: CloudWatch stores the
statistic sets as they are, so every statistic but percentiles is exact. A roll-up merges the
request types' totals (its Sum is exact; a per-flush metric's roll-up is one sample, where EMF
gives one a line: the same Sum). One call per namespace per flush, split into calls of at most
1,000 data items and under the request-size limit.

``EmbeddedMetrics`` writes CloudWatch Embedded Metric Format (EMF) log lines, which Lambda ships
to CloudWatch without an API call: one line per namespace and request type per flush, whose
``Dimensions`` hold the dimension sets above (the roll-up is the empty set ``[]``, which the
specification allows). The published EMF specification lets a metric be a number or an array of
at most 100 numbers, each a sample; it has no statistic set, and no Values/Counts pairs as
``PutMetricData`` has. (Emitters AWS publishes, awslabs' metrique and the OpenTelemetry
Collector's awsemfexporter, write objects such as ``{"Values": [..], "Counts": [..]}`` or
``{"Count", "Sum", "Min", "Max"}`` in a metric's place; the specification does not describe
them, and a document it does not describe may have its metrics dropped without a word.) Nor can
a flush of hundreds of requests be an array of its samples. So each line states, as the
specification allows:

- each per-request metric's per-flush mean (``RequestCost`` is the mean cost of the flush's
  requests, ``ErrorRate`` the percentage of its outcomes that failed): one sample per flush;
- the per-flush metrics (``Spend``, ``RequestCount``, ``OutcomeCount``, ``ErrorCount``) as the
  flush's totals: one sample per flush, as in ``PutMetricData``, so their Sum is exact;
- the exact statistic sets of the per-request metrics, under ``Statistics`` (not a metric: a
  plain member, which the specification allows), for Logs Insights
  (``stats sum(Statistics.RequestCost.Sum)``).

The trade-off: in CloudWatch Metrics the EMF means are samples of flushes, not of requests.
Their SampleCount counts flushes, their Average weighs every flush alike, their Minimum and
Maximum are of flush means, and their Sum means nothing. What is exact in both sinks is the Sum
of the per-flush metrics: spend, requests, outcomes and failures (``100 * ErrorCount /
OutcomeCount`` is the exact error rate).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.runtime.sources import aws_region
from reconciler.runtime.telemetry import COST, LATENCY, OUTCOME, TOKENS, Totals, split_series

COSTS_NAMESPACE = "BedrockAI/Costs"
OPERATIONS_NAMESPACE = "BedrockAI/Operations"
REQUEST_TYPE = "RequestType"
SPEND = "Spend"
OUTCOME_COUNT = "OutcomeCount"
ERROR_COUNT = "ErrorCount"
MAX_DIMENSIONS = 30  # CloudWatch's limit per metric, RequestType included
MAX_ITEMS = 1_000  # metric data items in one PutMetricData call
MAX_REQUEST_BYTES = 900_000  # of the API's 1 MB a request, the rest kept for what is not data
MAX_VALUE = 2.0**360  # CloudWatch refuses values of greater magnitude
MICROS_PER_DOLLAR = 1_000_000
STATISTICS = "Statistics"  # the EMF member carrying the exact statistic sets

Values = tuple[int, float, float, float]  # sample count, sum, minimum, maximum


@dataclass(frozen=True)
class Aggregate:
    """One metric of one request type (``None``: the roll-up of all of them) over one flush: an
    exact statistic set."""

    namespace: str
    metric: str
    unit: str
    request_type: str | None
    count: int
    total: float
    lo: float
    hi: float

    def statistic_values(self) -> dict[str, float]:
        """As CloudWatch's StatisticSet."""
        return {
            "SampleCount": float(self.count),
            "Sum": self.total,
            "Minimum": self.lo,
            "Maximum": self.hi,
        }


@dataclass(frozen=True)
class _Metric:
    namespace: str
    name: str
    unit: str
    values: Callable[[Totals], Values]
    per_flush: bool = False  # one sample per flush, its total; else one sample per request


def _dollars(totals: Totals) -> Values:
    return (
        totals.count,
        totals.sum / MICROS_PER_DOLLAR,
        (totals.lo or 0) / MICROS_PER_DOLLAR,
        (totals.hi or 0) / MICROS_PER_DOLLAR,
    )


def _as_recorded(totals: Totals) -> Values:
    return totals.count, float(totals.sum), float(totals.lo or 0), float(totals.hi or 0)


def _percent_failed(totals: Totals) -> Values:
    """Outcomes as samples of 0 (succeeded) and 100 (failed): the sum counts failures."""
    failures = float(totals.sum)
    return (
        totals.count,
        100.0 * failures,
        0.0 if failures < totals.count else 100.0,
        100.0 if failures > 0 else 0.0,
    )


def _per_flush(namespace: str, name: str, unit: str, value: Callable[[Totals], float]) -> _Metric:
    """A metric of one sample per flush: the flush's total."""

    def values(totals: Totals) -> Values:
        total = float(value(totals))
        return 1, total, total, total

    return _Metric(namespace, name, unit, values, per_flush=True)


METRICS: dict[str, tuple[_Metric, ...]] = {
    COST: (
        _Metric(COSTS_NAMESPACE, "RequestCost", "None", _dollars),
        _per_flush(COSTS_NAMESPACE, SPEND, "None", lambda t: t.sum / MICROS_PER_DOLLAR),
        _per_flush(COSTS_NAMESPACE, "RequestCount", "Count", lambda t: t.count),
    ),
    TOKENS: (_Metric(COSTS_NAMESPACE, "TokenUsage", "Count", _as_recorded),),
    OUTCOME: (
        _Metric(OPERATIONS_NAMESPACE, "ErrorRate", "Percent", _percent_failed),
        _per_flush(OPERATIONS_NAMESPACE, OUTCOME_COUNT, "Count", lambda t: t.count),
        _per_flush(OPERATIONS_NAMESPACE, ERROR_COUNT, "Count", lambda t: t.sum),
    ),
    LATENCY: (_Metric(OPERATIONS_NAMESPACE, "ResponseTime", "Milliseconds", _as_recorded),),
}
PER_FLUSH = frozenset(m.name for group in METRICS.values() for m in group if m.per_flush)


def aggregates(changes: Mapping[str, Totals]) -> list[Aggregate]:
    """The metrics of a flush's changes by namespace, request type and metric, each namespace's
    roll-ups (request type ``None``: the series' totals merged, so their sums are exact) after
    its request types. Series of no metric, empty ones and ones CloudWatch would refuse are left
    out, of the roll-ups too."""
    found: list[Aggregate] = []
    merged: dict[str, Totals] = {}
    for name, totals in changes.items():
        kind, request_type = split_series(name)
        if kind not in METRICS or totals.count <= 0 or not _dimension_value(request_type):
            continue
        made = _aggregates_of(kind, request_type, totals)
        if len(made) == len(METRICS[kind]):
            found += made
            merged.setdefault(kind, Totals()).merge(totals)
    for kind, totals in merged.items():
        found += _aggregates_of(kind, None, totals)
    return sorted(
        found, key=lambda a: (a.namespace, a.request_type is None, a.request_type or "", a.metric)
    )


def _aggregates_of(kind: str, request_type: str | None, totals: Totals) -> list[Aggregate]:
    made = []
    for metric in METRICS[kind]:
        count, total, lo, hi = metric.values(totals)
        if all(math.isfinite(v) and abs(v) <= MAX_VALUE for v in (total, lo, hi)):
            made.append(
                Aggregate(
                    metric.namespace, metric.name, metric.unit, request_type, count, total, lo, hi
                )
            )
    return made


def _dimension_value(value: str) -> bool:
    """What CloudWatch takes as a dimension value: 1 to 1,024 ASCII characters, not all blank."""
    return 0 < len(value) <= 1024 and value.isascii() and not value.isspace()


def _fixed_dimensions(
    dimensions: Mapping[str, str] | None, reserved: Sequence[str] = (REQUEST_TYPE,)
) -> dict[str, str]:
    """A service's own dimensions, added to every metric; checked once, at construction, so a
    mistake fails at start-up rather than at every flush."""
    found = dict(dimensions or {})
    if len(found) + 1 > MAX_DIMENSIONS:
        raise ValueError(f"at most {MAX_DIMENSIONS - 1} dimensions besides {REQUEST_TYPE}")
    for name, value in found.items():
        if name in reserved:
            raise ValueError(f"dimension name {name!r} is taken")
        if not (0 < len(name) <= 255 and name.isascii() and not name.isspace()):
            raise ValueError(f"dimension name {name!r} is not 1 to 255 ASCII characters")
        if not isinstance(value, str) or not _dimension_value(value):
            raise ValueError(f"dimension {name!r}: {value!r} is not 1 to 1,024 ASCII characters")
    return found


def dimension_sets(request_type: str | None, fixed: Mapping[str, str]) -> list[dict[str, str]]:
    """The dimensions a metric of ``request_type`` is published with: the request type and the
    fixed dimensions, the request type alone (when there are fixed dimensions), and none for
    the roll-up (request type ``None``)."""
    if request_type is None:
        return [{}]
    sets = [{REQUEST_TYPE: request_type, **fixed}]
    return [*sets, {REQUEST_TYPE: request_type}] if fixed else sets


# -- PutMetricData --------------------------------------------------------------------------


class CloudWatchMetrics:
    """Statistic sets by ``PutMetricData``: exact aggregates, one call per namespace a flush."""

    def __init__(self, client: Any = None, *, dimensions: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.dimensions = _fixed_dimensions(dimensions)

    def emit(self, changes: Mapping[str, Totals], at: datetime) -> None:
        by_namespace: dict[str, list[dict[str, Any]]] = {}
        for aggregate in aggregates(changes):
            by_namespace.setdefault(aggregate.namespace, []).extend(self._data(aggregate, at))
        if not by_namespace:
            return
        client = self._connect()
        for namespace, data in by_namespace.items():
            for chunk in _chunks(data):
                client.put_metric_data(Namespace=namespace, MetricData=chunk)

    def _data(self, aggregate: Aggregate, at: datetime) -> Iterator[dict[str, Any]]:
        for dimensions in dimension_sets(aggregate.request_type, self.dimensions):
            datum: dict[str, Any] = {"MetricName": aggregate.metric}
            if dimensions:
                datum["Dimensions"] = [{"Name": k, "Value": v} for k, v in dimensions.items()]
            datum["Timestamp"] = _aware(at)
            datum["Unit"] = aggregate.unit
            datum["StatisticValues"] = aggregate.statistic_values()
            yield datum

    def _connect(self) -> Any:
        if self.client is None:
            import boto3  # noqa: PLC0415 - only services publishing to CloudWatch need boto3
            from botocore.config import Config  # noqa: PLC0415

            # As the snapshot source's: a slow CloudWatch delays only the flush thread, briefly.
            config = Config(
                connect_timeout=1, read_timeout=2, retries={"max_attempts": 2, "mode": "standard"}
            )
            self.client = boto3.client("cloudwatch", config=config, region_name=aws_region())
        return self.client


def _chunks(data: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The data in order, in requests of at most ``MAX_ITEMS`` items and ``MAX_REQUEST_BYTES``."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for datum in data:
        grows = _datum_bytes(datum)
        if chunk and (len(chunk) == MAX_ITEMS or size + grows > MAX_REQUEST_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(datum)
        size += grows
    if chunk:
        yield chunk


_DATUM_BYTES = 500  # a datum's keys, unit, timestamp and four numbers in the query protocol
_DIMENSION_BYTES = 120  # the keys of one dimension (MetricData.member.N.Dimensions.member.M.Name)


def _datum_bytes(datum: Mapping[str, Any]) -> int:
    """An upper bound of a datum's size in a request, in whichever protocol the client speaks:
    the query protocol is the largest, and its percent-encoding at most triples a string."""
    strings = [str(datum["MetricName"])]
    for dimension in datum.get("Dimensions", ()):
        strings += [str(dimension["Name"]), str(dimension["Value"])]
    text = sum(3 * len(s.encode()) for s in strings)
    return _DATUM_BYTES + _DIMENSION_BYTES * len(datum.get("Dimensions", ())) + text


# -- Embedded Metric Format -----------------------------------------------------------------


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write: a line is one log event, not split by others
    sys.stdout.flush()


class EmbeddedMetrics:
    """EMF log lines (one per namespace and request type a flush) for CloudWatch Logs to turn
    into metrics: per-flush means and totals, with the exact statistic sets alongside."""

    def __init__(
        self,
        write: Callable[[str], None] | None = None,
        *,
        dimensions: Mapping[str, str] | None = None,
    ) -> None:
        self.write = write or _print_line
        members = [
            *(m.name for group in METRICS.values() for m in group),
            REQUEST_TYPE,
            STATISTICS,
            "_aws",
        ]
        self.dimensions = _fixed_dimensions(dimensions, reserved=members)

    def emit(self, changes: Mapping[str, Totals], at: datetime) -> None:
        lines: dict[tuple[str, str], list[Aggregate]] = {}
        for a in aggregates(changes):
            if a.request_type is not None:  # CloudWatch rolls the lines up by their `[]`
                lines.setdefault((a.namespace, a.request_type), []).append(a)
        timestamp = _epoch_millis(at)
        for (namespace, request_type), found in lines.items():
            document = self._document(namespace, request_type, found, timestamp)
            self.write(json.dumps(document, separators=(",", ":"), allow_nan=False))

    def _document(
        self, namespace: str, request_type: str, found: Sequence[Aggregate], timestamp: int
    ) -> dict[str, Any]:
        """One EMF document: the metrics of one namespace and request type over one flush."""
        sets = dimension_sets(request_type, self.dimensions)
        directive = {
            "Namespace": namespace,
            "Dimensions": [*(list(keys) for keys in sets), []],
            "Metrics": [{"Name": a.metric, "Unit": a.unit} for a in found],
        }
        return {
            "_aws": {"Timestamp": timestamp, "CloudWatchMetrics": [directive]},
            **sets[0],
            **{a.metric: a.total / a.count for a in found},  # a per-flush metric: its total
            STATISTICS: {
                a.metric: a.statistic_values() for a in found if a.metric not in PER_FLUSH
            },
        }


def _epoch_millis(at: datetime) -> int:
    """Milliseconds since 1970-01-01T00:00:00Z (a naive time is taken as UTC)."""
    return (_aware(at) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


METRICS_VARIABLE = "RECONCILER_METRICS"


def metrics_from_environment(environ: Mapping[str, str] | None = None) -> Any:
    """The sink ``$RECONCILER_METRICS`` names: ``cloudwatch`` (PutMetricData), ``emf`` (log
    lines, for Lambda), or none when unset or ``off``; ``RECONCILER_METRICS_SERVICE`` adds a
    ``Service`` dimension. An unknown value is no sink (and logged), never an error in a
    service's start-up."""
    env = os.environ if environ is None else environ
    chosen = env.get(METRICS_VARIABLE, "").strip().lower()
    service = env.get("RECONCILER_METRICS_SERVICE")
    dimensions = {"Service": service} if service else None
    if chosen == "cloudwatch":
        return CloudWatchMetrics(dimensions=dimensions)
    if chosen == "emf":
        return EmbeddedMetrics(dimensions=dimensions)
    if chosen not in ("", "off", "none"):
        logging.getLogger("reconciler.runtime").warning(
            "%s=%r: expected cloudwatch, emf or off; no metrics are sent", METRICS_VARIABLE, chosen
        )
    return None
