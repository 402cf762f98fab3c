"""The OpenFeature provider, exercised through the OpenFeature client as a service would."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from reconciler.runtime.client import FlagClient
from reconciler.runtime.openfeature import ReconcilerProvider
from reconciler.runtime.sources import SQLiteSource
from reconciler.state.local import LocalStore
from tests.test_runtime_client import applied

_domains = itertools.count()
PRO_DE = EvaluationContext("user-0", {"country": "DE", "plan": "pro"})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[OpenFeatureClient]:
    path = tmp_path / "state.db"
    store = LocalStore(path)
    applied(store)
    store.close()
    domain = f"tests-{next(_domains)}"
    api.set_provider(ReconcilerProvider(FlagClient(SQLiteSource(path), background=False)), domain)
    yield api.get_client(domain)
    api.shutdown()


def test_boolean_flag_with_targeting(client: OpenFeatureClient) -> None:
    details = client.get_boolean_details("vc_bedrock_live", False, PRO_DE)
    assert details.value is True
    assert details.reason == Reason.TARGETING_MATCH
    assert details.flag_metadata["matched_rule"] == "supported_markets"
    free = client.get_boolean_details(
        "vc_bedrock_live", True, EvaluationContext("user-7", {"country": "DE", "plan": "free"})
    )
    assert free.value is False
    assert free.reason == Reason.DEFAULT
    assert free.flag_metadata["reason"] == "TARGETING_NO_MATCH"


def test_string_flag_in_an_experiment(client: OpenFeatureClient) -> None:
    details = client.get_string_details(
        "ai_model_selection", "fallback", EvaluationContext("user-1")
    )
    assert details.value == "claude-3.5-sonnet"
    assert details.variant in {"claude", "gemini"}
    assert details.reason == Reason.SPLIT
    assert details.flag_metadata["experiment"] == "claude_vs_gemini"


def test_object_flag_gives_the_variant_config(client: OpenFeatureClient) -> None:
    value = client.get_object_value("ai_model_selection", {}, EvaluationContext("user-1"))
    assert value in ({"model": "claude-3.5-sonnet"}, {"model": "gemini-pro"})


def test_errors_return_the_default_with_a_code(client: OpenFeatureClient) -> None:
    missing = client.get_boolean_details("vc_missing", True, PRO_DE)
    assert (missing.value, missing.error_code, missing.reason) == (
        True,
        ErrorCode.FLAG_NOT_FOUND,
        Reason.ERROR,
    )
    mismatch = client.get_string_details("vc_bedrock_live", "x", PRO_DE)
    assert (mismatch.value, mismatch.error_code) == ("x", ErrorCode.TYPE_MISMATCH)
    number = client.get_integer_details("ai_model_selection", 3, PRO_DE)
    assert (number.value, number.error_code) == (3, ErrorCode.TYPE_MISMATCH)
