"""The dashboard: one page of every flag's effective state, what is shut down and held, the
audit trail, and break-glass's shutdown and restore, served by the HTTP API's application.

Signing in takes the API's token once; the page then keeps a session cookie (HttpOnly,
SameSite=Strict, signed with the token, eight hours). Behind API Gateway with IAM, the caller
the gateway authorized is signed in (a browser gets there through ``breakglass dashboard``,
which signs for it). Every form carries a CSRF token (derived from the session; with IAM, a
double-submitted SameSite=Strict cookie), and a shutdown or restore needs a reason, a name and
a confirmation; both go
through break-glass's code and audit, as the command and the API do. The pages show what the
API's documents say (``status.flag_status``, ``status.health_detail``), so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from reconciler import breakglass as core
from reconciler.errors import ReconcilerError, UserError
from reconciler.server import pages, sections
from reconciler.server.inputs import LOOPBACK, MAX_BODY
from reconciler.server.status import flag_status, health_detail, with_all_flags
from reconciler.state.records import OVERRIDES_RECORD, RecordKind
from reconciler.state.store import StateStore

LOGGER = logging.getLogger("reconciler.server")
COOKIE = "reconciler_session"  # and the port: browsers send a host's cookies to every port
CSRF_COOKIE = "reconciler_form"  # IAM: the double-submitted form token
IAM_ONLY = (
    "This API authorizes with IAM: open the dashboard through <code>breakglass dashboard "
    "URL</code>, which signs each request with your AWS credentials."
)
MIN_TOKEN = 16
BODY_SECONDS = 10.0  # a form not received by then is no form
SESSION_SECONDS = 8 * 3600
Token = Callable[[], str]
Identity = Callable[[Request], "str | None"]


class Dashboard:
    def __init__(
        self,
        token: Token | None,
        open_store: Callable[[], StateStore],
        release: Callable[[StateStore], None],
        clock: Callable[[], Any],
        *,
        public: bool = False,
        identity: Identity | None = None,
        writes: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        repository: str | None = None,
    ) -> None:
        self.public = public  # the pages readable by anyone who can reach them; forms are not
        self.token = token
        self.identity = identity  # behind API Gateway with IAM: who the gateway authorized
        self.writes = writes  # the lock the process's writes take, one at a time
        self.repository = repository  # its web address, for links to the manifests
        self.open_store = open_store
        self.release = release
        self.clock = clock

    # -- routes ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        root = _root(request)
        signed = self._signed(request)
        if signed is None and not self.public:
            if self.identity is not None:
                return _html(pages.page("Not authorized", [f"<p>{IAM_ONLY}</p>"]), 401)
            return _html(pages.sign_in(root=root))
        csrf = signed.csrf if signed else None
        notice = _done(request.query_params.get("done"), request.query_params.get("what", ""))
        answer = await _rendered(self._overview, csrf, notice, root)
        if signed is not None and signed.new_cookie:
            _set_cookie(request, answer, CSRF_COOKIE, signed.csrf)
        return answer

    async def sign_in_form(self, request: Request) -> Response:
        if self.identity is not None:  # IAM signs every request: nothing to sign in to
            return RedirectResponse(_root(request), status_code=303)
        return _html(pages.sign_in(root=_root(request)))

    async def sign_in(self, request: Request) -> Response:
        root = _root(request)
        if self.identity is not None:
            return RedirectResponse(root, status_code=303)
        if self.token is None:
            return _html(pages.sign_in("the dashboard needs the API's token mode", root), 503)
        form = await _form(request)
        given = (form.get("token") or "").encode()
        expected = self.token()
        if len(expected) < MIN_TOKEN or not hmac.compare_digest(given, expected.encode()):
            return _html(pages.sign_in("that is not the API's token", root), 401)
        expires = int(time.time()) + SESSION_SECONDS
        answer = RedirectResponse(root, status_code=303)
        _set_cookie(request, answer, COOKIE, f"{expires}.{self._sign(f'session:{expires}')}")
        return answer

    async def audit(self, request: Request) -> Response:
        root = _root(request)
        if self._signed(request) is None and not self.public:
            return RedirectResponse(root, status_code=303)
        flag = request.query_params.get("flag", "").strip()
        owner = request.query_params.get("owner", "").strip()
        return await _rendered(lambda: pages.audit(*self._audit(flag, owner), flag, owner, root))

    async def shutdown(self, request: Request) -> Response:
        return await self._form_action(request, "shutdown")

    async def restore(self, request: Request) -> Response:
        return await self._form_action(request, "restore")

    async def _form_action(self, request: Request, action: str) -> Response:
        """A shutdown or restore from the page's forms."""
        root = _root(request)
        signed = self._signed(request)
        if signed is None:
            return RedirectResponse(root, status_code=303)
        form = await _form(request)
        given = (form.get("csrf") or "").encode()
        if signed.new_cookie or not hmac.compare_digest(given, signed.csrf.encode()):
            return _html(pages.page("Refused", ["<p>The form is stale: reload the page.</p>"]), 403)
        try:
            if form.get("confirm") != "yes":
                raise UserError("tick the confirmation: nothing was done")
            done = await self._queued(self._act, action, form, signed.who)
        except core.BusyError as exc:
            return await _rendered(self._overview, signed.csrf, str(exc), root, status=503)
        except UserError as exc:
            return await _rendered(self._overview, signed.csrf, str(exc), root, status=400)
        # To the page, not a page: reloading it shows what was done and does it not again.
        return RedirectResponse(f"{root}?{done}", status_code=303)

    async def _queued(self, work: Callable[..., str], *args: Any) -> str:
        """The write in a worker thread, after the process's writes before it."""
        if self.writes is None:
            return await run_in_threadpool(work, *args)
        async with self.writes():
            return await run_in_threadpool(work, *args)

    # -- work --------------------------------------------------------------------------------

    def _overview(self, csrf: str | None, notice: str | None, root: str) -> str:
        opened = self.open_store()
        try:
            store = sections.once_each(opened)
            now = self.clock()
            snapshot, items = with_all_flags(store)
            flags = [flag_status(snapshot, item, now) for item in items]
            links = sections.manifest_links(self.repository, items) if self.repository else None
            detail = health_detail(store, now)
            spend = sections.draw(store, now, detail)
        finally:
            self.release(opened)
        return pages.overview(
            flags, detail, csrf, notice=notice, spend=spend, root=root, links=links
        )

    def _audit(self, flag: str, owner: str) -> tuple[list[dict[str, Any]], str | None]:
        """The entries to list, each break-glass one with what it shut down or restored
        (``scope``), and a note when a flag filter finds nothing."""
        store = self.open_store()
        try:
            flags = store.read_records(RecordKind.FLAG) if owner else {}
            # Break-glass entries whole (their scope is in the records before and after).
            breakglass = [
                {**e, "scope": core.scope(e)} for e in store.read_audit(OVERRIDES_RECORD, limit=500)
            ]
            if flag:
                entries = store.read_audit(f"flag/{flag}", limit=500)
                known = bool(entries) or store.read_record(RecordKind.FLAG, flag) is not None
                entries += [e for e in breakglass if {flag, core.GLOBAL} & set(e["scope"])]
            else:
                recent = store.read_recent_audit(limit=500)  # an index: no scan of the table
                entries = [e for e in recent if e.get("record") != OVERRIDES_RECORD] + breakglass
                known = True
        finally:
            self.release(store)
        if owner:  # who acted, or the team that owns the flag an entry is of
            wanted = owner.lower()
            teams = {
                f"flag/{name}": str(record.item.get("owner", "")).lower()
                for name, record in flags.items()
            }
            entries = [
                e
                for e in entries
                if wanted in str(e.get("actor", "")).lower()
                or wanted in teams.get(str(e.get("record")), "")
            ]
        entries = sorted(entries, key=lambda e: str(e.get("audit_id", "")), reverse=True)[:500]
        note = None if known else f"There is no flag {flag!r} in the store, nor entries of one."
        return entries, note

    def _act(self, action: str, form: dict[str, str], who: str | None) -> str:
        target = form.get("target") or ""
        targets = [target] if target else None
        name = core.check_text(form.get("by") or "", "your name")
        by = f"{name} (dashboard, {who})" if who else f"{name} (dashboard)"
        store = self.open_store()
        try:
            now = self.clock()
            if action == "shutdown":
                core.shutdown(
                    store, targets, reason=form.get("reason", ""), by=by, expires_at=None, now=now
                )
                return urlencode({"done": "shutdown", "what": target or core.GLOBAL})
            lifted = core.restore(store, targets, reason=form.get("reason", ""), by=by, now=now)
            return urlencode({"done": "restore", "what": ",".join(lifted)})
        finally:
            self.release(store)

    # -- who is signed in --------------------------------------------------------------------

    def _signed(self, request: Request) -> Signed | None:
        if self.identity is not None:
            return self._by_identity(request)
        session = self._session(request)
        return Signed(None, self._sign(f"csrf:{session}")) if session else None

    def _by_identity(self, request: Request) -> Signed | None:
        """IAM: the caller the gateway authorized, and the form token of a double-submit
        cookie (SameSite=Strict: another site's form arrives without it)."""
        assert self.identity is not None
        who = self.identity(request)
        if who is None:
            return None
        kept = request.cookies.get(_cookie(request, CSRF_COOKIE), "")
        if re.fullmatch(r"[A-Za-z0-9_-]{43}", kept):
            return Signed(who, kept)
        return Signed(who, secrets.token_urlsafe(32), new_cookie=True)

    def _sign(self, text: str) -> str:
        assert self.token is not None
        return hmac.new(self.token().encode(), text.encode(), hashlib.sha256).hexdigest()

    def _session(self, request: Request) -> str | None:
        if self.token is None:
            return None
        if len(self.token()) < MIN_TOKEN:
            return None
        value = request.cookies.get(_cookie(request, COOKIE), "")
        expires, _, signature = value.partition(".")
        if not re.fullmatch(r"[0-9]{1,12}", expires) or int(expires) < time.time():
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(f"session:{expires}").encode()):
            return None
        return value


