"""The original system's HTTP endpoints, over the same code as the ``breakglass`` command.

    GET  /health                          the store answers, and what is shut down
    GET  /feature-flags/status?flag=NAME  a flag's stored record and any shutdown of it
    POST /emergency-shutdown              {"reason", "shutdown_by", "flags"?, "expires"?, "force"?}
    POST /emergency-restore               {"reason", "restored_by", "flags"?}

Every request needs ``Authorization: Bearer <token>`` (compared in constant time with the token
the server was started with); behind API Gateway, put IAM authorization in front as well.
Unauthenticated, oversized or malformed requests get a 4xx answer and write nothing; so does a
shutdown of a flag the store has no record of (404, with the closest names), unless it says
``"force": true`` (a flag not applied yet), as ``breakglass shutdown --force`` does.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from reconciler import breakglass as core
from reconciler.errors import ReconcilerError
from reconciler.state.records import RecordKind
from reconciler.state.store import StateStore

MAX_BODY = 16 * 1024


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_server(
    store_factory: Callable[[], StateStore],
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) for the endpoints above."""
    if len(token) < 16:
        raise ReconcilerError("the API token must be at least 16 characters")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "reconciler-api"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are not logged: bodies may name incidents

        def do_GET(self) -> None:
            self._handle(self._get)

        def do_POST(self) -> None:
            self._handle(self._post)

        def _handle(self, action: Callable[[], dict[str, Any]]) -> None:
            try:
                self._authenticate()
                with lock:
                    answer = action()
                self._send(HTTPStatus.OK, answer)
            except ApiError as exc:
                self._send(exc.status, {"error": str(exc)})
            except ReconcilerError as exc:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})

        def _authenticate(self) -> None:
            given = self.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.encode()
            ):
                raise ApiError(HTTPStatus.UNAUTHORIZED, "a valid bearer token is required")

        def _body(self) -> dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                raise ApiError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
            if length > MAX_BODY:
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_BODY} bytes")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
            if not isinstance(body, dict):
                raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return body

        def _get(self) -> dict[str, Any]:
            url = urlsplit(self.path)
            store = store_factory()
            try:
                if url.path == "/health":
                    held = core.active(store, clock())
                    store.read_lock()
                    return {"status": "ok", "shutdowns": [_entry(a) for a in held]}
                if url.path == "/feature-flags/status":
                    flag = (parse_qs(url.query).get("flag") or [""])[0]
                    if not flag:
                        raise ApiError(HTTPStatus.BAD_REQUEST, "give ?flag=NAME")
                    record = store.read_records(RecordKind.FLAG).get(flag)
                    if record is None:
                        raise ApiError(HTTPStatus.NOT_FOUND, f"no flag {flag}")
                    held = [
                        a for a in core.active(store, clock()) if a.target in (flag, core.GLOBAL)
                    ]
                    return {"flag": record.item, "shutdowns": [_entry(a) for a in held]}
            finally:
                store.close()
            raise ApiError(HTTPStatus.NOT_FOUND, f"no endpoint {url.path}")

        def _post(self) -> dict[str, Any]:
            path = urlsplit(self.path).path
            if path not in ("/emergency-shutdown", "/emergency-restore"):
                raise ApiError(HTTPStatus.NOT_FOUND, f"no endpoint {path}")
            body = self._body()
            who_key = "shutdown_by" if path == "/emergency-shutdown" else "restored_by"
            reason, who, flags = body.get("reason"), body.get(who_key), body.get("flags")
            if not isinstance(reason, str) or not reason.strip():
                raise ApiError(HTTPStatus.BAD_REQUEST, "'reason' is required (a non-empty string)")
            if not isinstance(who, str) or not who.strip():
                raise ApiError(HTTPStatus.BAD_REQUEST, f"'{who_key}' is required (who is acting)")
            if flags is not None and (
                not isinstance(flags, list)
                or not flags
                or not all(isinstance(f, str) for f in flags)
            ):
                raise ApiError(HTTPStatus.BAD_REQUEST, "'flags' must be a non-empty list of names")
            now = clock()
            store = store_factory()
            try:
                if path == "/emergency-shutdown":
                    expires, force = body.get("expires"), body.get("force", False)
                    if expires is not None and not isinstance(expires, str):
                        raise ApiError(HTTPStatus.BAD_REQUEST, "'expires' must be a string")
                    if not isinstance(force, bool):
                        raise ApiError(HTTPStatus.BAD_REQUEST, "'force' must be true or false")
                    try:
                        expires_at = core.parse_expiry(expires, now)
                    except ReconcilerError as exc:
                        raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
                    try:
                        held = core.shutdown(
                            store,
                            flags,
                            reason=reason,
                            by=who,
                            expires_at=expires_at,
                            now=now,
                            force=force,
                        )
                    except core.UnknownFlagError as exc:
                        refused = core.UnknownFlagError(exc.unknown, force='"force": true')
                        raise ApiError(HTTPStatus.NOT_FOUND, str(refused)) from None
                    return {"shut_down": [_entry(a) for a in held]}
                lifted = core.restore(store, flags, reason=reason, by=who, now=now)
                return {"restored": lifted}
            finally:
                store.close()

        def _send(self, status: HTTPStatus, document: dict[str, Any]) -> None:
            payload = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return ThreadingHTTPServer((host, port), Handler)


def _entry(active: core.Active) -> dict[str, Any]:
    return {
        "target": active.target,
        "by": active.by,
        "reason": active.reason,
        "since": active.since,
        "expires_at": active.expires_at,
    }
