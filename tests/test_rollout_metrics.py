"""Custom metrics for rollout checks, read from CloudWatch (moto in-process): exact statistics
over each check's own window, insufficient (and why) without data or without CloudWatch, and a
rollout rolled back by a metric its services publish elsewhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from reconciler.controllers.rollout_checks import Metric
from reconciler.controllers.rollout_metrics import CloudWatchReader
from reconciler.controllers.rollout_run import run_rollout_controller
from reconciler.runtime.rollout_state import CONTROLLER_ID, ROLLED_BACK
from reconciler.state.local import LocalStore
from tests.test_cli import invoke

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
HALLUCINATIONS = Metric(
    "VcPlatform/Answers", "HallucinationRate", (("Feature", "vc_bedrock_live"),)
)


@pytest.fixture
def cloudwatch() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="eu-central-1")


def publish(client: Any, minutes_ago: int, count: int, total: float, **metric: Any) -> None:
    chosen = metric.get("metric", HALLUCINATIONS)
    client.put_metric_data(
        Namespace=chosen.namespace,
        MetricData=[
            {
                "MetricName": chosen.name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in chosen.dimensions],
                "Timestamp": NOW - timedelta(minutes=minutes_ago),
                "StatisticValues": {
                    "SampleCount": count,
                    "Sum": total,
                    "Minimum": 0.0,
                    "Maximum": 1.0,
                },
            }
        ],
    )


def test_each_check_reads_its_own_window_exactly(cloudwatch: Any) -> None:
    publish(cloudwatch, 5, 300, 6.0)  # 2% in the last quarter of an hour
    publish(cloudwatch, 40, 100, 10.0)  # 10% half an hour before
    source = CloudWatchReader(cloudwatch)
    total = dataclasses.replace(HALLUCINATIONS, statistic="Sum")
    wanted = [(HALLUCINATIONS, 15), (HALLUCINATIONS, 60), (total, 60)]
    quarter, hour, summed = source.measure(wanted, NOW)
    assert quarter == (pytest.approx(0.02), 300, "")
    assert hour == (pytest.approx(16 / 400), 400, "")
    assert summed == (pytest.approx(16.0), 400, "")


def test_no_data_and_no_cloudwatch_are_insufficient_and_say_why(cloudwatch: Any) -> None:
    other = Metric("VcPlatform/Answers", "Missing")
    [(value, samples, why)] = CloudWatchReader(cloudwatch).measure([(other, 60)], NOW)
    assert (value, samples, why) == (None, 0, "no data in CloudWatch")

    class Down:
        def get_metric_data(self, **_: Any) -> Any:
            raise ConnectionError("endpoint unreachable")

    [(value, samples, why)] = CloudWatchReader(Down()).measure([(other, 60)], NOW)
    assert (value, samples) == (None, 0)
    assert why == "CloudWatch: ConnectionError: endpoint unreachable"


STRATEGY = """\
kind: RolloutStrategy
strategy_name: bedrock_gradual_rollout
description: Ramp Bedrock AI analysis while its answers stay grounded.
owner: team-vc-platform
feature_flag: vc_bedrock_live
rollout_type: percentage
configuration:
  percentage: 10
  increment_percentage: 10
  increment_interval_hours: 24
  start_time: "{start}"
health_checks:
  - check_name: grounded_answers
    check_type: custom_metric
    namespace: VcPlatform/Answers
    metric_name: HallucinationRate
    dimensions: {Feature: vc_bedrock_live}
    statistic: Average
    threshold: 0.03
    comparison: less_than
    window_minutes: 60
"""


def test_a_custom_metric_rolls_a_rollout_back(
    cloudwatch: Any, example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = example_tree / "state.db"
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
    start = (NOW - timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = STRATEGY.replace("{start}", start)
    (example_tree / "rollouts.d" / "bedrock_gradual_rollout.yaml").write_text(manifest)
    assert invoke("--apply", str(example_tree), "--yes")[0] == 0
    store = LocalStore(path)
    source = CloudWatchReader(cloudwatch)
    publish(cloudwatch, 30, 50, 0.5)
    run_rollout_controller(store, now=NOW, metrics=source)
    entry = (store.read_control(CONTROLLER_ID) or {})["strategies"]["bedrock_gradual_rollout"]
    [check] = entry["checks"]
    assert check["outcome"] == "insufficient"  # 50 samples: too few to judge
    assert "needs 100" in check["text"]
    publish(cloudwatch, 10, 400, 20.0)  # 5% of these answers hallucinated: 4.6% in the hour
    run_rollout_controller(store, now=NOW, metrics=source)
    entry = (store.read_control(CONTROLLER_ID) or {})["strategies"]["bedrock_gradual_rollout"]
    assert entry["state"] == ROLLED_BACK
    assert (
        "VcPlatform/Answers/HallucinationRate Average 0.04556 not < 0.03 over 60 min, 450 samples"
    ) in entry["reason"]
    store.close()
