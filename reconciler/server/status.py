"""What the HTTP API reports: one flag's effective state, and the authenticated health view.

A flag's effective state is what the runtime would do with it now, from the same snapshot code
the runtime library uses: the flag's record (one read), the overrides record and the
controllers' records. It says who holds the flag (break-glass, git's kill switch, the cost
guard, the rollout controller or an operator, the experiment analyser), what share of users it
serves, and, given a user, the decision for that user. It never returns the stored record as it
is: targeting rules and their conditions stay internal.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from reconciler import breakglass as core
from reconciler.controllers.rollout_report import read_status
from reconciler.render import rollout as rollout_render
from reconciler.runtime.client import with_overrides
from reconciler.runtime.cost_state import COST_GUARD_ID
from reconciler.runtime.evaluate import evaluate
from reconciler.runtime.experiment_state import ANALYSER_ID
from reconciler.runtime.rollout_state import (
    CONTROLLER_ID,
    ROLLED_BACK,
    STOPPED_STATES,
    holder,
    serve,
)
from reconciler.runtime.snapshot import CostVerdict, Flag, Shutdown, Snapshot, build_snapshot
from reconciler.runtime.sources import STAMP_ID, overrides_from_item, with_controllers
from reconciler.state.records import RecordKind
from reconciler.state.store import StateStore

CONTROLLERS = (COST_GUARD_ID, CONTROLLER_ID, ANALYSER_ID)
# What a caller may see of the stored record; the rules and their conditions are not in it.
PUBLIC_FIELDS = (
    "description",
    "owner",
    "tags",
    "enabled",
    "flag_type",
    "rollout_percentage",
    "rollout_strategy",
    "request_type",
    "cost_threshold",
    "fail_mode",
    "git_commit",
    "version",
    "updated_at",
    "updated_by",
)


def read_snapshot(store: StateStore, name: str) -> tuple[Snapshot, Mapping[str, Any]] | None:
    """A snapshot of one flag with everything that outranks git, and the flag's stored item;
    None when the store has no such flag. One read of the flag, and of each control record."""
    record = store.read_record(RecordKind.FLAG, name)
    if record is None:
        return None
    version = str(record.item.get("version", ""))
    return _held(store, build_snapshot(version, [record.item])), record.item


def with_all_flags(store: StateStore) -> tuple[Snapshot, list[Mapping[str, Any]]]:
    """A snapshot of every flag with everything that outranks git, and their stored items."""
    items: list[Mapping[str, Any]] = [r.item for r in store.read_records(RecordKind.FLAG).values()]
    return _held(store, build_snapshot("dashboard", items)), items


def _held(store: StateStore, snapshot: Snapshot) -> Snapshot:
    """The snapshot with the overrides and the controllers' records, as the runtime reads them."""
    records = {key: store.read_control(key) or {} for key in CONTROLLERS}
    return with_overrides(
        snapshot, with_controllers(overrides_from_item(store.read_overrides()), records)
    )


