"""``controller``: the feedback loops. ``run`` runs every controller once (or ``--watch``es);
``cost`` prints the cost report, ``experiment`` an experiment's analysis and ``rollout`` where
the rollouts are (``reconciler.cli.rollout``, with the operators' pause, resume, abort and
promote)."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click

from reconciler import __version__, experiment_operators
from reconciler.breakglass import default_operator
from reconciler.cli.boundary import run
from reconciler.cli.new_experiment import new_experiment_command
from reconciler.cli.options import root_option, store_option
from reconciler.cli.rollout import ROLLOUT_COMMANDS
from reconciler.commands.common import make_context
from reconciler.controllers.alerts import TOPIC_VARIABLE, SnsPublisher
from reconciler.controllers.analyser_run import (
    ANALYSER_RECORD,
    AnalyserRun,
    read_report,
)
from reconciler.controllers.report import as_json, collect
from reconciler.controllers.rollout_run import CONTROLLER_RECORD, RolloutRun
from reconciler.controllers.run import GUARD_RECORD, GuardRun, Publisher, run_once
from reconciler.errors import ExitCode, ReconcilerError
from reconciler.render import experiment as experiment_render
from reconciler.render import rollout as rollout_render
from reconciler.render.cost import render_markdown, render_text
from reconciler.render.run import run_json
from reconciler.rollout_operators import AUDIT_ACTIONS
from reconciler.runtime.budgets import format_usd
from reconciler.runtime.client import MAX_CALL_USD, utc_now
from reconciler.state.records import OVERRIDES_RECORD, RecordKind


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="controller")
@click.pass_context
def controller(ctx: click.Context) -> None:
    """The controllers that close the feedback loops: the cost guard, the rollout controller
    and the experiment analyser.

    They read the services' telemetry and write controller state that every runtime client
    honours within its override poll: above git, below break-glass. Operators can stop and
    resume an experiment, and pause, resume, abort or promote a rollout, above the
    controllers.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _analyser_summary(result: AnalyserRun) -> list[str]:
    lines = []
    if not result.analyses and not result.not_started:
        return ["experiment analyser: no active experiment in the store"]
    for name in result.not_started:
        lines.append(f"experiment analyser: {name}: not started yet")
    for error in result.errors:
        lines.append(f"experiment analyser: not analysed: {error}")
    for name, entry in sorted(result.outcome.experiments.items()):
        state = entry.get("state")
        if state == "held":
            lines.append(f"experiment analyser: {name}: stopped by an operator, not decided")
        elif state == "running":
            waiting = "; ".join(entry.get("waiting") or []) or "nothing"
            lines.append(f"experiment analyser: {name}: running, waiting for {waiting}")
        else:
            winner = f", winner {entry.get('winner')}" if entry.get("winner") else ""
            lines.append(f"experiment analyser: {name}: {state}{winner}: {entry.get('reason')}")
    for change in result.outcome.transitions:
        lines.append(f"experiment analyser: {change.describe()}")
    for published in result.alerts_published:
        lines.append(f"experiment analyser: alert {published} published")
    for error in result.publish_errors:
        lines.append(f"experiment analyser: alert not published, retried next run: {error}")
    written = "state written" if result.written else "state unchanged"
    lines.append(f"experiment analyser: {written} (version {result.version})")
    return lines


def _summary(result: GuardRun | AnalyserRun | RolloutRun) -> list[str]:
    if isinstance(result, AnalyserRun):
        return _analyser_summary(result)
    if isinstance(result, RolloutRun):
        return rollout_render.render_run(result)
    if not result.budgets:
        return [
            "cost guard: no budgets in the store (no CostThreshold, no flag with a "
            "cost_threshold): nothing to guard; run `reconcile --apply` first?"
        ]
    lines = []
    for state in result.outcome.state.budgets.values():
        lines.append(
            f"cost guard: {state.name} {state.period} ({state.time_zone}): "
            f"{format_usd(state.spent_micros)} spent, {state.level}"
        )
    for change in result.outcome.transitions:
        lines.append(f"cost guard: {change.describe()}")
    for alert in result.alerts_recorded:
        lines.append(f"cost guard: alert {alert.alert_id}: {alert.message}")
    for published in result.alerts_published:
        lines.append(f"cost guard: alert {published} published")
    for error in result.publish_errors:
        lines.append(f"cost guard: alert not published, retried next run: {error}")
    if result.superseded:
        lines.append("cost guard: a run with a newer reading wrote first; nothing written")
    elif result.written:
        lines.append(f"cost guard: state written (version {result.state.version})")
    else:
        lines.append(f"cost guard: state unchanged (version {result.state.version})")
    return lines


