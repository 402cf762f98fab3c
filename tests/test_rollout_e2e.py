"""Rollouts that watch themselves, end to end: the example strategy applied, services deciding
and recording their AI calls through the client over simulated days (a fake clock), the rollout
controller run every few hours; on the local store and on DynamoDB through moto's HTTP server.

A healthy rollout reaches 100% on schedule; one whose error rate jumps to 7% is rolled back at
the first run after its window fills and stays back through ``reconcile --apply``; a low-traffic
one holds with "insufficient data"; a canary is promoted only after its criteria held for its
stage's minimum duration.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.controllers.rollout_run import run_rollout_controller
from reconciler.runtime.client import FlagClient
from reconciler.runtime.rollout_state import CONTROLLER_ID, HOLDING, ROLLED_BACK
from tests.deployments import Deployment
from tests.test_cli import invoke

FLAG = "vc_bedrock_live"
STRATEGY = "bedrock_gradual_rollout"
EVERY = timedelta(hours=6)  # the controller's interval in these simulations


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def context(n: int) -> dict[str, str]:
    return {"user_id": f"user-{n}", "request_type": "vc_analysis", "country": "DE", "plan": "pro"}


@dataclass
class Service:
    """A service that decides for its users and records each AI call's outcome."""

    flags: FlagClient
    clock: Clock
    rng: random.Random

    def serve(self, at: datetime, users: range, error_rate: float) -> set[str]:
        """At ``at``, each user decides; those with the feature call the model (failing at
        ``error_rate``), the others take the old path (failing at 0.5%). Who had it."""
        self.clock.now = at
        had = set()
        for n in users:
            ctx = context(n)
            on = self.flags.decide(FLAG, ctx).enabled
            failing = error_rate if on else 0.005
            if self.rng.random() < failing:
                self.flags.record_ai_failure(ctx, "ThrottlingException", 2400)
            else:
                self.flags.record_ai_success(ctx, self.rng.gauss(900, 100), 0.012)
            if on:
                had.add(ctx["user_id"])
        assert self.flags.flush()
        return had


def start_at(root: Path, start: datetime, text: str | None = None) -> None:
    """The example strategy starting at ``start`` (or the given manifest), applied."""
    path = root / "rollouts.d" / f"{STRATEGY}.yaml"
    manifest = text if text is not None else path.read_text()
    stamp = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(re.sub(r'start_time: "[^"]*"', f'start_time: "{stamp}"', manifest))
    assert invoke("--apply", str(root), "--yes")[0] == 0


def begin(deployment: Deployment, seed: int = 1, manifest: str | None = None) -> Service:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start_at(deployment.root, start, manifest)
    clock = Clock(start)
    flags = FlagClient(deployment.source, background=False, clock=clock)
    return Service(flags, clock, random.Random(seed))


def tick(deployment: Deployment, service: Service, at: datetime) -> dict[str, object]:
    """The controller's run at ``at``; the service reads the state; the strategy's entry."""
    run_rollout_controller(deployment.store, now=at)
    service.clock.now = at
    assert service.flags.refresh_overrides()
    record = deployment.store.read_control(CONTROLLER_ID) or {}
    return dict(record["strategies"][STRATEGY])


def share(service: Service, users: range = range(20_000, 24_000)) -> float:
    return sum(service.flags.decide(FLAG, context(n)).enabled for n in users) / len(users)


def test_a_healthy_rollout_reaches_100_percent_on_schedule(deployment: Deployment) -> None:
    service = begin(deployment)
    start = service.clock.now
    shares = []
    at = start
    while at <= start + timedelta(days=9, hours=1):
        service.serve(at - timedelta(minutes=10), range(3000), error_rate=0.01)
        entry = tick(deployment, service, at)
        shares.append(float(str(entry["percentage"])))
        assert entry["state"] != ROLLED_BACK, entry
        at += EVERY
    assert shares[0] == 10
    assert shares[4] == 20  # a day later: one step, its checks passing
    assert shares == sorted(shares)
    assert shares[-1] == 100
    assert entry["state"] == "complete"
    assert abs(share(service) - 1.0) < 1e-9
    checks = {c["name"]: c for c in entry["checks"]}  # type: ignore[attr-defined]
    health = checks["error_rate_check"]
    assert health["outcome"] == "pass"
    assert 2550 <= health["samples"] <= 2850  # the last hour's traffic ran at 90%: 2,700 with it
    assert service.flags.health().rejected == {}


