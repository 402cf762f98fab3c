"""The runtime's CloudWatch metrics: exact statistic sets by PutMetricData, EMF lines for Lambda.

PutMetricData goes to moto's CloudWatch in this process and is read back with the API's own
reads; EMF lines are parsed and held to the specification's rules. The recorder is the real one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import zip_longest
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws
from moto.cloudwatch.models import MetricAggregatedDatum, cloudwatch_backends
from moto.core.models import DEFAULT_ACCOUNT_ID

from reconciler.runtime.metrics import (
    COSTS_NAMESPACE,
    MAX_ITEMS,
    OPERATIONS_NAMESPACE,
    CloudWatchMetrics,
    EmbeddedMetrics,
)
from reconciler.runtime.recorder import Recorder
from reconciler.runtime.telemetry import Totals
from tests.conftest import REPO_ROOT

AT = datetime.now(UTC).replace(microsecond=0)
SERVICE = {"Service": "vc-api"}
STATISTICS = ["SampleCount", "Sum", "Minimum", "Maximum"]
REQUEST_LIMIT = 1024 * 1024  # PutMetricData's 1 MB a request
COSTS_KIND = ("cost", "tokens")
EMF_UNITS = {
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Count/Second",
    "None",
}

# A flush of two request types: costs in micro-dollars, outcomes (1 = failed), latencies in ms.
COSTS = {"vc_analysis": [1_234, 56_789, 420], "chat": [15_000]}
TOKENS = {"vc_analysis": [812, 1_500, 95], "chat": [2_048]}
OUTCOMES = {"vc_analysis": [0, 1, 0, 0], "chat": [1, 1]}
LATENCIES = {"vc_analysis": [120.5, 890.25, 43.0, 310.0], "chat": [5_000.0]}  # one, untimed


def totals(values: Sequence[int | float]) -> Totals:
    found = Totals()
    for value in values:
        found.add(value)
    return found


def flush_changes() -> dict[str, Totals]:
    changes = {}
    for kind, series in (
        ("cost", COSTS),
        ("tokens", TOKENS),
        ("outcome", OUTCOMES),
        ("latency", LATENCIES),
    ):
        for request_type, values in series.items():
            changes[f"{kind}:{request_type}"] = totals(values)
    changes["quality:vc_analysis"] = totals([0.9, 0.7])  # no metric of the original system
    return changes


def expected(request_type: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    """Each metric's statistic set, from the recorded values themselves; ``None``: the roll-up
    of every request type."""
    types = list(COSTS) if request_type is None else [request_type]
    micros = [m for t in types for m in COSTS[t]]
    costs = [m / 1_000_000 for m in micros]
    spend = sum(micros) / 1_000_000  # summed in micro-dollars, then made dollars
    tokens = [n for t in types for n in TOKENS[t]]
    outcomes = [o for t in types for o in OUTCOMES[t]]
    errors = [100.0 * failed for failed in outcomes]
    latencies = [ms for t in types for ms in LATENCIES[t]]
    found = {}
    for key, values, total, unit in (
        ((COSTS_NAMESPACE, "RequestCost"), costs, spend, "None"),
        ((COSTS_NAMESPACE, "TokenUsage"), tokens, sum(tokens), "Count"),
        ((COSTS_NAMESPACE, "Spend"), [spend], spend, "None"),
        ((COSTS_NAMESPACE, "RequestCount"), [len(costs)], len(costs), "Count"),
        ((OPERATIONS_NAMESPACE, "ErrorRate"), errors, sum(errors), "Percent"),
        ((OPERATIONS_NAMESPACE, "ResponseTime"), latencies, sum(latencies), "Milliseconds"),
        ((OPERATIONS_NAMESPACE, "OutcomeCount"), [len(outcomes)], len(outcomes), "Count"),
        ((OPERATIONS_NAMESPACE, "ErrorCount"), [sum(outcomes)], sum(outcomes), "Count"),
    ):
        found[key] = {
            "SampleCount": float(len(values)),
            "Sum": total,
            "Minimum": float(min(values)),
            "Maximum": float(max(values)),
            "Unit": unit,
        }
    return found


PER_REQUEST = {"RequestCost", "TokenUsage", "ErrorRate", "ResponseTime"}
NAMES = sorted(expected(None))


@pytest.fixture
def cloudwatch() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="eu-central-1")


def read_back(
    client: Any, namespace: str, metric: str, dimensions: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The statistics of one series, as CloudWatch's GetMetricStatistics gives them for one
    period: of the data whose dimensions are exactly ``dimensions`` (moto's own read matches any
    series that has them, which would mix a roll-up with the series it rolls up)."""
    region = client.meta.region_name
    stored = cloudwatch_backends[DEFAULT_ACCOUNT_ID][region].get_all_metrics()
    wanted = sorted(dimensions.items())
    data = [
        d
        for d in stored
        if (d.namespace, d.name) == (namespace, metric)
        and sorted((x.name, x.value) for x in d.dimensions) == wanted
        and isinstance(d, MetricAggregatedDatum)  # the sinks send statistic sets only
    ]
    if not data:
        return []
    count = sum(float(d.sample_count) for d in data)
    total = sum(float(d.sum) for d in data)
    [unit] = {d.unit for d in data}
    return [
        {
            "SampleCount": count,
            "Sum": total,
            "Minimum": min(float(d.min) for d in data),
            "Maximum": max(float(d.max) for d in data),
            "Unit": unit,
            "Average": total / count,
        }
    ]


