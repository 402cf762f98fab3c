"""The HTTP API's requests, parsed and checked before anything is read or written (pure).

A body is JSON, an object, at most ``MAX_BODY`` bytes, with only the fields its endpoint
knows; each field has its type. The break-glass core checks what the words say (a reason
people can read, flag names that can be flags, an expiry in the future), for the command line
and the API alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_BODY = 16 * 1024
WRITE_WAIT = 20.0  # seconds a write waits for the process's writes before it, then 503
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # this machine's own addresses
SHUTDOWN_FIELDS = ("reason", "shutdown_by", "flags", "expires", "force")
RESTORE_FIELDS = ("reason", "restored_by", "flags")
# Query parameters of /feature-flags/status other than ``flag`` are the evaluation context.
MAX_CONTEXT = 20


class BadRequest(Exception):
    """A request the API refuses with a 4xx status and a message, having written nothing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Shutdown:
    reason: str
    by: str | None
    flags: list[str] | None
    expires: str | None
    force: bool


@dataclass(frozen=True)
class Restore:
    reason: str
    by: str | None
    flags: list[str] | None


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not UTF-8") from None
    try:
        body = json.loads(text or "{}", parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(400, "the body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, NaN/Infinity, integers of too many digits
        raise BadRequest(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def shutdown_request(body: Mapping[str, Any], who_required: bool) -> Shutdown:
    _known(body, SHUTDOWN_FIELDS)
    expires, force = body.get("expires"), body.get("force", False)
    if expires is not None and not isinstance(expires, str):
        raise BadRequest(400, "'expires' must be a string such as \"2h\"")
    if not isinstance(force, bool):
        raise BadRequest(400, "'force' must be true or false")
    return Shutdown(
        _text(body, "reason", "'reason' is required (a non-empty string)"),
        _who(body, "shutdown_by", who_required),
        _flags(body),
        expires,
        force,
    )


def restore_request(body: Mapping[str, Any], who_required: bool) -> Restore:
    _known(body, RESTORE_FIELDS)
    return Restore(
        _text(body, "reason", "'reason' is required (a non-empty string)"),
        _who(body, "restored_by", who_required),
        _flags(body),
    )


def status_query(params: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The flag's name and the evaluation context (every other parameter) of a status query."""
    flag = params.get("flag", "")
    if not flag:
        raise BadRequest(400, "give ?flag=NAME")
    context = {key: value for key, value in params.items() if key != "flag"}
    if len(context) > MAX_CONTEXT:
        raise BadRequest(400, f"at most {MAX_CONTEXT} context attributes")
    return flag, context


def _known(body: Mapping[str, Any], fields: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(
            400,
            f"unknown field {unknown[0]!r}: the fields are {', '.join(repr(f) for f in fields)}",
        )


def _text(body: Mapping[str, Any], key: str, message: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(400, message)
    return value


def _who(body: Mapping[str, Any], key: str, required: bool) -> str | None:
    if key not in body and not required:
        return None  # the gateway's caller identity says who
    return _text(body, key, f"'{key}' is required (who is acting)")


def _flags(body: Mapping[str, Any]) -> list[str] | None:
    flags = body.get("flags")
    if flags is None:
        return None
    if not isinstance(flags, list) or not flags or not all(isinstance(f, str) for f in flags):
        raise BadRequest(400, "'flags' must be a non-empty list of names")
    return flags