@controller.command(
    "run",
    epilog="""\b
Examples:
  controller run                         # once: for cron, EventBridge, a CI schedule
  controller run --watch --interval 15   # a loop: the cost guard and the rollout controller
                                         # every 15 seconds, the experiment analyser every
                                         # 5 minutes
  COST_ALERTS_TOPIC_ARN=arn:aws:sns:... controller run
""",
)
@click.option("--watch", is_flag=True, help="Run again every --interval seconds until stopped.")
@click.option(
    "--interval", type=click.FloatRange(min=1), default=15.0, show_default=True, help="Seconds."
)
@click.option(
    "--sns-topic-arn",
    envvar=TOPIC_VARIABLE,
    help=f"Publish alerts to this SNS topic too (default: ${TOPIC_VARIABLE}).",
)
@click.option(
    "--analyse-interval",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="With --watch: seconds between experiment analyses (each reads every assignment).",
)
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text")
@store_option
@root_option
def run_command(
    watch: bool,
    interval: float,
    analyse_interval: float,
    sns_topic_arn: str | None,
    output_format: str,
    backend: str | None,
    root: Path,
) -> int:
    """Run every controller once: read telemetry, decide, write state, alert."""
    context = make_context(root, backend, "")
    store = context.open_store()
    publisher: Publisher | None = SnsPublisher(sns_topic_arn) if sns_topic_arn else None
    analysed_at = -math.inf
    try:
        while True:
            due = time.monotonic() - analysed_at >= analyse_interval
            try:
                results = run_once(store, now=utc_now(), publisher=publisher, experiments=due)
                if due:
                    analysed_at = time.monotonic()
            except ReconcilerError as exc:  # a loop outlives a bad minute: the store, a race
                if not watch:
                    raise
                click.echo(f"error: {exc}; trying again in {interval:g} s", err=True)
            else:
                stamp = f"{utc_now():%Y-%m-%dT%H:%M:%SZ} " if watch else ""
                for result in results:
                    if output_format == "json":
                        click.echo(json.dumps(run_json(result), sort_keys=True))
                    else:
                        for line in _summary(result):
                            click.echo(stamp + line)
            if not watch:
                return ExitCode.CLEAN
            time.sleep(interval)
    finally:
        store.close()


MAX_RATE = Decimal(1_000_000)  # requests per second per process


def _decimal(text: str | None, option: str, maximum: Decimal) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not a number", param_hint=option) from None
    if not value.is_finite() or not 0 <= value <= maximum:
        raise click.BadParameter(f"give a number from 0 to {maximum:,}", param_hint=option)
    return value


def _day(text: str | None, now: datetime) -> date | None:
    """``--date``: a UTC date up to today (today is the live report, as without it)."""
    if text is None:
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise click.BadParameter(f"{text!r}: give a date as YYYY-MM-DD", param_hint="--date")
    try:
        chosen = date.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is no date: {exc}", param_hint="--date") from None
    if chosen > now.date():
        raise click.BadParameter(
            f"{text} is in the future (today is {now.date()})", param_hint="--date"
        )
    return None if chosen == now.date() else chosen


@controller.command(
    "cost",
    epilog="""\b
Examples:
  controller cost                          # today, live
  controller cost --date 2026-11-30        # a past day, from the cost-metrics rows
  controller cost --format markdown        # for a pull request or a wiki
  controller cost --processes 200 --rate 5 --max-request-cost 0.08
""",
)
@click.option("--date", "day", help="A past UTC date (YYYY-MM-DD); default: today, live.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
)
@click.option("--processes", type=click.IntRange(min=1), help="For the bound (default: seen).")
@click.option("--rate", help="Requests per second per process (default: today's average).")
@click.option("--max-request-cost", help="USD of the dearest request (default: seen today).")
@click.option("--flush-interval", type=float, default=10.0, show_default=True)
@click.option("--guard-interval", type=float, default=60.0, show_default=True)
@click.option("--poll-interval", type=float, default=5.0, show_default=True)
@store_option
@root_option
def cost_command(
    day: str | None,
    output_format: str,
    processes: int | None,
    rate: str | None,
    max_request_cost: str | None,
    flush_interval: float,
    guard_interval: float,
    poll_interval: float,
    backend: str | None,
    root: Path,
) -> int:
    """Spend per request type against every budget, the guard's state and the overshoot
    bound."""
    now: datetime = utc_now()
    chosen = _day(day, now)
    given_rate = _decimal(rate, "--rate", MAX_RATE)
    given_dearest = _decimal(max_request_cost, "--max-request-cost", Decimal(MAX_CALL_USD))
    store = make_context(root, backend, "").open_store()
    try:
        report = collect(
            store,
            now=now,
            day=chosen,
            processes=processes,
            rate=given_rate,
            dearest=given_dearest,
            intervals={
                "flush_seconds": flush_interval,
                "guard_seconds": guard_interval,
                "poll_seconds": poll_interval,
            },
        )
    finally:
        store.close()
    if output_format == "json":
        click.echo(json.dumps(as_json(report), indent=2))
    elif output_format == "markdown":
        click.echo(render_markdown(report), nl=False)
    else:
        for line in render_text(report):
            click.echo(line)
    return ExitCode.CLEAN


