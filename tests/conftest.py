"""Test-wide guards: fake AWS credentials, and no network beyond this machine's loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.dynamodb_fixtures", "tests.deployments"]

REPO_ROOT = Path(__file__).resolve().parent.parent

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-central-1",
    "AWS_REGION": "eu-central-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


class NetworkGuardError(RuntimeError):
    """A test tried to reach something other than this machine."""


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _check(sock: socket.socket, address: object) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        if not _is_loopback(host):
            raise NetworkGuardError(
                f"test tried to connect to {address!r}; only loopback is allowed"
            )


def _guarded_connect(self: socket.socket, address: object) -> None:
    _check(self, address)
    _real_connect(self, address)  # type: ignore[arg-type]


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    if host is not None and not _is_loopback(
        host.decode() if isinstance(host, bytes) else str(host)
    ):
        raise NetworkGuardError(f"test tried to resolve {host!r}; only loopback is allowed")
    return _real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        os.environ.pop(name, None)
    os.environ.update(FAKE_AWS_ENV)
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]


@pytest.fixture
def example_tree(tmp_path: Path) -> Iterator[Path]:
    """A copy of the repository's example manifests (and its reconciler.toml) to change."""
    import shutil

    for folder in ("flags.d", "experiments.d", "rollouts.d", "costs.d"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    shutil.copy(REPO_ROOT / "reconciler.toml", tmp_path / "reconciler.toml")
    return tmp_path


@pytest.fixture
def example_store(tmp_path: Path) -> Iterator[object]:
    """A local store with the repository's example manifests applied."""
    from reconciler.state.local import LocalStore
    from tests.test_apply import apply, desired, plan

    opened = LocalStore(tmp_path / "state.db")
    apply(opened, plan(opened, desired()))
    yield opened
    opened.close()


STORES = ["local", "moto", "moto-server"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """Every StateStore implementation, each fresh and bootstrapped."""
    if request.param == "local":
        from reconciler.state.local import LocalStore

        local = LocalStore(tmp_path / "state.db")
        local.bootstrap()
        yield local
        local.close()
    elif request.param == "moto":
        yield request.getfixturevalue("moto_store")
    else:
        yield request.getfixturevalue("moto_server_store")
