"""Rollouts from the operator's chair, through the real commands: `controller rollout` says
where the example strategy is and what comes next; `controller pause`, `resume`, `abort` and
`promote` reach clients within their override poll (a pause holds the same users whatever the
schedule, a resume gives them back, an abort takes it from everyone, the rules' users too);
`breakglass status` lists a held rollout; `controller run` reports the rollout controller; a
missing reason or an unknown strategy writes nothing. On the local store and on DynamoDB
through moto's HTTP server."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner

from reconciler.cli.boundary import run
from reconciler.cli.breakglass import breakglass
from reconciler.cli.controller import controller
from reconciler.controllers.rollout_checks import Check, Window, judge
from reconciler.controllers.rollout_controller import Decision
from reconciler.controllers.rollout_run import RolloutRun
from reconciler.render.rollout import render_run, run_json
from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Reason
from reconciler.runtime.rollout_state import CONTROLLER_ID, HOLDING, ROLLED_BACK, Entry
from reconciler.state.records import OVERRIDES_RECORD
from tests.deployments import Deployment, cli
from tests.test_cli import invoke

FLAG = "vc_bedrock_live"
STRATEGY = "bedrock_gradual_rollout"
USERS = range(3000)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def context(n: int) -> dict[str, str]:
    return {"user_id": f"user-{n}", "country": "DE", "plan": "pro"}


def staff(n: int) -> dict[str, str]:
    return {"user_id": f"staff-{n}", "email": f"staff-{n}@example.com"}


def when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def started_30_hours_ago(deployment: Deployment) -> datetime:
    """The example strategy moved to start 30 hours ago without its checks (ungated: its
    schedule moves by time, at 20% now), applied."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=30)
    path = deployment.root / "rollouts.d" / f"{STRATEGY}.yaml"
    stamp = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = re.sub(r'start_time: "[^"]*"', f'start_time: "{stamp}"', path.read_text())
    path.write_text(text[: text.index("health_checks:")] + "created_by: system\n")
    assert invoke("--apply", str(deployment.root), "--yes")[0] == 0
    return start


def command(deployment: Deployment, *args: str) -> tuple[int, str]:
    """``controller ARGS --root ROOT`` through the error boundary: the exit code, stdout."""
    return cli(controller, *args, "--root", str(deployment.root))


def refused(deployment: Deployment, *args: str) -> tuple[int, str, str]:
    """The same, for a command that fails: the exit code, stdout and stderr."""
    with CliRunner().isolation() as (out, err, _):
        code = run(controller, [*args, "--root", str(deployment.root)])
        return code, out.getvalue().decode(), err.getvalue().decode()


def having(flags: FlagClient) -> set[str]:
    return {f"user-{n}" for n in USERS if flags.decide(FLAG, context(n)).enabled}


def overrides_trail(deployment: Deployment) -> list[dict[str, object]]:
    return list(deployment.store.read_audit(OVERRIDES_RECORD))


def test_the_report_says_where_the_example_is_and_what_comes_next(
    deployment: Deployment,
) -> None:
    code, out = command(deployment, "rollout")
    assert code == 0, out
    assert out.splitlines() == [
        f"{STRATEGY} → {FLAG} (percentage): ramping at 10% since 2025-01-09 10:00 UTC",
        "  not judged by the rollout controller yet: held at its first step until it is "
        "(is `controller run` scheduled?)",
        "  next: 20% when its checks pass (due since 2025-01-10 10:00 UTC)",
    ]  # started 2025-01-09, but gated by its checks: no evidence yet, no step
    start = started_30_hours_ago(deployment)
    code, out = command(deployment, "rollout", STRATEGY)
    assert code == 0, out
    assert out.splitlines() == [
        f"{STRATEGY} → {FLAG} (percentage): ramping at 20% since "
        f"{when(start + timedelta(hours=24))}",
        f"  next: 30% at {when(start + timedelta(hours=48))}, by its schedule",
    ]
    code, out = command(deployment, "rollout", "--format", "json")
    assert code == 0, out
    [status] = json.loads(out)["rollouts"]
    assert (status["strategy"], status["flag"], status["state"]) == (STRATEGY, FLAG, "ramping")
    assert status["percentage"] == 20
    assert status["watched"] is True  # ungated: nothing for the controller to judge
    assert status["next"]["percentage"] == 30
    assert status["next"]["when"] == "schedule"
    assert status["next"]["at"].startswith((start + timedelta(hours=48)).strftime("%Y-%m-%dT%H"))
    # What clients serve agrees: a fifth of the supported market's users.
    flags = FlagClient(deployment.source, background=False)
    assert abs(len(having(flags)) / len(USERS) - 0.20) < 0.03
    flags.close()


