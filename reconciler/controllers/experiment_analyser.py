"""The experiment analyser's decision: a pure function of (analyses, previous state, now).

An experiment whose analysis says *conclude* is concluded (its winner is served to everyone);
one whose guardrail is breached is stopped (its control is served to everyone). Verdicts are
final for their epoch: the analyser never reverses one (a later look at noisier data must not
flip what users get); an operator's resume starts a new epoch, and git settles the experiment
for good (the plan proposes the manifest edit). The transitions are what the audit records and
what is alerted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.controllers.experiment_analysis import CONCLUDE, STOP, Analysis
from reconciler.runtime.experiment_state import CONCLUDED, STOPPED

RUNNING = "running"


@dataclass(frozen=True)
class Transition:
    experiment: str
    before: str | None
    after: str | None
    detail: str

    def describe(self) -> str:
        if self.after is None:
            return f"{self.experiment}: {self.before} verdict dropped ({self.detail})"
        return f"{self.experiment}: {self.before or 'new'} -> {self.after} ({self.detail})"


@dataclass(frozen=True)
class ExperimentAlert:
    """A verdict, alerted once it is written."""

    experiment: str
    point: str  # concluded | stopped
    message: str
    epoch: int

    @property
    def alert_id(self) -> str:
        return f"experiment/{self.experiment}/{self.epoch}/{self.point}"

    @property
    def subject(self) -> str:
        return f"AI experiment {self.experiment} {self.point}"

    @property
    def group(self) -> str:
        return self.experiment

    def to_item(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "experiment_id": self.experiment,
            "epoch": self.epoch,
            "level": self.point,
            "message": self.message,
        }


@dataclass(frozen=True)
class Outcome:
    experiments: dict[str, dict[str, Any]]
    transitions: list[Transition] = field(default_factory=list)
    alerts: list[ExperimentAlert] = field(default_factory=list)
    changed: bool = False


def decide(
    analyses: Mapping[str, Analysis],
    epochs: Mapping[str, int],
    previous: Mapping[str, Mapping[str, Any]],
    *,
    at: str,
    held: frozenset[str] = frozenset(),
    started: Mapping[str, str] | None = None,
) -> Outcome:
    """The new per-experiment entries. ``analyses``: the active experiments git has (and has
    started); ``held``: those an operator has stopped (analysed, never decided)."""
    entries: dict[str, dict[str, Any]] = {}
    transitions: list[Transition] = []
    alerts: list[ExperimentAlert] = []
    for name, analysis in sorted(analyses.items()):
        epoch = epochs.get(name, 0)
        before = previous.get(name)
        same_epoch = before is not None and int(before.get("epoch", 0)) == epoch
        if same_epoch and before is not None and before.get("state") in (CONCLUDED, STOPPED):
            entries[name] = dict(before)  # final for its epoch
            continue
        first_seen = (started or {}).get(name, at)
        if name in held:
            entry: dict[str, Any] = {"state": "held", "epoch": epoch, "waiting": ["operator"]}
        elif analysis.decision == CONCLUDE and analysis.winner:
            entry = {
                "state": CONCLUDED,
                "epoch": epoch,
                "winner": analysis.winner,
                "reason": analysis.why,
                "since": at,
                "alerted": False,
            }
            message = (
                f"Experiment {name} concluded: winner {analysis.winner} ({analysis.why}); "
                "every user now gets it. Make it permanent in git: status: concluded, "
                f"winner: {analysis.winner}."
            )
            alerts.append(ExperimentAlert(name, CONCLUDED, message, epoch))
        elif analysis.decision == STOP:
            entry = {
                "state": STOPPED,
                "epoch": epoch,
                "reason": analysis.why,
                "since": at,
                "alerted": False,
            }
            message = (
                f"Experiment {name} stopped: {analysis.why}; every user now gets the control "
                f"{analysis.control}."
            )
            alerts.append(ExperimentAlert(name, STOPPED, message, epoch))
        else:
            # What it waits for, without the figures (they change every run; the report has
            # them): the record is rewritten when the reasons change, not the counts.
            reasons = list(dict.fromkeys(w.split(":")[0] for w in analysis.waiting_for))
            entry = {"state": RUNNING, "epoch": epoch, "waiting": reasons}
        entry["started"] = first_seen
        entries[name] = entry
        old_state = before.get("state") if same_epoch and before is not None else None
        if entry["state"] != old_state and entry["state"] in (CONCLUDED, STOPPED):
            transitions.append(Transition(name, old_state, entry["state"], entry["reason"]))
    for name, before in sorted(previous.items()):
        if name not in analyses and before.get("state") in (CONCLUDED, STOPPED):
            transitions.append(
                Transition(name, str(before.get("state")), None, "no longer active in git")
            )
    changed = entries != {k: dict(v) for k, v in previous.items()}
    return Outcome(entries, transitions, alerts, changed)


def unalerted(entries: Mapping[str, Mapping[str, Any]]) -> list[ExperimentAlert]:
    """Verdicts written but not alerted yet (a publish that failed, a run that died)."""
    found = []
    for name, entry in sorted(entries.items()):
        state = entry.get("state")
        if state in (CONCLUDED, STOPPED) and entry.get("alerted") is False:
            what = f"winner {entry.get('winner')}" if state == CONCLUDED else "control served"
            message = f"Experiment {name} {state}: {entry.get('reason', '')} ({what})."
            found.append(ExperimentAlert(name, str(state), message, int(entry.get("epoch", 0))))
    return found
