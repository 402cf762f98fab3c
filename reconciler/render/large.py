"""Which changes a plan shows in full: all of them, up to ``FULL_UP_TO``; in a larger plan only
the ones a reviewer must read (risks, blocks, drift, holds, deletions), and the rest counted by
kind and action with a few names. Nothing is lost: ``--show-all`` prints every change, and the
JSON plan (``--format json``, ``--out``) has them all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.plan.model import Change

FULL_UP_TO = 200  # changes shown field by field; a larger plan is summarised
NAMES = 3  # names shown per summarised group


@dataclass(frozen=True)
class Group:
    """Changes of one kind and action not shown in full."""

    kind: str
    action: str
    names: tuple[str, ...]

    def describe(self) -> str:
        shown = ", ".join(self.names[:NAMES])
        more = len(self.names) - NAMES
        rest = f" and {more:,} more" if more > 0 else ""
        return f"{len(self.names):,} {self.kind} record(s) to {_VERB[self.action]}: {shown}{rest}"


_VERB = {"create": "add", "update": "change", "delete": "destroy", "unchanged": "keep"}


def notable(change: Change) -> bool:
    """A change a reviewer must read in full, however large the plan."""
    return bool(
        change.risks or change.blocked or change.drift or change.holds or change.action == "delete"
    )


def select(changes: Sequence[Change], *, show_all: bool) -> tuple[list[Change], list[Group]]:
    """The changes to show in full, and the groups of the others (none when all are shown)."""
    if show_all or len(changes) <= FULL_UP_TO:
        return list(changes), []
    full = [c for c in changes if notable(c)]
    grouped: dict[tuple[str, str], list[str]] = {}
    for change in changes:
        if not notable(change):
            grouped.setdefault((change.kind.label, change.action), []).append(change.name)
    groups = [Group(kind, action, tuple(names)) for (kind, action), names in grouped.items()]
    return full, groups
