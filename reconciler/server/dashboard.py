"""The dashboard: one page of every flag's effective state, what is shut down and held, the
audit trail, and break-glass's shutdown and restore, served by the HTTP API's application.

Signing in takes the API's token once; the page then keeps a session cookie (HttpOnly,
SameSite=Strict, signed with the token, eight hours). Every form carries a CSRF token derived
from the session, and a shutdown or restore needs a reason, a name and a confirmation; both go
through break-glass's code and audit, as the command and the API do. The pages show what the
API's documents say (``status.flag_status``, ``status.health_detail``), so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from reconciler import breakglass as core
from reconciler.controllers.report import collect
from reconciler.controllers.rollout_run import CONTROLLER_RECORD
from reconciler.errors import ReconcilerError, UserError
from reconciler.server import charts, pages
from reconciler.server.inputs import MAX_BODY
from reconciler.server.status import flag_status, health_detail, with_all_flags
from reconciler.state.records import OVERRIDES_RECORD, RecordKind
from reconciler.state.store import StateStore

LOGGER = logging.getLogger("reconciler.server")
COOKIE = "reconciler_session"  # and the port: browsers send a host's cookies to every port
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MIN_TOKEN = 16
DAYS = 7  # of spend in the line chart
BODY_SECONDS = 10.0  # a form not received by then is no form
SESSION_SECONDS = 8 * 3600
Token = Callable[[], str]
View = Callable[[StateStore, datetime, dict[str, Any]], str]


class Dashboard:
    def __init__(
        self,
        token: Token | None,
        open_store: Callable[[], StateStore],
        release: Callable[[StateStore], None],
        clock: Callable[[], Any],
        *,
        public: bool = False,
    ) -> None:
        self.public = public  # the pages readable by anyone who can reach them; forms are not
        self.token = token
        self.open_store = open_store
        self.release = release
        self.clock = clock

    # -- routes ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        session = self._session(request)
        if session is None and not self.public:
            return _html(pages.sign_in())
        return await _rendered(self._overview, self._csrf(session) if session else None, None)

    async def sign_in_form(self, request: Request) -> Response:
        return _html(pages.sign_in())

    async def sign_in(self, request: Request) -> Response:
        if self.token is None:
            return _html(pages.sign_in("the dashboard needs the API's token mode"), 503)
        form = await _form(request)
        given = (form.get("token") or "").encode()
        expected = self.token()
        if len(expected) < MIN_TOKEN or not hmac.compare_digest(given, expected.encode()):
            return _html(pages.sign_in("that is not the API's token"), 401)
        expires = int(time.time()) + SESSION_SECONDS
        answer = RedirectResponse("/dashboard", status_code=303)
        answer.set_cookie(
            _cookie(request),
            f"{expires}.{self._sign(f'session:{expires}')}",
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            # Over TLS, or anywhere but this machine (where it then needs TLS to be kept).
            secure=request.url.scheme == "https" or request.url.hostname not in LOOPBACK,
            path="/dashboard",
        )
        return answer

    async def audit(self, request: Request) -> Response:
        if self._session(request) is None and not self.public:
            return RedirectResponse("/dashboard", status_code=303)
        flag = request.query_params.get("flag", "").strip()
        owner = request.query_params.get("owner", "").strip()
        return await _rendered(lambda: pages.audit(self._audit(flag, owner), flag, owner))

    async def act(self, request: Request) -> Response:
        """A shutdown or restore from the page's forms."""
        session = self._session(request)
        if session is None:
            return RedirectResponse("/dashboard", status_code=303)
        form = await _form(request)
        csrf = self._csrf(session)
        if not hmac.compare_digest((form.get("csrf") or "").encode(), csrf.encode()):
            return _html(pages.page("Refused", ["<p>The form is stale: reload the page.</p>"]), 403)
        action = request.url.path.rsplit("/", 1)[-1]
        try:
            if form.get("confirm") != "yes":
                raise UserError("tick the confirmation: nothing was done")
            notice = await run_in_threadpool(self._act, action, form)
        except UserError as exc:
            return await _rendered(self._overview, csrf, str(exc), status=400)
        return await _rendered(self._overview, csrf, notice)

    # -- work --------------------------------------------------------------------------------

    def _overview(self, csrf: str | None, notice: str | None) -> str:
        store = self.open_store()
        try:
            now = self.clock()
            snapshot, items = with_all_flags(store)
            flags = [flag_status(snapshot, item, now) for item in items]
            detail = health_detail(store, now)
            views: list[tuple[str, View]] = [
                ("AI spend", _spend),
                ("Rollouts", _rollouts),
                ("Experiments", _experiments),
            ]
            spend = "".join(_section(title, view, store, now, detail) for title, view in views)
        finally:
            self.release(store)
        return pages.overview(flags, detail, csrf, notice, spend)

    def _audit(self, flag: str, owner: str) -> list[dict[str, Any]]:
        store = self.open_store()
        try:
            flags = store.read_records(RecordKind.FLAG) if owner else {}
            entries = store.read_audit(f"flag/{flag}" if flag else None, limit=500)
            if flag:  # its shutdowns are entries of the overrides record
                entries += [
                    e
                    for e in store.read_audit(OVERRIDES_RECORD, limit=500)
                    if flag in core.scope(e)
                ]
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
        return sorted(entries, key=lambda e: str(e.get("at", "")), reverse=True)

    def _act(self, action: str, form: dict[str, str]) -> str:
        target = form.get("target") or ""
        targets = [target] if target else None
        by = f"{core.check_text(form.get('by') or '', 'your name')} (dashboard)"
        store = self.open_store()
        try:
            now = self.clock()
            if action == "shutdown":
                core.shutdown(
                    store, targets, reason=form.get("reason", ""), by=by, expires_at=None, now=now
                )
                return f"Shut down {target or 'ALL AI features'}."
            lifted = core.restore(store, targets, reason=form.get("reason", ""), by=by, now=now)
            return f"Restored {', '.join(lifted)}." if lifted else "Nothing was shut down."
        finally:
            self.release(store)

    # -- the session ------------------------------------------------------------------------

    def _sign(self, text: str) -> str:
        assert self.token is not None
        return hmac.new(self.token().encode(), text.encode(), hashlib.sha256).hexdigest()

    def _session(self, request: Request) -> str | None:
        if self.token is None:
            return None
        if len(self.token()) < MIN_TOKEN:
            return None
        value = request.cookies.get(_cookie(request), "")
        expires, _, signature = value.partition(".")
        if not re.fullmatch(r"[0-9]{1,12}", expires) or int(expires) < time.time():
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(f"session:{expires}").encode()):
            return None
        return value

    def _csrf(self, session: str) -> str:
        return self._sign(f"csrf:{session}")


