"""A strategy without ``start_time`` starts when it is first applied to its flag, not when the
flag was: a ramp added to a flag that has been on for a year starts at its first step. The
start is kept from then on: the next plan has nothing to change."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.runtime.client import FlagClient
from reconciler.runtime.sources import SQLiteSource
from reconciler.state.local import LocalStore
from reconciler.state.records import RecordKind
from tests.test_cli import invoke

STRATEGY = "rollouts.d/bedrock_gradual_rollout.yaml"


def test_a_ramp_added_later_starts_at_its_first_step(
    example_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = example_tree / "state.db"
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
    flag = example_tree / "flags.d" / "vc_bedrock_live.yaml"
    manifest = (example_tree / STRATEGY).read_text()
    (example_tree / STRATEGY).unlink()
    flag.write_text(flag.read_text().replace("rollout_strategy: bedrock_gradual_rollout\n", ""))
    assert invoke("--apply", str(example_tree), "--yes")[0] == 0  # the flag, on for everyone
    store = LocalStore(path)
    created = store.read_records(RecordKind.FLAG)["vc_bedrock_live"].item["created_at"]
    # Months later (the flag's created_at moved back to say so), the ramp is added.
    with store._connect(create=False) as connection:  # type: ignore[union-attr]
        connection.execute(
            "UPDATE records SET item = replace(item, ?, '2026-01-01T00:00:00.000000Z') "
            "WHERE kind = 'flag'",
            (created,),
        )
    (example_tree / STRATEGY).write_text(re.sub(r"  start_time: .*\n", "", manifest))
    flag.write_text(flag.read_text() + "rollout_strategy: bedrock_gradual_rollout\n")
    before = datetime.now(UTC)
    assert invoke("--apply", str(example_tree), "--yes")[0] == 0
    item = store.read_records(RecordKind.FLAG)["vc_bedrock_live"].item
    start = datetime.fromisoformat(item["rollout"]["configuration"]["start_time"])
    assert start >= before.replace(microsecond=0)
    with FlagClient(SQLiteSource(path), background=False) as flags:
        users = [{"user_id": f"u{n}", "country": "DE", "plan": "pro"} for n in range(3000)]
        share = sum(flags.decide("vc_bedrock_live", u).enabled for u in users) / len(users)
    assert abs(share - 0.10) < 0.02  # its first step, not its end
    code, out, _ = invoke("--plan", str(example_tree))
    assert code == 0
    assert "No changes. The store matches git." in out
    store.close()
