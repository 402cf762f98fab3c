"""The client a service holds: decisions from an in-process snapshot refreshed in the background.

Neither requests nor construction wait on the network: the client starts from its bootstrap file
if given (else with no snapshot) and loads from the store in the background, where the snapshot
is replaced whole (configuration every few minutes, overrides every few seconds) and read without
a lock. When the store is slow, down or answers garbage, the last good snapshot keeps answering
and the failed refresh is counted. With no snapshot at all, decisions follow the caller's
default; a flag the snapshot holds but cannot use decides by its ``fail_mode``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from reconciler.runtime.admission import (
    Admission,
    AdmissionReason,
    BudgetView,
    admit,
    budgets_by_type,
    view,
)
from reconciler.runtime.budgets import Budget
from reconciler.runtime.decision import Decision, ErrorCode, Reason
from reconciler.runtime.evaluate import UNIT_ATTRIBUTE, evaluate
from reconciler.runtime.recorder import (
    DEFAULT_FLUSH_INTERVAL,
    Health,
    MetricsSink,
    Recorder,
    TelemetrySink,
)
from reconciler.runtime.snapshot import (
    Snapshot,
    build_snapshot,
    with_cost_state,
    with_experiment_states,
    with_rollout_states,
)
from reconciler.runtime.sources import Configuration, Overrides, SnapshotSource
from reconciler.runtime.telemetry import IN, OUT

log = logging.getLogger("reconciler.runtime")

_NO_ANSWER = frozenset({ErrorCode.NO_SNAPSHOT, ErrorCode.FLAG_NOT_FOUND})
_ASSIGNED = Reason.EXPERIMENT_ASSIGNED
_FROM_SOURCE: Any = object()  # telemetry goes where the snapshot comes from, if it can
_NO_BUDGET = Admission(True, AdmissionReason.NO_BUDGET)
# The most one call may cost or use, and the largest response time: beyond them a value is a
# bug, and recording it would overflow the sums or what DynamoDB's numbers hold.
MAX_CALL_USD = 1_000_000
MAX_CALL_TOKENS = 10**12
MAX_MEASURE = 1e12
QUALITY_METRIC = "response_quality"
TIME_METRIC = "response_time_ms"
COST_METRIC = "cost_usd"
BEDROCK_FLAG = "vc_bedrock_live"
MODEL_FLAG = "ai_model_selection"
# How long close() waits for the refresh thread: one waiting for its next turn ends at once; one
# in the middle of a read is a daemon and is left to end with its read's timeout.
CLOSE_WAIT = 0.5
READY_WAIT = 5.0  # wait_until_ready's default
MAX_WARNED = 100  # names get_user_variant warns of, once each


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class IntegrationDecision:
    """The original system's single decision point: may this request use AI, and which model."""

    enabled: bool
    reason: Reason
    variant: str | None
    variant_config: Mapping[str, Any]
    decisions: tuple[Decision, ...]


