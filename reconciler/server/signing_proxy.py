"""The dashboard behind API Gateway's IAM authorization, for a browser: a server on loopback
that signs each request with the operator's AWS credentials (SigV4, service ``execute-api``)
and forwards it to the stage (``breakglass dashboard URL``).

A browser cannot sign requests, and the gateway refuses every unsigned one. The proxy signs
only the dashboard's pages (the JSON API is for scripts, which sign for themselves), and only
for this machine's browser:

- it listens on loopback, and answers only requests whose ``Host`` is its own address, so a web
  page cannot reach it through a DNS name rebound to 127.0.0.1;
- a POST must come from its own pages (``Origin``, and ``Sec-Fetch-Site`` where the browser
  sends it), so another site cannot make the browser post a shutdown that the proxy would
  sign; the dashboard's own form token, a SameSite=Strict cookie, is checked upstream as well;
- cookies come back without ``Secure`` (loopback is plain HTTP; they never leave the machine).
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from reconciler.errors import UserError
from reconciler.server.inputs import MAX_BODY
from reconciler.server.pages import ROOT

SERVICE = "execute-api"
TIMEOUT = 30.0  # seconds for the gateway's answer (its own limit is 29)
KEPT_REQUEST = ("content-type", "cookie", "accept")
KEPT_ANSWER = (
    "content-type",
    "cache-control",
    "content-security-policy",
    "x-content-type-options",
)
GATEWAY_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


@dataclass(frozen=True)
class Upstream:
    """The stage's URL, split: ``https://ID.execute-api.REGION.amazonaws.com/v1``."""

    scheme: str
    host: str  # with its port, if any
    path: str  # the stage's path, without a trailing slash
    region: str

    @classmethod
    def parse(cls, url: str, region: str | None = None) -> Upstream:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise UserError(f"{url!r} is not the API's URL (https://ID.execute-api.REGION...)")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise UserError(f"{url!r}: the API is reached over https only")
        found = GATEWAY_HOST.match(parts.hostname)
        chosen = region or (found[1] if found else None)
        if not chosen:
            raise UserError(f"{url!r} names no region: give --region")
        return cls(parts.scheme, parts.netloc, parts.path.rstrip("/"), chosen)


Credentials = Callable[[], Any]  # botocore's frozen credentials: access_key, secret_key, token


class SigningProxy:
    """The ASGI application the browser talks to."""

    def __init__(self, upstream: Upstream, credentials: Credentials) -> None:
        self.upstream = upstream
        self.credentials = credentials
        self.pages = upstream.path + ROOT

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        answer = await self._answer(request)
        await answer(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        own = _own_hosts(request)
        if request.headers.get("host", "") not in own:
            return _refused(421, "this proxy answers only its own address")
        path = request.url.path
        if path in ("/", self.upstream.path, self.upstream.path + "/"):
            return RedirectResponse(self.pages, status_code=303)
        if not (path == self.pages or path.startswith(self.pages + "/")):
            return _refused(404, f"only the dashboard ({self.pages}) is signed here")
        if request.method not in ("GET", "POST"):
            return _refused(405, f"{request.method} is not forwarded")
        body = b""
        if request.method == "POST":
            origin = request.headers.get("origin", "")
            fetch_site = request.headers.get("sec-fetch-site", "same-origin")
            if origin not in {f"http://{host}" for host in own} or fetch_site != "same-origin":
                return _refused(403, "a form from another site: not forwarded")
            body = await request.body()
            if len(body) > MAX_BODY:
                return _refused(413, f"at most {MAX_BODY} bytes")
        headers = {k: v for k, v in request.headers.items() if k in KEPT_REQUEST}
        target = path + (f"?{request.url.query}" if request.url.query else "")
        try:
            status, answer_headers, content = await run_in_threadpool(
                self._forward, request.method, target, headers, body
            )
        except (OSError, http.client.HTTPException) as exc:
            return _refused(502, f"the API does not answer: {exc}")
        response = Response(content, status_code=status)
        for name, value in answer_headers:
            lower = name.lower()
            if lower in KEPT_ANSWER:
                response.headers[name] = value
            elif lower == "location":
                response.headers["location"] = self._local(value)
            elif lower == "set-cookie":
                response.headers.append("set-cookie", _insecure(value))
        return response

    def _forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        signed = sign(
            self.credentials(),
            self.upstream,
            method=method,
            target=target,
            headers=headers,
            body=body or None,
        )
        connection_type = (
            http.client.HTTPSConnection
            if self.upstream.scheme == "https"
            else http.client.HTTPConnection
        )
        connection = connection_type(self.upstream.host, timeout=TIMEOUT)
        try:
            connection.request(method, target, body=body or None, headers=signed)
            answer = connection.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            connection.close()

    def _local(self, location: str) -> str:
        """A redirect to the gateway, made one to this proxy (paths stay as they are)."""
        parts = urlsplit(location)
        if parts.netloc and parts.netloc != self.upstream.host:
            return self.pages  # somewhere else: not followed through the proxy
        return parts.path + (f"?{parts.query}" if parts.query else "")


def sign(
    credentials: Any,
    upstream: Upstream,
    *,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | None,
) -> dict[str, str]:
    """The request's headers with its SigV4 signature (``Authorization``, ``X-Amz-Date`` and,
    with temporary credentials, ``X-Amz-Security-Token``)."""
    from botocore.auth import SigV4Auth  # noqa: PLC0415
    from botocore.awsrequest import AWSRequest  # noqa: PLC0415

    url = f"{upstream.scheme}://{upstream.host}{target}"
    request = AWSRequest(method=method, url=url, data=body, headers={**headers})
    SigV4Auth(credentials, SERVICE, upstream.region).add_auth(request)
    return dict(request.headers.items())


def _own_hosts(request: Request) -> set[str]:
    server = request.scope.get("server") or ("127.0.0.1", 0)
    port = server[1]
    return {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}


def _insecure(cookie: str) -> str:
    """The gateway's cookie as loopback's plain HTTP keeps it: without ``Secure``."""
    return "; ".join(part for part in cookie.split("; ") if part.strip().lower() != "secure")


def _refused(status: int, message: str) -> Response:
    return PlainTextResponse(message + "\n", status_code=status)
