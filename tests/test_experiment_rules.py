"""The rules that keep an experiment's decision safe where the data or the records are odd:
git's winner over a stale verdict, guardrails at a zero or constant control, a guardrail with no
data, an end before the minimum duration, a malformed overrides record, racing analysers'
alerts."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.controllers.analyser_run import run_experiment_analyser
from reconciler.controllers.experiment_analysis import CONCLUDE, CONTINUE, STOP, analyse
from reconciler.controllers.experiment_data import ExperimentData, MetricData
from reconciler.runtime.decision import Reason
from reconciler.runtime.evaluate import evaluate
from reconciler.runtime.experiment_state import CLUSTERS, ExperimentStates
from reconciler.runtime.snapshot import build_snapshot, with_experiment_states
from reconciler.runtime.sources import overrides_from_item, with_controllers
from reconciler.runtime.telemetry import Totals
from reconciler.state.local import LocalStore
from tests.test_experiment_analysis import START, Simulation, manifest

NOW = START + timedelta(days=10)


def flag_item(status: str, winner: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "test_name": "exp",
        "status": status,
        "control": "a",
        "variants": [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}],
    }
    if winner:
        config["winner"] = winner
    return {"flag_name": "f", "enabled": True, "ab_test_config": config}


def test_git_s_winner_is_served_once_merged_though_the_verdict_is_still_stored() -> None:
    verdict = {"exp": {"state": "concluded", "winner": "b", "epoch": 0, "reason": "won"}}
    stopped = {"exp": {"state": "stopped", "epoch": 0, "reason": "latency"}}
    for stored in (verdict, stopped):
        snapshot = with_experiment_states(
            build_snapshot("v", [flag_item("concluded", winner="b")]), ExperimentStates(stored)
        )
        decision = evaluate(snapshot, "f", {"user_id": "u1"}, NOW)
        assert (decision.reason, decision.variant) == (Reason.EXPERIMENT_CONCLUDED, "b")
    # While git says active, the verdict decides; an operator's stop outranks both.
    active = with_experiment_states(
        build_snapshot("v", [flag_item("active")]), ExperimentStates(verdict)
    )
    assert evaluate(active, "f", {"user_id": "u1"}, NOW).variant == "b"
    operators = overrides_from_item(
        {"experiments": {"exp": {"action": "stop", "by": "oncall", "reason": "tickets"}}}
    ).experiments.operators
    held = with_experiment_states(
        build_snapshot("v", [flag_item("concluded", winner="b")]),
        ExperimentStates(verdict, operators),
    )
    decision = evaluate(held, "f", {"user_id": "u1"}, NOW)
    assert (decision.reason, decision.variant) == (Reason.EXPERIMENT_EXCLUDED, "a")


def test_a_malformed_overrides_record_still_carries_its_shutdowns() -> None:
    item = {
        "global": {"by": "oncall", "reason": "drill"},
        "experiments": {"exp": {"action": "resume", "epoch": "1.0x"}, "bad": "not a map"},
        "rollouts": {"r": {"action": "pause", "at": "never"}, "s": {"action": "abort"}, "t": 3},
    }
    records = {
        "experiment_analyser": {"experiments": {"exp": {"epoch": None}}},
        "rollout_controller": {"strategies": {"r": {"state": "gone", "since": 1}, "s": []}},
    }
    overrides = with_controllers(overrides_from_item(item), records)
    assert overrides.rollouts.operators == {}
    assert overrides.rollouts.entries == {}
    assert overrides.global_shutdown is not None
    assert overrides.experiments.epoch("exp") == 0
    assert overrides.experiments.hold("exp") is None


GUARDED = {
    "guardrail_metrics": [
        {
            "metric_name": "errors",
            "metric_type": "binary",
            "direction": "decrease",
            "max_degradation": 20,
        }
    ]
}


def data_with(
    simulation: Simulation, metric: str, per_arm: dict[str, tuple[int, float]]
) -> ExperimentData:
    """The simulation's data plus ``metric``: per arm (values per cluster, their mean)."""
    data = simulation.data()
    for arm, (count, mean) in per_arm.items():
        clusters = {n: Totals(count, count * mean) for n in range(CLUSTERS)}
        total = Totals(count * CLUSTERS, count * CLUSTERS * mean)
        data.metrics[(arm, metric)] = MetricData(total, clusters)
    return data


def trained(effect: float = 0.05) -> Simulation:
    simulation = Simulation(21, effect=effect)
    for _ in range(10):
        simulation.day()
    return simulation


