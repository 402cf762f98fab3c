"""The controllers' shell: read what they need, decide (pure), write state with its audit entry,
alert. ``run_once`` runs every controller once; the CLI loops it for ``--watch``.

Safe when two run at once: the state is written conditionally on the version read, and a run
whose telemetry reading is older than the stored state's writes nothing (a newer run decided);
alerts are recorded with a conditional put, and only the run that recorded one publishes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from reconciler.controllers.alerts import REPUBLISH_AFTER
from reconciler.controllers.analyser_run import AnalyserRun, run_experiment_analyser
from reconciler.controllers.cost_guard import Alert, Outcome, decide
from reconciler.controllers.rollout_metrics import MetricSource
from reconciler.controllers.rollout_run import RolloutRun, run_rollout_controller
from reconciler.controllers.spend import SpendReading, read_spend
from reconciler.errors import UserError
from reconciler.runtime.budgets import Budget, budgets_from_items
from reconciler.runtime.cost_state import COST_GUARD_ID, CostState, cost_state_from_item
from reconciler.state.records import AuditEntry, RecordKind, format_time
from reconciler.state.store import StateStore, WriteConflictError

ATTEMPTS = 5

GUARD_RECORD = "controller/cost_guard"  # its name in the audit trail


class Publisher(Protocol):
    def describe(self) -> str: ...

    def publish(self, alert: Alert) -> None: ...


@dataclass
class GuardRun:
    """What one run of the cost guard read, decided and did."""

    budgets: list[Budget]
    reading: SpendReading
    outcome: Outcome
    previous: CostState = field(default_factory=CostState)  # the state as this run read it
    written: bool = False
    superseded: bool = False  # a run with a newer reading had written already
    alerts_recorded: list[Alert] = field(default_factory=list)
    alerts_published: list[str] = field(default_factory=list)
    publish_errors: list[str] = field(default_factory=list)

    @property
    def state(self) -> CostState:
        """The state in the store after this run: its own if it wrote one."""
        return self.outcome.state if self.written else self.previous


@dataclass(frozen=True)
class Configuration:
    """What the controllers read of git's records: the budgets, every flag's name, and the AI
    flags (those that declare a request type)."""

    budgets: list[Budget]
    flags: list[str]
    ai_flags: list[str]


def load_budgets(store: StateStore) -> Configuration:
    flags = store.read_records(RecordKind.FLAG)
    thresholds = store.read_records(RecordKind.COST_THRESHOLD)
    items = [r.item for r in flags.values()]
    return Configuration(
        budgets_from_items([r.item for r in thresholds.values()], items),
        sorted(flags),
        sorted(r.name for r in flags.values() if r.item.get("request_type")),
    )


def run_cost_guard(
    store: StateStore,
    *,
    now: datetime,
    publisher: Publisher | None = None,
    actor: str = "cost-guard",
) -> GuardRun:
    configuration = load_budgets(store)
    budgets, flags = configuration.budgets, configuration.flags
    known = cost_state_from_item(store.read_control(COST_GUARD_ID))
    reading = read_spend(store, budgets, now, known.rolled_up)
    spend = {b.name: reading.budget_spend(b, now) for b in budgets}
    ours = format_time(reading.read_at)
    run_id = uuid.uuid4().hex  # marks the alerts this run records, should an answer be lost
    recorded: dict[str, Alert] = {}
    rows_written = False  # the original cost-metrics rows, from the shards just summed
    for _ in range(ATTEMPTS):
        previous = cost_state_from_item(store.read_control(COST_GUARD_ID))
        outcome = decide(
            budgets,
            flags,
            spend,
            previous,
            now=now,
            read_at=reading.read_at,
            ai_flags=configuration.ai_flags,
        )
        if dict(reading.rolled_up) != dict(previous.rolled_up):
            rolled = replace(outcome.state, rolled_up=reading.rolled_up)
            outcome = replace(outcome, state=rolled, changed=True)
        run = GuardRun(budgets, reading, outcome, previous, alerts_recorded=list(recorded.values()))
        stored_read = previous.read_time
        if stored_read is not None and stored_read > reading.read_at:
            run.superseded = True  # a newer reading decided: its run writes, alerts and rolls up
            return run
        # Alerts before the state: a crash or a lost answer between the two loses no alert
        # (they are recorded once whoever tries, and a later run publishes what is left).
        for alert in outcome.alerts:
            item = {**alert.to_item(), "recorded_by": run_id}
            if alert.alert_id not in recorded and store.put_alert(item):
                recorded[alert.alert_id] = alert
        run.alerts_recorded = list(recorded.values())
        if previous.read_at == ours:
            run.written = True  # this run's write landed, and only its answer was lost
        if not rows_written:  # the rows before the state that vouches for them (rolled_up)
            store.write_cost_metrics([day.to_row(now) for day in reading.live])
            rows_written = True
        if not outcome.changed:
            break
        try:
            store.write_control(
                COST_GUARD_ID,
                outcome.state.to_item(),
                previous.version,
                _audit(outcome, previous, actor, now),
            )
        except WriteConflictError:
            continue  # another guard wrote meanwhile (or this one did): decide again on top
        run.written = True
        break
    else:
        raise UserError("the cost guard's state kept changing under this run; run it again")
    _publish_all(store, run, publisher, now)
    return run


def _audit(outcome: Outcome, previous: CostState, actor: str, now: datetime) -> AuditEntry | None:
    if not outcome.transitions:
        return None  # the spend moved, no level did: not a change of state worth an entry
    return AuditEntry(
        record=GUARD_RECORD,
        action="cost-state",
        actor=actor,
        at=format_time(now),
        reason="; ".join(t.describe() for t in outcome.transitions),
        before=_levels(previous),
        after=_levels(outcome.state),
    )


def _levels(state: CostState) -> dict[str, object]:
    return {
        "budgets": {n: {"level": b.level, "period": b.period} for n, b in state.budgets.items()},
        "flags": {n: {"state": f.state, "budget": f.budget} for n, f in state.flags.items()},
    }


def _publish_all(
    store: StateStore, run: GuardRun, publisher: Publisher | None, now: datetime
) -> None:
    """Publish what this run recorded, and what an earlier run recorded but did not get out."""
    if publisher is None:
        return
    stamp = format_time(now)
    for alert in run.alerts_recorded:
        _publish(store, run, publisher, alert, stamp)
    cutoff = format_time(now - REPUBLISH_AFTER)
    mine = {a.alert_id for a in run.alerts_recorded}
    for item in store.read_alerts():
        if item.get("published") or item["alert_id"] in mine or str(item.get("at", "")) > cutoff:
            continue  # out already, or its recorder may still be publishing it
        if "threshold_name" not in item:
            continue  # another controller's alert (an experiment's, a rollout's): its own run
        _publish(store, run, publisher, _from_item(item), stamp)


def _publish(
    store: StateStore, run: GuardRun, publisher: Publisher, alert: Alert, stamp: str
) -> None:
    try:
        publisher.publish(alert)
    except Exception as exc:  # recorded but not out: the next run publishes it again
        run.publish_errors.append(f"{alert.alert_id}: {type(exc).__name__}: {exc}")
        return
    store.mark_alert_published(alert.alert_id, stamp)
    run.alerts_published.append(alert.alert_id)


def _from_item(item: dict[str, object]) -> Alert:
    return Alert(
        str(item["threshold_name"]),
        str(item["period"]),
        str(item["time_zone"]),
        str(item["level"]),
        int(str(item["limit_micros"])),
        int(str(item["spent_micros"])),
        str(item["at"]),
        float(str(item.get("percentage", 100))),
    )


def run_once(
    store: StateStore,
    *,
    now: datetime,
    publisher: Publisher | None = None,
    experiments: bool = True,
    metrics: MetricSource | None = None,
) -> Sequence[GuardRun | AnalyserRun | RolloutRun]:
    """Every controller, once: the cost guard, the rollout controller and, unless
    ``experiments`` is False (a loop runs it less often), the experiment analyser."""
    runs: list[GuardRun | AnalyserRun | RolloutRun] = [
        run_cost_guard(store, now=now, publisher=publisher),
        run_rollout_controller(store, now=now, publisher=publisher, metrics=metrics),
    ]
    if experiments:
        runs.append(run_experiment_analyser(store, now=now, publisher=publisher))
    return runs
