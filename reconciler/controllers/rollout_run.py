"""The rollout controller's shell: read the active strategies, their flags' recorded health and
the operators' actions; judge the checks and decide (pure); write the state with its audit
entry; alert.

Safe when two run at once: the state is written conditionally on the version read (a conflict
decides again on top of the other run's write: a step already taken is not due again), a run
whose reading is older than the stored state's writes nothing, and each alert is claimed in the
alerts table by its id before it is published, so one run publishes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from reconciler.controllers.rollout_checks import (
    Check,
    CheckResult,
    Metric,
    Window,
    judge,
    judge_value,
)
from reconciler.controllers.rollout_controller import Decision, decide
from reconciler.controllers.rollout_data import Windows, read_windows
from reconciler.controllers.rollout_metrics import CloudWatchReader, MetricSource
from reconciler.errors import UserError
from reconciler.runtime.rollout_state import (
    CONTROLLER_ID,
    Strategy,
    actions_from_item,
    entries_from_item,
    moment,
    stamp,
    strategy_from_item,
)
from reconciler.state.records import AuditEntry, Item, RecordKind, format_time
from reconciler.state.store import StateStore, WriteConflictError

ATTEMPTS = 5
REPUBLISH_AFTER = timedelta(minutes=5)
CONTROLLER_RECORD = "controller/rollout_controller"  # its name in the audit trail
CustomReading = tuple[float | None, int, str]  # value, samples, why there is no value
HEALTH, ROLLBACK, PROMOTION = "health_check", "rollback_condition", "promotion_criterion"


class AlertPublisher(Protocol):
    def publish(self, alert: Any) -> None: ...


@dataclass(frozen=True)
class RolloutAlert:
    """A rollout that moved in a way a person should know of: rolled back, paused, resumed,
    aborted, promoted by hand, complete."""

    strategy: str
    flag: str
    point: str  # the state it moved to
    message: str
    since: str  # the entry's since: one alert per move

    @property
    def alert_id(self) -> str:
        return f"rollout/{self.strategy}/{self.since}/{self.point}"

    @property
    def subject(self) -> str:
        return f"AI rollout {self.strategy} ({self.flag}) {self.point.replace('_', ' ')}"

    @property
    def group(self) -> str:
        return self.strategy

    def to_item(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "strategy_name": self.strategy,
            "flag_name": self.flag,
            "level": self.point,
            "message": self.message,
            "since": self.since,
        }


@dataclass(frozen=True)
class Watched:
    """An active strategy, the flag it drives, and its checks as the manifest states them."""

    strategy: Strategy
    checks: tuple[Check, ...]
    conditions: tuple[Check, ...]
    promotion: tuple[Check, ...]

    @property
    def windows(self) -> set[int]:
        return {c.window_minutes for c in (*self.checks, *self.conditions, *self.promotion)}


@dataclass
class RolloutRun:
    """What one run of the rollout controller read, decided and did."""

    decisions: dict[str, Decision] = field(default_factory=dict)  # by strategy
    flags: dict[str, str] = field(default_factory=dict)  # strategy -> flag
    written: bool = False
    superseded: bool = False  # a run with a newer reading had written already
    version: int = 0
    alerts_published: list[str] = field(default_factory=list)
    publish_errors: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # strategies that could not be read


def checks_of(item: Mapping[str, Any]) -> tuple[tuple[Check, ...], ...]:
    """A strategy record's health checks, rollback conditions and promotion criteria."""
    health = tuple(
        Check(
            str(c["check_name"]),
            str(c["check_type"]),
            float(c["threshold"]),
            str(c["comparison"]),
            int(c.get("window_minutes", 60)),
            bool(c.get("enabled", True)),
            metric=_metric(c),
        )
        for c in item.get("health_checks") or []
    )
    conditions = tuple(
        Check(
            str(c["condition_name"]),
            str(c["check_type"]),
            float(c["threshold"]),
            str(c["comparison"]),
            int(c.get("window_minutes", 15)),
            action=str(c.get("action", "rollback")),
            metric=_metric(c),
        )
        for c in item.get("rollback_conditions") or []
    )
    conf = item.get("configuration") or {}
    promotion = tuple(
        Check(
            str(c["metric_name"]),
            str(c["metric_name"]),
            float(c["threshold"]),
            str(c["comparison"]),
            int(c.get("window_minutes", 60)),
            min_samples=int(c.get("min_sample_size", 100)),
        )
        for c in conf.get("promotion_criteria") or []
    )
    return health, conditions, promotion