def all_metrics(client: Any) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    found = set()
    for page in client.get_paginator("list_metrics").paginate():
        for metric in page["Metrics"]:
            dimensions = tuple(sorted((d["Name"], d["Value"]) for d in metric["Dimensions"]))
            found.add((metric["Namespace"], metric["MetricName"], dimensions))
    return found


class PutCalls(list[dict[str, Any]]):
    """The parameters of every PutMetricData call a client makes from now on, counted as calls
    (``before-call``) and read as they were given (``before-parameter-build``)."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.calls = 0
        events = client.meta.events
        events.register("before-parameter-build.cloudwatch.PutMetricData", self._given)
        events.register("before-call.cloudwatch.PutMetricData", self._called)

    def _given(self, params: dict[str, Any], **_: Any) -> None:
        self.append(params)

    def _called(self, **_: Any) -> None:
        self.calls += 1


# -- PutMetricData ----------------------------------------------------------------------------


def test_statistic_sets_read_back_exactly(cloudwatch: Any) -> None:
    """Per request type with and without the service's dimensions, and the roll-up without any:
    each the recorded values' statistic set."""
    CloudWatchMetrics(cloudwatch, dimensions=SERVICE).emit(flush_changes(), AT)

    series: list[tuple[str | None, dict[str, str]]] = [(None, {})]
    for request_type in COSTS:
        series += [(request_type, {"RequestType": request_type, **SERVICE})]
        series += [(request_type, {"RequestType": request_type})]
    for of_type, dimensions in series:
        for (namespace, metric), statistics in expected(of_type).items():
            assert read_back(cloudwatch, namespace, metric, dimensions) == [
                {
                    **statistics,
                    "Average": pytest.approx(statistics["Sum"] / statistics["SampleCount"]),
                }
            ], (dimensions, metric)


def test_request_cost_is_in_dollars_and_error_rate_is_the_average(cloudwatch: Any) -> None:
    CloudWatchMetrics(cloudwatch).emit(flush_changes(), AT)

    dimensions = {"RequestType": "vc_analysis"}
    [cost] = read_back(cloudwatch, COSTS_NAMESPACE, "RequestCost", dimensions)
    assert cost["Sum"] == 0.058443  # 58,443 micro-dollars
    assert (cost["Minimum"], cost["Maximum"]) == (0.00042, 0.056789)
    [errors] = read_back(cloudwatch, OPERATIONS_NAMESPACE, "ErrorRate", dimensions)
    assert errors["Average"] == 25.0  # one failure in four outcomes


