"""The plan for a terminal: ``+ ~ -`` per record, field changes, risks, holds, a summary line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from reconciler.plan.model import Change, Plan

SYMBOL = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}
COLOR = {"create": "32", "update": "33", "delete": "31", "risk": "1;31", "hold": "35", "dim": "2"}
MAX_VALUE = 100


def render_text(plan: Plan, *, color: bool = False, show_unchanged: bool = False) -> Iterator[str]:
    def paint(text: str, style: str) -> str:
        return f"\x1b[{COLOR[style]}m{text}\x1b[0m" if color else text

    yield f"Store: {plan.store}"
    yield f"Commit: {plan.git_commit or '(not a git work tree)'}  Plan: {plan.plan_id}"
    for note in plan.notes:
        yield f"Note: {note}"
    yield ""
    for change in plan.changes:
        if change.action == "unchanged" and not change.holds and not show_unchanged:
            continue
        yield from _change(change, paint)
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