def test_an_error_rate_of_7_percent_rolls_it_back_and_it_stays_back(
    deployment: Deployment,
) -> None:
    service = begin(deployment, seed=2)
    start = service.clock.now
    for hours in (0, 6, 12, 18, 24):
        at = start + timedelta(hours=hours)
        service.serve(at - timedelta(minutes=10), range(3000), error_rate=0.01)
        entry = tick(deployment, service, at)
    assert entry["percentage"] == 20
    checks = {c["name"]: c for c in entry["checks"]}  # type: ignore[attr-defined]
    assert checks["error_rate_check"]["baseline"] is not None  # the users without it, beside
    # The error rate jumps to 7% among the users who have it; the hour's window fills.
    bad = start + timedelta(hours=25)
    had = service.serve(bad - timedelta(minutes=30), range(3000), error_rate=0.07)
    assert had, "20% of the users had it"
    entry = tick(deployment, service, bad)  # the first run after the window filled
    assert entry["state"] == ROLLED_BACK, entry
    assert entry["percentage"] == 0
    assert re.search(r"error_rate_check: fail: error_rate [\d.]+% not < 5%", str(entry["reason"]))
    assert share(service) == 0
    # Healthy traffic, days pass, git is applied again (unchanged, then changed): still back.
    path = deployment.root / "rollouts.d" / f"{STRATEGY}.yaml"
    assert invoke("--apply", str(deployment.root), "--yes")[0] == 0
    path.write_text(path.read_text().replace("by 10 points a day", "by ten points a day"))
    code, plan, _ = invoke("--plan", str(deployment.root))
    assert code == 0, plan
    assert "rollout bedrock_gradual_rollout is rolled back at 0% by the rollout controller" in plan
    assert "until `controller resume bedrock_gradual_rollout --reason ...`" in plan
    assert invoke("--apply", str(deployment.root), "--yes")[0] == 0
    assert service.flags.refresh_configuration()
    for days in (1, 2, 3):
        at = bad + timedelta(days=days)
        service.serve(at - timedelta(minutes=10), range(3000), error_rate=0.0)
        entry = tick(deployment, service, at)
        assert (entry["state"], entry["percentage"]) == (ROLLED_BACK, 0)
    assert share(service) == 0
    trail = deployment.store.read_audit("controller/rollout_controller")
    assert any("rolled back" in str(e.get("reason")) for e in trail)


def test_too_little_traffic_holds_it_with_insufficient_data(deployment: Deployment) -> None:
    service = begin(deployment, seed=3)
    start = service.clock.now
    at = start
    while at <= start + timedelta(days=3):
        service.serve(at - timedelta(minutes=10), range(200), error_rate=0.0)  # ~20 with it
        entry = tick(deployment, service, at)
        at += EVERY
    assert entry["percentage"] == 10  # three days, not a step taken
    assert entry["state"] == HOLDING
    assert "insufficient data" in str(entry["reason"])
    assert "needs 100" in str(entry["reason"])
    assert abs(share(service) - 0.10) < 0.02


CANARY = """\
kind: RolloutStrategy
strategy_name: bedrock_gradual_rollout
description: Canary Bedrock AI analysis to 5%, then half, then everyone.
owner: team-vc-platform
feature_flag: vc_bedrock_live
rollout_type: canary
configuration:
  percentage: 5
  start_time: "2026-01-01T00:00:00Z"
  stages:
    - name: canary
      percentage: 5
      min_duration_hours: 24
    - name: half
      percentage: 50
      min_duration_hours: 24
    - name: full
      percentage: 100
  promotion_criteria:
    - metric_name: error_rate
      comparison: less_than
      threshold: 2
      window_minutes: 60
      min_sample_size: 100
"""