def test_pause_resume_and_abort_reach_clients_within_their_poll(
    deployment: Deployment,
) -> None:
    started_30_hours_ago(deployment)
    clock = Clock(datetime.now(UTC))
    flags = FlagClient(deployment.source, background=False, clock=clock)
    before = having(flags)
    assert before, "a fifth of them had it"

    code, out = command(deployment, "pause", STRATEGY, "--reason", "latency up", "--by", "ana")
    assert code == 0, out
    assert out.startswith(f"Paused {STRATEGY} ({FLAG}) at 20%: clients hold that share")
    # Two days on, the schedule would be at 40%: the pause holds the same users.
    clock.now += timedelta(days=2)
    assert flags.refresh_overrides()  # the client's override poll
    assert having(flags) == before
    code, out = command(deployment, "rollout", STRATEGY)
    assert f"{STRATEGY} → {FLAG} (percentage): paused at 20% since " in out
    assert "  held by an operator: pause by ana: latency up" in out.splitlines()
    assert (
        f"  next: none while paused: `controller resume {STRATEGY} --reason ...` goes on from 20%"
    ) in out.splitlines()
    code, out = cli(breakglass, "status", "--root", str(deployment.root))
    assert code == 0, out
    assert out.splitlines()[0] == "No shutdown in force: an operator holds a rollout (below)."
    assert (
        f"Rollout held by an operator: {STRATEGY} ({FLAG}): paused at 20% since "
    ) in out.splitlines()[1]
    code, out = cli(breakglass, "status", "--format", "json", "--root", str(deployment.root))
    [held] = json.loads(out)["rollouts"]
    assert (held["state"], held["held_by"], held["percentage"]) == ("paused", "operator", 20)

    # The rollout controller takes the pause at its run and says so.
    code, out = command(deployment, "run")
    assert code == 0, out
    assert f"rollout controller: {STRATEGY}: paused at 20% (ana: latency up)" in out.splitlines()
    assert "rollout controller: state written (version 1)" in out.splitlines()
    record = deployment.store.read_control(CONTROLLER_ID) or {}
    assert record["strategies"][STRATEGY]["state"] == "paused"
    code, out = command(deployment, "pause", STRATEGY, "--reason", "again")
    assert "is paused at 20%: nothing to pause; nothing written." in out
    assert len(overrides_trail(deployment)) == 1

    code, out = command(deployment, "resume", STRATEGY, "--reason", "fixed", "--by", "ana")
    assert code == 0, out
    assert out.startswith(f"Resumed {STRATEGY} ({FLAG}) at 20% (epoch 1)")
    clock.now = datetime.now(UTC)  # the resume's time: its schedule goes on from there
    assert flags.refresh_overrides()
    assert having(flags) == before  # the same users have it again
    code, out = command(deployment, "rollout", STRATEGY)
    assert "ramping at 20% since" in out.splitlines()[0]
    assert out.splitlines()[-1].endswith(", by its schedule")  # a full day after the resume

    # Abort: a client polling in the background turns it off for everyone, staff included.
    live = FlagClient(deployment.source, override_interval=0.1)
    assert live.wait_until_ready()
    assert live.decide(FLAG, staff(1)).enabled  # the internal_staff rule: 100% whatever the ramp
    code, out = command(deployment, "abort", STRATEGY, "--reason", "wrong answers")
    assert code == 0, out
    assert out.startswith(f"Aborted {STRATEGY} ({FLAG}): rolled back to 0% for everyone")
    deadline = time.monotonic() + 5
    while live.decide(FLAG, staff(1)).enabled and time.monotonic() < deadline:
        time.sleep(0.02)
    decisions = [live.decide(FLAG, staff(n)) for n in range(50)]
    decisions += [live.decide(FLAG, context(n)) for n in USERS]
    assert {d.enabled for d in decisions} == {False}
    assert {d.reason for d in decisions} == {Reason.ROLLOUT_OUT}
    live.close()
    code, out = command(deployment, "rollout", STRATEGY)
    assert "rolled back: nobody has it (the rules' users neither)" in out.splitlines()[0]
    # A resume starts a rolled-back rollout over, whether the controller has taken the abort
    # yet or not (clients apply the actions it has not taken, in order).
    assert f"`controller resume {STRATEGY} --reason ...` starts over at 10%" in out
    assert command(deployment, "run")[0] == 0
    code, out = command(deployment, "rollout", STRATEGY)
    assert f"`controller resume {STRATEGY} --reason ...` starts over at 10%" in out
    code, out = command(deployment, "abort", STRATEGY, "--reason", "again")
    assert "rolled back already; nothing written." in out
    code, out = command(deployment, "history")
    assert "(rollout-abort):\n  bedrock_gradual_rollout: wrong answers" in out
    flags.close()


