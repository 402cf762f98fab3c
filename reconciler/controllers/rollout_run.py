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
from datetime import datetime
from typing import Any

from reconciler.controllers.alerts import AlertPublisher, left_behind, publish_each
from reconciler.controllers.rollout_checks import (
    MIN_SAMPLES,
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
CONTROLLER_RECORD = "controller/rollout_controller"  # its name in the audit trail
CustomReading = tuple[float | None, int, str]  # value, samples, why there is no value
HEALTH, ROLLBACK, PROMOTION = "health_check", "rollback_condition", "promotion_criterion"


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
            min_samples=int(c.get("min_sample_size") or MIN_SAMPLES),
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
            min_samples=int(c.get("min_sample_size") or MIN_SAMPLES),
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
    known = entries_from_item(store.read_control(CONTROLLER_ID))
    # Each rollout is judged on what its users did since its entry last moved (a step, a
    # resume): a resumed rollout is not rolled back again on the data that rolled it back.
    since = {w.strategy.flag: known[n].since for n, w in strategies.items() if n in known}
    lengths = {m for s in strategies.values() for m in s.windows}
    windows = read_windows(
        store, {s.strategy.flag for s in strategies.values()}, lengths, now, since
    )
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
        found = stored.get("strategies")
        kept: dict[str, Any] = dict(found) if isinstance(found, dict) else {}
        # Strategies not judged this run (inactive, unreadable for now) keep their entries.
        record: dict[str, Any] = {"strategies": dict(kept)}
        alerts = {a["alert_id"]: a for a in _pending(stored)}
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
            before = kept.get(name) or {}
            item = _entry_item(watched, decision, read_at)
            if decision.alert and decision.transition:
                alert = RolloutAlert(
                    name, watched.strategy.flag, decision.entry.state, decision.transition,
                    item["since"],
                )  # fmt: skip
                alerts.setdefault(alert.alert_id, alert.to_item())
            elif before.get("alert") and before.get("since") == item["since"]:
                item["alert"] = before["alert"]  # the last move, shown while it holds
            record["strategies"][name] = item
        record["alerts"] = list(alerts.values())
        if _same(stored, record):
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


def _pending(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The alerts the state holds that are not claimed in the alerts table yet."""
    listed = record.get("alerts")
    if not isinstance(listed, list):
        return []
    return [dict(a) for a in listed if isinstance(a, Mapping) and a.get("alert_id")]


def _same(stored: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether the record says what the stored one does (the time of the checks aside)."""

    def content(item: Mapping[str, Any]) -> Any:
        strategies = item.get("strategies") or {}
        return (
            {
                n: {k: v for k, v in e.items() if k != "checked_at"}
                for n, e in strategies.items()
                if isinstance(e, Mapping)
            },
            item.get("alerts") or [],
        )

    return bool(stored) and content(stored) == content(record)


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


def _alert(
    store: StateStore, run: RolloutRun, publisher: AlertPublisher | None, now: datetime
) -> None:
    """The state's pending alerts, each recorded in the alerts table by a conditional put by
    id (a claim: however many controllers run, one publishes it), then dropped from the
    state; published when a publisher is configured; one claimed but not out after five
    minutes is published by a later run."""
    at = format_time(now)
    claim = uuid.uuid4().hex
    pending = _pending(store.read_control(CONTROLLER_ID) or {})
    mine = []
    for item in pending:
        if store.put_alert({**item, "at": at, "recorded_by": claim}):
            mine.append(_alert_of(item))
    if pending:
        _drop_claimed(store, {str(a["alert_id"]) for a in pending}, at)
    if publisher is None:
        return
    mine.extend(_alert_of(item) for item in left_behind(store, "strategy_name", claim, now))
    published, errors = publish_each(store, publisher, mine, at)
    run.alerts_published.extend(published)
    run.publish_errors.extend(errors)


def _alert_of(item: Mapping[str, Any]) -> RolloutAlert:
    return RolloutAlert(
        str(item["strategy_name"]),
        str(item.get("flag_name", "")),
        str(item.get("level", "")),
        str(item.get("message", "")),
        str(item.get("since", "")),
    )


def _drop_claimed(store: StateStore, claimed: set[str], at: str) -> None:
    """The claimed alerts out of the state (a conflict leaves them for the next run, whose
    claim finds them recorded already)."""
    stored = store.read_control(CONTROLLER_ID) or {}
    left = [a for a in _pending(stored) if a["alert_id"] not in claimed]
    version = int(stored.get("version", 0))
    record = {k: v for k, v in stored.items() if k != "record_id"}
    record.update(alerts=left, version=version + 1, updated_at=at)
    try:
        store.write_control(CONTROLLER_ID, record, version, None)
    except WriteConflictError:
        return
