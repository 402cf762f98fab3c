"""The experiment analyser's shell: read each active experiment's data, analyse (pure), decide
(pure), write the state with its audit entry, alert.

Safe when two run at once: the results rows only move forward, the state is written
conditionally on the version read (a conflict decides again on top of the other run's write,
and verdicts are final for their epoch, so both agree), and an alert goes out after the verdict
is stored, again at a later run if publishing failed (at least once).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.controllers.alerts import AlertPublisher, left_behind, publish_each
from reconciler.controllers.experiment_analyser import (
    ExperimentAlert,
    Outcome,
    decide,
    unalerted,
)
from reconciler.controllers.experiment_analysis import Analysis, analyse, parse_moment
from reconciler.controllers.experiment_data import read_experiment_data
from reconciler.errors import ReconcilerError, UserError
from reconciler.runtime.experiment_state import (
    ANALYSER_ID,
    ExperimentStates,
    OperatorAction,
    operators_from_item,
    recording_key,
    verdicts_from_item,
    whole,
)
from reconciler.state.records import AuditEntry, RecordKind, format_time
from reconciler.state.store import StateStore, WriteConflictError

ATTEMPTS = 5
ANALYSER_RECORD = "controller/experiment_analyser"  # its name in the audit trail


@dataclass
class AnalyserRun:
    analyses: dict[str, Analysis]
    outcome: Outcome
    written: bool = False
    version: int = 0
    alerts_published: list[str] = field(default_factory=list)
    publish_errors: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # experiments that could not be analysed


def analysis_window(
    experiment: Mapping[str, Any], action: OperatorAction | None, started: str | None
) -> datetime | None:
    """When this epoch's analysis starts: the latest of the manifest's ``start_time``, the
    moment the analyser first saw the experiment active (``started``; else, for a report
    before any run, when it was applied) and the operator's last resume; None when unknown."""
    moments = [
        parse_moment(experiment.get("start_time")),
        parse_moment(started) if started else parse_moment(experiment.get("created_at")),
        parse_moment(action.resumed_at) if action is not None and action.epoch > 0 else None,
    ]
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def analyse_experiment(
    store: StateStore,
    experiment: Mapping[str, Any],
    action: OperatorAction | None,
    now: datetime,
    *,
    started: str | None = None,
    write_rows: bool = True,
) -> Analysis | None:
    """One experiment's analysis now; None before its start."""
    since = analysis_window(experiment, action, started) or now
    if since > now:
        return None
    key = recording_key(str(experiment["experiment_id"]), action.epoch if action else 0)
    data, rows = read_experiment_data(store, key, since.astimezone(UTC).date(), now)
    if write_rows and rows:
        store.write_results(rows)
    return analyse(experiment, data, since=since, now=now)


@dataclass(frozen=True)
class ExperimentReport:
    """What ``controller experiment NAME`` shows: the analysis now, the analyser's verdict of
    this epoch, the operator's last action."""

    analysis: Analysis | None  # None before its start
    verdict: Mapping[str, Any] | None
    operator: OperatorAction | None


def read_report(
    store: StateStore, experiment: Mapping[str, Any], now: datetime
) -> ExperimentReport:
    """One stored experiment's report, reading only (the analyser writes its results rows)."""
    name = str(experiment["experiment_id"])
    operators = operators_from_item((store.read_overrides() or {}).get("experiments"))
    states = ExperimentStates(verdicts_from_item(store.read_control(ANALYSER_ID)), operators)
    operator = operators.get(name)
    verdict = states.verdict(name)  # of this epoch: a resume voids the one before
    started = str(verdict["started"]) if verdict and verdict.get("started") else None
    analysis = analyse_experiment(
        store, experiment, operator, now, started=started, write_rows=False
    )
    return ExperimentReport(analysis, verdict, operator)


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
    epochs = {name: action.epoch for name, action in operators.items()}
    known = verdicts_from_item(store.read_control(ANALYSER_ID))
    at = format_time(now)
    started = {}
    for name in experiments:
        entry = known.get(name)
        same = entry is not None and whole(entry.get("epoch")) == epochs.get(name, 0)
        started[name] = str(entry.get("started") or at) if same and entry else at
    analyses: dict[str, Analysis] = {}
    not_started, errors = [], []
    for name, item in sorted(experiments.items()):
        try:
            found = analyse_experiment(store, item, operators.get(name), now, started=started[name])
        except ReconcilerError:
            raise  # the store is down: the whole run fails, as the cost guard's would
        except Exception as exc:  # one experiment's bad data must not stop the others
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if found is None:
            not_started.append(name)
        else:
            analyses[name] = found
    held = frozenset(name for name, action in operators.items() if action.stopped)
    for _ in range(ATTEMPTS):
        stored = store.read_control(ANALYSER_ID) or {}
        previous = verdicts_from_item(stored)
        outcome = decide(analyses, epochs, previous, at=at, held=held, started=started)
        run = AnalyserRun(analyses, outcome, version=int(stored.get("version", 0)))
        run.not_started, run.errors = not_started, errors
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
    """Publish the verdicts not alerted yet: each is claimed first in the alerts table (a
    conditional put by alert id), so however many analysers run, one publishes it; one claimed
    but not out after five minutes (its publisher died) is published by a later run."""
    stamp = format_time(now)
    claim = uuid.uuid4().hex
    entries = verdicts_from_item(store.read_control(ANALYSER_ID))
    pending = unalerted(entries)
    mine = []
    for alert in pending:
        item = {**alert.to_item(), "at": stamp, "recorded_by": claim}
        if store.put_alert(item):
            mine.append(alert)
    mine.extend(_alert_of(item) for item in left_behind(store, "experiment_id", claim, now))
    published, errors = publish_each(store, publisher, mine, stamp)
    run.alerts_published.extend(published)
    run.publish_errors.extend(errors)
    if pending:
        _mark_alerted(store, {a.experiment: a.epoch for a in pending}, now)


def _alert_of(item: Mapping[str, Any]) -> ExperimentAlert:
    return ExperimentAlert(
        str(item["experiment_id"]),
        str(item.get("level", "")),
        str(item.get("message", "")),
        whole(item.get("epoch")),
    )


def _mark_alerted(store: StateStore, epochs: Mapping[str, int], now: datetime) -> None:
    """The verdicts' alerts are in the alerts table now: the state need not ask again."""
    for _ in range(ATTEMPTS):
        stored = store.read_control(ANALYSER_ID) or {}
        marked = {name: dict(entry) for name, entry in verdicts_from_item(stored).items()}
        for name, epoch in epochs.items():
            entry = marked.get(name)
            if entry is not None and whole(entry.get("epoch")) == epoch:
                entry["alerted"] = True
        version = int(stored.get("version", 0))
        record = {k: v for k, v in stored.items() if k != "record_id"}
        record.update(version=version + 1, updated_at=format_time(now), experiments=marked)
        try:
            store.write_control(ANALYSER_ID, record, version, None)
            return
        except WriteConflictError:
            continue


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
