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
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconciler.errors import ConfigError

CONFIG_FILE = "reconciler.toml"


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


class RepoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    validate_: ValidateSettings = Field(default_factory=ValidateSettings, alias="validate")
    store: StoreSettings = Field(default_factory=StoreSettings)


def load_config(root: Path) -> RepoConfig:
    """Read ``reconciler.toml`` under ``root``; the defaults when there is none."""
    path = root / CONFIG_FILE
    if not path.is_file():
        return RepoConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{CONFIG_FILE}: {exc}") from None
    try:
        return RepoConfig.model_validate(data)
    except ValidationError as exc:
        lines = path.read_text(encoding="utf-8").splitlines()
        problems = []
        for error in exc.errors():
            keys = [str(part) for part in error["loc"]]
            line = _line_of(lines, keys[-1] if keys else "")
            problems.append(f"{CONFIG_FILE}:{line}: {'.'.join(keys)}: {error['msg']}")
        raise ConfigError("\n".join(problems)) from None


def _line_of(lines: list[str], key: str) -> int:
    for number, text in enumerate(lines, start=1):
        stripped = text.strip()
        if (
            stripped.startswith(f"{key} ")
            or stripped.startswith(f"{key}=")
            or stripped == f"[{key}]"
        ):
            return number
    return 1
