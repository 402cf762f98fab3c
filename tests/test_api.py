"""The HTTP endpoints: the same shutdown as the command, and nothing written for bad requests."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler import breakglass as core
from reconciler.api import MAX_BODY, make_server
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD
from tests.test_apply import apply, desired, plan

TOKEN = "s3cr3t-token-for-tests-0123456789"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[int, LocalStore]]:
    path = tmp_path / "state.db"
    store = LocalStore(path)
    apply(store, plan(store, desired()))
    server = make_server(lambda: LocalStore(path), TOKEN)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], store
    server.shutdown()
    server.server_close()
    store.close()


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    document = json.loads(response.read() or b"{}")
    connection.close()
    return response.status, document


def test_shutdown_and_restore_through_the_api(api: tuple[int, LocalStore]) -> None:
    port, store = api
    status, answer = request(
        port,
        "POST",
        "/emergency-shutdown",
        {"reason": "Critical system error detected", "shutdown_by": "admin"},
    )
    assert status == 200
    assert answer["shut_down"][0]["target"] == "global"
    assert [a.target for a in core.active(store, datetime.now(UTC))] == ["global"]
    status, health = request(port, "GET", "/health")
    assert (status, health["shutdowns"][0]["by"]) == (200, "admin")
    status, flag = request(port, "GET", "/feature-flags/status?flag=vc_bedrock_live")
    assert status == 200
    assert flag["flag"]["flag_name"] == "vc_bedrock_live"
    assert flag["shutdowns"][0]["reason"] == "Critical system error detected"
    status, answer = request(
        port, "POST", "/emergency-restore", {"reason": "fixed", "restored_by": "admin"}
    )
    assert (status, answer) == (200, {"restored": ["global"]})
    actions = [e["action"] for e in store.read_audit(OVERRIDES_RECORD)]
    assert actions == ["restore", "shutdown"]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"token": None}, 401, "a valid bearer token is required"),
        ({"token": "wrong-token-wrong-token"}, 401, "a valid bearer token is required"),
        ({"raw": b"{not json"}, 400, "the body is not JSON"),
        ({"raw": b"[1, 2]"}, 400, "the body must be a JSON object"),
        ({"raw": b"x" * (MAX_BODY + 1)}, 413, f"at most {MAX_BODY} bytes"),
        ({"body": {"shutdown_by": "admin"}}, 400, "'reason' is required (a non-empty string)"),
        ({"body": {"reason": "x"}}, 400, "'shutdown_by' is required (who is acting)"),
        (
            {"body": {"reason": "x", "shutdown_by": "a", "flags": []}},
            400,
            "'flags' must be a non-empty list of names",
        ),
        (
            {"body": {"reason": "x", "shutdown_by": "a", "expires": "soon"}},
            400,
            "--expires 'soon': give a duration such as 30m, 2h or 1d, or a time such as "
            "2026-01-09T06:00:00Z",
        ),
    ],
)
def test_bad_requests_are_refused_and_write_nothing(
    api: tuple[int, LocalStore], kwargs: dict[str, Any], status: int, message: str
) -> None:
    port, store = api
    body = kwargs.pop("body", {"reason": "x", "shutdown_by": "admin"})
    got, answer = request(port, "POST", "/emergency-shutdown", body, **kwargs)
    assert (got, answer) == (status, {"error": message})
    assert store.read_overrides() is None
    assert store.read_audit(OVERRIDES_RECORD) == []


def test_unknown_paths_and_flags(api: tuple[int, LocalStore]) -> None:
    port, _ = api
    assert request(port, "GET", "/nope")[0] == 404
    assert request(port, "GET", "/feature-flags/status?flag=vc_missing")[0] == 404
    assert request(port, "GET", "/feature-flags/status")[0] == 400
    assert request(port, "GET", "/health", token=None)[0] == 401