@dataclass(frozen=True)
class Signed:
    """Someone signed in: the IAM caller (None with the token's session) and the token every
    form carries; ``new_cookie`` when that token is to be set with the page (IAM)."""

    who: str | None
    csrf: str
    new_cookie: bool = False


def _done(done: str | None, what: str) -> str | None:
    """What a form did, told on the page it leads to (names only: no text from the query)."""
    names = [n for n in what.split(",") if re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", n)]
    shown = ", ".join("ALL AI features" if n == core.GLOBAL else n for n in names)
    if done == "shutdown" and shown:
        return f"Shut down {shown}."
    if done == "restore":
        return f"Restored {shown}." if shown else "Nothing was shut down."
    return None


def _root(request: Request) -> str:
    """The pages' path: behind API Gateway, under the stage's (the ASGI ``root_path``)."""
    return str(request.scope.get("root_path", "")).rstrip("/") + pages.ROOT


def _cookie(request: Request, name: str) -> str:
    return f"{name}_{request.url.port or 443}"


def _set_cookie(request: Request, answer: Response, name: str, value: str) -> None:
    answer.set_cookie(
        _cookie(request, name),
        value,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        # Over TLS, or anywhere but this machine (where it then needs TLS to be kept).
        secure=request.url.scheme == "https" or request.url.hostname not in LOOPBACK,
        path=_root(request),
    )


async def _form(request: Request) -> dict[str, str]:
    """A small url-encoded form (at most ``MAX_BODY`` bytes), one value per field."""
    raw = b""
    try:
        with anyio.fail_after(BODY_SECONDS):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_BODY:
                    return {}
    except TimeoutError:
        return {}
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in fields.items()}


async def _rendered(render: Callable[..., str], *args: Any, status: int = 200) -> Response:
    """A page rendered in a worker thread (it reads the store); a store that does not answer
    gets a page that says so, with 503."""
    try:
        return _html(await run_in_threadpool(render, *args), status)
    except ReconcilerError as exc:
        return _html(pages.page("The store does not answer", [f"<p>{pages.text(exc)}</p>"]), 503)


def _html(body: str, status: int = 200) -> Response:
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
        "form-action 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(body, status_code=status, headers=headers)
