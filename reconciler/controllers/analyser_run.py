"""The experiment analyser's shell: read each active experiment's data, analyse (pure), decide
(pure), write the state with its audit entry, alert.

Safe when two run at once: the results rows only move forward, the state is written
conditionally on the version read (a conflict decides again on top of the other run's write,
and verdicts are final for their epoch, so both agree), and an alert goes out after the verdict
is stored, again at a later run if publishing failed (at least once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from reconciler.controllers.experiment_analyser import (
    ExperimentAlert,
    Outcome,
    decide,
    unalerted,
)
from reconciler.controllers.experiment_analysis import Analysis, analyse
from reconciler.controllers.experiment_data import read_experiment_data
from reconciler.errors import UserError
from reconciler.runtime.experiment_state import (
    ANALYSER_ID,
    OperatorAction,
    operators_from_item,
    recording_key,
    verdicts_from_item,
)
from reconciler.state.records import AuditEntry, Item, RecordKind, format_time
from reconciler.state.store import StateStore, WriteConflictError

ATTEMPTS = 5
ANALYSER_RECORD = "controller/experiment_analyser"  # its name in the audit trail


class AlertPublisher(Protocol):
    def publish(self, alert: Any) -> None: ...


@dataclass
class AnalyserRun:
    analyses: dict[str, Analysis]
    outcome: Outcome
    written: bool = False
    version: int = 0
    alerts_published: list[str] = field(default_factory=list)
    publish_errors: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)


def analysis_window(
    experiment: Mapping[str, Any], action: OperatorAction | None
) -> datetime | None:
    """When the analysis (of this epoch) starts: the manifest's start, the record's creation,
    or the operator's last resume, whichever is latest; None when unknown."""
    moments = [
        _moment(experiment.get("start_time")),
        _moment(experiment.get("created_at")),
        _moment(action.at) if action is not None and action.epoch > 0 else None,
    ]
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def analyse_experiment(
    store: StateStore,
    experiment: Mapping[str, Any],
    action: OperatorAction | None,
    now: datetime,
    *,
    write_rows: bool = True,
) -> Analysis | None:
    """One experiment's analysis now; None before its start."""
    since = analysis_window(experiment, action) or now
    if since > now:
        return None
    key = recording_key(str(experiment["experiment_id"]), action.epoch if action else 0)
    data, rows = read_experiment_data(store, key, since.date(), now)
    if write_rows and rows:
        store.write_results(rows)
    return analyse(experiment, data, since=since, now=now)


def run_experiment_analyser(
    store: StateStore,
    *,
    now: datetime,
    publisher: AlertPublisher | None = None,
    actor: str = "experiment-analyser",
) -> AnalyserRun:
    experiments = {
        name: record.item
        for name, record in store.read_records(RecordKind.EXPERIMENT).items()
        if record.item.get("status") == "active"
    }
    operators = operators_from_item((store.read_overrides() or {}).get("experiments"))
    analyses: dict[str, Analysis] = {}
    not_started = []
    for name, item in sorted(experiments.items()):
        found = analyse_experiment(store, item, operators.get(name), now)
        if found is None:
            not_started.append(name)
        else:
            analyses[name] = found
    epochs = {name: action.epoch for name, action in operators.items()}
    held = frozenset(name for name, action in operators.items() if action.stopped)
    at = format_time(now)
    for _ in range(ATTEMPTS):
        stored = store.read_control(ANALYSER_ID) or {}
        previous = verdicts_from_item(stored)
        outcome = decide(analyses, epochs, previous, at=at, held=held)
        run = AnalyserRun(analyses, outcome, version=int(stored.get("version", 0)))
        run.not_started = not_started
        if not outcome.changed:
            break
        record = {"version": run.version + 1, "updated_at": at, "experiments": outcome.experiments}
        try:
            store.write_control(ANALYSER_ID, record, run.version, _audit(outcome, actor, at))
        except WriteConflictError:
            continue  # another analyser wrote meanwhile: decide again on top of its verdicts
        run.written, run.version = True, run.version + 1
        break
    else:
        raise UserError("the experiment analyser's state kept changing; run it again")
    if publisher is not None:
        _publish(store, run, publisher, now)
    return run


def _publish(store: StateStore, run: AnalyserRun, publisher: AlertPublisher, now: datetime) -> None:
    """Publish the verdicts not alerted yet, then mark them alerted in the state."""
    pending = unalerted(run.outcome.experiments if run.written else _stored(store))
    done: list[ExperimentAlert] = []
    for alert in pending:
        try:
            publisher.publish(alert)
        except Exception as exc:  # stays unalerted: the next run tries again
            run.publish_errors.append(f"{alert.alert_id}: {type(exc).__name__}: {exc}")
            continue
        done.append(alert)
        run.alerts_published.append(alert.alert_id)
    if not done:
        return
    for _ in range(ATTEMPTS):
        stored = store.read_control(ANALYSER_ID) or {}
        entries = verdicts_from_item(stored)
        marked = {name: dict(entry) for name, entry in entries.items()}
        for alert in done:
            entry = marked.get(alert.experiment)
            if entry is not None and int(entry.get("epoch", 0)) == alert.epoch:
                entry["alerted"] = True
        version = int(stored.get("version", 0))
        record = {**stored, "version": version + 1, "updated_at": format_time(now)}
        record["experiments"] = marked
        record.pop("record_id", None)
        try:
            store.write_control(ANALYSER_ID, record, version, None)
            return
        except WriteConflictError:
            continue


def _stored(store: StateStore) -> dict[str, Item]:
    return {k: dict(v) for k, v in verdicts_from_item(store.read_control(ANALYSER_ID)).items()}


def _audit(outcome: Outcome, actor: str, at: str) -> AuditEntry | None:
    if not outcome.transitions:
        return None
    return AuditEntry(
        record=ANALYSER_RECORD,
        action="experiment-verdict",
        actor=actor,
        at=at,
        reason="; ".join(t.describe() for t in outcome.transitions),
        before=None,
        after={"experiments": outcome.experiments},
    )


def _moment(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
