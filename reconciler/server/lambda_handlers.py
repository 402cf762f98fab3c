"""The Lambda entry points: the HTTP API behind API Gateway, and one controller tick.

``api`` serves API Gateway (REST API, Lambda proxy integration) events with the same ASGI
application as ``breakglass serve``, through Mangum. Its settings come from the function's
environment, as the deployment template sets it:

    RECONCILER_STORE=dynamodb and the table variables   the store
    RECONCILER_API_AUTH=token|iam                        bearer token, or the gateway's IAM caller
    RECONCILER_API_TOKEN_SECRET=arn:aws:secretsmanager:  the token (read, then cached 5 minutes)
    RECONCILER_REPOSITORY_URL=https://github.com/O/N     where the dashboard links the manifests

``controller_tick`` runs every controller once (``controller run``), on an EventBridge schedule
of one minute; the experiment analyser, which reads every assignment, on every fifth minute.
Two ticks at once are safe, as two ``controller run`` are.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.config import RepoConfig
from reconciler.controllers.alerts import TOPIC_VARIABLE, SnsPublisher
from reconciler.errors import ConfigError
from reconciler.runtime.client import utc_now
from reconciler.runtime.sources import aws_region
from reconciler.server.access_log import LOGGER as ACCESS_LOGGER
from reconciler.server.app import ApiSettings, BearerToken, GatewayIdentity, create_app
from reconciler.state.select import open_store
from reconciler.state.store import StateStore

AUTH_VARIABLE = "RECONCILER_API_AUTH"
SECRET_VARIABLE = "RECONCILER_API_TOKEN_SECRET"
TOKEN_VARIABLE = "RECONCILER_API_TOKEN"
REPOSITORY_VARIABLE = "RECONCILER_REPOSITORY_URL"
SECRET_TTL = 300.0
ANALYSE_EVERY = 5  # minutes
LOGGER = logging.getLogger("reconciler.lambda")

_lock = threading.Lock()


def shared_store() -> StateStore:
    """One store per execution environment (its client is thread-safe), not one per call."""
    with _lock:
        return _open_store()


@functools.cache
def _open_store() -> StateStore:
    backend = os.environ.get("RECONCILER_STORE")
    return open_store(Path("/tmp"), RepoConfig(), backend=backend)


class SecretToken:
    """The API token from Secrets Manager, read again every ``SECRET_TTL`` seconds (rotation)."""

    def __init__(self, secret_id: str) -> None:
        self.secret_id = secret_id
        self._value = ""
        self._read_at = -SECRET_TTL
        self._guard = threading.Lock()

    def __call__(self) -> str:
        with self._guard:
            if time.monotonic() - self._read_at >= SECRET_TTL:
                import boto3  # noqa: PLC0415 - only the Lambda reads the secret

                client = boto3.client("secretsmanager", region_name=aws_region())
                self._value = str(client.get_secret_value(SecretId=self.secret_id)["SecretString"])
                self._read_at = time.monotonic()
            return self._value


def api_settings(environ: dict[str, str] | None = None) -> ApiSettings:
    env = dict(os.environ if environ is None else environ)
    mode = env.get(AUTH_VARIABLE, "token")
    repository = env.get(REPOSITORY_VARIABLE) or None
    if mode == "iam":
        return ApiSettings(
            shared_store,
            GatewayIdentity(),
            who_required=False,
            release=_keep,
            repository=repository,
        )
    if mode != "token":
        raise ConfigError(f"{AUTH_VARIABLE}={mode!r}: give token or iam")
    if env.get(SECRET_VARIABLE):
        token: Callable[[], str] = SecretToken(env[SECRET_VARIABLE])
    else:
        given = env.get(TOKEN_VARIABLE, "")
        if len(given) < 16:
            raise ConfigError(
                f"set {SECRET_VARIABLE} (or {TOKEN_VARIABLE}, at least 16 characters)"
            )
        token = lambda: given  # noqa: E731
    return ApiSettings(shared_store, BearerToken(token), release=_keep, repository=repository)


def _keep(store: StateStore) -> None:
    """The shared store stays open for the next call."""


@functools.cache
def _adapter() -> Any:
    from mangum import Mangum  # noqa: PLC0415 - only on Lambda

    # The lines as they are on standard output (Lambda's own handler would prefix each with a
    # level, a time and the request id, and they would no longer be JSON).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ACCESS_LOGGER.addHandler(handler)
    ACCESS_LOGGER.setLevel(logging.INFO)
    ACCESS_LOGGER.propagate = False
    return Mangum(create_app(api_settings()), lifespan="off")


def api(event: dict[str, Any], context: Any) -> dict[str, Any]:
    answer: dict[str, Any] = _adapter()(event, context)
    return answer


def controller_tick(event: dict[str, Any], context: Any) -> list[dict[str, object]]:
    # Here, not at the top: the API function's cold start needs none of the controllers (nor
    # the numpy and scipy the experiment analyser imports).
    from reconciler.controllers.run import run_once  # noqa: PLC0415
    from reconciler.render.run import run_json  # noqa: PLC0415

    now = utc_now()
    topic = os.environ.get(TOPIC_VARIABLE)
    results = run_once(
        shared_store(),
        now=now,
        publisher=SnsPublisher(topic) if topic else None,
        experiments=now.minute % ANALYSE_EVERY == 0,
    )
    documents = [run_json(result) for result in results]
    for document in documents:
        print(json.dumps(document, sort_keys=True, default=str))  # one log line per controller
    return documents
