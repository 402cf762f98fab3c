"""``get_user_variant`` takes the experiment's id or the name of the flag it runs on; any other
name returns None, counted in health() and logged once, never raised."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from reconciler.runtime.client import FlagClient
from reconciler.runtime.sources import SQLiteSource
from reconciler.state.local import LocalStore
from tests.test_runtime_client import applied

EXPERIMENT, FLAG = "claude_vs_gemini", "ai_model_selection"


@pytest.fixture
def client(tmp_path: Path) -> FlagClient:
    store = LocalStore(tmp_path / "state.db")
    applied(store)
    store.close()
    return FlagClient(SQLiteSource(tmp_path / "state.db"), background=False)


def test_the_experiment_id_and_its_flags_name_give_the_same_variant(client: FlagClient) -> None:
    seen = set()
    for n in range(200):
        user = {"user_id": f"user-{n}"}
        variant = client.get_user_variant(EXPERIMENT, user)
        assert variant in {"claude", "gemini"}
        assert client.get_user_variant(FLAG, user) == variant
        assert client.decide(FLAG, user).variant == variant
        seen.add(variant)
    assert seen == {"claude", "gemini"}
    assert not client.health().rejected


@pytest.mark.parametrize(
    ("name", "counted", "says"),
    [
        ("claude_vs_gemeni", "unknown_experiment:claude_vs_gemeni", "no such experiment or flag"),
        ("vc_bedrock_live", "unknown_experiment:vc_bedrock_live", "that flag runs no experiment"),
    ],
)
def test_a_name_that_is_neither_is_counted_and_logged_once(
    client: FlagClient, caplog: pytest.LogCaptureFixture, name: str, counted: str, says: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="reconciler.runtime"):
        for _ in range(3):
            assert client.get_user_variant(name, {"user_id": "u"}) is None
    assert client.health().rejected[counted] == 3
    warnings = [r.getMessage() for r in caplog.records if "get_user_variant" in r.getMessage()]
    assert len(warnings) == 1
    assert says in warnings[0]
    assert f"{EXPERIMENT} (flag {FLAG})" in warnings[0], "the names it knows"


@pytest.mark.parametrize("name", [None, 42, ["claude_vs_gemini"], {"id": 1}, b"claude_vs_gemini"])
def test_a_name_of_the_wrong_kind_returns_none_without_raising(
    client: FlagClient, name: Any
) -> None:
    assert client.get_user_variant(name, {"user_id": "u"}) is None
    assert sum(client.health().rejected.values()) == 1


def test_a_context_of_the_wrong_kind_returns_none_without_raising(client: FlagClient) -> None:
    for context in (None, "user-1", 7, {"user_id": None}):
        assert client.get_user_variant(EXPERIMENT, context) is None  # type: ignore[arg-type]


def test_with_no_snapshot_there_is_no_variant_and_nothing_to_count(tmp_path: Path) -> None:
    client = FlagClient(SQLiteSource(tmp_path / "missing.db"), background=False)
    assert client.get_user_variant(EXPERIMENT, {"user_id": "u"}) is None
    assert client.get_user_variant(FLAG, {"user_id": "u"}) is None
    assert not client.health().rejected
