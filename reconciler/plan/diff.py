"""The pure diff: desired items against the records in the store, into ordered changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from reconciler.codec import DesiredState, content_hash, git_owned, hash_of
from reconciler.diagnostics import format_field
from reconciler.plan.model import Action, Change, FieldChange, FieldKind, Hold, Unmanaged
from reconciler.plan.risk import risks_of
from reconciler.runtime.cost_state import CostState
from reconciler.runtime.experiment_state import STOPPED, ExperimentStates
from reconciler.runtime.rollout_state import (
    COMPLETE,
    HOLDING,
    OPERATOR,
    PAUSED,
    ROLLED_BACK,
    RolloutStates,
    holder,
    serve,
    stamp,
    strategy_from_item,
)
from reconciler.runtime.sources import Overrides
from reconciler.state.records import Item, RecordKind, StoredRecord

ActualState = Mapping[RecordKind, Mapping[str, StoredRecord]]


def diff(
    desired: DesiredState,
    actual: ActualState,
    *,
    now: str,
    rollouts: RolloutStates | None = None,
    hashes: Mapping[tuple[RecordKind, str], str] | None = None,
) -> tuple[list[Change], list[Unmanaged]]:
    """Changes that make ``actual`` equal to ``desired``: creates and updates kind by kind,
    then deletes. Records reconcile did not create are never changed, only reported.
    ``rollouts``: where the rollouts are, for the risks (both sides are served from there).
    ``hashes``: the desired items' content hashes where already computed."""
    known = hashes or {}
    changes: list[Change] = []
    deletes: list[Change] = []
    unmanaged: list[Unmanaged] = []
    for kind in RecordKind:
        wanted = desired.get(kind, {})
        present = actual.get(kind, {})
        for name in sorted(wanted.keys() | present.keys()):
            record = present.get(name)
            if name not in wanted:
                assert record is not None
                if record.managed:
                    deletes.append(_delete(record, now))
                else:
                    unmanaged.append(Unmanaged(kind, name))
                continue
            hashed = known.get((kind, name)) or hash_of(wanted, name)
            if record is None:
                after = wanted[name]  # the codec's items are canonical
                changes.append(
                    Change(
                        kind,
                        name,
                        "create",
                        after=after,
                        desired_hash=hashed,
                        fields=tuple(_fields(None, after)),
                        risks=tuple(
                            risks_of(kind, name, None, after, now=_moment(now), rollouts=rollouts)
                        ),
                    )
                )
            else:
                changes.append(_update(record, wanted, name, now, rollouts=rollouts, hashed=hashed))
    return changes + deletes, unmanaged


def _moment(now: str) -> datetime | None:
    """The plan's time, from which the risks read schedules (None: unreadable, the clock's)."""
    try:
        return datetime.fromisoformat(now.replace("Z", "+00:00"))
    except ValueError:
        return None


