"""Operators above the rollout controller: pause a rollout where it is, resume it, abort it
(roll it back now) or promote it to its next step.

Written into the overrides record (``rollouts``) with break-glass's guarantees: a conditional
write on the record's version, its audit entry in the same step, and a write id so that a lost
answer is not applied twice. The record keeps each strategy's last ``KEPT`` actions, oldest
first; clients read it every few seconds and apply the ones the controller has not taken yet,
in order, at once (``rollout_state.serve``), and so does the controller at its next run. Each
action is judged against what clients serve now: a pause of a paused or rolled-back rollout, a
resume of a running one, an abort of one rolled back already and a promote of one that cannot
step are no-ops that write nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.breakglass import update_overrides
from reconciler.controllers.rollout_report import Rollout, active_rollouts, known
from reconciler.errors import UserError
from reconciler.runtime.rollout_state import (
    HOLDING,
    RAMPING,
    ROLLED_BACK,
    STOPPED_STATES,
    Action,
    Entry,
    Strategy,
    actions_from_item,
    serve,
)
from reconciler.state.records import Item, format_time
from reconciler.state.store import StateStore

PAUSE, RESUME, ABORT, PROMOTE = "pause", "resume", "abort", "promote"
KEPT = 20  # actions kept per strategy: the controller takes them within a run or two
AUDIT_ACTIONS = {a: f"rollout-{a}" for a in (PAUSE, RESUME, ABORT, PROMOTE)}


@dataclass(frozen=True)
class Acted:
    """What an operator's command did: written or not (and why not), the share served before
    and, once clients have read it, after (for a promote: the share the controller moves to)."""

    strategy: str
    flag: str
    action: str
    written: bool
    state: str  # as clients served it when the command ran
    before: float
    after: float
    stage: str | None = None  # for a canary's promote: the stage it moves to
    epoch: int = 0

    def describe(self) -> str:
        """For people: what happened, and what happens next."""
        name = f"{self.strategy} ({self.flag})"
        if not self.written:
            return f"{name} is {self.state.replace('_', ' ')} at {self.before:g}%: " + {
                PAUSE: "nothing to pause; nothing written.",
                RESUME: "nothing holds it; nothing written.",
                ABORT: "rolled back already; nothing written.",
                PROMOTE: "no next step to promote it to; nothing written.",
            }.get(self.action, "nothing written.")
        resume = f"`controller resume {self.strategy} --reason ...`"
        said = {
            PAUSE: f"Paused {name} at {self.after:g}%: clients hold that share within their "
            f"override poll, whatever the checks or the schedule say, until {resume}.",
            ABORT: f"Aborted {name}: rolled back to 0% for everyone (the rules' users too) "
            f"within the clients' override poll, until {resume}.",
            RESUME: f"Resumed {name} at {self.after:g}% (epoch {self.epoch}): clients serve "
            "it within their override poll; its schedule and checks go on from there.",
            PROMOTE: f"Promoted {name} from {self.before:g}% to {self.after:g}%"
            + (f" (stage {self.stage})" if self.stage else "")
            + ", whatever the checks say: clients serve it within their override poll; its "
            "schedule and checks go on from there.",
        }[self.action]
        return said


def pause(store: StateStore, strategy: str, *, reason: str, by: str, now: datetime) -> Acted:
    """Hold the rollout at the share served now (not written: paused or rolled back already)."""
    return _act(store, strategy, PAUSE, reason=reason, by=by, now=now)


def resume(store: StateStore, strategy: str, *, reason: str, by: str, now: datetime) -> Acted:
    """Lift a pause or a rollback (not written: nothing holds it). A paused rollout goes on
    from its share; a rolled-back one starts over at its first step (the same users first)."""
    return _act(store, strategy, RESUME, reason=reason, by=by, now=now)


def abort(store: StateStore, strategy: str, *, reason: str, by: str, now: datetime) -> Acted:
    """Roll the rollout back now, for everyone (not written: rolled back already)."""
    return _act(store, strategy, ABORT, reason=reason, by=by, now=now)


def promote(store: StateStore, strategy: str, *, reason: str, by: str, now: datetime) -> Acted:
    """The next step (or stage) now, whatever the checks say (not written: the rollout is not
    ramping or holding, or is at its last step)."""
    return _act(store, strategy, PROMOTE, reason=reason, by=by, now=now)


def _does_something(action: str, served: Entry, strategy: Strategy) -> bool:
    """Whether the action changes what is served (or, for a promote, can be taken)."""
    if action == PAUSE:
        return served.state not in STOPPED_STATES
    if action == RESUME:
        return served.state in STOPPED_STATES
    if action == ABORT:
        return served.state != ROLLED_BACK
    return served.state in (RAMPING, HOLDING) and served.step < strategy.last_step


def _act(
    store: StateStore,
    name: str,
    action: str,
    *,
    reason: str,
    by: str,
    now: datetime,
) -> Acted:
    """Judge the action against what clients serve now (from the overrides record as each
    attempt reads it), and write it if it does something."""
    if not reason.strip():
        raise UserError("a reason is required: say why, for whoever reads the trail later")
    rollouts, errors = active_rollouts(store)
    broken = [e for e in errors if e.startswith(f"{name}: ")]
    if broken:
        raise UserError(f"rollout strategy {broken[0]} (its stored record cannot be read)")
    known(store, name, rollouts)
    rollout = rollouts[name]
    outcome: list[Acted] = []

    def change(record: Item) -> Item | None:
        outcome.clear()  # as of this attempt: a retry may find another operator's action
        entries = record.setdefault("rollouts", {})
        earlier = actions_from_item(entries).get(name, ())
        # After every action already written, whatever this machine's clock says: actions
        # are applied in the order of their times, each once.
        moment = max([now, *(a.at + timedelta(microseconds=1) for a in earlier)])
        at = format_time(moment)
        acted = _judged(rollout, earlier, action, moment)
        if action == PROMOTE and acted.state in STOPPED_STATES:
            raise UserError(
                f"{name} is {acted.state.replace('_', ' ')} at {acted.before:g}%: resume it "
                f"first (`controller resume {name} --reason ...`), then promote; nothing written"
            )
        outcome.append(acted)
        if not acted.written:
            return None
        kept = entries.get(name) if isinstance(entries.get(name), list) else []
        entries[name] = [
            *kept[-(KEPT - 1) :],
            {
                "action": action,
                "at": at,
                "by": by,
                "reason": reason,
                "epoch": acted.epoch,
                **({"percentage": acted.after} if action == PAUSE else {}),
            },
        ]
        return record

    why = f"{name}: {reason}"
    update_overrides(store, change, action=AUDIT_ACTIONS[action], actor=by, reason=why, now=now)
    return outcome[0]  # of the attempt that landed (or found nothing to do)


def _judged(rollout: Rollout, earlier: Sequence[Action], action: str, now: datetime) -> Acted:
    """The action judged against what clients serve now, and what they serve once it is
    written (found with ``serve`` itself: what the clients will compute)."""
    strategy, entry = rollout.strategy, rollout.entry
    served = serve(strategy, entry, earlier, now)
    written = _does_something(action, served, strategy)
    epoch = max([served.epoch, *(a.epoch for a in earlier)])
    if written and action == RESUME:
        epoch += 1
    after, stage = served.percentage, served.stage
    if written:
        held = served.percentage if action == PAUSE else None
        ahead = serve(strategy, entry, [*earlier, Action(action, now, "", "", epoch, held)], now)
        after, stage = ahead.percentage, ahead.stage
    return Acted(
        strategy=strategy.name,
        flag=strategy.flag,
        action=action,
        written=written,
        state=served.state,
        before=served.percentage,
        after=after,
        stage=stage if action == PROMOTE else None,
        epoch=epoch,
    )
