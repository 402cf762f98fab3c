"""The answer to one question about one flag: enabled or not, with what, and why."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Reason(enum.StrEnum):
    """Why a decision came out as it did, in the order the decision is made."""

    __hash__ = str.__hash__  # members are strings: hash them at C speed (decisions are cached)

    EMERGENCY_SHUTDOWN = "EMERGENCY_SHUTDOWN"
    ERROR = "ERROR"
    DISABLED = "DISABLED"
    COST_EMERGENCY = "COST_EMERGENCY"
    TARGETING_MATCH = "TARGETING_MATCH"
    TARGETING_NO_MATCH = "TARGETING_NO_MATCH"
    ROLLOUT_OUT = "ROLLOUT_OUT"
    ROLLOUT_IN = "ROLLOUT_IN"
    COST_THROTTLED = "COST_THROTTLED"
    EXPERIMENT_ASSIGNED = "EXPERIMENT_ASSIGNED"
    # In the experiment's flag but not in the experiment (outside its traffic share, before its
    # start, after its end, or stopped): the control, not counted as an exposure.
    EXPERIMENT_EXCLUDED = "EXPERIMENT_EXCLUDED"
    EXPERIMENT_CONCLUDED = "EXPERIMENT_CONCLUDED"
    DEFAULT = "DEFAULT"


class ErrorCode(enum.StrEnum):
    """What went wrong when the reason is ERROR (or a decision had to do without something)."""

    __hash__ = str.__hash__

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    NO_SNAPSHOT = "NO_SNAPSHOT"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    GENERAL = "GENERAL"


@dataclass(frozen=True)
class Decision:
    flag: str
    enabled: bool
    reason: Reason
    value: Any = None  # the flag's value when enabled; None: use the caller's default
    variant: str | None = None
    variant_config: Mapping[str, Any] = field(default_factory=dict)
    matched_rule: str | None = None
    experiment: str | None = None
    snapshot_version: str | None = None
    error_code: ErrorCode | None = None
    detail: str = ""