def test_every_metric_carries_the_request_type_and_the_fixed_dimensions(cloudwatch: Any) -> None:
    CloudWatchMetrics(cloudwatch, dimensions=SERVICE).emit(flush_changes(), AT)

    by_type = {
        (namespace, metric, dimensions)
        for namespace, metric in NAMES
        for request_type in COSTS
        for dimensions in (
            (("RequestType", request_type), ("Service", "vc-api")),
            (("RequestType", request_type),),
        )
    }
    rollups = {(namespace, metric, ()) for namespace, metric in NAMES}
    assert all_metrics(cloudwatch) == by_type | rollups


def test_without_fixed_dimensions_a_metric_has_the_request_type_and_the_roll_up(
    cloudwatch: Any,
) -> None:
    CloudWatchMetrics(cloudwatch).emit(flush_changes(), AT)

    assert all_metrics(cloudwatch) == {
        (namespace, metric, dimensions)
        for namespace, metric in NAMES
        for dimensions in [(), *((("RequestType", t),) for t in COSTS)]
    }


def test_spend_and_the_error_counts_add_up_over_flushes(cloudwatch: Any) -> None:
    """Two flushes: the roll-up's Sum of Spend is all the spend (RequestCost's Sum is too, in
    this sink), and ErrorCount / OutcomeCount is the error rate of all outcomes."""
    sink = CloudWatchMetrics(cloudwatch)
    sink.emit(flush_changes(), AT)
    sink.emit({"cost:chat": totals([250_000]), "outcome:chat": totals([0] * 9)}, AT)

    [spend] = read_back(cloudwatch, COSTS_NAMESPACE, "Spend", {})
    assert spend["Sum"] == pytest.approx(0.323443, rel=1e-15)  # 73,443 + 250,000 micro-dollars
    assert spend["SampleCount"] == 2.0  # one sample a flush
    [errors] = read_back(cloudwatch, OPERATIONS_NAMESPACE, "ErrorCount", {})
    [outcomes] = read_back(cloudwatch, OPERATIONS_NAMESPACE, "OutcomeCount", {})
    assert (errors["Sum"], outcomes["Sum"]) == (3.0, 15.0)
    [rate] = read_back(cloudwatch, OPERATIONS_NAMESPACE, "ErrorRate", {})
    assert rate["Average"] == pytest.approx(100 * 3 / 15)


def test_one_call_per_namespace(cloudwatch: Any) -> None:
    calls = PutCalls(cloudwatch)
    CloudWatchMetrics(cloudwatch).emit(flush_changes(), AT)

    assert [c["Namespace"] for c in calls] == [COSTS_NAMESPACE, OPERATIONS_NAMESPACE]
    assert {d["Timestamp"] for c in calls for d in c["MetricData"]} == {AT}


def test_more_than_a_thousand_items_go_in_several_calls(cloudwatch: Any) -> None:
    types = [f"type_{n:04d}" for n in range(1_100)]
    changes = {f"{kind}:{t}": totals([n + 1]) for n, t in enumerate(types) for kind in COSTS_KIND}
    calls = PutCalls(cloudwatch)

    CloudWatchMetrics(cloudwatch).emit(changes, AT)

    items = 1_100 * 4 + 4  # RequestCost, RequestCount, Spend, TokenUsage per type; 4 roll-ups
    assert calls.calls == 5
    assert [len(c["MetricData"]) for c in calls] == [MAX_ITEMS] * 4 + [items - 4 * MAX_ITEMS]
    assert {c["Namespace"] for c in calls} == {COSTS_NAMESPACE}
    assert len(all_metrics(cloudwatch)) == items
    [last] = read_back(cloudwatch, COSTS_NAMESPACE, "TokenUsage", {"RequestType": types[-1]})
    assert last["Sum"] == 1_100
    [rollup] = read_back(cloudwatch, COSTS_NAMESPACE, "TokenUsage", {})
    assert rollup["Sum"] == sum(range(1, 1_101))


