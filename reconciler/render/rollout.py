"""Rollouts for an on-call operator (text) and for machines (JSON): where each active rollout is
(``controller rollout``), one line each (``breakglass status``), and what a run of the rollout
controller decided (``controller run``). All pure."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from reconciler.controllers.rollout_report import CONTROLLER, NextStep, RolloutReport, RolloutStatus
from reconciler.controllers.rollout_run import RolloutRun
from reconciler.runtime.rollout_state import (
    COMPLETE,
    HOLDING,
    NOT_WATCHED,
    PAUSED,
    ROLLED_BACK,
    SCHEDULED,
    Action,
    moment,
    stamp,
)

UNITS = {"error_rate": "%", "cost_per_request": " USD"}
COMPARISONS = {
    "less_than": "<",
    "less_than_or_equal": "<=",
    "greater_than": ">",
    "greater_than_or_equal": ">=",
}


def when(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC"


def _clock(text: str | None, now: datetime) -> str:
    """A stored time, short when it is today's (``10:05``)."""
    found = moment(text)
    if found is None:
        return text or "never"
    return f"{found:%H:%M} UTC" if found.date() == now.date() else when(found)


def _share(status: RolloutStatus) -> str:
    stage = f" (stage {status.stage})" if status.stage else ""
    scope = " of the users its targeting covers" if status.rollout_type == "targeting" else ""
    return f"{status.percentage:g}%{scope}{stage}"


def position(status: RolloutStatus) -> str:
    """``ramping at 30% since 2026-12-01 10:00 UTC``, in the words of its state."""
    since = when(status.since)
    if status.state == SCHEDULED:
        return f"scheduled: nobody has it until {since}"
    if status.state == ROLLED_BACK:
        return f"rolled back: nobody has it (the rules' users neither) since {since}"
    words = {HOLDING: "holding", PAUSED: "paused", COMPLETE: "complete"}
    return f"{words.get(status.state, status.state)} at {_share(status)} since {since}"


def _step(step: NextStep) -> str:
    stage = f" (stage {step.stage})" if step.stage else ""
    return f"{step.percentage:g}%{stage}"


def upcoming(status: RolloutStatus, now: datetime) -> str:
    """The next step and when, or why there is none (and how to resume)."""
    if status.resume_command is not None:
        goes_on = (
            f"starts over at {status.resume_percentage:g}% (the same users first)"
            if status.resume_restarts
            else f"goes on from {status.resume_percentage:g}%"
        )
        return f"none while {status.state.replace('_', ' ')}: `{status.resume_command}` {goes_on}"
    step = status.next
    if step is None:
        return "none: complete" if status.state == COMPLETE else "none: at its last step"
    if status.state == SCHEDULED:
        return f"{_step(step)} at {when(step.at)}, its start"
    if not step.gated:
        return f"{_step(step)} at {when(step.at)}, by its schedule"
    quiet = sum(1 for c in status.checks if c.get("outcome") == "insufficient")
    unknown = f"{quiet} with too little traffic to judge at the last run" if quiet else ""
    if step.at <= now:
        also = f"; {unknown}" if unknown else ""
        return f"{_step(step)} when its checks pass (due since {when(step.at)}{also})"
    also = f" ({unknown})" if unknown else ""
    return f"{_step(step)} at {when(step.at)}, if every check passes{also}"


