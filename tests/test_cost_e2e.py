"""Cost control end to end, as the README walks it: apply, record spend through the client,
`controller run`, decisions and `controller cost` at $80, $100 and $500, and the next day's
period clearing it; on the local store and on DynamoDB through moto's HTTP server."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.breakglass import breakglass
from reconciler.cli.controller import controller
from reconciler.controllers.report import collect
from reconciler.controllers.run import run_cost_guard
from reconciler.runtime.admission import AdmissionReason
from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Reason
from reconciler.state.records import OVERRIDES_RECORD
from tests.deployments import Deployment, cli
from tests.test_cli import invoke

USERS = [{"user_id": f"user-{i}", "country": "DE", "plan": "pro"} for i in range(2000)]


def spend(flags: FlagClient, usd: int) -> None:
    """Record ``usd`` dollars of vc_analysis calls at $0.08 each, then flush."""
    for n in range(usd * 100 // 8):
        flags.record_request_cost("vc_analysis", 1500, 0.08, {"user_id": f"caller-{n % 50}"})
    assert flags.flush()


def guard(root: Path) -> str:
    code, out = cli(controller, "run", "--root", str(root))
    assert code == 0, out
    return out


def report(root: Path) -> dict[str, Any]:
    code, out = cli(controller, "cost", "--root", str(root), "--format", "json")
    assert code == 0, out
    return dict(json.loads(out))


def fully_rolled_out(root: Path) -> None:
    """The example rollout without its checks: by time, long complete (100% of the targeted
    users), so that every share below is the cost guard's."""
    path = root / "rollouts.d" / "bedrock_gradual_rollout.yaml"
    text = path.read_text()
    path.write_text(text[: text.index("health_checks:")] + "created_by: system\n")
    assert invoke("--apply", str(root), "--yes")[0] == 0


def reasons(flags: FlagClient, flag: str) -> Counter[Reason]:
    return Counter(flags.decide(flag, user).reason for user in USERS)


def test_spend_alerts_then_throttles_then_shuts_down_then_lifts_next_day(
    deployment: Deployment,
) -> None:
    root, store = deployment.root, deployment.store
    fully_rolled_out(root)
    flags = FlagClient(deployment.source, background=False)
    before = reasons(flags, "vc_bedrock_live")
    assert before == {Reason.TARGETING_MATCH: 2000}

    spend(flags, 84)  # past $80: one alert, nothing throttled yet
    out = guard(root)
    assert "ai_daily_budget/" in out
    assert "throttle-warning" in out
    assert len(store.read_alerts()) == 1
    flags.refresh_overrides()
    assert reasons(flags, "vc_bedrock_live") == before
    shown = report(root)
    assert shown["total"] == {"usd": "84", "micros": 84_000_000}
    daily = next(b for b in shown["budgets"] if b["name"] == "ai_daily_budget")
    assert (daily["level"], daily["remaining"]["usd"]) == ("warning", "416")
    guard(root)  # again: the same alert is not sent twice
    assert len(store.read_alerts()) == 1

    spend(flags, 20)  # $104: past the $100 throttle
    guard(root)
    flags.refresh_overrides()
    throttled = reasons(flags, "vc_bedrock_live")
    assert set(throttled) == {Reason.COST_THROTTLED, Reason.TARGETING_MATCH}
    assert throttled[Reason.COST_THROTTLED] / len(USERS) == pytest.approx(0.5, abs=0.04)
    for user in USERS:  # the users who keep the feature are the users admission admits
        kept = flags.is_enabled("vc_bedrock_live", user)
        assert kept == flags.should_allow_request("vc_analysis", 0.01, user).allowed
    assert {a["level"] for a in store.read_alerts()} == {"throttle-warning", "throttle"}
    assert report(root)["held_flags"][0]["state"] == "throttled"

    spend(flags, 400)  # $504: past the $500 emergency limit
    guard(root)
    flags.refresh_overrides()
    assert reasons(flags, "vc_bedrock_live") == {Reason.COST_EMERGENCY: 2000}
    assert reasons(flags, "ai_model_selection") == {Reason.COST_EMERGENCY: 2000}
    check = flags.should_allow_request("vc_analysis", 0.05, USERS[0])
    assert (check.allowed, check.reason) == (False, AdmissionReason.COST_EMERGENCY)
    assert len(store.read_alerts()) == 4
    levels = {b["name"]: b["level"] for b in report(root)["budgets"]}
    assert levels == {"ai_daily_budget": "emergency", "flag:vc_bedrock_live": "throttled"}
    assert store.read_cost_metrics(datetime.now(UTC).date().isoformat())[0]["cost_micros"] == (
        504_000_000
    )

    # Git and break-glass are other owners: neither lifts a cost shutdown.
    manifest = root / "flags.d" / "vc_bedrock_live.yaml"
    manifest.write_text(
        manifest.read_text().replace("rollout_percentage: 100", "rollout_percentage: 90")
    )
    code, applied, _ = invoke("--apply", str(root), "--yes")
    assert code == 0
    assert "1 written" in applied
    code, said = cli(breakglass, "restore", "--all", "--reason", "drill", "--root", str(root))
    assert code == 0
    assert "Nothing to restore: no such shutdown was in force (nothing written)." in said
    assert "Still held by the cost guard (not break-glass's to lift): vc_bedrock_live off" in said
    assert store.read_audit(OVERRIDES_RECORD) == []  # a restore of nothing is no change
    _, status = cli(breakglass, "status", "--root", str(root))
    assert status.startswith("No shutdown in force: no operator holds anything.")
    assert "Held by the cost guard: ai_model_selection off (ai_daily_budget) until" in status
    flags.refresh_configuration()
    flags.refresh_overrides()
    assert reasons(flags, "vc_bedrock_live") == {Reason.COST_EMERGENCY: 2000}
    _, plan, _ = invoke("--plan", str(root))
    assert "held by cost guard: shut down until" in plan

    # The next day of the budget's time zone (UTC) starts from nothing.
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=5) + timedelta(days=1)
    later = FlagClient(deployment.source, background=False, clock=lambda: tomorrow)
    assert reasons(later, "vc_bedrock_live") == {Reason.TARGETING_MATCH: 2000}  # by itself
    result = run_cost_guard(store, now=tomorrow)
    assert {t.after for t in result.outcome.transitions} == {"ok", "normal"}
    assert collect(store, now=tomorrow).total_micros == 0
    flags.close()
    later.close()
