"""The dashboard's sections drawn from the controllers' reports (the figures ``controller
cost``, ``controller rollout`` and ``controller experiment`` print), and the links to the
manifests in git.

A page view reads the store through ``once_each``: each read once, however many sections
(or days of the spend chart) ask for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import quote

from reconciler.controllers.report import collect
from reconciler.controllers.rollout_run import CONTROLLER_RECORD
from reconciler.errors import ConfigError
from reconciler.server import charts, pages
from reconciler.state.records import RecordKind
from reconciler.state.store import StateStore

LOGGER = logging.getLogger("reconciler.server")
DAYS = 7  # of spend in the line chart
View = Callable[[StateStore, datetime, dict[str, Any]], str]


def draw(store: StateStore, now: datetime, detail: dict[str, Any]) -> str:
    """Spend, rollouts and experiments, in that order; a section that fails costs itself."""
    views: list[tuple[str, View]] = [
        ("AI spend", _spend),
        ("Rollouts", _rollouts),
        ("Experiments", _experiments),
    ]
    return "".join(_section(title, view, store, now, detail) for title, view in views)


def once_each(store: StateStore) -> StateStore:
    """The store for one page view, each of its reads made once (``ViewReads``)."""
    return cast(StateStore, ViewReads(store))


class ViewReads:
    """A store for one page view: each read made once and kept (the spend chart asks the cost
    report for each of its days, and each asks again for the budgets and the alerts)."""

    READS = frozenset(
        {
            "read_records",
            "read_record",
            "read_control",
            "read_overrides",
            "read_alerts",
            "read_cost_metrics",
            "read_shards",
            "read_audit",
            "read_assignment_counts",
            "read_results",
        }
    )

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._kept: dict[tuple[Any, ...], Any] = {}

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name not in self.READS:
            return found

        def once(*args: Any, **kwargs: Any) -> Any:
            key = (name, args, tuple(sorted(kwargs.items())))
            if key not in self._kept:
                self._kept[key] = found(*args, **kwargs)
            return self._kept[key]

        return once


def repository_url(url: str) -> str:
    """A repository's web address (``https://github.com/OWNER/NAME``) as the dashboard links
    manifests under it, or a ConfigError."""
    cleaned = url.strip().rstrip("/")
    if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9_.~-]+)+", cleaned):
        raise ConfigError(f"{url!r} is not a repository's https address (https://host/owner/name)")
    return cleaned


def manifest_links(repository: str, items: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each flag's manifest at the commit that applied it (the default branch's when unknown)."""
    links = {}
    for item in items:
        name = str(item.get("flag_name", ""))
        commit = str(item.get("git_commit") or "")
        at = commit if re.fullmatch(r"[0-9a-f]{40}", commit) else "HEAD"
        links[name] = f"{repository}/blob/{at}/flags.d/{quote(name)}.yaml"
    return links


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