def test_a_guardrail_whose_control_has_none_is_breached_by_any_confident_increase() -> None:
    data = data_with(trained(), "errors", {"claude": (30, 0.0), "gemini": (30, 0.15)})
    analysis = analyse(manifest(**GUARDED), data, since=START, now=NOW)
    [errors] = analysis.of("errors")
    assert errors.verdict == "breached"
    assert analysis.decision == STOP


def test_a_constant_guardrail_is_judged_exactly() -> None:
    worse = data_with(trained(), "errors", {"claude": (30, 0.1), "gemini": (30, 0.4)})
    assert analyse(manifest(**GUARDED), worse, since=START, now=NOW).decision == STOP
    same = data_with(trained(), "errors", {"claude": (30, 0.1), "gemini": (30, 0.1)})
    analysis = analyse(manifest(**GUARDED), same, since=START, now=NOW)
    assert analysis.of("errors")[0].verdict == "within limit"
    assert analysis.decision == CONCLUDE


def test_no_conclusion_before_every_guardrail_is_shown_within_its_tolerance() -> None:
    missing = analyse(manifest(**GUARDED), trained().data(), since=START, now=NOW)
    assert missing.of("errors")[0].verdict == "no data"
    assert missing.decision == CONTINUE
    assert any("guardrail errors" in w and "no data" in w for w in missing.waiting_for)
    latency = {
        "guardrail_metrics": [
            {
                "metric_name": "response_time_ms",
                "metric_type": "numeric",
                "direction": "decrease",
                "max_degradation": 20,
            }
        ]
    }
    simulation = Simulation(22, effect=0.05, latency_effect=0.17)  # close to the tolerance
    for _ in range(4):
        simulation.day()
    analysis = analyse(manifest(**latency), simulation.data(), since=START, now=NOW)
    [result] = analysis.of("response_time_ms")
    assert result.verdict in ("worse", "inconclusive")
    assert result.anytime_relative[1] > 0.20  # could be worse than tolerated: not shipped
    assert analysis.decision == CONTINUE


def test_an_experiment_that_ended_before_its_minimum_duration_never_concludes() -> None:
    simulation = trained()
    ended = manifest(end_time=(START + timedelta(days=2)).isoformat())
    analysis = analyse(ended, simulation.data(), since=START, now=NOW)
    assert analysis.days_running == 2
    assert analysis.decision == CONTINUE
    assert any("it ended before" in w for w in analysis.waiting_for)


def store_experiment(store: LocalStore, item: dict[str, Any]) -> None:
    from reconciler.state.records import AuditEntry, RecordKind, Write

    audit = AuditEntry("experiment/claude_vs_gemini", "create", "t", "2026-11-01T00:00:00Z")
    record = {**item, "version": 1, "managed_by": "reconciler"}
    write = Write(RecordKind.EXPERIMENT, "claude_vs_gemini", "create", None, record, (), audit)
    store.apply_writes([write], "t1")


def test_days_count_from_when_the_analyser_first_saw_it_active(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "state.db")
    applied = datetime(2026, 11, 1, tzinfo=UTC)
    item = {**manifest(minimum_duration_days=7), "created_at": "2026-11-01T00:00:00Z"}
    store_experiment(store, item)
    first = run_experiment_analyser(store, now=applied + timedelta(days=11))
    entry = first.outcome.experiments["claude_vs_gemini"]
    assert entry["started"] == "2026-11-12T00:00:00.000000Z"  # not the apply, 11 days before
    assert entry["waiting"][0] == "minimum duration"
    store.close()


def test_racing_analysers_publish_a_verdict_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = LocalStore(path)
    item = {**manifest(minimum_duration_days=0), "created_at": "2026-11-01T00:00:00Z"}
    store_experiment(store, item)
    store.write_control(
        "experiment_analyser",
        {
            "version": 1,
            "experiments": {
                "claude_vs_gemini": {
                    "state": "concluded",
                    "winner": "gemini",
                    "epoch": 0,
                    "reason": "won",
                    "alerted": False,
                }
            },
        },
        0,
        None,
    )
    published: list[str] = []
    lock = threading.Lock()

    class Publisher:
        def publish(self, alert: Any) -> None:
            with lock:
                published.append(alert.alert_id)

    def one() -> None:
        own = LocalStore(path)
        run_experiment_analyser(own, now=NOW, publisher=Publisher())
        own.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert published == ["experiment/claude_vs_gemini/0/concluded"]
    state = store.read_control("experiment_analyser") or {}
    assert state["experiments"]["claude_vs_gemini"]["alerted"] is True
    store.close()