def _figure(check_type: str, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    unit = " ms" if check_type.startswith("latency") else UNITS.get(check_type, "")
    return f"{value:.4g}{unit}"


def check_line(check: Mapping[str, Any]) -> str:
    """A health check, rollback condition or promotion criterion as the controller described
    it (``CheckResult.describe``)."""
    return str(check.get("text") or f"{check.get('name')}: {check.get('outcome')}")


def _holder(status: RolloutStatus) -> str:
    return "the rollout controller" if status.held_by == CONTROLLER else "an operator"


def _operator(action: Action) -> str:
    return f"{action.action} by {action.by} at {when(action.at)} ({action.reason})"


def render_text(report: RolloutReport) -> Iterator[str]:
    now = report.read_at
    if not report.rollouts and not report.errors:
        yield "No active rollout strategy drives a flag in the store (`reconcile --apply`?)."
    for status in report.rollouts:
        yield f"{status.strategy} → {status.flag} ({status.rollout_type}): {position(status)}"
        if status.reason == NOT_WATCHED:
            yield (
                "  not judged by the rollout controller yet: held at its first step until it "
                "is (is `controller run` scheduled?)"
            )
        elif status.reason and status.held_by is not None:
            yield f"  held by {_holder(status)}: {status.reason}"
        elif status.reason:
            yield f"  why: {status.reason}"
        if status.pending is not None:
            taken = "served by clients already; the rollout controller records it at its next run"
            yield f"  operator: {_operator(status.pending)}: {taken}"
        if status.checks:
            yield f"  checks (last run {_clock(status.checked_at, now)}):"
            for check in status.checks:
                yield f"    {check_line(check)}"
        elif status.gated and status.judged:
            yield f"  checks (last run {_clock(status.checked_at, now)}): none recorded"
        if status.alert:
            yield f"  last alert: {status.alert}"
        yield f"  next: {upcoming(status, now)}"
    for error in report.errors:
        yield f"not readable: {error}"


def one_line(status: RolloutStatus, now: datetime) -> str:
    """For ``breakglass status``: who holds it, where it is, what comes next."""
    head = f"{status.strategy} ({status.flag}): {position(status)}"
    if status.held_by is not None:
        why = f" ({status.reason})" if status.reason else ""
        return f"Rollout held by {_holder(status)}: {head}{why}; next: {upcoming(status, now)}"
    return f"Rollout {head}; next: {upcoming(status, now)}"


def _action_json(action: Action | None) -> dict[str, Any] | None:
    if action is None:
        return None
    return {
        "action": action.action,
        "at": stamp(action.at),
        "by": action.by,
        "reason": action.reason,
        "epoch": action.epoch,
        **({"percentage": action.percentage} if action.percentage is not None else {}),
    }


def status_json(status: RolloutStatus) -> dict[str, Any]:
    step = status.next
    return {
        "strategy": status.strategy,
        "flag": status.flag,
        "rollout_type": status.rollout_type,
        "gated": status.gated,
        "state": status.state,
        "percentage": status.percentage,
        "step": status.step,
        "stage": status.stage,
        "since": stamp(status.since),
        "reason": status.reason,
        "watched": status.watched,
        "held_by": status.held_by,
        "operator_action": _action_json(status.action),
        "pending_action": _action_json(status.pending),
        "checked_at": status.checked_at,
        "checks": [dict(c) for c in status.checks],
        "alert": status.alert,
        "next": None
        if step is None
        else {
            "percentage": step.percentage,
            "stage": step.stage,
            "at": stamp(step.at),
            "when": "checks_pass" if step.gated else "schedule",
        },
        "resume": None
        if status.resume_command is None
        else {
            "command": status.resume_command,
            "percentage": status.resume_percentage,
            "starts_over": status.resume_restarts,
        },
    }


def as_json(report: RolloutReport) -> dict[str, Any]:
    return {
        "format_version": 1,
        "read_at": stamp(report.read_at),
        "rollouts": [status_json(s) for s in report.rollouts],
        "errors": list(report.errors),
    }


def render_run(result: RolloutRun) -> list[str]:
    """``controller run``'s lines for the rollout controller."""
    prefix = "rollout controller: "
    if not result.decisions and not result.errors:
        return [prefix + "no active rollout strategy drives a flag in the store"]
    lines = [f"{prefix}not read: {error}" for error in result.errors]
    for name, decision in sorted(result.decisions.items()):
        entry = decision.entry
        if decision.transition:
            lines.append(prefix + decision.transition)
            continue
        stage = f" (stage {entry.stage})" if entry.stage else ""
        why = f": {entry.reason}" if entry.reason else ""
        if entry.state == ROLLED_BACK:
            lines.append(f"{prefix}{name}: rolled back{why}")
        else:
            state = entry.state.replace("_", " ")
            lines.append(f"{prefix}{name}: {state} at {entry.percentage:g}%{stage}{why}")
    lines += [f"{prefix}alert {alert} published" for alert in result.alerts_published]
    lines += [
        f"{prefix}alert not published, retried next run: {error}" for error in result.publish_errors
    ]
    if result.superseded:
        lines.append(prefix + "a run with a newer reading wrote first; nothing written")
    elif result.written:
        lines.append(f"{prefix}state written (version {result.version})")
    else:
        lines.append(f"{prefix}state unchanged (version {result.version})")
    return lines


def run_json(result: RolloutRun) -> dict[str, Any]:
    return {
        "controller": "rollout_controller",
        "written": result.written,
        "superseded": result.superseded,
        "version": result.version,
        "strategies": {
            name: {
                **decision.entry.to_item(),
                "flag": result.flags.get(name),
                "transition": decision.transition,
                "alert": decision.alert,
                "checks": [
                    {"name": r.check.name, "outcome": r.outcome, "text": r.describe()}
                    for r in decision.results
                ],
            }
            for name, decision in sorted(result.decisions.items())
        },
        "transitions": [d.transition for _, d in sorted(result.decisions.items()) if d.transition],
        "alerts_published": result.alerts_published,
        "publish_errors": result.publish_errors,
        "errors": result.errors,
    }
