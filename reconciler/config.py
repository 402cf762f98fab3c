"""The repository's own settings, read from ``reconciler.toml`` at the tree's root.

Example::

    [validate]
    naming = "error"                       # "warning" (default), "error" or "off"
    component_prefixes = ["vc", "dashboard", "auth", "ai"]

    [store]
    backend = "dynamodb"                   # or "local"; unset: see reconciler.state.select
    region = "eu-central-1"
    [store.tables]
    FEATURE_FLAGS_TABLE = "prod-feature-flags"

    [alarms]                               # the CloudWatch alarms of reconciler.deploy.alarms
    cost_thresholds = true                 # one alarm per costs.d/ limit (throttle, emergency)
    [alarms.daily_cost]                    # BedrockAI-DailyCostHigh: all AI spend over 24 hours
    threshold_usd = "50"                   # a decimal string or number, read exactly
    enabled = true
    [alarms.error_rate]                    # BedrockAI-HighErrorRate: failed outcomes, all types
    threshold_percent = 10
    period_seconds = 300                   # a multiple of 60
    evaluation_periods = 2                 # alarm when datapoints_to_alarm of these breach
    datapoints_to_alarm = 2
    min_outcomes = 1                       # a period with fewer outcomes never breaches
    enabled = true

Numbers are read exactly (a TOML float becomes a ``Decimal``, never a binary float).
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from reconciler.errors import ConfigError

CONFIG_FILE = "reconciler.toml"
DAY_SECONDS = 86_400
WEEK_SECONDS = 7 * DAY_SECONDS
_HEADER = re.compile(r"^\[\[?([A-Za-z0-9_.\"' -]+)\]\]?$")  # [table], [a.b], [[array]]


def _no_boolean(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


Amount = Annotated[
    Decimal,
    BeforeValidator(_no_boolean),
    Field(gt=0, max_digits=14, decimal_places=2),  # whole cents, below a trillion dollars
]
Count = Annotated[int, Field(strict=True, ge=1)]


class ValidateSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    naming: Literal["warning", "error", "off"] = Field(
        default="warning",
        description="How the naming convention (snake_case, component prefix) is enforced.",
    )
    component_prefixes: tuple[str, ...] = Field(
        default=(),
        description="Allowed flag name prefixes (without '_'); empty allows any prefix.",
    )


class StoreSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["local", "dynamodb"] | None = Field(
        default=None,
        description="local (SQLite) or dynamodb; unset: dynamodb when AWS_ENDPOINT_URL_DYNAMODB "
        "or FEATURE_FLAGS_TABLE is set, local otherwise.",
    )
    path: str | None = Field(
        default=None, description="The local store's file, relative to the repository root."
    )
    region: str | None = Field(default=None, description="AWS region of the DynamoDB tables.")
    endpoint_url: str | None = Field(
        default=None, description="A DynamoDB-compatible endpoint (AWS_ENDPOINT_URL_DYNAMODB)."
    )
    tables: dict[str, str] = Field(
        default_factory=dict,
        description='Table names by environment variable, e.g. FEATURE_FLAGS_TABLE = "..."; '
        "the environment variables themselves take precedence.",
    )


class DailyCostAlarm(BaseModel):
    """``BedrockAI-DailyCostHigh``: all AI spend over the last 24 hours above an amount."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, strict=True, description="false: no such alarm.")
    threshold_usd: Amount = Field(
        default=Decimal(50), description="USD, whole cents: the alarm fires above this spend."
    )


class ErrorRateAlarm(BaseModel):
    """``BedrockAI-HighErrorRate``: the percentage of failed outcomes, all request types."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, strict=True, description="false: no such alarm.")
    threshold_percent: Annotated[Decimal, BeforeValidator(_no_boolean)] = Field(
        default=Decimal(10), gt=0, lt=100, description="The alarm fires above this error rate."
    )
    period_seconds: Count = Field(
        default=300, multiple_of=60, description="One period, a multiple of 60 seconds."
    )
    evaluation_periods: Count = Field(
        default=2, validate_default=True, description="The periods looked at."
    )
    datapoints_to_alarm: Count = Field(
        default=2,
        validate_default=True,
        description="Of those, how many must breach for the alarm to fire.",
    )
    min_outcomes: Count = Field(
        default=1, description="A period with fewer outcomes than this does not breach."
    )

    @field_validator("evaluation_periods")
    @classmethod
    def _range_fits(cls, periods: int, info: ValidationInfo) -> int:
        period = info.data.get("period_seconds")
        if period is None:  # refused itself
            return periods
        if period * periods > (DAY_SECONDS if period < 3_600 else WEEK_SECONDS):
            raise ValueError(
                f"{periods} periods of {period} s are {period * periods:,} s, more than CloudWatch "
                f"evaluates: {DAY_SECONDS:,} s with periods under an hour, {WEEK_SECONDS:,} s else"
            )
        return periods

    @field_validator("datapoints_to_alarm")
    @classmethod
    def _within_the_periods(cls, datapoints: int, info: ValidationInfo) -> int:
        periods = info.data.get("evaluation_periods")
        if periods is not None and datapoints > periods:
            raise ValueError(f"{datapoints} is more than evaluation_periods ({periods})")
        return datapoints


class AlarmSettings(BaseModel):
    """The CloudWatch alarms the deployment template holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cost_thresholds: bool = Field(
        default=True, strict=True, description="One alarm per costs.d/ limit; false: none."
    )
    daily_cost: DailyCostAlarm = Field(default_factory=DailyCostAlarm)
    error_rate: ErrorRateAlarm = Field(default_factory=ErrorRateAlarm)


class RepoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    validate_: ValidateSettings = Field(default_factory=ValidateSettings, alias="validate")
    store: StoreSettings = Field(default_factory=StoreSettings)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)


def load_config(root: Path) -> RepoConfig:
    """Read ``reconciler.toml`` under ``root``; the defaults when there is none."""
    path = root / CONFIG_FILE
    if not path.is_file():
        return RepoConfig()
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text, parse_float=Decimal)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{CONFIG_FILE}: {exc}") from None
    try:
        return RepoConfig.model_validate(data)
    except ValidationError as exc:
        lines = text.splitlines()
        problems = []
        for error in exc.errors():
            keys = [str(part) for part in error["loc"]]
            line = line_of(lines, keys)
            problems.append(f"{CONFIG_FILE}:{line}: {'.'.join(keys)}: {error['msg']}")
        raise ConfigError("\n".join(problems)) from None


def line_of(lines: list[str], keys: list[str]) -> int:
    """The line of a key path in a TOML file: its ``key =`` line in its table, or its table's
    ``[header]``; else that of the longest part of the path found (a default value's table, a
    list's key), else 1."""
    found: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    depth = 0  # open brackets of a value over several lines
    for number, text in enumerate(lines, start=1):
        stripped = text.split("#", 1)[0].strip()
        header = _HEADER.match(stripped) if depth == 0 else None
        if header:
            table = _dotted(header.group(1))
            found.setdefault(table, number)
            continue
        if depth == 0 and "=" in stripped:
            name, stripped = stripped.split("=", 1)
            key = (*table, *_dotted(name))
            for end in range(len(table) + 1, len(key) + 1):
                found.setdefault(key[:end], number)
        depth = max(0, depth + stripped.count("[") - stripped.count("]"))
    for end in range(len(keys), 0, -1):
        if tuple(keys[:end]) in found:
            return found[tuple(keys[:end])]
    return 1


def _dotted(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))
