"""The plan as a pull-request comment: risks first, one collapsible section per record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from reconciler.plan.model import Change, Plan
from reconciler.render.large import FULL_UP_TO, Group, select

MARKER = "<!-- reconcile-plan -->"
MAX_CHARS = 60_000  # GitHub allows 65,536 characters per comment
ICON = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}


def render_markdown(plan: Plan, *, max_chars: int = MAX_CHARS, show_all: bool = False) -> str:
    """The comment, cut to ``max_chars`` with a note saying what was left out; a large plan
    has its notable changes in full and the rest counted (``reconciler.render.large``)."""
    listed = [c for c in plan.changes if c.pending or c.holds]
    full, groups = select(listed, show_all=show_all)
    parts = [*_head(plan, full, groups), *(_section(c) for c in full)]
    budget = max_chars - 400  # room for the note
    text, used = "", 0
    for part in parts:
        if len(text) + len(part) + 1 > budget:
            break
        text += part + "\n"
        used += 1
    if used < len(parts):
        text += (
            f"\n> [!NOTE]\n> The plan is too long for one comment: {len(parts) - used} more "
            "line(s) and section(s) are not shown. The full plan is in the JSON plan "
            "(`reconcile --plan --format json`).\n"
        )
    return text


def _head(plan: Plan, full: list[Change], groups: list[Group]) -> Iterator[str]:
    yield MARKER
    yield f"### reconcile plan: {plan.summary().removeprefix('Plan: ')}"
    commit = f"`{plan.git_commit[:12]}`" if plan.git_commit else "not a git work tree"
    yield f"Store: `{plan.store}` · Commit: {commit} · Plan: `{plan.plan_id}`"
    yield ""
    risky = [(c, r) for c in plan.changes for r in c.risks]
    blocked = plan.blocked
    held = [c for c in plan.changes if c.holds]
    if blocked:
        yield "> [!CAUTION]"
        yield "> **Blocked: apply will refuse this plan**"
        for change in blocked:
            yield f"> - `{change.address}`: {change.blocked}"
        yield ""
    if risky:
        yield "> [!WARNING]"
        yield "> **Risky changes**"
        for change, risk in risky:
            yield f"> - `{change.address}`: {risk.message}"
        yield ""
    if held:
        yield "> [!IMPORTANT]"
        waits = any(h.owner == "override" for c in held for h in c.holds)
        note = "git's change waits" if waits else "git's change applies; the controller outranks it"
        yield f"> **Outranked by another owner** ({note})"
        for change in held:
            for hold in change.holds:
                since = f" since {hold.since}" if hold.since else ""
                yield f"> - `{change.address}`: {hold.detail}{since}"
        yield ""
    if not plan.has_changes:
        yield "No changes. The store matches git."
        return
    yield "| | record | change | fields |"
    yield "|---|---|---|---|"
    for change in full:
        if change.pending:
            icon, fields = ICON[change.action], len(change.fields)
            yield f"| {icon} | `{change.address}` | {change.action} | {fields} |"
    for group in groups:
        yield f"| {ICON[group.action]} | {group.describe()} | {group.action} | |"
    yield ""
    if groups:
        yield (
            f"> A plan of more than {FULL_UP_TO} changes shows its risks, holds and deletions "
            "in full and counts the rest; the JSON plan has every change."
        )
        yield ""


def _section(change: Change) -> str:
    lines = [
        f"<details><summary><code>{ICON[change.action]} {change.address}</code> "
        f"({change.action}, {len(change.fields)} field(s))</summary>",
        "",
        "```diff",
    ]
    for field in change.fields:
        if field.kind == "added":
            lines.append(f"+ {field.path}: {_show(field.after)}")
        elif field.kind == "removed":
            lines.append(f"- {field.path}: {_show(field.before)}")
        else:
            lines.append(f"- {field.path}: {_show(field.before)}")
            lines.append(f"+ {field.path}: {_show(field.after)}")
    lines += ["```", "", "</details>"]
    return "\n".join(lines)


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 300 else text[:297] + "..."