class FlagClient:
    """Flag decisions for a service, in microseconds, never raising, never blocking on I/O.

    Construction returns at once; the first load from the store runs in the background (at
    once, then as for every refresh), and ``wait_until_ready()`` waits for it where a caller
    prefers to. ``background=False`` loads in the constructor instead and never refreshes on
    its own (tests, scripts: call ``refresh_configuration``/``refresh_overrides``).
    """

    def __init__(
        self,
        source: SnapshotSource,
        *,
        config_interval: float = 300.0,
        override_interval: float = 5.0,
        bootstrap: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
        background: bool = True,
        telemetry: TelemetrySink | None = _FROM_SOURCE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        metrics: MetricsSink | None = _FROM_SOURCE,
    ) -> None:
        self.source = source
        self.config_interval = config_interval
        self.override_interval = override_interval
        self.clock = clock
        self.failed_refreshes = 0
        self.last_error: str | None = None
        self._snapshot: Snapshot | None = None
        self._overrides = Overrides()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()  # held while the source is read (see _before_fork)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()  # a configuration and the overrides read from the store
        self._attempted = threading.Event()  # the first load has been tried, well or not
        self._configured = self._overridden = False
        self._loaded_stamp: str | None = None  # the configuration stamp as of the last load
        self._warned: set[str] = set()
        # The time as epoch seconds, for recording: the fast clock unless a test set its own.
        self._epoch: Callable[[], float] = (
            time.time if clock is utc_now else lambda: self.clock().timestamp()
        )
        if metrics is _FROM_SOURCE:  # not given: as $RECONCILER_METRICS says (default none)
            from reconciler.runtime.metrics import metrics_from_environment  # noqa: PLC0415

            metrics = metrics_from_environment()
        if telemetry is _FROM_SOURCE:
            telemetry = source if hasattr(source, "write_shards") else None  # type: ignore[assignment]
        self.recorder = Recorder(
            telemetry,
            flush_interval=flush_interval,
            metrics=metrics,
            clock=self._epoch,
            background=background,
        )
        self._known_types: frozenset[str] = frozenset()
        self._by_type: Mapping[str | None, list[Budget]] = {}
        self._admission: dict[str, list[BudgetView]] = {}
        self._admission_until = math.inf
        self._baselines: dict[tuple[float, str, tuple[str, ...] | None], int] = {}
        if bootstrap is not None:
            self._load_bootstrap(bootstrap)
        _clients.add(self)  # before the first read: no fork in the middle of it
        if background:
            self._thread = threading.Thread(target=self._run, name="flag-refresh", daemon=True)
            self._thread.start()
        else:
            self._first_load()

    # -- decisions (the request path: no I/O, no locks, no exceptions) -----------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def ready(self) -> bool:
        """Whether decisions come from the store: its configuration and its overrides have
        been read (before that, from the bootstrap file or the caller's defaults)."""
        return self._ready.is_set()

    def wait_until_ready(self, timeout: float | None = READY_WAIT) -> bool:
        """Wait until the first load from the store has been tried (at most ``timeout``
        seconds; None: as long as the source's timeouts let it take) and say whether the
        client is ready. False: the store has not answered yet; the client keeps trying in
        the background and serves the bootstrap file or the caller's defaults meanwhile."""
        if self._thread is not None and not self._stop.is_set():
            self._attempted.wait(timeout)
        return self._ready.is_set()

    def decide(self, flag: str, context: Mapping[str, Any], default: Any = None) -> Decision:
        snapshot = self._snapshot
        decision = evaluate(snapshot, flag, context, self.clock)  # time asked only if needed
        if decision.reason is _ASSIGNED and snapshot is not None:
            try:  # the exposure: queued, for the recorder to count off the request path
                experiment = snapshot.flags[flag].experiment
                if experiment is not None and decision.variant is not None:
                    unit = str(context[UNIT_ATTRIBUTE])
                    self.recorder.expose(experiment.key, decision.variant, unit)
            except Exception:
                self.recorder.reject("internal")
        if decision.error_code is not None and decision.error_code in _NO_ANSWER:
            return dataclasses.replace(decision, enabled=bool(default), value=default)
        if default is not None and decision.value is None and not decision.enabled:
            return dataclasses.replace(decision, value=default)
        return decision

    def is_enabled(self, flag: str, context: Mapping[str, Any], default: bool = False) -> bool:
        return self.decide(flag, context, default).enabled

    # The original system's names, in Python.
    def is_feature_enabled(self, flag: str, user_context: Mapping[str, Any]) -> bool:
        return self.is_enabled(flag, user_context)

    def is_bedrock_enabled(self, user_context: Mapping[str, Any]) -> bool:
        return self.is_enabled(BEDROCK_FLAG, user_context)

    def should_user_receive_feature(self, flag: str, user_context: Mapping[str, Any]) -> Decision:
        """The rollout question for one user, with its reason."""
        return self.decide(flag, user_context)

    def get_user_variant(self, experiment_id: str, user_context: Mapping[str, Any]) -> str | None:
        """The user's variant in an experiment, named by its ``experiment_id`` or by the name of
        the flag it runs on (the id first); None when the user is in no variant or there is no
        snapshot yet. A name that is neither is counted in ``health().rejected``
        (``unknown_experiment:NAME``) and logged once; nothing is raised."""
        try:
            snapshot = self._snapshot
            if snapshot is None:
                return None
            name = experiment_id if type(experiment_id) is str else None
            flag = snapshot.experiments.get(name) if name is not None else None
            if flag is None and name is not None:
                named = snapshot.flags.get(name)
                flag = name if named is not None and named.experiment is not None else None
            if flag is None:
                self._unknown_experiment(experiment_id, snapshot)
                return None
            return self.decide(flag, user_context).variant
        except Exception:
            self.recorder.reject("internal")
            return None

    def _unknown_experiment(self, name: Any, snapshot: Snapshot) -> None:
        shown = str(name)[:64]
        self.recorder.reject(f"unknown_experiment:{shown}")
        if shown in self._warned or len(self._warned) >= MAX_WARNED:
            return
        self._warned.add(shown)
        flag = snapshot.flags.get(name) if type(name) is str else None
        log.warning(
            "get_user_variant(%r): %s; it returns None (experiments: %s)",
            shown,
            "that flag runs no experiment" if flag is not None else "no such experiment or flag",
            ", ".join(f"{e} (flag {f})" for e, f in sorted(snapshot.experiments.items())) or "none",
        )

    def should_enable_bedrock(self, request_context: Mapping[str, Any]) -> IntegrationDecision:
        """Bedrock on for this request, and with which model (the model-selection experiment)."""
        main = self.decide(BEDROCK_FLAG, request_context)
        if not main.enabled:
            return IntegrationDecision(False, main.reason, None, {}, (main,))
        model = self.decide(MODEL_FLAG, request_context)
        return IntegrationDecision(
            True, main.reason, model.variant, model.variant_config, (main, model)
        )

    # -- experiments (the request path too: microseconds, no I/O, never raising) -------------

    def record_response_quality(
        self,
        experiment_id: str,
        user_context: Mapping[str, Any],
        quality_score: float | None,
        response_time_ms: float | None = None,
        cost_usd: float | Decimal | None = None,
    ) -> None:
        """Record one response's quality, time and cost for the user's variant (the metrics
        ``response_quality``, ``response_time_ms`` and ``cost_usd``, those the experiment
        declares)."""
        try:
            given = (
                (QUALITY_METRIC, quality_score),
                (TIME_METRIC, response_time_ms),
                (COST_METRIC, float(cost_usd) if isinstance(cost_usd, Decimal) else cost_usd),
            )
            self._record_metrics(experiment_id, user_context, given, declared_only=True)
        except Exception:
            self.recorder.reject("internal")

    def track(
        self,
        experiment_id: str,
        user_context: Mapping[str, Any],
        metric_name: str,
        value: float | bool = 1,
    ) -> None:
        """Record a value of one of the experiment's metrics for the user's variant (binary
        metrics take 0, 1, True or False)."""
        try:
            self._record_metrics(experiment_id, user_context, ((metric_name, value),))
        except Exception:
            self.recorder.reject("internal")

    def _record_metrics(
        self,
        experiment_id: str,
        user_context: Mapping[str, Any],
        given: tuple[tuple[str, Any], ...],
        *,
        declared_only: bool = False,
    ) -> None:
        snapshot = self._snapshot
        if snapshot is None:
            self.recorder.reject("no_snapshot")
            return
        flag = snapshot.experiments.get(experiment_id) if type(experiment_id) is str else None
        experiment = snapshot.flags[flag].experiment if flag is not None else None
        if flag is None or experiment is None:
            self.recorder.reject(f"unknown_experiment:{str(experiment_id)[:64]}")
            return
        decision = evaluate(snapshot, flag, user_context, self.clock)
        if decision.reason is not Reason.EXPERIMENT_ASSIGNED or decision.variant is None:
            self.recorder.warn("not_in_experiment")  # excluded, stopped, concluded, no user
            return
        declared = experiment.metrics
        values = []
        for metric, given_value in given:
            if given_value is None:
                continue
            value = given_value
            kind = declared.get(metric) if declared else "numeric"
            if kind is None:
                if not declared_only:
                    self.recorder.reject(f"unknown_metric:{str(metric)[:64]}")
                continue
            if kind == "binary":
                if value not in (0, 1) or not isinstance(value, int | float):
                    self.recorder.reject(f"invalid_value:{metric}")
                    continue
                value = 1 if value else 0
            elif not _finite(value):
                self.recorder.reject(f"invalid_value:{metric}")
                continue
            values.append((metric, value))
        if values:
            unit = str(user_context["user_id"])
            self.recorder.record_metric(experiment.key, decision.variant, unit, values)

    # -- cost and outcomes (the request path too: microseconds, never raising) ------------------

    def record_request_cost(
        self,
        request_type: str,
        tokens: int,
        cost_usd: float | Decimal,
        user_context: Mapping[str, Any] | None = None,
    ) -> None:
        """Record what one AI call cost. Bad values are counted in ``health()``, not recorded."""
        self._record_cost(request_type, tokens, cost_usd, user_context)

    def _record_cost(
        self,
        request_type: str,
        tokens: int,
        cost_usd: float | Decimal,
        user_context: Mapping[str, Any] | None,
    ) -> int | None:
        """The micro-dollars recorded, or None when nothing was."""
        try:
            if type(cost_usd) is float and 0 <= cost_usd <= MAX_CALL_USD:  # the common case
                micros: int | None = round(cost_usd * 1_000_000)
            else:
                micros = _micros(cost_usd)
            if micros is None:
                self.recorder.reject("invalid_cost")
            elif type(tokens) is not int or not 0 <= tokens <= MAX_CALL_TOKENS:
                self.recorder.reject("invalid_tokens")
            elif type(request_type) is not str:
                self.recorder.reject("missing_request_type")
            elif request_type not in self._known_types and not self._may_record(request_type):
                pass  # counted by _may_record
            else:
                if user_context is None:
                    self.recorder.warn("missing_context")  # recorded: the spend is real
                self.recorder.record_cost(request_type, tokens, micros)
                return micros
        except Exception:  # the promise: nothing reaches the caller
            self.recorder.reject("internal")
        return None

    def _may_record(self, request_type: Any) -> bool:
        """A request type no flag or budget names: refused (and counted) as a typo would be,
        unless there is no configuration yet to tell a typo from."""
        if not isinstance(request_type, str) or not request_type:
            self.recorder.reject("missing_request_type")
            return False
        if self._known_types:
            self.recorder.reject(f"unknown_request_type:{request_type[:64]}")
            return False
        return True

    def should_allow_request(
        self,
        request_type: str,
        estimated_cost_usd: float | Decimal,
        user_context: Mapping[str, Any] | None = None,
    ) -> Admission:
        """May this request go ahead: allowed, reason, known spend and remaining budget."""
        try:
            snapshot = self._snapshot
            if snapshot is None:
                return _NO_BUDGET
            shutdown = snapshot.global_shutdown
            if shutdown is not None and shutdown.active(self.clock()):
                return Admission(False, AdmissionReason.EMERGENCY_SHUTDOWN, detail="global")
            estimate = _micros(estimated_cost_usd)
            if estimate is None:
                self.recorder.reject("invalid_estimate")
                estimate = 0
            views = self._admission.get(request_type)
            if views is None or self._epoch() >= self._admission_until:
                views = self._views_for(request_type)
            unit = user_context.get("user_id") if user_context else None
            return admit(views, estimate, str(unit) if unit else None, self.recorder.own_cost)
        except Exception as exc:
            return Admission(True, AdmissionReason.ERROR, detail=repr(exc))

    def _views_for(self, request_type: str) -> list[BudgetView]:
        """The budgets counting ``request_type``, as admission reads them, cached until the
        first of their periods ends or the guard's state or the configuration changes."""
        now = self._epoch()
        if now >= self._admission_until:
            self._admission, self._admission_until = {}, math.inf
        # The cache before the snapshot: a refresh swaps the snapshot, then the cache, so a
        # swap in between leaves this cache replaced, and these views are not kept.
        cache = self._admission
        snapshot = self._snapshot
        if snapshot is None:
            return []
        budgets = [*self._by_type.get(request_type, ()), *self._by_type.get(None, ())]
        moment = self.clock()
        views = [
            view(b, snapshot.cost_state, moment, self._baseline, request_type) for b in budgets
        ]
        if cache is self._admission:
            cache[request_type] = views
            for current in views:
                self._admission_until = min(self._admission_until, current.ends)
        return views

    def _baseline(self, moment: float, bucket: str, series: tuple[str, ...] | None) -> int:
        """This process's spend that a guard reading at ``moment`` had counted, remembered for
        as long as that reading is the state's (the flush history does not go back forever)."""
        key = (moment, bucket, series)
        found = self._baselines.get(key)
        if found is None:
            found = self._baselines[key] = self.recorder.flushed_before(moment, bucket, series)
        return found

    def record_ai_success(
        self,
        request_context: Mapping[str, Any],
        response_time_ms: float,
        cost_usd: float | Decimal,
        quality_score: float | None = None,
        tokens: int | None = None,
    ) -> None:
        """Record a successful AI call: its cost, response time and quality."""
        try:
            request_type = self._known_type(request_context)
            if request_type is None:
                return
            micros = self._record_cost(request_type, tokens or 0, cost_usd, request_context)
            self._outcome(
                request_type, False, response_time_ms, quality_score, request_context, micros=micros
            )
        except Exception:
            self.recorder.reject("internal")

    def record_ai_failure(
        self,
        request_context: Mapping[str, Any],
        error: BaseException | str,
        response_time_ms: float | None = None,
    ) -> None:
        """Record a failed AI call (counted in the error rate)."""
        try:
            request_type = self._known_type(request_context)
            if request_type is None:
                return
            self._outcome(request_type, True, response_time_ms, None, request_context)
        except Exception:
            self.recorder.reject("internal")

    def _known_type(self, request_context: Any) -> str | None:
        """The context's request type, if it may be recorded (else counted, and None)."""
        request_type = _request_type(request_context)
        if request_type is None:
            self.recorder.reject("missing_request_type")
            return None
        if request_type not in self._known_types and not self._may_record(request_type):
            return None
        return request_type

    def _outcome(
        self,
        request_type: str,
        failed: bool,
        response_time_ms: Any,
        quality: Any,
        context: Mapping[str, Any],
        *,
        micros: int | None = None,
    ) -> None:
        if response_time_ms is not None and not _finite(response_time_ms, minimum=0):
            self.recorder.reject("invalid_response_time")
            response_time_ms = None
        if quality is not None and not _finite(quality):
            self.recorder.reject("invalid_quality")
            quality = None
        snapshot = self._snapshot
        watched = snapshot.watched.get(request_type) if snapshot is not None else None
        if not watched:
            self.recorder.record_outcome(request_type, failed, response_time_ms, quality)
            return
        # The health of the rollouts this request type tells of: the user's cohort in each.
        cohorts = [
            (flag, IN if evaluate(snapshot, flag, context, self.clock).enabled else OUT)
            for flag in watched
        ]
        self.recorder.record_outcome(
            request_type,
            failed,
            response_time_ms,
            quality,
            cohorts=cohorts,
            micros=micros,
        )

    def health(self) -> Health:
        """What recording and refreshing have done: counts of records, rejects, flushes."""
        return self.recorder.health

    def flush(self) -> bool:
        """Write what was recorded now, rather than at the next background flush."""
        return self.recorder.flush()

    # -- refreshing (the background thread) ------------------------------------------------

    def refresh_configuration(self) -> bool:
        stamp = self._overrides.stamp  # read before the configuration: never newer than it
        try:
            with self._read_lock:
                configuration = self.source.read_configuration()
            self._install_configuration(configuration)
        except Exception as exc:  # last known good: keep answering from the old snapshot
            return self._failed("configuration", exc)
        self._configured = True
        self._loaded_stamp = stamp
        self._loaded()
        return True

    def refresh(self) -> bool:
        """One turn of the background refresh: the overrides (one small read), then the
        configuration if its stamp moved since it was read (every apply moves it), or if the
        store keeps no stamp. Whether both reads that were made succeeded."""
        done = self.refresh_overrides()
        if self._configuration_due():
            done = self.refresh_configuration() and done
        return done

    def _configuration_due(self, waited: bool = True) -> bool:
        """Whether to read the configuration now: none read yet; its stamp moved; or, on a
        store without one, ``waited`` (the configuration interval has passed)."""
        if not self._configured:
            return True
        stamp = self._overrides.stamp
        if stamp is not None:
            return stamp != self._loaded_stamp
        return waited

    def refresh_overrides(self) -> bool:
        try:
            with self._read_lock:
                overrides = self.source.read_overrides()
            with self._write_lock:
                # Built before anything is swapped: records it cannot use leave all as it was.
                held = with_overrides(self._snapshot, overrides) if self._snapshot else None
                changed = overrides.cost != self._overrides.cost
                self._overrides = overrides
                if held is not None:
                    self._snapshot = held
                if changed:
                    self._admission = {}
                    self._baselines = {}
        except Exception as exc:
            return self._failed("overrides", exc)
        if changed and self._snapshot is not None:
            self._remember_baselines(self._snapshot)
        self._overridden = True
        self._loaded()
        return True

    def _loaded(self) -> None:
        if self._configured and self._overridden and not self._ready.is_set():
            self._ready.set()
            log.info("flags loaded from the store: ready")

    def _first_load(self) -> None:
        """The overrides first: a shutdown in force holds from the first decision the store's
        configuration makes."""
        try:
            self.refresh_overrides()
            if not self._stop.is_set():  # closed while it read: not another read
                self.refresh_configuration()
        finally:
            self._attempted.set()

    def _remember_baselines(self, snapshot: Snapshot) -> None:
        """Work out, while the flush history still reaches back to it, how much of this
        process's spend the guard's new reading had counted (admission subtracts it)."""
        try:
            moment = self.clock()
            for budget in snapshot.budgets:
                view(budget, snapshot.cost_state, moment, self._baseline)
        except Exception as exc:  # the background thread carries on; admission works it out
            log.warning("cost baselines not remembered: %s", exc)

    def _install_configuration(self, configuration: Configuration) -> None:
        """Build the snapshot (rules compiled once) and swap it in whole; the raw items are
        not kept."""
        built = build_snapshot(
            _version(configuration), configuration.flags, configuration.thresholds
        )
        known = {f.request_type for f in built.flags.values() if f.request_type}
        for budget in built.budgets:
            known |= budget.counts or set()
        with self._write_lock:
            self._snapshot = with_overrides(built, self._overrides)
            self._known_types = frozenset(known)
            self._by_type = budgets_by_type(built.budgets)
            self._admission = {}
        self.recorder.set_zones(b.time_zone for b in built.budgets)

    def _failed(self, what: str, exc: Exception) -> bool:
        self.failed_refreshes += 1
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        log.warning("flag %s refresh failed (%s); serving the last good snapshot", what, exc)
        return False

    def _run(self) -> None:
        if not self._attempted.is_set():
            self._first_load()
        since_config = 0.0
        while not self._stop.wait(self.override_interval):
            self.refresh_overrides()
            since_config += self.override_interval
            # Until a configuration has come, it is asked for at every turn; then when its
            # stamp moves (at once, not at the next interval), or by the interval without one.
            if self._configuration_due(waited=since_config >= self.config_interval):
                since_config = 0.0
                self.refresh_configuration()

    def _after_fork(self) -> None:
        """In a forked child: the refresh thread did not come along; start one of its own.
        What admission remembered of the parent's spend is the parent's."""
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._admission, self._admission_until, self._baselines = {}, math.inf, {}
        self._ready, self._attempted = _event(self._ready), _event(self._attempted)
        after_fork = getattr(self.source, "after_fork", None)
        if callable(after_fork):
            after_fork()  # a connection of its own (boto3 clients are not fork-safe)
        if self._thread is not None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="flag-refresh", daemon=True)
            self._thread.start()

    def _load_bootstrap(self, path: Path) -> None:
        """A cold start without the network: a snapshot file shipped with the service."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self._install_configuration(Configuration(data["flags"], data.get("thresholds", [])))
        except Exception as exc:
            self._failed("bootstrap", exc)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop refreshing and flush what was recorded (see ``health().lost``). Returns at
        once, but for that flush: a refresh thread in the middle of a read is not waited for
        (a daemon, it ends with its read)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=CLOSE_WAIT)
        self.recorder.close()

    def __enter__(self) -> FlagClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


_clients: weakref.WeakSet[FlagClient] = weakref.WeakSet()


def _restart_after_fork() -> None:
    for client in list(_clients):
        client._after_fork()


def _before_fork() -> None:
    """No fork in the middle of a refresh's read (see the recorder's ``_before_fork``)."""
    for client in list(_clients):
        client._read_lock.acquire()


def _after_fork_in_parent() -> None:
    for client in list(_clients):
        if client._read_lock.locked():
            client._read_lock.release()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_restart_after_fork,
)


def _event(inherited: threading.Event) -> threading.Event:
    """A new event in the state of one inherited from the parent (whose lock may be held)."""
    fresh = threading.Event()
    if inherited.is_set():
        fresh.set()
    return fresh


def with_overrides(snapshot: Snapshot, overrides: Overrides) -> Snapshot:
    """The snapshot with what outranks git: shutdowns, controllers' and operators' states."""
    held = dataclasses.replace(
        snapshot, global_shutdown=overrides.global_shutdown, flag_shutdowns=overrides.flags
    )
    held = with_experiment_states(with_cost_state(held, overrides.cost), overrides.experiments)
    return with_rollout_states(held, overrides.rollouts)


def _micros(amount: Any) -> int | None:
    """USD as micro-dollars; None for what is not an amount from 0 to ``MAX_CALL_USD``."""
    if isinstance(amount, float):
        ok = math.isfinite(amount) and 0 <= amount <= MAX_CALL_USD
        return round(amount * 1_000_000) if ok else None
    if isinstance(amount, bool):
        return None
    if isinstance(amount, int):
        return amount * 1_000_000 if 0 <= amount <= MAX_CALL_USD else None
    if isinstance(amount, Decimal):
        if not amount.is_finite() or not 0 <= amount <= MAX_CALL_USD:
            return None
        return int((amount * 1_000_000).to_integral_value())
    return None


def _finite(value: Any, minimum: float | None = None) -> bool:
    """A number a measure may be: finite, at most ``MAX_MEASURE`` in size, over ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return (
        math.isfinite(value) and abs(value) <= MAX_MEASURE and (minimum is None or value >= minimum)
    )


def _request_type(context: Mapping[str, Any]) -> str | None:
    if not isinstance(context, Mapping):
        return None
    found = context.get("request_type")
    return found if isinstance(found, str) and found else None


def _version(configuration: Configuration) -> str:
    stamps = sorted(
        (str(i.get("flag_name")), str(i.get("version", ""))) for i in configuration.flags
    )
    return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:12]
