"""The client a service holds: decisions from an in-process snapshot refreshed in the background.

Requests never wait on the network: the snapshot is replaced whole by a background thread
(configuration every few minutes, overrides every few seconds) and read without a lock. When the
store is slow, down or answers garbage, the last good snapshot keeps answering and the failed
refresh is counted. With no snapshot at all, decisions follow the caller's default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from reconciler.runtime.decision import Decision, ErrorCode, Reason
from reconciler.runtime.evaluate import evaluate
from reconciler.runtime.snapshot import Snapshot, build_snapshot
from reconciler.runtime.sources import Configuration, Overrides, SnapshotSource

log = logging.getLogger("reconciler.runtime")

_NO_ANSWER = frozenset({ErrorCode.NO_SNAPSHOT, ErrorCode.FLAG_NOT_FOUND})
BEDROCK_FLAG = "vc_bedrock_live"
MODEL_FLAG = "ai_model_selection"


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
    """Flag decisions for a service, in microseconds, never raising, never blocking on I/O."""

    def __init__(
        self,
        source: SnapshotSource,
        *,
        config_interval: float = 300.0,
        override_interval: float = 5.0,
        bootstrap: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
        background: bool = True,
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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if bootstrap is not None:
            self._load_bootstrap(bootstrap)
        self.refresh_configuration()
        self.refresh_overrides()
        if background:
            self._thread = threading.Thread(target=self._run, name="flag-refresh", daemon=True)
            self._thread.start()

    # -- decisions (the request path: no I/O, no locks, no exceptions) -----------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def decide(self, flag: str, context: Mapping[str, Any], default: Any = None) -> Decision:
        decision = evaluate(self._snapshot, flag, context, self.clock)  # time asked only if needed
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
        snapshot = self._snapshot
        if snapshot is None:
            return None
        for flag in snapshot.flags.values():
            if flag.experiment is not None and flag.experiment.experiment_id == experiment_id:
                return self.decide(flag.name, user_context).variant
        return None

    def should_enable_bedrock(self, request_context: Mapping[str, Any]) -> IntegrationDecision:
        """Bedrock on for this request, and with which model (the model-selection experiment)."""
        main = self.decide(BEDROCK_FLAG, request_context)
        if not main.enabled:
            return IntegrationDecision(False, main.reason, None, {}, (main,))
        model = self.decide(MODEL_FLAG, request_context)
        return IntegrationDecision(
            True, main.reason, model.variant, model.variant_config, (main, model)
        )

    # -- refreshing (the background thread) ------------------------------------------------

    def refresh_configuration(self) -> bool:
        try:
            self._install_configuration(self.source.read_configuration())
        except Exception as exc:  # last known good: keep answering from the old snapshot
            return self._failed("configuration", exc)
        return True

    def refresh_overrides(self) -> bool:
        try:
            overrides = self.source.read_overrides()
        except Exception as exc:
            return self._failed("overrides", exc)
        with self._write_lock:
            self._overrides = overrides
            if self._snapshot is not None:
                self._snapshot = _with_overrides(self._snapshot, overrides)
        return True

    def _install_configuration(self, configuration: Configuration) -> None:
        """Build the snapshot (rules compiled once) and swap it in whole; the raw items are
        not kept."""
        built = build_snapshot(
            _version(configuration), configuration.flags, configuration.thresholds
        )
        with self._write_lock:
            self._snapshot = _with_overrides(built, self._overrides)

    def _failed(self, what: str, exc: Exception) -> bool:
        self.failed_refreshes += 1
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        log.warning("flag %s refresh failed (%s); serving the last good snapshot", what, exc)
        return False

    def _run(self) -> None:
        since_config = 0.0
        while not self._stop.wait(self.override_interval):
            self.refresh_overrides()
            since_config += self.override_interval
            if since_config >= self.config_interval:
                since_config = 0.0
                self.refresh_configuration()

    def _load_bootstrap(self, path: Path) -> None:
        """A cold start without the network: a snapshot file shipped with the service."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self._install_configuration(Configuration(data["flags"], data.get("thresholds", [])))
        except Exception as exc:
            self._failed("bootstrap", exc)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self.override_interval, 1.0) + 5)

    def __enter__(self) -> FlagClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _with_overrides(snapshot: Snapshot, overrides: Overrides) -> Snapshot:
    return dataclasses.replace(
        snapshot, global_shutdown=overrides.global_shutdown, flag_shutdowns=overrides.flags
    )


def _version(configuration: Configuration) -> str:
    stamps = sorted(
        (str(i.get("flag_name")), str(i.get("version", ""))) for i in configuration.flags
    )
    return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:12]
