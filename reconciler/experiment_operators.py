"""Operators above the experiment analyser: stop an experiment now, or resume it.

Written into the overrides record (``experiments``) with break-glass's guarantees: a conditional
write on the record's version, its audit entry in the same step, and a write id so that a lost
answer is not applied twice. ``stop`` serves the control to everyone at once, whatever the
analyser or git say; ``resume`` lifts a stop and the analyser's verdict and starts the analysis
over (a new epoch: recorded apart, so the evidence that led to the verdict is not reused).
"""

from __future__ import annotations

from datetime import datetime

from reconciler.breakglass import update_overrides
from reconciler.errors import UserError
from reconciler.runtime.experiment_state import ANALYSER_ID, verdicts_from_item, whole
from reconciler.state.records import Item, RecordKind, format_time
from reconciler.state.store import StateStore


def _known(store: StateStore, experiment: str, reason: str) -> None:
    if not reason.strip():
        raise UserError("a reason is required: say why, for whoever reads the trail later")
    names = store.read_records(RecordKind.EXPERIMENT)
    if experiment not in names:
        known = ", ".join(sorted(names)) or "none applied"
        raise UserError(f"no experiment {experiment!r} in the store (known: {known})")


def stop(store: StateStore, experiment: str, *, reason: str, by: str, now: datetime) -> bool:
    """Stop the experiment (control for everyone); False if it was stopped already."""
    _known(store, experiment, reason)
    at = format_time(now)
    changed = [False]

    def change(record: Item) -> Item | None:
        changed[0] = False  # as of this attempt: a retry may find another's stop in place
        entries = record.setdefault("experiments", {})
        entry = entries.get(experiment) or {}
        if entry.get("action") == "stop":
            return None
        changed[0] = True
        entries[experiment] = {
            "action": "stop",
            "epoch": whole(entry.get("epoch", 0)),
            "by": by,
            "reason": reason,
            "at": at,
            **({"resumed_at": entry["resumed_at"]} if entry.get("resumed_at") else {}),
        }
        return record

    why = f"{experiment}: {reason}"
    update_overrides(store, change, action="experiment-stop", actor=by, reason=why, now=now)
    return changed[0]


def resume(store: StateStore, experiment: str, *, reason: str, by: str, now: datetime) -> int:
    """Lift a stop or a verdict and start the analysis over; the new epoch (0: nothing held
    the experiment, nothing written)."""
    _known(store, experiment, reason)
    at = format_time(now)
    verdict = verdicts_from_item(store.read_control(ANALYSER_ID)).get(experiment) or {}
    epoch = [0]

    def change(record: Item) -> Item | None:
        epoch[0] = 0  # as of this attempt
        entries = record.setdefault("experiments", {})
        entry = entries.get(experiment) or {}
        current = whole(entry.get("epoch", 0))
        decided = (
            verdict.get("state") in ("concluded", "stopped")
            and whole(verdict.get("epoch", 0)) == current
        )
        if entry.get("action") != "stop" and not decided:
            return None
        epoch[0] = current + 1
        entries[experiment] = {
            "action": "resume",
            "epoch": epoch[0],
            "by": by,
            "reason": reason,
            "at": at,
            "resumed_at": at,
        }
        return record

    why = f"{experiment}: {reason}"
    update_overrides(store, change, action="experiment-resume", actor=by, reason=why, now=now)
    return epoch[0]
