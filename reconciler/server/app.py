"""The HTTP API, one ASGI application for ``breakglass serve`` and for Lambda behind API Gateway.

    GET  /health                          liveness: 200 {"status": "ok"}, no credentials, no detail
    GET  /health/detail                   the store, shutdowns, holds, rollouts, controllers
    GET  /feature-flags/status?flag=NAME  the flag's effective state (with more parameters: the
                                          decision for that context, e.g. &user_id=u-1)
    POST /emergency-shutdown              {"reason", "shutdown_by", "flags"?, "expires"?, "force"?}
    POST /emergency-restore               {"reason", "restored_by", "flags"?}

Everything but ``/health`` needs the caller to be authenticated: a bearer token (compared in
constant time), or, behind API Gateway with IAM authorization, the caller's IAM identity, which
is then recorded beside the ``shutdown_by`` it gives. A POST takes ``application/json`` of at
most 16 KiB, read within ``body_timeout`` seconds; a bad request gets a 4xx answer that says
what is wrong, and writes nothing. Blocking store calls run in worker threads, and the writes
of one process one at a time, so no request waits on another's slow body or slow store.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler import breakglass as core
from reconciler.errors import ReconcilerError, UserError
from reconciler.server import inputs
from reconciler.server.access_log import AccessLog
from reconciler.server.dashboard import Dashboard
from reconciler.server.inputs import MAX_BODY, WRITE_WAIT, BadRequest
from reconciler.server.sections import repository_url
from reconciler.server.status import flag_status, health_detail, read_snapshot
from reconciler.state.store import StateStore, StoreUnavailableError, TablesMissingError

LOGGER = logging.getLogger("reconciler.server")
ROOT_PATH = re.compile(r"(/(?!\.+(/|$))[A-Za-z0-9._~-]+)+")  # /v1, /flags/v1; no . or ..


class Authenticator(Protocol):
    """Who the caller is, or None when the request is not authenticated."""

    def caller(self, request: Request) -> str | None: ...


class BearerToken:
    """``Authorization: Bearer <token>``; ``token`` is called per request (a rotated secret)."""

    def __init__(self, token: Callable[[], str]) -> None:
        self.token = token

    def caller(self, request: Request) -> str | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = self.token()
        if scheme.lower() != "bearer" or len(expected) < 16:
            return None
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return None
        return "bearer token"


class GatewayIdentity:
    """The IAM identity API Gateway authorized (the proxy event's ``requestContext``)."""

    def caller(self, request: Request) -> str | None:
        event = request.scope.get("aws.event") or {}
        identity = (event.get("requestContext") or {}).get("identity") or {}
        arn = identity.get("userArn") or identity.get("caller")
        return str(arn) if arn else None


@dataclass
class ApiSettings:
    open_store: Callable[[], StateStore]
    auth: Authenticator
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    body_timeout: float = 10.0
    # With a gateway's IAM identity the operator's own name is optional: the identity is kept.
    who_required: bool = True
    release: Callable[[StateStore], None] = field(default=lambda store: store.close())
    # The dashboard's pages readable without signing in (its forms still need the token).
    public_dashboard: bool = False
    # The repository's web address (https://github.com/OWNER/NAME): the dashboard links each
    # flag's manifest there.
    repository: str | None = None


def create_app(settings: ApiSettings) -> AccessLog:
    api = _Api(settings)
    auth = settings.auth
    pages = Dashboard(
        auth.token if isinstance(auth, BearerToken) else None,
        settings.open_store,
        settings.release,
        settings.clock,
        public=settings.public_dashboard,
        identity=auth.caller if isinstance(auth, GatewayIdentity) else None,
        writes=api.one_write,  # the page's shutdowns queue with the API's
        repository=repository_url(settings.repository) if settings.repository else None,
    )
    app = Starlette(
        routes=[
            Route("/dashboard", pages.overview, methods=["GET"]),
            Route("/dashboard/sign-in", pages.sign_in_form, methods=["GET"]),
            Route("/dashboard/sign-in", pages.sign_in, methods=["POST"]),
            Route("/dashboard/audit", pages.audit, methods=["GET"]),
            Route("/dashboard/shutdown", pages.shutdown, methods=["POST"]),
            Route("/dashboard/restore", pages.restore, methods=["POST"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/health/detail", api.detail, methods=["GET"]),
            Route("/feature-flags/status", api.status, methods=["GET"]),
            Route("/emergency-shutdown", api.shutdown, methods=["POST"]),
            Route("/emergency-restore", api.restore, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.router.redirect_slashes = False  # its redirect would leave the stage's path
    return AccessLog(GatewayPath(app))


class GatewayPath:
    """Behind API Gateway, the stage's path (or a custom domain's base path) as the ASGI
    ``root_path``, which the dashboard's links, redirects and cookies need: the request
    context's ``path`` is what the browser asked for (``/v1/dashboard``), the ``resource`` the
    route it matched (``/dashboard``; these routes have no path parameters), and the root what
    comes before it. A root that is not plain path segments is ignored. Elsewhere it changes
    nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        event = scope.get("aws.event") if scope["type"] == "http" else None
        if isinstance(event, dict):
            resource = str(event.get("resource") or "")
            asked = str((event.get("requestContext") or {}).get("path") or "")
            if resource.startswith("/") and asked.endswith(resource):
                root = asked[: -len(resource)]
                if ROOT_PATH.fullmatch(root):
                    # In place, not a copy: Starlette keeps ``request.state`` in this scope,
                    # and the access log reads the caller from it.
                    scope["root_path"] = root
        await self.app(scope, receive, send)


class _Api:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def health(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def detail(self, request: Request) -> Response:
        return await self._answer(request, lambda: self._read(health_detail))

    async def status(self, request: Request) -> Response:
        def read() -> dict[str, Any]:
            flag, context = inputs.status_query(request.query_params)
            core.check_flag_names([flag])
            store = self.settings.open_store()
            try:
                found = read_snapshot(store, flag)
            finally:
                self.settings.release(store)
            if found is None:
                raise BadRequest(404, f"no flag {flag!r} in the store")
            snapshot, item = found
            return flag_status(snapshot, item, self.settings.clock(), context)

        return await self._answer(request, read)

    async def shutdown(self, request: Request) -> Response:
        return await self._write(request, self._shutdown)

    async def restore(self, request: Request) -> Response:
        return await self._write(request, self._restore)

    # -- the shell -------------------------------------------------------------------------

    async def _answer(self, request: Request, work: Callable[[], dict[str, Any]]) -> Response:
        try:
            self._authenticate(request)
            return _json(200, await run_in_threadpool(work))
        except BadRequest as exc:
            return _json(exc.status, {"error": str(exc)})
        except (StoreUnavailableError, TablesMissingError, core.BusyError) as exc:
            return _json(503, {"error": str(exc)}, {"Retry-After": "1"})
        except core.UnknownFlagError as exc:
            hint = (
                '"force": true' if exc.force is not None else None
            )  # a shutdown's, not a restore's
            refused = core.UnknownFlagError(exc.unknown, force=hint)
            return _json(404, {"error": str(refused)})
        except UserError as exc:
            return _json(400, {"error": str(exc)})
        except ReconcilerError as exc:
            return _json(503, {"error": str(exc)})
        except Exception:  # a bug: the caller learns nothing of it, the log everything
            LOGGER.exception("%s %s failed", request.method, request.url.path)
            return _json(500, {"error": "internal error: see the server's log"})

    async def _write(
        self, request: Request, change: Callable[[dict[str, Any], str], dict[str, Any]]
    ) -> Response:
        try:
            caller = self._authenticate(request)
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise BadRequest(415, "send the body as Content-Type: application/json")
            body = inputs.parse_object(await self._body(request))
        except BadRequest as exc:
            return _json(exc.status, {"error": str(exc)})
        try:
            async with self.one_write():
                return await self._answer(request, lambda: change(body, caller))
        except core.BusyError as exc:
            return _json(503, {"error": str(exc)}, {"Retry-After": "1"})

    @asynccontextmanager
    async def one_write(self) -> AsyncIterator[None]:
        """The process's writes (the API's and the dashboard's) one at a time, waited for in
        the event loop (not in a worker thread, which reads need); BusyError after
        ``WRITE_WAIT`` seconds."""
        lock = self._locks.setdefault(asyncio.get_running_loop(), anyio.Lock())
        try:
            with anyio.fail_after(WRITE_WAIT):
                await lock.acquire()
        except TimeoutError:
            raise core.BusyError(
                "the server is busy with other writes: nothing was done, try again"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _authenticate(self, request: Request) -> str:
        caller = self.settings.auth.caller(request)
        if caller is None:
            raise BadRequest(401, "a valid bearer token is required")
        request.state.caller = caller
        return caller

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest(400, "Content-Length is not a number")
            if int(declared) > MAX_BODY:
                raise BadRequest(413, f"at most {MAX_BODY} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            with anyio.fail_after(self.settings.body_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise BadRequest(413, f"at most {MAX_BODY} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise BadRequest(408, "the body did not arrive in time") from None
        return b"".join(chunks)

    def _who(self, given: str | None, caller: str) -> str:
        if self.settings.who_required or caller == "bearer token":
            return given or ""
        return f"{given} ({caller})" if given else caller

    def _shutdown(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        asked = inputs.shutdown_request(body, self.settings.who_required)
        now = self.settings.clock()
        expires_at = core.parse_expiry(asked.expires, now, option="'expires'")
        store = self.settings.open_store()
        try:
            held = core.shutdown(
                store,
                asked.flags,
                reason=asked.reason,
                by=self._who(asked.by, caller),
                expires_at=expires_at,
                now=now,
                force=asked.force,
            )
        finally:
            self.settings.release(store)
        return {"shut_down": [_entry(a) for a in held]}

    def _restore(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        asked = inputs.restore_request(body, self.settings.who_required)
        store = self.settings.open_store()
        try:
            lifted = core.restore(
                store,
                asked.flags,
                reason=asked.reason,
                by=self._who(asked.by, caller),
                now=self.settings.clock(),
            )
            still = core.active(store, self.settings.clock())
        finally:
            self.settings.release(store)
        return {"restored": lifted, "still_shut_down": [_entry(a) for a in still]}

    def _read(self, view: Callable[[StateStore, datetime], dict[str, Any]]) -> dict[str, Any]:
        store = self.settings.open_store()
        try:
            return view(store, self.settings.clock())
        finally:
            self.settings.release(store)


def _entry(active: core.Active) -> dict[str, Any]:
    return {
        "target": active.target,
        "by": active.by,
        "reason": active.reason,
        "since": active.since,
        "expires_at": active.expires_at,
    }


class _AsciiJSON(JSONResponse):
    """JSON with every character past ASCII escaped: stored text (an operator's reason) reaches
    no terminal or page with a bidirectional override or a lone surrogate in it raw."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _json(status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return _AsciiJSON(
        document, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"no endpoint {request.url.path}" if exc.status_code == 404 else exc.detail
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return _json(exc.status_code, {"error": message})