def _section(
    title: str, view: View, store: StateStore, now: datetime, detail: dict[str, Any]
) -> str:
    """One section of the page; a record it cannot read costs that section, not the page (the
    flags and the break-glass forms always show)."""
    try:
        return view(store, now, detail)
    except Exception:
        LOGGER.exception("dashboard section %s", title)
        unread = "This section could not be read: see the server's log."
        return f"<h2>{pages.text(title)}</h2><p class=alert>{unread}</p>"


def _spend(store: StateStore, now: datetime, detail: dict[str, Any]) -> str:
    """Today's spend per request type against the daily limits of budgets that count all AI
    spend (the cost report's scope says so),
    and the last days' totals: the cost report's figures (``controller cost``), drawn."""
    today = collect(store, now=now)
    rows = [(t.request_type, t.cost_micros) for t in today.types]
    rows.append(("all AI spend", today.total_micros))
    lines = [
        (limit.name, limit.limit_micros)
        for budget in today.budgets
        if budget.period_kind == "daily" and budget.scope.startswith("counts all request types")
        for limit in budget.limits
    ]
    days = []
    for back in range(DAYS - 1, 0, -1):
        day = (now - timedelta(days=back)).date()
        days.append((day.isoformat(), collect(store, now=now, day=day).total_micros))
    days.append((today.date, today.total_micros))
    return (
        "<h2>Today's AI spend</h2>"
        + charts.spend_bars(rows, lines, f"AI spend on {today.date} by request type")
        + f"<h2>The last {DAYS} days</h2>"
        + charts.spend_line(days, f"AI spend per day, the last {DAYS} days")
    )


def _rollouts(store: StateStore, now: datetime, detail: dict[str, Any]) -> str:
    """Each rollout's share over time (the rollout controller's audited moves, then now), its
    last checks and its next step, as ``controller rollout`` reports them."""
    moves = store.read_audit(CONTROLLER_RECORD, limit=200)
    parts = []
    for rollout in detail.get("rollouts") or []:
        name = str(rollout["strategy"])
        points = []
        for entry in reversed(moves):
            after = entry.get("after")
            move = after.get(name) if isinstance(after, dict) else None
            share = move.get("percentage") if isinstance(move, dict) else None
            if isinstance(share, int | float) and not isinstance(share, bool):
                points.append((str(entry.get("at", "")), float(share)))  # a malformed one: left out
        points.append((str(rollout.get("since", "")), float(rollout["percentage"])))
        checks = [str(c.get("text", "")) for c in rollout.get("checks") or []]
        upcoming = rollout.get("next")
        next_step = (
            f"next: {upcoming['percentage']:g}% "
            + ("when its checks pass" if upcoming["when"] == "checks_pass" else "by schedule")
            + f" (due {upcoming['at']})"
            if upcoming
            else "no step left"
        )
        parts.append(
            f'<h3 data-rollout="{pages.text(name)}">{pages.text(name)} '
            f"({pages.text(rollout['flag'])})</h3>"
            + charts.share_over_time(points, f"{name}: the share served over time")
            + f"<p>{pages.text(rollout['state'])} at {float(rollout['percentage']):g}%: "
            f"{pages.text(rollout.get('reason'))}; {pages.text(next_step)}</p>"
            + "".join(f"<p class=muted>{pages.text(c)}</p>" for c in checks)
        )
    return "<h2>Rollouts</h2>" + "".join(parts) if parts else ""


def _experiments(store: StateStore, now: datetime, detail: dict[str, Any]) -> str:
    """Each stored experiment as ``controller experiment NAME`` reports it: the intervals per
    metric (its plot), the sample-ratio check and what auto-conclusion waits for."""
    from reconciler.controllers.analyser_run import read_report  # noqa: PLC0415 - scipy
    from reconciler.render import experiment as render  # noqa: PLC0415

    parts = []
    for name, record in store.read_records(RecordKind.EXPERIMENT).items():
        report = read_report(store, record.item, now)
        parts.append(f'<h3 data-experiment="{pages.text(name)}">{pages.text(name)}</h3>')
        if report.analysis is None:
            parts.append("<p>Not started yet (its start_time is in the future).</p>")
            continue
        lines = render.render_text(report.analysis, report.verdict, report.operator)
        parts.append(render.render_plot(report.analysis))  # its names escaped by the renderer
        shown = "\n".join(pages.text(line) for line in lines)  # each line escaped
        parts.append(f"<pre>{shown}</pre>")
    return "<h2>Experiments</h2>" + "".join(parts) if parts else ""


def _cookie(request: Request) -> str:
    return f"{COOKIE}_{request.url.port or 443}"


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