def test_promote_takes_the_next_step_now(deployment: Deployment) -> None:
    started_30_hours_ago(deployment)
    code, out = command(deployment, "promote", STRATEGY, "--reason", "checks held", "--by", "bo")
    assert code == 0, out
    assert out.startswith(f"Promoted {STRATEGY} ({FLAG}) from 20% to 30%, whatever the checks say")
    flags = FlagClient(deployment.source, background=False)
    assert abs(len(having(flags)) / len(USERS) - 0.30) < 0.03  # before the controller runs
    code, out = command(deployment, "rollout", STRATEGY)
    assert "ramping at 30% since" in out.splitlines()[0]
    assert "served by clients already; the rollout controller records it" in out
    code, out = command(deployment, "run", "--format", "json")
    assert code == 0, out
    [run] = [json.loads(line) for line in out.splitlines() if "rollout_controller" in line]
    assert run["transitions"] == [f"{STRATEGY}: promoted to 30% (bo: checks held)"]
    assert run["strategies"][STRATEGY]["percentage"] == 30
    assert run["written"] is True
    # Actions between two controller runs all count, in order: abort, resume, promote.
    assert command(deployment, "abort", STRATEGY, "--reason", "tickets", "--by", "cy")[0] == 0
    assert command(deployment, "resume", STRATEGY, "--reason", "fixed", "--by", "cy")[0] == 0
    code, out = command(deployment, "promote", STRATEGY, "--reason", "hurry", "--by", "cy")
    assert out.startswith(f"Promoted {STRATEGY} ({FLAG}) from 10% to 20%"), out
    assert flags.refresh_overrides()
    assert abs(len(having(flags)) / len(USERS) - 0.20) < 0.03
    code, out = command(deployment, "run", "--format", "json")
    [run] = [json.loads(line) for line in out.splitlines() if "rollout_controller" in line]
    assert run["transitions"] == [
        f"{STRATEGY}: aborted (cy: tickets); {STRATEGY}: resumed at 10% by cy: fixed; "
        f"{STRATEGY}: promoted to 20% (cy: hurry)"
    ]
    assert run["strategies"][STRATEGY]["percentage"] == 20
    flags.close()


def test_a_reason_is_required_and_an_unknown_strategy_is_refused(
    deployment: Deployment,
) -> None:
    before = deployment.store.read_overrides()
    for action in ("pause", "resume", "abort", "promote"):
        code, out, err = refused(deployment, action, STRATEGY)
        assert (code, out) == (1, "")
        assert "Missing option '--reason'" in err
        code, out, err = refused(deployment, action, STRATEGY, "--reason", "  ")
        assert (code, out) == (1, "")
        assert "error: a reason is required: say why" in err
        code, out, err = refused(deployment, action, "bedrock_gradual_rolout", "--reason", "x")
        assert (code, out) == (1, "")
        assert (
            "error: no active rollout strategy 'bedrock_gradual_rolout' in the store "
            "(known: bedrock_gradual_rollout); did you mean 'bedrock_gradual_rollout'?"
        ) in err
    assert deployment.store.read_overrides() == before
    assert overrides_trail(deployment) == []
    code, out, err = refused(deployment, "rollout", "nope")
    assert (code, out) == (1, "")
    assert "no active rollout strategy 'nope' in the store (known: bedrock_gradual_rollout)" in err


def test_the_run_summary_names_holds_rollbacks_and_the_failed_check() -> None:
    """``controller run``'s lines for decisions the example cannot reach without traffic."""
    since = datetime(2026, 12, 1, 10, tzinfo=UTC)
    health = Check("error_rate_check", "error_rate", 5, "less_than", 60)
    quiet = judge(health, Window(40, 0))
    failed = judge(health, Window(5000, 350))
    held = Entry(HOLDING, 10, since, reason="insufficient data: " + quiet.describe())
    back = Entry(ROLLED_BACK, 0, since, reason="health check " + failed.describe())
    run = RolloutRun(
        decisions={
            "quiet_rollout": Decision(held, results=(quiet,)),
            STRATEGY: Decision(
                back, f"{STRATEGY}: ramping -> rolled back (health check {failed.describe()})"
            ),
        },
        written=True,
        version=7,
        alerts_published=[f"rollout/{STRATEGY}/x/rolled_back"],
    )
    assert render_run(run) == [
        f"rollout controller: {STRATEGY}: ramping -> rolled back (health check "
        "error_rate_check: fail: error_rate 7% not < 5% over 60 min, 5000 requests)",
        "rollout controller: quiet_rollout: holding at 10%: insufficient data: "
        "error_rate_check: insufficient: error_rate 0% < 5% over 60 min, 40 requests "
        "(needs 100)",
        f"rollout controller: alert rollout/{STRATEGY}/x/rolled_back published",
        "rollout controller: state written (version 7)",
    ]
    assert run_json(run)["transitions"] == [run.decisions[STRATEGY].transition]


def test_an_operator_whose_clock_is_behind_is_not_ignored(deployment: Deployment) -> None:
    from reconciler import rollout_operators
    from reconciler.controllers.rollout_run import run_rollout_controller

    now = datetime.now(UTC)
    fast, slow = now + timedelta(minutes=2), now - timedelta(minutes=1)
    store = deployment.store
    assert rollout_operators.abort(store, STRATEGY, reason="tickets", by="ana", now=fast).written
    run_rollout_controller(store, now=fast + timedelta(seconds=1))  # takes the abort
    resumed = rollout_operators.resume(store, STRATEGY, reason="fixed", by="bo", now=slow)
    assert resumed.written  # written after the abort, whatever bo's clock says
    run_rollout_controller(store, now=fast + timedelta(minutes=5))
    entry = (store.read_control(CONTROLLER_ID) or {})["strategies"][STRATEGY]
    assert (entry["state"], entry["percentage"]) == ("ramping", 10)
