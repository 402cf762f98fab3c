"""DynamoDB for the tests: moto in-process, and moto's HTTP server on loopback."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.records import table_names

_prefix = itertools.count()


def _tables() -> dict[str, str]:
    """Table names of their own for one test: tests share the server, never the data."""
    prefix = f"t{next(_prefix):04d}"
    return {variable: f"{prefix}-{name}" for variable, name in table_names({}).items()}


@pytest.fixture
def moto_store() -> Iterator[DynamoDBStore]:
    with mock_aws():
        store = DynamoDBStore(tables=_tables(), region="eu-central-1", sleep=lambda _: None)
        store.bootstrap()
        yield store
        store.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_server_store(moto_server: str) -> Iterator[DynamoDBStore]:
    store = DynamoDBStore(
        tables=_tables(), region="eu-central-1", endpoint_url=moto_server, sleep=lambda _: None
    )
    store.bootstrap()
    yield store
    store.close()
