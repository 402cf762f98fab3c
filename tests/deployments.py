"""A deployment to run end-to-end scenarios against: the example manifests applied to the local
store, or to DynamoDB through moto's HTTP server (the ``deployment`` fixture, parametrized)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from reconciler.cli.boundary import run
from reconciler.runtime.sources import DynamoDBSource, SnapshotSource, SQLiteSource
from reconciler.state.local import LocalStore
from reconciler.state.store import StateStore
from tests.test_cli import invoke


@dataclass
class Deployment:
    root: Path
    store: StateStore
    source: SnapshotSource


def cli(command: Any, *args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    runner = CliRunner()
    with runner.isolation() as (out, _err, _):
        code = run(command, list(args))
        return code, out.getvalue().decode()


@pytest.fixture(params=["local", "moto-server"])
def deployment(
    request: pytest.FixtureRequest, example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    if request.param == "local":
        path = example_tree / "state.db"
        monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
        assert invoke("--apply", str(example_tree), "--yes")[0] == 0
        store = LocalStore(path)
        yield Deployment(example_tree, store, SQLiteSource(path))
        store.close()
        return
    dynamo = request.getfixturevalue("moto_server_store")
    monkeypatch.setenv("RECONCILER_STORE", "dynamodb")
    for variable, table in dynamo.tables.items():
        monkeypatch.setenv(variable, table)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamo.endpoint_url)
    assert invoke("--apply", str(example_tree), "--yes")[0] == 0
    client = boto3.client("dynamodb", endpoint_url=dynamo.endpoint_url, region_name="eu-central-1")
    yield Deployment(example_tree, dynamo, DynamoDBSource(client, tables=dynamo.tables))