def same(a: object, b: object) -> bool:
    """Equal as stored values: ``True`` is not ``1`` (a boolean edited to a number outside git
    is drift), while ``1`` and ``1.0`` are one number; dicts and lists item by item."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _update(
    record: StoredRecord,
    wanted: Mapping[str, Item],
    name: str,
    now: str,
    *,
    rollouts: RolloutStates | None = None,
    hashed: str | None = None,
) -> Change:
    before = git_owned(record.item)
    desired_hash = hashed or hash_of(wanted, name)
    # The whole stored item hashed: equal to git's hash, it is git's content (and the desired
    # record need not be read); else the two are compared value by value.
    stored_hash = content_hash(before)
    if stored_hash == desired_hash:
        after = before
    else:
        after = wanted[name]
        if same(before, after):  # equal values spelled apart (1 and 1.0): git's content still
            stored_hash = desired_hash
    drift = record.managed and record.content_hash != stored_hash
    blocked = None
    if not record.managed:
        blocked = (
            "exists in the store but was not created by reconcile; rename it in git, or remove "
            "or adopt the record in the store first"
        )
    equal = same(before, after)
    action: Action = "unchanged" if equal and not blocked else "update"
    return Change(
        record.kind,
        record.name,
        action,
        before=after if equal else before,  # equal: one copy held, not two
        after=after,
        expected_version=record.version,
        desired_hash=desired_hash,
        fields=tuple(_fields(before, after)) if action == "update" else (),
        risks=tuple(
            risks_of(record.kind, record.name, before, after, now=_moment(now), rollouts=rollouts)
        )
        if action == "update"
        else (),
        holds=tuple(_holds(record, now)),
        drift=drift,
        blocked=blocked,
    )


def _delete(record: StoredRecord, now: str) -> Change:
    before = git_owned(record.item)
    holds = tuple(_holds(record, now))
    blocked = None
    if record.deletion_protected:
        blocked = (
            "deletion protection is on for the live record; set deletion_protection: false in "
            "git and apply that first"
        )
    elif any(h.owner == "override" for h in holds):
        blocked = "an emergency shutdown holds this record; restore it before deleting the record"
    return Change(
        record.kind,
        record.name,
        "delete",
        before=before,
        expected_version=record.version,
        fields=tuple(_fields(before, None)),
        risks=tuple(risks_of(record.kind, record.name, before, None, now=_moment(now))),
        holds=holds,
        drift=record.content_hash != content_hash(record.item),
        blocked=blocked,
    )


def _holds(record: StoredRecord, now: str) -> list[Hold]:
    holds = []
    item = record.item
    if record.override_active(now):
        by = item.get("shutdown_by", "an operator")
        reason = item.get("shutdown_reason", "")
        expires = item.get("shutdown_expires_at")
        detail = f"emergency shutdown by {by}" + (f": {reason}" if reason else "")
        if expires:
            detail += f" (expires {expires})"
        holds.append(Hold("override", detail, item.get("shutdown_at")))
    state = item.get("controller_state")
    if isinstance(state, dict) and state:
        summary = ", ".join(f"{k}={v}" for k, v in sorted(state.items()) if not isinstance(v, dict))
        holds.append(Hold("controller", f"controller state: {summary}", state.get("since")))
    return holds


def _fields(before: Item | None, after: Item | None) -> list[FieldChange]:
    if before is None or after is None:
        side = after if before is None else before
        assert side is not None
        kind: FieldKind = "added" if before is None else "removed"
        return [
            FieldChange(
                key, None if before is None else value, value if before is None else None, kind
            )
            for key, value in sorted(side.items())
        ]
    found: list[FieldChange] = []
    from deepdiff import DeepDiff  # noqa: PLC0415 - a quarter second to import; only for changes

    tree = DeepDiff(before, after, view="tree", ignore_numeric_type_changes=True)
    for report, levels in tree.items():
        for level in levels:
            path = format_field(tuple(level.path(output_format="list")))
            change: FieldKind = (
                "added" if "added" in report else "removed" if "removed" in report else "changed"
            )
            found.append(FieldChange(path, _value(level.t1), _value(level.t2), change))
    return sorted(found, key=lambda f: f.path)


def _value(value: Any) -> Any:
    return None if type(value).__name__ == "NotPresent" else value


def hold_overridden(
    changes: list[Change], overrides: Overrides, *, block_deletes: bool = True
) -> tuple[list[Change], list[str]]:
    """Mark the changes to flags an operator has shut down (break-glass; ``overrides`` holds
    the shutdowns in force) as held, refuse to delete them, and say so when everything is shut
    down. Returns the changes and notes."""
    notes = []
    everything = overrides.global_shutdown
    if everything is not None:
        notes.append(
            f"ALL AI features are shut down by {everything.by} since {everything.since} "
            f"({everything.reason}); services stay off whatever git says until "
            "`breakglass restore --all`"
        )
    result = []
    for change in changes:
        shutdown = overrides.flags.get(change.name) if change.kind is RecordKind.FLAG else None
        if shutdown is None:
            result.append(change)
            continue
        hold = Hold(
            "override", f"emergency shutdown by {shutdown.by}: {shutdown.reason}", shutdown.since
        )
        blocked = change.blocked
        if change.action == "delete" and blocked is None and block_deletes:
            blocked = (
                "an emergency shutdown holds this flag; `breakglass restore` it before "
                "deleting the flag, or pass --force-delete-held"
            )
        result.append(replace(change, holds=(*change.holds, hold), blocked=blocked))
    return result, notes


def hold_by_cost_guard(changes: list[Change], state: CostState, now: datetime) -> list[Change]:
    """Show the flags the cost guard throttles or shuts down as held by a controller: git's
    change applies, and the guard's state still outranks it until the period ends."""
    result = []
    for change in changes:
        held = state.flags.get(change.name) if change.kind is RecordKind.FLAG else None
        if held is None or not held.in_force(now):
            result.append(change)
            continue
        what = "shut down" if held.state == "emergency" else f"rollout x {held.factor:g}"
        detail = f"cost guard: {what} until {held.until} ({held.detail})"
        result.append(
            replace(change, holds=(*change.holds, Hold("controller", detail, held.since)))
        )
    return result


