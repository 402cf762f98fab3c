"""The plan for a terminal: ``+ ~ -`` per record, field changes, risks, holds, a summary line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from reconciler.plan.model import Change, Plan
from reconciler.render.large import FULL_UP_TO, select

SYMBOL = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}
COLOR = {"create": "32", "update": "33", "delete": "31", "risk": "1;31", "hold": "35", "dim": "2"}
MAX_VALUE = 100


def render_text(
    plan: Plan, *, color: bool = False, show_unchanged: bool = False, show_all: bool = False
) -> Iterator[str]:
    """The plan's lines; a large plan shows its notable changes in full and counts the rest
    (``reconciler.render.large``) unless ``show_all``."""

    def paint(text: str, style: str) -> str:
        return f"\x1b[{COLOR[style]}m{text}\x1b[0m" if color else text

    yield f"Store: {plan.store}"
    yield f"Commit: {plan.git_commit or '(not a git work tree)'}  Plan: {plan.plan_id}"
    for note in plan.notes:
        yield f"Note: {note}"
    yield ""
    listed = [c for c in plan.changes if c.action != "unchanged" or c.holds or show_unchanged]
    full, groups = select(listed, show_all=show_all)
    for change in full:
        yield from _change(change, paint)
    if groups:
        yield (
            f"{len(listed) - len(full):,} more change(s) not shown field by field (a plan of "
            f"more than {FULL_UP_TO} shows risks, holds and deletions in full; --show-all shows "
            "every change, --format json has them all):"
        )
        for group in groups:
            yield paint(f"  {SYMBOL[group.action]} {group.describe()}", group.action)
        yield ""
    if plan.unmanaged:
        names = ", ".join(u.address for u in plan.unmanaged)
        yield paint(f"Not managed by reconcile, left alone: {names}", "dim")
        yield ""
    if not plan.has_changes:
        yield "No changes. The store matches git."
    yield plan.summary()


def _change(change: Change, paint: Any) -> Iterator[str]:
    action = change.action
    if action == "unchanged":
        yield f"= {change.address} (no change)"
    else:
        version = f", version {change.expected_version}" if change.expected_version else ""
        yield paint(f"{SYMBOL[action]} {change.address} ({action}{version})", action)
    if change.blocked:
        yield paint(f"    x blocked: {change.blocked}", "risk")
    if change.drift:
        yield paint(
            "    ! drift: edited outside git since the last apply; apply restores git", "risk"
        )
    for hold in change.holds:
        since = f" since {hold.since}" if hold.since else ""
        waits = ""
        if change.pending:
            waits = (
                " - this change waits until it is lifted"
                if hold.owner == "override"
                else " - git's change applies; the controller's state still outranks it"
            )
        yield paint(f"    | held by {hold.detail}{since}{waits}", "hold")
    for risk in change.risks:
        yield paint(f"    ! {risk.message}", "risk")
    for field in change.fields:
        if field.kind == "added":
            yield paint(f"    + {field.path}: {_show(field.after)}", "create")
        elif field.kind == "removed":
            yield paint(f"    - {field.path}: {_show(field.before)}", "delete")
        else:
            yield paint(
                f"    ~ {field.path}: {_show(field.before)} -> {_show(field.after)}", "update"
            )
    yield ""


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."