def _metric(check: Mapping[str, Any]) -> Metric | None:
    if check.get("check_type") != "custom_metric":
        return None
    dimensions = check.get("dimensions") or {}
    return Metric(
        str(check["namespace"]),
        str(check["metric_name"]),
        tuple(sorted((str(k), str(v)) for k, v in dimensions.items())),
        str(check.get("statistic") or "Average"),
    )


def watched_strategies(store: StateStore) -> tuple[dict[str, Watched], list[str]]:
    """The active strategies that drive a flag in the store: the schedule as clients read it
    (the ``rollout`` the flag's item embeds, its ``created_at`` the start of a schedule without
    one), the checks from the strategy's record."""
    driven = {
        str(r.item["rollout"].get("strategy_name")): r
        for r in store.read_records(RecordKind.FLAG).values()
        if isinstance(r.item.get("rollout"), Mapping)
    }
    found, errors = {}, []
    for name, record in sorted(store.read_records(RecordKind.ROLLOUT).items()):
        flag = driven.get(name)
        if record.item.get("active", True) is not True or flag is None:
            continue
        try:
            strategy = strategy_from_item(
                flag.item["rollout"], flag=flag.name, created_at=flag.item.get("created_at")
            )
            found[name] = Watched(strategy, *checks_of(record.item))
        except (KeyError, TypeError, ValueError) as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    return found, errors


def judged(
    watched: Watched, windows: Windows, custom: Mapping[tuple[Metric, int], CustomReading]
) -> tuple[list[CheckResult], ...]:
    def of(checks: Sequence[Check]) -> list[CheckResult]:
        results = []
        for check in checks:
            if check.metric is not None:
                value, samples, note = custom.get(
                    (check.metric, check.window_minutes), (None, 0, "not read")
                )
                results.append(judge_value(check, value, samples, note=note))
                continue
            treated, untreated = windows.get(
                (watched.strategy.flag, check.window_minutes), (Window(), Window())
            )
            results.append(judge(check, treated, untreated))
        return results

    return of(watched.checks), of(watched.conditions), of(watched.promotion)


def read_custom(
    strategies: Mapping[str, Watched], metrics: MetricSource | None, now: datetime
) -> dict[tuple[Metric, int], CustomReading]:
    """Every custom metric the checks read, in one request (CloudWatch unless given)."""
    wanted = sorted(
        {
            (c.metric, c.window_minutes)
            for w in strategies.values()
            for c in (*w.checks, *w.conditions)
            if c.metric is not None and c.enabled
        },
        key=repr,
    )
    if not wanted:
        return {}
    if metrics is None:
        try:
            metrics = CloudWatchReader()
        except Exception as exc:  # no boto3, no region: the checks are insufficient, and say so
            why = f"CloudWatch: {type(exc).__name__}: {exc}"
            return dict.fromkeys(wanted, (None, 0, why))
    return dict(zip(wanted, metrics.measure(wanted, now), strict=True))


def run_rollout_controller(
    store: StateStore,
    *,
    now: datetime,
    publisher: AlertPublisher | None = None,
    metrics: MetricSource | None = None,
    actor: str = "rollout-controller",
) -> RolloutRun:
    """One run; ``metrics``: where custom metrics are read (default: CloudWatch, when a check
    reads one)."""
    strategies, errors = watched_strategies(store)
    flags = {s.strategy.flag for s in strategies.values()}
    windows = read_windows(store, flags, {m for s in strategies.values() for m in s.windows}, now)
    actions = actions_from_item((store.read_overrides() or {}).get("rollouts"))
    read_at = stamp(now)
    custom = read_custom(strategies, metrics, now)
    results = {name: judged(watched, windows, custom) for name, watched in strategies.items()}
    for _ in range(ATTEMPTS):
        stored = store.read_control(CONTROLLER_ID) or {}
        run = RolloutRun(flags={n: w.strategy.flag for n, w in strategies.items()}, errors=errors)
        run.version = int(stored.get("version", 0))
        stored_read = moment(stored.get("read_at"))
        if stored_read is not None and stored_read > now:
            run.superseded = True  # a newer reading decided
            return run
        entries = entries_from_item(stored)
        record: dict[str, Any] = {"strategies": {}}
        changed = False
        for name, watched in strategies.items():
            checks, conditions, promotion = results[name]
            decision = decide(
                watched.strategy,
                entries.get(name),
                checks=checks,
                conditions=conditions,
                promotion=promotion,
                actions=actions.get(name, ()),
                now=now,
            )
            run.decisions[name] = decision
            before = (stored.get("strategies") or {}).get(name) or {}
            item = _entry_item(watched, decision, read_at)
            if "alert" not in item and before.get("alert") and before.get("since") == item["since"]:
                item["alert"] = before["alert"]  # not claimed yet, maybe: kept until it is
            changed = changed or _moved(before, item)
            record["strategies"][name] = item
        gone = set(stored.get("strategies") or {}) - set(record["strategies"])
        if not changed and not gone and stored:
            changed = _checks_changed(stored, record)
        if not changed:
            break
        record.update(version=run.version + 1, updated_at=read_at, read_at=read_at)
        try:
            store.write_control(CONTROLLER_ID, record, run.version, _audit(run, actor, read_at))
        except WriteConflictError:
            continue  # another controller wrote meanwhile: decide again on top of its state
        run.written, run.version = True, run.version + 1
        break
    else:
        raise UserError("the rollout controller's state kept changing; run it again")
    _alert(store, run, publisher, now)
    return run