def test_a_canary_is_promoted_only_after_its_criteria_held_for_its_minimum_duration(
    deployment: Deployment,
) -> None:
    service = begin(deployment, seed=4, manifest=CANARY)
    start = service.clock.now
    stages = {}
    at = start
    while at <= start + timedelta(days=3, hours=13):
        # The canary's first day is unhealthy (3% errors): criteria fail, no promotion, yet.
        rate = 0.03 if at - start < timedelta(hours=30) else 0.005
        service.serve(at - timedelta(minutes=10), range(4000), error_rate=rate)
        entry = tick(deployment, service, at)
        stages[(at - start) // timedelta(hours=1)] = (entry["stage"], entry["percentage"])
        at += EVERY
    assert stages[0] == ("canary", 5)
    assert stages[18] == ("canary", 5)  # its 24 hours are not over
    assert stages[24] == ("canary", 5)  # over, but the criterion fails
    assert stages[30] == ("canary", 5)  # the errors are down: the criterion holds from here
    assert stages[48] == ("canary", 5)  # ... for 18 hours only
    assert stages[54] == ("half", 50)  # held for the stage's 24 hours: promoted
    assert stages[78] == ("half", 50)  # half judged on its own users, from its first run
    assert stages[84] == ("full", 100)
    assert abs(share(service) - 1.0) < 1e-9


def test_a_resumed_rollout_is_judged_on_what_came_after_the_resume(
    deployment: Deployment,
) -> None:
    from reconciler import rollout_operators

    service = begin(deployment, seed=5)
    start = service.clock.now
    for hours in (0, 6, 12, 18, 24):
        at = start + timedelta(hours=hours)
        service.serve(at - timedelta(minutes=10), range(3000), error_rate=0.01)
        entry = tick(deployment, service, at)
    bad = start + timedelta(hours=25)
    service.serve(bad - timedelta(minutes=30), range(3000), error_rate=0.07)
    assert tick(deployment, service, bad)["state"] == ROLLED_BACK
    # Fixed at once: resumed five minutes later; healthy traffic; the next runs within the
    # hour the bad traffic is still in the window of: judged on the traffic since the resume.
    resumed = bad + timedelta(minutes=5)
    done = rollout_operators.resume(
        deployment.store, STRATEGY, reason="fixed", by="ana", now=resumed
    )
    assert done.written
    for minutes in (10, 15, 30):
        at = resumed + timedelta(minutes=minutes)
        service.serve(at - timedelta(minutes=5), range(1000), error_rate=0.0)
        entry = tick(deployment, service, at)
        assert (entry["state"], entry["percentage"]) == ("ramping", 10), entry
    checks = {c["name"]: c for c in entry["checks"]}  # type: ignore[attr-defined]
    assert checks["error_rate_check"]["samples"] < 400  # only the 10% since the resume


def test_two_controllers_at_once_move_it_once_and_alert_once(deployment: Deployment) -> None:
    import threading

    from reconciler.state.local import LocalStore

    def stores() -> list[Any]:
        if isinstance(deployment.store, LocalStore):
            return [LocalStore(deployment.store.path) for _ in range(2)]
        return [deployment.store, deployment.store]

    def both(at: datetime) -> None:
        runs = [
            threading.Thread(target=run_rollout_controller, args=(s,), kwargs={"now": at})
            for s in stores()
        ]
        for run in runs:
            run.start()
        for run in runs:
            run.join()

    service = begin(deployment, seed=6)
    start = service.clock.now
    for hours in (0, 24):
        at = start + timedelta(hours=hours)
        service.serve(at - timedelta(minutes=10), range(3000), error_rate=0.01)
        both(at)
    bad = start + timedelta(hours=25)
    service.serve(bad - timedelta(minutes=30), range(3000), error_rate=0.07)
    both(bad)
    record = deployment.store.read_control(CONTROLLER_ID) or {}
    assert record["strategies"][STRATEGY]["state"] == ROLLED_BACK
    trail = [str(e["reason"]) for e in deployment.store.read_audit("controller/rollout_controller")]
    assert sum("10% -> 20%" in reason for reason in trail) == 1, trail
    assert sum("rolled back" in reason for reason in trail) == 1, trail
    rollbacks = [a for a in deployment.store.read_alerts() if a.get("level") == ROLLED_BACK]
    assert len(rollbacks) == 1


def test_an_alert_not_published_is_published_by_a_later_run(deployment: Deployment) -> None:
    class Down:
        def publish(self, alert: Any) -> None:
            raise ConnectionError("SNS unreachable")

    class Topic:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def publish(self, alert: Any) -> None:
            self.sent.append(alert.alert_id)

    service = begin(deployment, seed=7)
    start = service.clock.now
    for hours in (0, 24):
        at = start + timedelta(hours=hours)
        service.serve(at - timedelta(minutes=10), range(3000), error_rate=0.01)
        run_rollout_controller(deployment.store, now=at)
    bad = start + timedelta(hours=25)
    service.serve(bad - timedelta(minutes=30), range(3000), error_rate=0.07)
    failed = run_rollout_controller(deployment.store, now=bad, publisher=Down())
    assert failed.publish_errors
    assert not failed.alerts_published
    topic = Topic()
    soon = run_rollout_controller(deployment.store, now=bad + timedelta(minutes=1), publisher=topic)
    assert soon.alerts_published == []  # its recorder may still be publishing it
    later = bad + timedelta(minutes=6)
    run_rollout_controller(deployment.store, now=later, publisher=topic)
    assert [a for a in topic.sent if a.endswith("/rolled_back")] == [
        a["alert_id"] for a in deployment.store.read_alerts() if a.get("level") == ROLLED_BACK
    ]
    assert all(a.get("published") for a in deployment.store.read_alerts())
