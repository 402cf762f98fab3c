"""The guard in conftest keeps every test on this machine."""

from __future__ import annotations

import socket

import boto3
import pytest

from tests.conftest import NetworkGuardError


def test_connecting_to_a_public_address_fails_before_any_packet() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
        pytest.raises(NetworkGuardError),
    ):
        sock.connect(("203.0.113.7", 443))  # TEST-NET-3: never routed


def test_resolving_an_aws_endpoint_fails() -> None:
    with pytest.raises(NetworkGuardError):
        socket.getaddrinfo("dynamodb.eu-central-1.amazonaws.com", 443)


def test_boto3_without_an_endpoint_cannot_reach_aws() -> None:
    client = boto3.client("dynamodb", region_name="eu-central-1")
    with pytest.raises(Exception, match="only loopback is allowed"):
        client.list_tables()


def test_loopback_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
