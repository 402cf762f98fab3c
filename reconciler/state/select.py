"""Which store a command talks to: the repository config, then the environment, then local."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from reconciler.config import RepoConfig
from reconciler.state.local import DEFAULT_PATH, LocalStore
from reconciler.state.records import table_names
from reconciler.state.store import StateStore

DYNAMODB_HINTS = ("AWS_ENDPOINT_URL_DYNAMODB", "FEATURE_FLAGS_TABLE")


def open_store(
    root: Path,
    config: RepoConfig,
    *,
    backend: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> StateStore:
    """The store for this run.

    The backend is, in order: ``--store``; ``RECONCILER_STORE``; ``[store] backend`` in
    reconciler.toml; DynamoDB when ``AWS_ENDPOINT_URL_DYNAMODB`` or ``FEATURE_FLAGS_TABLE`` is
    set; otherwise the local SQLite store at ``RECONCILER_STATE_PATH`` or ``[store] path``
    (default ``.reconciler/state.db`` under the repository root).
    """
    env = os.environ if environ is None else environ
    settings = config.store
    chosen = backend or env.get("RECONCILER_STORE") or settings.backend
    if chosen is None:
        chosen = "dynamodb" if any(env.get(v) for v in DYNAMODB_HINTS) else "local"
    if chosen == "dynamodb":
        from reconciler.state.dynamodb import DynamoDBStore  # noqa: PLC0415 - boto3, only here

        return DynamoDBStore(
            tables=table_names({**settings.tables, **env}),
            region=settings.region,
            endpoint_url=settings.endpoint_url,
        )
    path = Path(env.get("RECONCILER_STATE_PATH") or settings.path or DEFAULT_PATH)
    return LocalStore(path if path.is_absolute() else root / path)