def flag_status(
    snapshot: Snapshot,
    item: Mapping[str, Any],
    now: datetime,
    context: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The effective state of the snapshot's one flag (pure)."""
    name = str(item["flag_name"])
    flag = snapshot.flags[name]
    held: list[dict[str, Any]] = []
    share = _share(flag, snapshot, now, held)
    document: dict[str, Any] = {
        "flag": name,
        "state": "off" if share == 0 else "on" if share == 100 else "partial",
        "serving_percentage": share,
        "serving_note": "of the users no targeting rule decides for",
        "held_by": held,
        "configured": {key: item[key] for key in PUBLIC_FIELDS if key in item},
    }
    if flag.schedule is not None:  # where its rollout is, held or not
        served = serve(flag.schedule, flag.rollout_entry, flag.rollout_actions, now)
        document["rollout_state"] = {
            "strategy": flag.schedule.name,
            "state": served.state,
            "percentage": served.percentage,
            "detail": served.reason,
        }
    if flag.experiment is not None:
        hold = flag.experiment.hold
        if hold is not None and share > 0:  # everyone in it gets one variant: decided above git
            held.append(
                {
                    "owner": "operator" if hold.operator else "experiment analyser",
                    "state": hold.state,
                    "experiment": flag.experiment.experiment_id,
                    "detail": hold.describe(),
                }
            )
        document["experiment"] = {
            "experiment_id": flag.experiment.experiment_id,
            "held": hold.describe() if hold is not None else None,
        }
    if context:
        decision = evaluate(snapshot, name, context, now)
        document["decision"] = {
            "context": sorted(context),
            "enabled": decision.enabled,
            "reason": decision.reason.value,
            "variant": decision.variant,
            "detail": decision.detail,
            "error_code": decision.error_code.value if decision.error_code else None,
        }
    return document


def _share(flag: Flag, snapshot: Snapshot, now: datetime, held: list[dict[str, Any]]) -> float:
    """The percentage of users the flag serves, with what holds it added to ``held``, in the
    order the runtime decides: break-glass, git's switch, the cost guard, the rollout."""
    for scope, shutdown in (
        ("all AI features", snapshot.global_shutdown),
        ("this flag", snapshot.flag_shutdowns.get(flag.name) or flag.shutdown),
    ):
        if shutdown is not None and shutdown.active(now):
            held.append(_shutdown(scope, shutdown))
            return 0.0
    if flag.broken is not None:
        held.append({"owner": "store", "state": "unreadable", "detail": flag.broken})
        return 100.0 if flag.fail_open else 0.0
    if not flag.enabled:
        held.append({"owner": "git", "state": "disabled", "detail": "enabled: false"})
        return 0.0
    factor = 1.0
    verdict = _verdict(snapshot.cost.get(flag.name), now)
    if verdict is not None:
        state = "emergency" if verdict.emergency is not None else "throttled"
        until = verdict.until.isoformat() if verdict.until else None
        held.append(
            {
                "owner": "cost guard",
                "state": state,
                "factor": verdict.factor,
                "until": until,
                "detail": verdict.emergency or f"rollout x {verdict.factor:g}",
            }
        )
        if verdict.emergency is not None:
            return 0.0
        factor = verdict.factor
    percentage = flag.rollout_percentage
    if flag.schedule is not None:
        served = serve(flag.schedule, flag.rollout_entry, flag.rollout_actions, now)
        who = holder(served, flag.rollout_actions)
        if who is not None or served.state in STOPPED_STATES:
            held.append(
                {
                    "owner": who or "rollout controller",
                    "state": served.state,
                    "strategy": flag.schedule.name,
                    "percentage": served.percentage,
                    "detail": served.reason,
                }
            )
        if served.state == ROLLED_BACK:
            return 0.0
        percentage = served.percentage
    return round(percentage * factor, 4)


def _verdict(verdict: CostVerdict | None, now: datetime) -> CostVerdict | None:
    while verdict is not None and verdict.until is not None and now >= verdict.until:
        verdict = verdict.then
    return verdict


def _shutdown(scope: str, shutdown: Shutdown) -> dict[str, Any]:
    return {
        "owner": "break-glass",
        "state": "shut down",
        "scope": scope,
        "by": shutdown.by,
        "reason": shutdown.reason,
        "since": shutdown.since,
        "expires_at": shutdown.expires_at,
    }


def health_detail(store: StateStore, now: datetime) -> dict[str, Any]:
    """The store reachable (and how fast), what is shut down, what the cost guard holds, where
    each rollout is, when each controller last wrote its state, and the configuration's age."""
    started = time.perf_counter()
    shutdowns = core.active(store, now)
    read_ms = round((time.perf_counter() - started) * 1000, 1)
    controllers = {}
    for key in CONTROLLERS:
        record = store.read_control(key) or {}
        controllers[key.replace("_", " ")] = {"last_written": record.get("updated_at")}
    stamp = store.read_control(STAMP_ID) or {}
    applied = stamp.get("applied_at")
    rollouts = read_status(store, now)
    return {
        "status": "ok",
        "store": {"reachable": True, "read_ms": read_ms},
        "configuration": {
            "applied_at": applied,
            "age_seconds": _age(applied, now),
        },
        "shutdowns": [
            {
                "target": a.target,
                "by": a.by,
                "reason": a.reason,
                "since": a.since,
                "expires_at": a.expires_at,
            }
            for a in shutdowns
        ],
        "cost_guard": [
            {"flag": h.flag, "state": h.state, "budget": h.budget, "until": h.until}
            for h in core.cost_holds(store, now)
        ],
        "rollouts": [rollout_render.status_json(r) for r in rollouts.rollouts],
        "controllers": controllers,
    }


def _age(text: Any, now: datetime) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((now - moment).total_seconds(), 1)
