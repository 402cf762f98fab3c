"""What outranks an experiment's manifest: the analyser's verdict and the operators' actions.

Two records in the control table, read with the overrides:

- the experiment analyser's state (``experiment_analyser``): per experiment, a verdict once it
  has one, ``concluded`` (the winner is served to everyone) or ``stopped`` (a guardrail was
  breached: control is served to everyone);
- the operators' actions, in the overrides record under ``experiments``: ``stop`` (control for
  everyone, now) and ``resume`` (the analyser's verdict and the stop are lifted, and the
  analysis starts over: a new *epoch*, recorded apart from the old one).

An analyser verdict counts only for the epoch it was reached in, so a resume voids it. The
runtime resolves both into one :class:`ExperimentHold` per experiment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ANALYSER_ID = "experiment_analyser"  # the control-table record of the experiment analyser
CLUSTERS = 64  # users are hashed into this many clusters per experiment (see unit_hash)
CONCLUDED = "concluded"
STOPPED = "stopped"


@dataclass(frozen=True)
class ExperimentHold:
    """An experiment decided above git: everyone gets ``variant`` (the winner, or control)."""

    state: str  # concluded | stopped
    by: str  # "experiment analyser" or the operator
    reason: str
    since: str | None
    winner: str | None = None  # for concluded; stopped serves the control
    operator: bool = False  # an operator's stop (else the analyser's verdict)

    def describe(self) -> str:
        if self.state == CONCLUDED:
            return f"concluded by {self.by}, winner {self.winner}: {self.reason}"
        return f"stopped by {self.by}: {self.reason}"


@dataclass(frozen=True)
class OperatorAction:
    """An operator's last word on an experiment: stopped or not, and the analysis epoch."""

    stopped: bool
    epoch: int
    by: str
    reason: str
    at: str | None
    resumed_at: str | None = None  # the last resume: where this epoch's analysis starts


@dataclass(frozen=True)
class ExperimentStates:
    """The analyser's verdicts and the operators' actions, as read from the control table."""

    verdicts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    operators: Mapping[str, OperatorAction] = field(default_factory=dict)

    def epoch(self, experiment_id: str) -> int:
        action = self.operators.get(experiment_id)
        return action.epoch if action is not None else 0

    def verdict(self, experiment_id: str) -> Mapping[str, Any] | None:
        """The analyser's entry for the experiment, if it is of the current epoch."""
        verdict = self.verdicts.get(experiment_id)
        if isinstance(verdict, Mapping) and whole(verdict.get("epoch")) == self.epoch(
            experiment_id
        ):
            return verdict
        return None

    def hold(self, experiment_id: str) -> ExperimentHold | None:
        """What holds the experiment now, operators first; None: its manifest decides."""
        action = self.operators.get(experiment_id)
        if action is not None and action.stopped:
            return ExperimentHold(STOPPED, action.by, action.reason, action.at, operator=True)
        verdict = self.verdicts.get(experiment_id)
        if not isinstance(verdict, Mapping) or whole(verdict.get("epoch")) != self.epoch(
            experiment_id
        ):
            return None
        state = verdict.get("state")
        if state == CONCLUDED and verdict.get("winner"):
            return ExperimentHold(
                CONCLUDED,
                "experiment analyser",
                str(verdict.get("reason", "")),
                verdict.get("since"),
                str(verdict["winner"]),
            )
        if state == STOPPED:
            return ExperimentHold(
                STOPPED, "experiment analyser", str(verdict.get("reason", "")), verdict.get("since")
            )
        return None


def whole(value: Any) -> int:
    """A stored count (an epoch) as an int, whatever its shape; 0 when unreadable: one bad
    field must not stop a client reading its overrides (break-glass rides on them)."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def operators_from_item(entries: Any) -> dict[str, OperatorAction]:
    """The ``experiments`` entries of the overrides record (entries it cannot read skipped)."""
    found = {}
    if isinstance(entries, Mapping):
        for name, entry in entries.items():
            if isinstance(entry, Mapping):
                at = entry.get("at")
                resumed = entry.get("resumed_at")
                found[str(name)] = OperatorAction(
                    stopped=entry.get("action") == "stop",
                    epoch=whole(entry.get("epoch", 0)),
                    by=str(entry.get("by", "")),
                    reason=str(entry.get("reason", "")),
                    at=str(at) if at is not None else None,
                    resumed_at=str(resumed) if resumed is not None else None,
                )
    return found


def verdicts_from_item(item: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    experiments = (item or {}).get("experiments")
    if not isinstance(experiments, Mapping):
        return {}
    return {str(k): v for k, v in experiments.items() if isinstance(v, Mapping)}


def recording_key(experiment_id: str, epoch: int) -> str:
    """Where an experiment's telemetry is recorded: its id, then ``id~N`` after N resumes."""
    return experiment_id if epoch <= 0 else f"{experiment_id}~{epoch}"


def unit_hash(experiment_id: str, unit: str) -> tuple[str, int]:
    """The user's id as stored (a salted SHA-256, never the id itself) and their cluster.

    The cluster groups users for the variance of per-request metrics: all of one user's
    requests fall into one cluster, so clusters are independent where requests are not.
    """
    digest = hashlib.sha256(f"{experiment_id}:unit:{unit}".encode()).hexdigest()[:32]
    return digest, int(digest[:8], 16) % CLUSTERS