def test_requests_stay_under_the_size_limit(cloudwatch: Any) -> None:
    """29 fixed dimensions of 1,024 characters make a datum tens of kilobytes: far fewer than
    1,000 of them fit in one request."""
    dimensions = {f"Dimension{n:02d}": chr(ord("a") + n % 26) * 1024 for n in range(29)}
    changes = {f"{kind}:type_{n:02d}": totals([n + 1]) for n in range(40) for kind in COSTS_KIND}
    bodies: list[int] = []

    def sent(request: Any, **_: Any) -> None:
        bodies.append(len(request.body))

    cloudwatch.meta.events.register("request-created.cloudwatch.PutMetricData", sent)
    calls = PutCalls(cloudwatch)

    CloudWatchMetrics(cloudwatch, dimensions=dimensions).emit(changes, AT)

    items = 40 * 4 * 2 + 4  # 4 metrics a type, with and without the fixed dimensions; roll-ups
    assert calls.calls == len(calls) == len(bodies) > 1
    assert sum(len(c["MetricData"]) for c in calls) == items
    assert max(bodies) < REQUEST_LIMIT
    assert len(all_metrics(cloudwatch)) == items


def test_unknown_empty_and_unpublishable_series_are_left_out(cloudwatch: Any) -> None:
    changes = {
        "quality:chat": totals([0.5]),
        "mystery:chat": totals([1]),
        "cost": totals([10]),
        "cost:": totals([10]),
        "cost:   ": totals([10]),
        "cost:caf\u00e9": totals([10]),
        f"cost:{'x' * 1025}": totals([10]),
        "tokens:chat": Totals(),
        "latency:chat": totals([float("inf")]),
        "latency:vc_analysis": totals([2.0**400]),
    }
    calls = PutCalls(cloudwatch)

    CloudWatchMetrics(cloudwatch).emit(changes, AT)

    assert calls.calls == 0
    assert all_metrics(cloudwatch) == set()


def test_a_refused_series_is_left_out_of_the_roll_up_too(cloudwatch: Any) -> None:
    changes = {"latency:chat": totals([12.0, 30.0]), "latency:vc_analysis": totals([2.0**400])}

    CloudWatchMetrics(cloudwatch).emit(changes, AT)

    assert all_metrics(cloudwatch) == {
        (OPERATIONS_NAMESPACE, "ResponseTime", (("RequestType", "chat"),)),
        (OPERATIONS_NAMESPACE, "ResponseTime", ()),
    }
    [rollup] = read_back(cloudwatch, OPERATIONS_NAMESPACE, "ResponseTime", {})
    assert (rollup["SampleCount"], rollup["Sum"], rollup["Maximum"]) == (2.0, 42.0, 30.0)


def test_no_client_is_made_until_there_is_something_to_send() -> None:
    sink = CloudWatchMetrics()
    sink.emit({"quality:chat": totals([0.5])}, AT)
    assert sink.client is None

    with mock_aws():
        sink.emit(flush_changes(), AT)
        made: Any = sink.client
        config = made.meta.config
        assert (config.connect_timeout, config.read_timeout) == (1, 2)
        assert config.retries["total_max_attempts"] == 3  # two retries after the first attempt
        assert len(all_metrics(made)) == len(NAMES) * (len(COSTS) + 1)