def _entry_item(watched: Watched, decision: Decision, at: str) -> Item:
    return {
        **decision.entry.to_item(),
        "flag": watched.strategy.flag,
        "checked_at": at,
        "checks": [_result_item(r, watched) for r in decision.results],
        **({"alert": decision.transition} if decision.alert and decision.transition else {}),
    }


def _result_item(result: CheckResult, watched: Watched) -> Item:
    kind = (
        HEALTH
        if result.check in watched.checks
        else ROLLBACK
        if result.check in watched.conditions
        else PROMOTION
    )
    return {
        "name": result.check.name,
        "kind": kind,
        "check_type": result.check.check_type,
        "outcome": result.outcome,
        "value": result.value,
        "baseline": result.baseline,
        "samples": result.samples,
        "threshold": result.check.threshold,
        "comparison": result.check.comparison,
        "window_minutes": result.check.window_minutes,
        "text": result.describe(),
    }


_ENTRY_KEYS = ("state", "percentage", "since", "step", "stage", "reason", "epoch", "acted")


def _moved(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    return any(before.get(k) != after.get(k) for k in _ENTRY_KEYS)


def _checks_changed(stored: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether the checks' outcomes changed (their figures move every run: not worth a write
    each run, but an outcome that turns is)."""
    for name, item in record["strategies"].items():
        before = (stored.get("strategies") or {}).get(name) or {}
        outcomes = [(c.get("name"), c.get("outcome")) for c in before.get("checks") or []]
        if outcomes != [(c["name"], c["outcome"]) for c in item["checks"]]:
            return True
    return False


def _audit(run: RolloutRun, actor: str, at: str) -> AuditEntry | None:
    moves = [d.transition for d in run.decisions.values() if d.transition]
    if not moves:
        return None
    return AuditEntry(
        record=CONTROLLER_RECORD,
        action="rollout-state",
        actor=actor,
        at=at,
        reason="; ".join(moves),
        before=None,
        after={n: d.entry.to_item() for n, d in run.decisions.items() if d.transition},
    )


def pending_alerts(record: Mapping[str, Any]) -> list[RolloutAlert]:
    """The moves the stored state says deserve an alert."""
    found = []
    for name, item in (record.get("strategies") or {}).items():
        if isinstance(item, Mapping) and item.get("alert"):
            found.append(
                RolloutAlert(
                    str(name),
                    str(item.get("flag", "")),
                    str(item.get("state", "")),
                    str(item["alert"]),
                    str(item.get("since", "")),
                )
            )
    return found


def _alert(
    store: StateStore, run: RolloutRun, publisher: AlertPublisher | None, now: datetime
) -> None:
    """Alerts of the stored state's moves, each recorded in the alerts table by a conditional
    put by id (a claim: however many controllers run, one publishes it); published when a
    publisher is configured; one claimed but not out after five minutes is published by a
    later run."""
    at = format_time(now)
    claim = uuid.uuid4().hex
    mine = []
    for alert in pending_alerts(store.read_control(CONTROLLER_ID) or {}):
        if store.put_alert({**alert.to_item(), "at": at, "recorded_by": claim}):
            mine.append(alert)
    if publisher is None:
        return
    stale = format_time(now - REPUBLISH_AFTER)
    for item in store.read_alerts():
        waiting = item.get("strategy_name") and not item.get("published")
        if waiting and item.get("recorded_by") != claim and str(item.get("at", "")) <= stale:
            mine.append(
                RolloutAlert(
                    str(item["strategy_name"]),
                    str(item.get("flag_name", "")),
                    str(item.get("level", "")),
                    str(item.get("message", "")),
                    str(item.get("since", "")),
                )
            )
    for alert in mine:
        try:
            publisher.publish(alert)
        except Exception as exc:  # claimed, not out: a later run publishes it
            run.publish_errors.append(f"{alert.alert_id}: {type(exc).__name__}: {exc}")
            continue
        store.mark_alert_published(alert.alert_id, at)
        run.alerts_published.append(alert.alert_id)