def hold_by_experiments(
    changes: list[Change], experiments: Mapping[str, Item], states: ExperimentStates
) -> tuple[list[Change], list[str]]:
    """Show the experiments that an operator stopped or the analyser decided as held: their
    changes (and their flags') apply, and everyone keeps getting what the hold serves; each
    gets a note with the manifest edit that makes the decision git's."""
    notes, holds = [], {}
    for name in sorted(experiments):
        hold = states.hold(name)
        if hold is None:
            continue
        item = experiments[name]  # read only when something holds it
        if item.get("status") != "active" and hold.state != STOPPED:
            continue
        served = hold.winner or str(item.get("control") or "the control")
        # git's change applies (it cannot turn the experiment back on): the hold outranks it.
        who = "an operator's experiment-stop" if hold.operator else "the experiment analyser"
        holds[name] = holds[str(item.get("feature_flag"))] = Hold(
            "controller", f"{who} ({hold.describe()})", hold.since
        )
        control = str(item.get("control") or "")
        if hold.operator:
            edit = (
                f"status: concluded and winner: {control} (or another winner), apply it, then "
                f"lift the stop with `controller experiment-resume {name}`"
            )
        elif hold.state == STOPPED:
            edit = f"status: concluded and winner: {control}"
        else:
            edit = f"status: concluded and winner: {hold.winner}"
        notes.append(
            f"experiment {name} is {hold.describe()}; everyone gets {served} whatever git says. "
            f"To make it git's: in experiments.d/{name}.yaml set {edit}"
        )
    result = []
    for change in changes:
        held = holds.get(change.name) if change.kind in _EXPERIMENT_KINDS else None
        result.append(change if held is None else replace(change, holds=(*change.holds, held)))
    return result, notes


_EXPERIMENT_KINDS = (RecordKind.EXPERIMENT, RecordKind.FLAG)


def hold_by_rollouts(
    changes: list[Change], strategies: Mapping[str, Item], states: RolloutStates, now: datetime
) -> tuple[list[Change], list[str]]:
    """Show the flags (and strategies) whose rollout the controller or an operator holds:
    paused, rolled back, held for data, or moved by the controller's checks. Git's change
    applies; the share served stays the controller's until it moves or a person resumes it."""
    notes, holds = [], {}
    for name in sorted(strategies):
        entry, actions = states.entries.get(name), states.operators.get(name, ())
        if entry is None and not actions:
            continue
        item = strategies[name]  # read only when something holds it
        flag = str(item.get("feature_flag", ""))
        if item.get("active", True) is not True or not flag:
            continue
        try:
            strategy = strategy_from_item(item, flag=flag)
        except (KeyError, TypeError, ValueError):
            continue
        served = serve(strategy, entry, actions, now)
        stopped = served.state in (PAUSED, ROLLED_BACK, HOLDING)
        if not stopped and not (strategy.gated and entry is not None and served.state != COMPLETE):
            continue  # on its schedule (or complete): nothing holds it
        by = "an operator" if holder(served, actions) == OPERATOR else "the rollout controller"
        what = f"{served.state.replace('_', ' ')} at {served.percentage:g}%"
        detail = f"{by}: {what}" + (f" ({served.reason})" if served.reason else "")
        holds[name] = holds[flag] = Hold("controller", detail, stamp(served.since))
        if served.state in (PAUSED, ROLLED_BACK):
            notes.append(
                f"rollout {name} is {what} by {by}; {flag} stays there whatever git says "
                f"until `controller resume {name} --reason ...`"
            )
        elif served.state == HOLDING:
            notes.append(f"rollout {name} is held at {served.percentage:g}%: {served.reason}")
    result = []
    for change in changes:
        held = holds.get(change.name) if change.kind in _ROLLOUT_KINDS else None
        result.append(change if held is None else replace(change, holds=(*change.holds, held)))
    return result, notes


_ROLLOUT_KINDS = (RecordKind.ROLLOUT, RecordKind.FLAG)