def test_transport_errors_reach_the_recorder_which_counts_them() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = boto3.client(
        "cloudwatch",
        region_name="eu-central-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    sink = CloudWatchMetrics(client)
    with pytest.raises(EndpointConnectionError):
        sink.emit(flush_changes(), AT)

    recorder = Recorder(None, metrics=sink, background=False, clock=AT.timestamp)
    recorder.record_cost("chat", 100, 2_000)
    recorder.flush()
    assert recorder.health.metrics_failures == 1
    recorder.close()


@pytest.mark.parametrize("sink", [CloudWatchMetrics, EmbeddedMetrics])
def test_fixed_dimensions_are_checked_when_the_sink_is_made(sink: type[Any]) -> None:
    with pytest.raises(ValueError, match="at most 29"):
        sink(dimensions={f"D{n}": "x" for n in range(30)})
    with pytest.raises(ValueError, match="taken"):
        sink(dimensions={"RequestType": "chat"})
    with pytest.raises(ValueError, match="ASCII"):
        sink(dimensions={"Service": ""})
    assert sink(dimensions={f"D{n}": "x" for n in range(29)}).dimensions["D28"] == "x"


# -- Embedded Metric Format --------------------------------------------------------------------


def emitted_lines(changes: Mapping[str, Totals], **options: Any) -> list[dict[str, Any]]:
    lines: list[str] = []
    EmbeddedMetrics(lines.append, **options).emit(changes, AT)
    assert all("\n" not in line for line in lines)  # one log event each
    return [json.loads(line) for line in lines]


def assert_emf(document: Mapping[str, Any]) -> None:
    """The rules of the EMF specification a document must keep."""
    metadata = document["_aws"]
    assert isinstance(metadata["Timestamp"], int)
    directives = metadata["CloudWatchMetrics"]
    assert isinstance(directives, list)
    assert directives
    for directive in directives:
        assert set(directive) == {"Namespace", "Dimensions", "Metrics"}
        assert 1 <= len(directive["Namespace"]) <= 255
        for dimension_set in directive["Dimensions"]:
            assert len(dimension_set) <= 30
            for key in dimension_set:
                assert isinstance(document[key], str)
        assert 0 < len(directive["Metrics"]) <= 100
        for definition in directive["Metrics"]:
            assert set(definition) <= {"Name", "Unit", "StorageResolution"}
            assert definition.get("Unit", "None") in EMF_UNITS
            value = document[definition["Name"]]
            assert isinstance(value, int | float)
            assert not isinstance(value, bool)


def by_line(documents: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    found = {}
    for document in documents:
        [directive] = document["_aws"]["CloudWatchMetrics"]
        key = (directive["Namespace"], document["RequestType"])
        assert key not in found
        found[key] = document
    return found


Series = tuple[str, str, tuple[tuple[str, str], ...]]


def extracted(documents: Sequence[Mapping[str, Any]]) -> dict[Series, list[float]]:
    """The samples CloudWatch takes from EMF documents, as the specification says: each metric
    of a directive, under each of its dimension sets (a number is one sample)."""
    found: dict[Series, list[float]] = {}
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for keys in directive["Dimensions"]:
                dimensions = tuple(sorted((key, document[key]) for key in keys))
                for definition in directive["Metrics"]:
                    series = (directive["Namespace"], definition["Name"], dimensions)
                    found.setdefault(series, []).append(document[definition["Name"]])
    return found


def test_emf_lines_are_valid_documents() -> None:
    documents = emitted_lines(flush_changes(), dimensions=SERVICE)

    assert len(documents) == 4  # two namespaces, two request types
    for document in documents:
        assert_emf(document)
        assert document["_aws"]["Timestamp"] == int(AT.timestamp()) * 1000
        assert document["Service"] == "vc-api"
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert directive["Dimensions"] == [["RequestType", "Service"], ["RequestType"], []]
    lines = by_line(documents)
    costs = lines[COSTS_NAMESPACE, "vc_analysis"]["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    assert costs == [
        {"Name": "RequestCost", "Unit": "None"},
        {"Name": "RequestCount", "Unit": "Count"},
        {"Name": "Spend", "Unit": "None"},
        {"Name": "TokenUsage", "Unit": "Count"},
    ]
    operations = lines[OPERATIONS_NAMESPACE, "chat"]["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    assert operations == [
        {"Name": "ErrorCount", "Unit": "Count"},
        {"Name": "ErrorRate", "Unit": "Percent"},
        {"Name": "OutcomeCount", "Unit": "Count"},
        {"Name": "ResponseTime", "Unit": "Milliseconds"},
    ]


def test_emf_without_fixed_dimensions_has_the_request_type_and_the_roll_up() -> None:
    for document in emitted_lines(flush_changes()):
        assert_emf(document)
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert directive["Dimensions"] == [["RequestType"], []]


def test_emf_means_and_totals_reconstruct_the_recorded_totals() -> None:
    lines = by_line(emitted_lines(flush_changes()))

    for request_type, costs in COSTS.items():
        line = lines[COSTS_NAMESPACE, request_type]
        assert line["RequestCount"] == len(costs)
        assert line["Spend"] == sum(costs) / 1e6  # the total, made dollars once
        assert line["RequestCost"] * line["RequestCount"] == pytest.approx(sum(costs) / 1e6)
        assert line["TokenUsage"] * line["RequestCount"] == pytest.approx(sum(TOKENS[request_type]))
    for request_type, outcomes in OUTCOMES.items():
        line = lines[OPERATIONS_NAMESPACE, request_type]
        assert (line["OutcomeCount"], line["ErrorCount"]) == (len(outcomes), sum(outcomes))
        assert line["ErrorRate"] * line["OutcomeCount"] / 100 == pytest.approx(sum(outcomes))
        latencies = LATENCIES[request_type]
        assert line["ResponseTime"] == pytest.approx(sum(latencies) / len(latencies))


def test_emf_sums_of_spend_and_error_counts_are_exact_where_the_means_are_not() -> None:
    """What CloudWatch makes of the lines' roll-up (``[]``): Spend sums to all the spend and
    ErrorCount / OutcomeCount is the error rate, while RequestCost's Sum and ErrorRate's
    Average, means of means, are neither."""
    samples = extracted(emitted_lines(flush_changes(), dimensions=SERVICE))

    spend = sum(m for costs in COSTS.values() for m in costs) / 1e6
    assert sum(samples[COSTS_NAMESPACE, "Spend", ()]) == pytest.approx(spend, rel=1e-15)
    assert sum(samples[COSTS_NAMESPACE, "RequestCost", ()]) < spend / 2
    errors = sum(samples[OPERATIONS_NAMESPACE, "ErrorCount", ()])
    outcomes = sum(samples[OPERATIONS_NAMESPACE, "OutcomeCount", ()])
    assert 100 * errors / outcomes == 50.0  # three of six outcomes failed
    rates = samples[OPERATIONS_NAMESPACE, "ErrorRate", ()]
    assert sum(rates) / len(rates) == 62.5  # the mean of 25% and 100%


def test_both_sinks_publish_the_same_series_with_the_same_exact_sums(cloudwatch: Any) -> None:
    CloudWatchMetrics(cloudwatch, dimensions=SERVICE).emit(flush_changes(), AT)
    samples = extracted(emitted_lines(flush_changes(), dimensions=SERVICE))

    assert set(samples) == all_metrics(cloudwatch)
    exact = [series for series in samples if series[1] not in PER_REQUEST]
    assert len(exact) == 4 * 5  # Spend and three counts, by two types twice, and the roll-up
    for namespace, metric, dimensions in exact:
        [point] = read_back(cloudwatch, namespace, metric, dict(dimensions))
        from_lines = sum(samples[namespace, metric, dimensions])
        assert from_lines == pytest.approx(point["Sum"], rel=1e-15), (metric, dimensions)


def test_emf_lines_carry_the_exact_statistic_sets() -> None:
    lines = by_line(emitted_lines(flush_changes()))

    for request_type in COSTS:
        for (namespace, metric), statistics in expected(request_type).items():
            carried = lines[namespace, request_type]["Statistics"]
            if metric in PER_REQUEST:
                assert carried[metric] == {k: statistics[k] for k in STATISTICS}, metric
            else:
                assert metric not in carried  # the metric itself is the total


def test_emf_with_the_most_fixed_dimensions_keeps_the_limits() -> None:
    dimensions = {f"Dimension{n:02d}": "x" for n in range(29)}
    for document in emitted_lines(flush_changes(), dimensions=dimensions):
        assert_emf(document)
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert [len(keys) for keys in directive["Dimensions"]] == [30, 1, 0]


def test_emf_leaves_out_what_it_does_not_know() -> None:
    changes = {"quality:chat": totals([0.5]), "cost:": totals([1]), "tokens:chat": Totals()}
    assert emitted_lines(changes) == []

    [line] = emitted_lines({"latency:chat": totals([12.5])})  # a latency with no outcome
    assert "OutcomeCount" not in line
    assert "ErrorCount" not in line
    assert line["ResponseTime"] == 12.5


def test_emf_goes_to_standard_output_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    EmbeddedMetrics().emit(flush_changes(), AT)

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line in lines:
        assert_emf(json.loads(line))


# -- with the recorder -------------------------------------------------------------------------


def record_a_flush(recorder: Recorder) -> None:
    for request_type, costs in COSTS.items():
        for micros, tokens in zip(costs, TOKENS[request_type], strict=True):
            recorder.record_cost(request_type, tokens, micros)
        for failed, latency in zip_longest(OUTCOMES[request_type], LATENCIES[request_type]):
            recorder.record_outcome(request_type, bool(failed), latency, 0.8)


def test_what_the_recorder_flushes_reaches_cloudwatch(cloudwatch: Any) -> None:
    sink = CloudWatchMetrics(cloudwatch, dimensions=SERVICE)
    recorder = Recorder(None, metrics=sink, background=False, clock=AT.timestamp)
    record_a_flush(recorder)

    assert recorder.flush()

    assert recorder.health.metrics_failures == 0
    for request_type in COSTS:
        dimensions = {"RequestType": request_type, **SERVICE}
        for (namespace, metric), statistics in expected(request_type).items():
            [point] = read_back(cloudwatch, namespace, metric, dimensions)
            assert {k: point[k] for k in [*STATISTICS, "Unit"]} == statistics, metric

    record_a_flush(recorder)  # the next flush sends only what changed since: the totals add up
    assert recorder.flush()
    [point] = read_back(cloudwatch, COSTS_NAMESPACE, "RequestCost", {"RequestType": "chat"})
    assert (point["SampleCount"], point["Sum"]) == (2.0, 0.03)
    recorder.close()


def test_what_the_recorder_flushes_becomes_emf_lines() -> None:
    lines: list[str] = []
    recorder = Recorder(
        None, metrics=EmbeddedMetrics(lines.append), background=False, clock=AT.timestamp
    )
    record_a_flush(recorder)

    assert recorder.flush()

    found = by_line([json.loads(line) for line in lines])
    assert set(found) == {(ns, t) for ns in (COSTS_NAMESPACE, OPERATIONS_NAMESPACE) for t in COSTS}
    assert found[COSTS_NAMESPACE, "vc_analysis"]["Statistics"]["RequestCost"]["Sum"] == 0.058443
    recorder.close()


def test_importing_the_metrics_imports_no_boto3() -> None:
    code = "import sys, reconciler.runtime.metrics; print('boto3' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("value", "kind"),
    [("cloudwatch", "CloudWatchMetrics"), ("EMF", "EmbeddedMetrics"), ("", None), ("off", None)],
)
def test_the_sink_is_chosen_by_configuration(value: str, kind: str | None) -> None:
    from reconciler.runtime.metrics import metrics_from_environment

    sink = metrics_from_environment({"RECONCILER_METRICS": value})
    assert (type(sink).__name__ if sink is not None else None) == kind


def test_an_unknown_choice_sends_nothing_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    from reconciler.runtime.metrics import metrics_from_environment

    assert metrics_from_environment({"RECONCILER_METRICS": "statsd"}) is None
    assert "expected cloudwatch, emf or off" in caplog.text
