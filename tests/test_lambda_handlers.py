"""The Lambda entry points as the deployed functions call them: settings from the environment,
the token from Secrets Manager (moto), one controller tick on the store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from reconciler.errors import ConfigError
from reconciler.server import lambda_handlers
from reconciler.server.app import BearerToken, GatewayIdentity, create_app
from reconciler.state.local import LocalStore
from tests.api_transports import TOKEN, Lambda
from tests.test_apply import apply, desired, plan


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStore]:
    """The functions' store, from the environment (a local one here; DynamoDB when deployed)."""
    store = LocalStore(tmp_path / "state.db")
    apply(store, plan(store, desired()))
    monkeypatch.setenv("RECONCILER_STORE", "local")
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(store.path))
    lambda_handlers._open_store.cache_clear()
    lambda_handlers._adapter.cache_clear()
    yield store
    lambda_handlers._open_store.cache_clear()
    lambda_handlers._adapter.cache_clear()
    store.close()


def test_the_settings_follow_the_environment() -> None:
    assert isinstance(
        lambda_handlers.api_settings({"RECONCILER_API_AUTH": "iam"}).auth, GatewayIdentity
    )
    token = lambda_handlers.api_settings({"RECONCILER_API_TOKEN": TOKEN}).auth
    assert isinstance(token, BearerToken)
    assert token.token() == TOKEN
    with pytest.raises(ConfigError, match="RECONCILER_API_AUTH='ldap': give token or iam"):
        lambda_handlers.api_settings({"RECONCILER_API_AUTH": "ldap"})
    with pytest.raises(ConfigError, match="set RECONCILER_API_TOKEN_SECRET"):
        lambda_handlers.api_settings({"RECONCILER_API_TOKEN": "short"})
    url = "https://github.com/acme/flags"
    for mode in ({"RECONCILER_API_AUTH": "iam"}, {"RECONCILER_API_TOKEN": TOKEN}):
        settings = lambda_handlers.api_settings({**mode, "RECONCILER_REPOSITORY_URL": url})
        assert settings.repository == url


def test_the_token_is_read_from_secrets_manager_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-central-1")
        arn = client.create_secret(Name="api-token", SecretString=TOKEN)["ARN"]
        monkeypatch.setenv("AWS_REGION", "eu-central-1")
        secret = lambda_handlers.SecretToken(arn)
        assert secret() == TOKEN
        client.put_secret_value(SecretId=arn, SecretString="rotated-token-0123456789")
        assert secret() == TOKEN, "cached for SECRET_TTL"
        secret._read_at -= lambda_handlers.SECRET_TTL
        assert secret() == "rotated-token-0123456789", "read again after it"


def test_the_api_handler_serves_gateway_events(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_API_TOKEN", TOKEN)

    class Handler(Lambda):
        def __init__(self) -> None:
            super().__init__(create_app(lambda_handlers.api_settings()))
            self.handler = lambda_handlers.api  # the deployed entry point, not a new adapter

    client = Handler()
    assert client.request("GET", "/health", token=None) == (200, {"status": "ok"})
    body = {"reason": "runaway cost", "shutdown_by": "oncall"}
    status, answer = client.request("POST", "/emergency-shutdown", body)
    assert (status, answer["shut_down"][0]["by"]) == (200, "oncall")
    assert client.request("POST", "/emergency-shutdown", body, token=None)[0] == 401
    assert lambda_handlers.shared_store() is lambda_handlers.shared_store(), "one store kept"


def test_one_controller_tick_runs_every_controller(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("COST_ALERTS_TOPIC_ARN", raising=False)
    tick = datetime(2026, 12, 1, 12, 5, tzinfo=UTC)  # a fifth minute: the analyser runs too
    monkeypatch.setattr(lambda_handlers, "utc_now", lambda: tick)
    documents: list[dict[str, Any]] = lambda_handlers.controller_tick({}, None)  # type: ignore[assignment]
    controllers = [d["controller"] for d in documents]
    assert controllers == ["cost_guard", "rollout_controller", "experiment_analyser"]
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["controller"] for d in logged] == controllers
    rollout = next(d for d in documents if d["controller"] == "rollout_controller")
    assert rollout["written"] is True, "the rollout controller judged and wrote its state"

    monkeypatch.setattr(lambda_handlers, "utc_now", lambda: tick.replace(minute=6))
    later = lambda_handlers.controller_tick({}, None)
    assert "experiment_analyser" not in [d["controller"] for d in later]
