"""DynamoDB for the tests: moto in-process, and moto's HTTP server on loopback.

A pytest plugin (``pytest_plugins = ["tests.dynamodb_fixtures"]``). Both store fixtures give a
bootstrapped ``DynamoDBStore`` whose retries do not sleep; the server's tests share one server
(started once per session on a free loopback port) and never each other's data: every test gets
tables of its own, removed after it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.server import ThreadedMotoServer

from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.records import table_names

REGION = "eu-central-1"


def unique_tables() -> dict[str, str]:
    """Every table variable mapped to a name of this test's own."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    return {variable: f"{prefix}-{name}" for variable, name in table_names({}).items()}


def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def moto_store() -> Iterator[DynamoDBStore]:
    """DynamoDB under moto in the test's own process."""
    with mock_aws():
        store = DynamoDBStore(tables=unique_tables(), region=REGION, sleep=_no_sleep)
        store.bootstrap()
        yield store
        store.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """The endpoint of moto's HTTP server on 127.0.0.1, one for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_server_store(moto_server: str) -> Iterator[DynamoDBStore]:
    """DynamoDB over the wire: moto's server, tables of this test's own."""
    store = DynamoDBStore(
        tables=unique_tables(), region=REGION, endpoint_url=moto_server, sleep=_no_sleep
    )
    store.bootstrap()
    yield store
    for name in store.tables.values():  # keep the shared server small for the next tests
        with contextlib.suppress(ClientError):  # removed by the test itself
            store.client.delete_table(TableName=name)
    store.close()