@controller.command(
    "experiment",
    epilog="""\b
Examples:
  controller experiment claude_vs_gemini
  controller experiment claude_vs_gemini --format markdown   # a pull-request comment
  controller experiment claude_vs_gemini --plot intervals.svg
""",
)
@click.argument("name")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the intervals per metric as an SVG file.",
)
@store_option
@root_option
def experiment_command(
    name: str, output_format: str, plot: Path | None, backend: str | None, root: Path
) -> int:
    """An experiment's analysis now: per variant and metric the mean, the difference to the
    control with its intervals, p-values, the sample ratio check, and what auto-conclusion
    waits for. Reads only: the analyser (controller run) decides."""
    store = make_context(root, backend, "").open_store()
    try:
        records = store.read_records(RecordKind.EXPERIMENT)
        if name not in records:
            known = ", ".join(sorted(records)) or "none"
            raise click.BadParameter(
                f"no experiment {name!r} in the store (known: {known}); a new one is analysed "
                "once `reconcile --apply` has stored it",
                param_hint="NAME",
            )
        report = read_report(store, records[name].item, utc_now())
    finally:
        store.close()
    analysis, verdict, operator = report.analysis, report.verdict, report.operator
    if analysis is None:
        click.echo(f"Experiment {name} has not started yet (start_time in the future).")
        return ExitCode.CLEAN
    if output_format == "json":
        click.echo(json.dumps(experiment_render.as_json(analysis, verdict, operator), indent=2))
    elif output_format == "markdown":
        click.echo(experiment_render.render_markdown(analysis, verdict, operator), nl=False)
    else:
        for line in experiment_render.render_text(analysis, verdict, operator):
            click.echo(line)
    if plot is not None:
        plot.write_text(experiment_render.render_plot(analysis), encoding="utf-8")
        click.echo(f"Plot written to {plot}", err=output_format == "json")
    return ExitCode.CLEAN


OPERATOR_ACTIONS = ("experiment-stop", "experiment-resume", *AUDIT_ACTIONS.values())
_reason_option = click.option("--reason", required=True, help="Why, for the audit trail.")
_by_option = click.option(
    "--by", default=default_operator, help="Who is acting (default: the login name)."
)


@controller.command("experiment-stop")
@click.argument("name")
@_reason_option
@_by_option
@store_option
@root_option
def experiment_stop_command(
    name: str, reason: str, by: str, backend: str | None, root: Path
) -> int:
    """Stop an experiment now: everyone gets its control, whatever the analyser or git say,
    until `controller experiment-resume`."""
    store = make_context(root, backend, "").open_store()
    try:
        changed = experiment_operators.stop(store, name, reason=reason, by=by, now=utc_now())
    finally:
        store.close()
    if changed:
        click.echo(f"Stopped {name}: everyone gets the control within the clients' poll.")
    else:
        click.echo(f"{name} was stopped already; nothing written.")
    return ExitCode.CLEAN


@controller.command("experiment-resume")
@click.argument("name")
@_reason_option
@_by_option
@store_option
@root_option
def experiment_resume_command(
    name: str, reason: str, by: str, backend: str | None, root: Path
) -> int:
    """Lift a stop or the analyser's verdict: assignment resumes (the same users get the same
    variants) and the analysis starts over from now."""
    store = make_context(root, backend, "").open_store()
    try:
        epoch = experiment_operators.resume(store, name, reason=reason, by=by, now=utc_now())
    finally:
        store.close()
    if epoch:
        click.echo(f"Resumed {name}: analysis epoch {epoch} starts now.")
    else:
        click.echo(f"Nothing held {name}; nothing written.")
    return ExitCode.CLEAN


controller.add_command(new_experiment_command)
for _command in ROLLOUT_COMMANDS:
    controller.add_command(_command)


@controller.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text")
@store_option
@root_option
def history_command(limit: int, output_format: str, backend: str | None, root: Path) -> int:
    """The controllers' state changes and operators' experiment stops and resumes and rollout
    pauses, resumes, aborts and promotes, newest first: who went from what to what, and why."""
    store = make_context(root, backend, "").open_store()
    try:
        operators = [
            e
            for e in store.read_audit(OVERRIDES_RECORD, limit=limit * 4)
            if e.get("action") in OPERATOR_ACTIONS
        ]
        entries = sorted(
            [
                *store.read_audit(GUARD_RECORD, limit=limit),
                *store.read_audit(ANALYSER_RECORD, limit=limit),
                *store.read_audit(CONTROLLER_RECORD, limit=limit),
                *operators,
            ],
            key=lambda e: str(e.get("at", "")),
            reverse=True,
        )[:limit]
    finally:
        store.close()
    if output_format == "json":
        shown = [
            {k: e.get(k) for k in ("at", "actor", "reason", "before", "after")} for e in entries
        ]
        click.echo(json.dumps(shown, indent=2))
        return ExitCode.CLEAN
    if not entries:
        click.echo("No controller state changes yet.")
    for entry in entries:
        action = str(entry.get("action", ""))
        if action in OPERATOR_ACTIONS:
            click.echo(f"{entry.get('at')}  {entry.get('actor')} ({action}):")
            click.echo(f"  {entry.get('reason')}")
            continue
        click.echo(f"{entry.get('at')}  {entry.get('actor')}:")
        for change in str(entry.get("reason", "")).split("; "):
            click.echo(f"  {change}")
    return ExitCode.CLEAN


def main() -> None:
    sys.exit(run(controller))
