"""Structured access logs: one JSON line per request, with nothing personal in it.

Each line has the time, method, path, status, duration and response size. Query parameters
other than the flag's name are an evaluation context: a user id appears only as a short salted
hash (the same user gives the same hash within one process, so a trail can be followed, and no
dictionary of ids reverses it), and every other value as ``[redacted]``. The client's address
and the caller are hashed the same way. Bodies (reasons, operators) are not logged: they are in
the audit trail, where they belong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

LOGGER = logging.getLogger("reconciler.access")
USER_KEYS = frozenset({"user_id", "userId", "user", "targeting_key", "targetingKey"})
KEPT_KEYS = frozenset({"flag"})
_SALT = secrets.token_bytes(16)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def pseudonym(value: str) -> str:
    """A short salted hash of ``value``: stable within the process, not reversible."""
    return "h:" + hashlib.blake2b(value.encode(), key=_SALT, digest_size=6).hexdigest()


def redact_query(query: str) -> dict[str, str]:
    """The query's parameters as they may be logged."""
    shown = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in KEPT_KEYS:
            shown[key] = value
        elif key in USER_KEYS:
            shown[key] = pseudonym(value)
        else:
            shown[key] = "[redacted]"
    return shown


class AccessLog:
    """ASGI middleware that writes the line when the response has been sent."""

    def __init__(self, app: App, logger: logging.Logger = LOGGER) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer: dict[str, Any] = {"status": 500, "bytes": 0}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.logger.info(json.dumps(_line(scope, answer, started), sort_keys=True))


def _line(scope: Mapping[str, Any], answer: Mapping[str, Any], started: float) -> dict[str, Any]:
    client = scope.get("client")
    line: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": answer["status"],
        "bytes": answer["bytes"],
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        line["query"] = redact_query(query)
    if client:
        line["client"] = pseudonym(str(client[0]))
    caller = scope.get("state", {}).get("caller")
    if caller:
        line["caller"] = pseudonym(str(caller))
    return line
