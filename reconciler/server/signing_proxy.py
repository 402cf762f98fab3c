"""The dashboard behind API Gateway's IAM authorization, for a browser: a server on loopback
that signs each request with the operator's AWS credentials (SigV4, service ``execute-api``)
and forwards it to the stage (``breakglass dashboard URL``).

A browser cannot sign requests, and the gateway refuses every unsigned one. The proxy signs
only the dashboard's own routes (the JSON API is for scripts, which sign for themselves), and
only for the operator who started it:

- a secret made at launch comes in the link it opens (through a file only its user can read,
  so it is on no command line) and is kept as a cookie: a request without it, from another user
  or process on the machine, is refused;
- it listens on loopback, and answers only requests whose ``Host`` is its own address, so a web
  page cannot reach it through a DNS name rebound to 127.0.0.1;
- a POST must come from its own pages (``Origin``, and ``Sec-Fetch-Site`` where the browser
  sends it), so another site cannot make the browser post a shutdown that the proxy would
  sign;
- the path must be one of the dashboard's routes exactly as sent (no ``..``, no escapes), the
  query is signed and sent in the encoding SigV4 expects, and only the dashboard's own cookies
  go upstream (not those other local servers set for 127.0.0.1);
- a redirect leads back to the dashboard only, and cookies come back without ``Secure``
  (loopback is plain HTTP; they never leave the machine).
"""

from __future__ import annotations

import hmac
import http.client
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from reconciler.errors import UserError
from reconciler.server.inputs import LOOPBACK, MAX_BODY
from reconciler.server.pages import ROOT

SERVICE = "execute-api"
TIMEOUT = 30.0  # seconds for the gateway's answer (its own limit is 29)
KEPT_REQUEST = ("content-type", "accept")
ROUTES = ("", "/sign-in", "/audit", "/shutdown", "/restore")  # under the dashboard's path
OWN_COOKIES = re.compile(r"reconciler_(session|form)_[0-9]+")  # the dashboard's, forwarded
KEY_COOKIE = "reconciler_proxy"  # and the port: the launch secret
SIGN_IN = "/_proxy/sign-in"  # ?key=<the launch secret>
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
    def parse(cls, url: str, region: str | None = None, fallback: str | None = None) -> Upstream:
        """``region`` given, else the one in API Gateway's host name, else ``fallback`` (the
        profile's or ``AWS_REGION``)."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise UserError(f"{url!r} is not the API's URL (https://ID.execute-api.REGION...)")
        if parts.scheme == "http" and parts.hostname not in LOOPBACK:
            raise UserError(f"{url!r}: the API is reached over https only")
        found = GATEWAY_HOST.match(parts.hostname)
        chosen = region or (found[1] if found else None) or fallback
        if not chosen:
            raise UserError(f"{url!r} names no region: give --region")
        return cls(parts.scheme, parts.netloc, parts.path.rstrip("/"), chosen)


Credentials = Callable[[], Any]  # botocore's frozen credentials: access_key, secret_key, token


class SigningProxy:
    """The ASGI application the browser talks to; ``key`` is the launch secret."""

    def __init__(self, upstream: Upstream, credentials: Credentials, key: str) -> None:
        if len(key) < 32:
            raise ValueError("the launch secret is too short")
        self.upstream = upstream
        self.credentials = credentials
        self.key = key
        self.pages = upstream.path + ROOT

    @staticmethod
    def new_key() -> str:
        return secrets.token_urlsafe(32)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        answer = await self._answer(request)
        await answer(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        own = _own_hosts(request)
        if own is None or request.headers.get("host", "") not in own:
            return _refused(421, "this proxy answers only its own address")
        path = bytes(request.scope.get("raw_path") or b"").decode("latin-1")
        if path == SIGN_IN:
            return self._sign_in(request)
        given = request.cookies.get(_key_cookie(request), "")
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            return _refused(401, "open the link breakglass dashboard printed: it signs you in")
        if path in ("/", self.upstream.path, self.upstream.path + "/"):
            return RedirectResponse(self.pages, status_code=303)
        if path not in {self.pages + route for route in ROUTES}:
            return _refused(404, f"only the dashboard ({self.pages}) is signed here")
        if request.method not in ("GET", "POST"):
            return _refused(405, f"{request.method} is not forwarded")
        body = b""
        if request.method == "POST":
            origin = request.headers.get("origin", "")
            fetch_site = request.headers.get("sec-fetch-site", "same-origin")
            if origin not in {f"http://{host}" for host in own} or fetch_site != "same-origin":
                return _refused(403, "a form from another site: not forwarded")
            read = await _body(request)
            if read is None:
                return _refused(413, f"at most {MAX_BODY} bytes")
            body = read
        headers = {k: v for k, v in request.headers.items() if k in KEPT_REQUEST}
        cookies = "; ".join(
            f"{k}={v}" for k, v in request.cookies.items() if OWN_COOKIES.fullmatch(k)
        )
        if cookies:
            headers["cookie"] = cookies
        # As SigV4 encodes a query (urlencode's safe="" to quote): all but letters, digits, -_.~
        query = urlencode(parse_qsl(request.url.query, keep_blank_values=True), quote_via=quote)
        target = path + (f"?{query}" if query else "")
        try:
            status, answer_headers, content = await run_in_threadpool(
                self._forward, request.method, target, headers, body
            )
        except (OSError, http.client.HTTPException) as exc:
            return _refused(502, f"the API does not answer: {exc}")
        except Exception as exc:  # botocore's: the credentials could not be had or refreshed
            return _refused(
                502,
                f"no AWS credentials to sign with ({type(exc).__name__}: {exc}); sign in again "
                "(aws sso login) and reload",
            )
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

    def _sign_in(self, request: Request) -> Response:
        """The launch link: the secret in its query becomes a cookie, and on to the pages."""
        given = request.query_params.get("key", "")
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            return _refused(401, "that is not this proxy's link")
        answer = RedirectResponse(self.pages, status_code=303)
        # Lax, not Strict: the link is opened from a file, a navigation from another site.
        answer.set_cookie(_key_cookie(request), self.key, httponly=True, samesite="lax")
        return answer

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
        """A redirect to the dashboard, made one to this proxy; any other, to its first page."""
        parts = urlsplit(location)
        local = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.scheme or parts.netloc not in ("", self.upstream.host):
            return self.pages
        if parts.path not in {self.pages + route for route in ROUTES} or "\\" in location:
            return self.pages
        return local


def opener(folder: Path, link: str) -> Path:
    """A page that sends the browser on to ``link``, in ``folder`` (one only its user can
    read): opened as a file, the launch secret is on no command line."""
    page = folder / "open-dashboard.html"
    page.write_text(f'<meta http-equiv="refresh" content="0;url={escape(link, quote=True)}">\n')
    page.chmod(0o600)
    return page


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


def _own_hosts(request: Request) -> set[str] | None:
    server = request.scope.get("server")
    if not server:
        return None
    port = server[1]
    return {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}


def _key_cookie(request: Request) -> str:
    server = request.scope.get("server") or ("", 0)
    return f"{KEY_COOKIE}_{server[1]}"


async def _body(request: Request) -> bytes | None:
    """The body, or None past ``MAX_BODY`` (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _insecure(cookie: str) -> str:
    """The gateway's cookie as loopback's plain HTTP keeps it: without ``Secure``."""
    return "; ".join(part for part in cookie.split("; ") if part.strip().lower() != "secure")


def _refused(status: int, message: str) -> Response:
    return PlainTextResponse(message + "\n", status_code=status)
