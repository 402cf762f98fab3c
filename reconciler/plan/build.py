"""Make a plan: read the store, then diff it (purely) against the desired state."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime

from reconciler.codec import DesiredState, Records, content_hash
from reconciler.plan.diff import (
    ActualState,
    diff,
    hold_by_cost_guard,
    hold_by_experiments,
    hold_by_rollouts,
    hold_overridden,
)
from reconciler.plan.model import Change, Plan
from reconciler.runtime.cost_state import COST_GUARD_ID, cost_state_from_item, with_flags
from reconciler.runtime.experiment_state import ANALYSER_ID, ExperimentStates, verdicts_from_item
from reconciler.runtime.rollout_state import CONTROLLER_ID, entries_from_item
from reconciler.runtime.sources import overrides_from_item
from reconciler.state.records import Item, RecordKind, format_time
from reconciler.state.store import StateStore


def build_plan(
    desired: DesiredState,
    store: StateStore,
    *,
    git_commit: str | None,
    now: datetime,
    allow_empty: bool = False,
    force_delete_held: bool = False,
    notes: tuple[str, ...] = (),
) -> Plan:
    declared = hashes_of(desired, {})
    digest = desired_digest(desired, declared)  # of the tree as declared, before the store adds
    actual = {kind: store.read_records(kind) for kind in RecordKind}
    started = with_rollout_starts(desired, actual, now)
    hashes = hashes_of(started, {k: (desired, h) for k, h in declared.items()})
    desired = started
    in_force = overrides_from_item(store.read_overrides()).in_force(now)
    rollouts = replace(
        in_force.rollouts, entries=entries_from_item(store.read_control(CONTROLLER_ID))
    )
    changes, unmanaged = diff(
        desired, actual, now=format_time(now), rollouts=rollouts, hashes=hashes
    )
    changes, held_notes = hold_overridden(changes, in_force, block_deletes=not force_delete_held)
    ai_flags = [r.name for r in actual[RecordKind.FLAG].values() if r.item.get("request_type")]
    guard = with_flags(cost_state_from_item(store.read_control(COST_GUARD_ID)), ai_flags, now)
    changes = hold_by_cost_guard(changes, guard, now)
    experiments = desired.get(RecordKind.EXPERIMENT, {})
    states = ExperimentStates(
        verdicts_from_item(store.read_control(ANALYSER_ID)), in_force.experiments.operators
    )
    changes, experiment_notes = hold_by_experiments(changes, experiments, states)
    strategies = desired.get(RecordKind.ROLLOUT, {})
    changes, rollout_notes = hold_by_rollouts(changes, strategies, rollouts, now)
    notes = (*notes, *held_notes, *experiment_notes, *rollout_notes)
    empty = not any(desired.get(kind) for kind in RecordKind)
    if empty and not allow_empty:
        changes = [_refuse_empty(c) for c in changes]
    body = json.dumps(
        [
            git_commit,
            digest,
            store.describe(),
            [(c.address, c.action, c.desired_hash) for c in changes],
        ],
        sort_keys=True,
    )
    plan_id = hashlib.sha256(f"{format_time(now)}{body}".encode()).hexdigest()[:16]
    return Plan(
        plan_id=plan_id,
        created_at=format_time(now),
        git_commit=git_commit,
        store=store.describe(),
        changes=tuple(changes),
        unmanaged=tuple(unmanaged),
        notes=notes,
        desired_digest=digest,
    )


def hashes_of(
    desired: DesiredState, known: dict[tuple[RecordKind, str], tuple[DesiredState, str]]
) -> dict[tuple[RecordKind, str], str]:
    """Each record's content hash, computed once: an item ``known`` hashed in another state
    (the same object) keeps its hash; records kept as text (``Records``) keep theirs."""
    hashes = {}
    for kind, items in desired.items():
        for name in items:
            if isinstance(items, Records):
                hashes[(kind, name)] = items.content_hash(name)
                continue
            item = items[name]
            seen = known.get((kind, name))
            same = seen is not None and seen[0].get(kind, {}).get(name) is item
            hashes[(kind, name)] = seen[1] if seen is not None and same else content_hash(item)
    return hashes


def desired_digest(
    desired: DesiredState, hashes: dict[tuple[RecordKind, str], str] | None = None
) -> str:
    """One hash of every record the tree declares: of each record's content hash (its
    canonical JSON), by kind and name.

    Two trees with the same digest declare the same records with the same content, whatever
    their commits, comments or layout: so a plan saved from one applies to the
    other exactly as reviewed. Kinds without records count as empty, so the digest does not
    depend on which kinds a tree mentions. (The codec's items hold only git-owned
    attributes, which is what a content hash covers.)"""
    hashes = hashes if hashes is not None else hashes_of(desired, {})
    document = {
        kind.label: {name: hashes[(kind, name)] for name in sorted(desired.get(kind, {}))}
        for kind in sorted(RecordKind, key=lambda k: k.label)
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def with_rollout_starts(desired: DesiredState, actual: ActualState, now: datetime) -> DesiredState:
    """The flags' rollouts with their start: a strategy without ``start_time`` starts when it
    was first applied to its flag, so a ramp added to a flag applied long ago starts at its
    first step, not at its end. The flag's copy (as clients read it) carries the start: the
    one it has in the store for the same strategy, else the strategy record's ``created_at``,
    else (a strategy this plan applies) the plan's time."""
    strategies = actual.get(RecordKind.ROLLOUT, {})
    live = actual.get(RecordKind.FLAG, {})
    flags = desired.get(RecordKind.FLAG, {})
    given: dict[str, Item] = {}
    # Records kept as text know which flags' rollouts have no start (the others are not read).
    for name in flags.unstarted if isinstance(flags, Records) else flags:
        item = flags[name]
        rollout = item.get("rollout")
        if not isinstance(rollout, dict):
            continue
        configuration = rollout.get("configuration") or {}
        if configuration.get("start_time"):
            continue
        strategy = str(rollout.get("strategy_name"))
        stored = live[name].item.get("rollout") if name in live else None
        record = strategies.get(strategy)
        if isinstance(stored, dict) and stored.get("strategy_name") == strategy:
            started = (stored.get("configuration") or {}).get("start_time")
        else:
            started = None
        if not started and record is not None:
            started = record.item.get("created_at")
        start = str(started) if started else format_time(now)
        rollout = {**rollout, "configuration": {**configuration, "start_time": start}}
        given[name] = {**item, "rollout": rollout}
    if isinstance(flags, Records):
        return {**desired, RecordKind.FLAG: flags.replaced(given) if given else flags}
    return {**desired, RecordKind.FLAG: {**flags, **given}}


def _refuse_empty(change: Change) -> Change:
    if change.action != "delete" or change.blocked:
        return change
    return replace(
        change,
        blocked="git declares no manifests at all, which would delete everything; "
        "pass --allow-empty if that is really meant",
    )
