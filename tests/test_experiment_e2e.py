"""Experiments end to end, as the README walks them: apply, decide and record through the
client over simulated days, `controller run` concluding on its own once the minimum duration has
passed, everyone served the winner, the plan proposing the manifest edit, operators stopping
and resuming; on the local store and on DynamoDB through moto's HTTP server."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.cli.controller import controller
from reconciler.controllers.analyser_run import run_experiment_analyser
from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Reason
from reconciler.runtime.experiment_state import ANALYSER_ID
from reconciler.state.records import format_time
from tests.deployments import Deployment, cli
from tests.test_cli import invoke

FLAG = "ai_model_selection"
EXPERIMENT = "claude_vs_gemini"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def context(n: int) -> dict[str, str]:
    return {"user_id": f"user-{n}", "request_type": "vc_analysis", "country": "DE", "plan": "pro"}


def simulate_day(flags: FlagClient, rng: random.Random, users: range) -> dict[str, str]:
    """Every user decides and records two responses (gemini answers 0.05 better)."""
    variants = {}
    for n in users:
        ctx = context(n)
        for _ in range(2):
            decision = flags.decide(FLAG, ctx)
            assert decision.reason is Reason.EXPERIMENT_ASSIGNED
            variants[ctx["user_id"]] = str(decision.variant)
            quality = rng.gauss(0.70 + (0.05 if decision.variant == "gemini" else 0), 0.1)
            flags.record_response_quality(EXPERIMENT, ctx, quality, rng.gauss(900, 90), 0.012)
    assert flags.flush()
    return variants


def test_an_experiment_concludes_itself_and_everyone_gets_the_winner(
    deployment: Deployment,
) -> None:
    clock = Clock()
    start = clock.now
    rng = random.Random(5)
    flags = FlagClient(deployment.source, background=False, clock=clock)
    seen: dict[str, str] = {}
    # The analyser's first look, right after the apply: the experiment's days count from here.
    first = run_experiment_analyser(deployment.store, now=start)
    assert first.outcome.experiments[EXPERIMENT]["started"] == format_time(start)
    for day in range(8):
        clock.now = start + timedelta(days=day, hours=1)
        seen |= simulate_day(flags, rng, range(day * 300, day * 300 + 450))  # new and returning
        if day == 3:
            early = run_experiment_analyser(deployment.store, now=clock.now)
            entry = early.outcome.experiments[EXPERIMENT]
            assert entry["state"] == "running"
            assert any("minimum duration" in w for w in entry["waiting"])
    assert flags.health().rejected == {}
    clock.now = start + timedelta(days=7, hours=1)
    run = run_experiment_analyser(deployment.store, now=clock.now)
    verdict = run.outcome.experiments[EXPERIMENT]
    assert verdict["state"] == "concluded", verdict
    assert verdict["winner"] == "gemini"
    assert run.written
    # The runtime serves the winner to everyone, and counts no more exposures.
    flags.refresh_overrides()
    recorded = flags.health().recorded
    decisions = [flags.decide(FLAG, context(n)) for n in range(2000)]
    assert {d.variant for d in decisions} == {"gemini"}
    assert {d.reason for d in decisions} == {Reason.EXPERIMENT_CONCLUDED}
    assert "experiment analyser" in decisions[0].detail
    assert flags.health().recorded == recorded
    # Above git: an apply of the unchanged manifests does not undo it, and the plan says so.
    assert invoke("--apply", str(deployment.root), "--yes")[0] == 0
    assert deployment.store.read_control(ANALYSER_ID) is not None
    code, plan, _ = invoke("--plan", str(deployment.root))
    assert code == 0
    assert "experiment claude_vs_gemini is concluded by experiment analyser, winner gemini" in plan
    assert "set status: concluded and winner: gemini" in plan
    code, report = cli(controller, "experiment", EXPERIMENT, "--root", str(deployment.root))
    assert code == 0, report
    assert "Analyser verdict: CONCLUDED" in report
    code, history = cli(controller, "history", "--root", str(deployment.root))
    assert "claude_vs_gemini: running -> concluded" in history
    # An operator stops it: the control for everyone; a resume brings the same users back to
    # the same variants, and the analysis starts over under a new recording key.
    code, out = cli(
        controller, "experiment-stop", EXPERIMENT, "--reason", "support tickets",
        "--root", str(deployment.root),
    )  # fmt: skip
    assert code == 0, out
    flags.refresh_overrides()
    stopped = flags.decide(FLAG, context(1))
    assert (stopped.variant, stopped.reason) == ("claude", Reason.EXPERIMENT_EXCLUDED)
    code, report = cli(controller, "experiment", EXPERIMENT, "--root", str(deployment.root))
    assert "Operator stop: STOPPED by" in report
    assert "serving claude to everyone until `controller experiment-resume" in report
    code, history = cli(controller, "history", "--root", str(deployment.root))
    assert "(experiment-stop):\n  claude_vs_gemini: support tickets" in history
    code, plan, _ = invoke("--plan", str(deployment.root))
    assert "then lift the stop with `controller experiment-resume claude_vs_gemini`" in plan
    code, out = cli(
        controller, "experiment-resume", EXPERIMENT, "--reason", "fixed",
        "--root", str(deployment.root),
    )  # fmt: skip
    assert code == 0, out
    assert "epoch 1" in out
    flags.refresh_overrides()
    again = {f"user-{n}": flags.decide(FLAG, context(n)).variant for n in range(300)}
    assert again == {u: seen[u] for u in again}
    assert flags.flush()
    assert sum(deployment.store.read_assignment_counts(f"{EXPERIMENT}~1").values()) == 300
    rerun = run_experiment_analyser(deployment.store, now=clock.now)
    assert rerun.outcome.experiments[EXPERIMENT]["state"] == "running"
    flags.close()


def test_the_report_and_the_plot(deployment: Deployment, tmp_path: Path) -> None:
    flags = FlagClient(deployment.source, background=False)
    simulate_day(flags, random.Random(2), range(400))
    flags.close()
    plot = tmp_path / "intervals.svg"
    code, out = cli(
        controller, "experiment", EXPERIMENT, "--plot", str(plot), "--root", str(deployment.root)
    )
    assert code == 0, out
    assert "response_quality  primary    gemini" in out
    assert "waiting for minimum duration" in out
    assert plot.read_text().startswith("<?xml") or "<svg" in plot.read_text()
    code, out = cli(
        controller, "experiment", EXPERIMENT, "--format", "json", "--root", str(deployment.root)
    )
    report = json.loads(out)
    assert report["unit_of_analysis"] == "user"
    assert sum(report["users"].values()) == 400
    assert sum(report["exposures"].values()) == 800
    quality = next(m for m in report["metrics"] if m["metric"] == "response_quality")
    assert quality["observations"] + quality["control_observations"] == 800
    code, out = cli(controller, "experiment", "nope", "--root", str(deployment.root))
    assert code == 1


def test_an_experiment_before_its_start_assigns_nobody(deployment: Deployment) -> None:
    manifest = deployment.root / "experiments.d" / f"{EXPERIMENT}.yaml"
    manifest.write_text(manifest.read_text() + 'start_time: "2099-01-01T00:00:00Z"\n')
    assert invoke("--apply", str(deployment.root), "--yes")[0] == 0
    flags = FlagClient(deployment.source, background=False)
    decision = flags.decide(FLAG, context(1))
    assert (decision.variant, decision.reason) == ("claude", Reason.EXPERIMENT_EXCLUDED)
    assert decision.detail == "not started yet"
    flags.record_response_quality(EXPERIMENT, context(1), 0.9, 100.0, 0.01)
    assert flags.health().recorded == 0
    assert flags.health().warnings["not_in_experiment"] == 1
    flags.close()
    run = run_experiment_analyser(deployment.store, now=datetime.now(UTC))
    assert run.not_started == [EXPERIMENT]
