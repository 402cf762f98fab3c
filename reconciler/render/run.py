"""A controller run as JSON: what `controller run --format json` prints per controller."""

from __future__ import annotations

from reconciler.controllers.analyser_run import AnalyserRun
from reconciler.controllers.rollout_run import RolloutRun
from reconciler.controllers.run import GuardRun
from reconciler.render import rollout as rollout_render


def run_json(result: GuardRun | AnalyserRun | RolloutRun) -> dict[str, object]:
    """One controller run as JSON (`controller run --format json`, the Lambda tick's log)."""
    if isinstance(result, RolloutRun):
        return rollout_render.run_json(result)
    if isinstance(result, AnalyserRun):
        return {
            "controller": "experiment_analyser",
            "written": result.written,
            "version": result.version,
            "experiments": result.outcome.experiments,
            "transitions": [t.describe() for t in result.outcome.transitions],
            "alerts_published": result.alerts_published,
            "publish_errors": result.publish_errors,
            "not_started": result.not_started,
            "errors": result.errors,
        }
    return {
        "controller": "cost_guard",
        "written": result.written,
        "superseded": result.superseded,
        "state": result.state.to_item(),
        "transitions": [t.describe() for t in result.outcome.transitions],
        "alerts_recorded": [a.alert_id for a in result.alerts_recorded],
        "alerts_published": result.alerts_published,
        "publish_errors": result.publish_errors,
    }
