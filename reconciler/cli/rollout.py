"""``controller rollout``, ``pause``, ``resume``, ``abort``, ``promote``: where the rollouts are,
and an operator's hand on one. Parse the options, call the core, render, exit; the commands are
registered onto the ``controller`` group (``ROLLOUT_COMMANDS``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from reconciler import rollout_operators as operators
from reconciler.breakglass import default_operator
from reconciler.cli.options import root_option, store_option
from reconciler.commands.common import make_context
from reconciler.controllers.rollout_report import read_status
from reconciler.errors import ExitCode
from reconciler.render import rollout as render
from reconciler.runtime.client import utc_now

_reason_option = click.option("--reason", required=True, help="Why, for the audit trail.")
_by_option = click.option(
    "--by", default=default_operator, help="Who is acting (default: the login name)."
)


@click.command(
    "rollout",
    epilog="""\b
Examples:
  controller rollout                              # every active rollout
  controller rollout bedrock_gradual_rollout
  controller rollout --format json
""",
)
@click.argument("name", required=False)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
@store_option
@root_option
def rollout_command(name: str | None, output_format: str, backend: str | None, root: Path) -> int:
    """Where each active rollout is, as clients serve it now: its state and share, since when
    and why, the rollout controller's last checks, an operator's action not taken yet, and
    the next step with when it is due (or how to resume). Reads only."""
    store = make_context(root, backend, "").open_store()
    try:
        report = read_status(store, utc_now(), name)
    finally:
        store.close()
    if output_format == "json":
        click.echo(json.dumps(render.as_json(report), indent=2))
    else:
        for line in render.render_text(report):
            click.echo(line)
    return ExitCode.CLEAN


def _act(
    act: Callable[..., operators.Acted],
    strategy: str,
    reason: str,
    by: str,
    backend: str | None,
    root: Path,
) -> int:
    store = make_context(root, backend, "").open_store()
    try:
        acted = act(store, strategy, reason=reason, by=by, now=utc_now())
    finally:
        store.close()
    click.echo(acted.describe())
    return ExitCode.CLEAN


@click.command(
    "pause",
    epilog="""\b
Example:
  controller pause bedrock_gradual_rollout --reason "latency up, INC-4302"
""",
)
@click.argument("strategy")
@_reason_option
@_by_option
@store_option
@root_option
def pause_command(strategy: str, reason: str, by: str, backend: str | None, root: Path) -> int:
    """Hold a rollout at the share served now: clients hold it within their override poll,
    whatever its checks or its schedule say, until `controller resume`."""
    return _act(operators.pause, strategy, reason, by, backend, root)


@click.command(
    "resume",
    epilog="""\b
Example:
  controller resume bedrock_gradual_rollout --reason "fixed in 2.4.1"
""",
)
@click.argument("strategy")
@_reason_option
@_by_option
@store_option
@root_option
def resume_command(strategy: str, reason: str, by: str, backend: str | None, root: Path) -> int:
    """Lift a pause or a rollback: a paused rollout goes on from its share, a rolled-back one
    starts over at its first step (the same users first)."""
    return _act(operators.resume, strategy, reason, by, backend, root)


@click.command(
    "abort",
    epilog="""\b
Example:
  controller abort bedrock_gradual_rollout --reason "wrong answers, INC-4303"
""",
)
@click.argument("strategy")
@_reason_option
@_by_option
@store_option
@root_option
def abort_command(strategy: str, reason: str, by: str, backend: str | None, root: Path) -> int:
    """Roll a rollout back now: nobody has the feature from it (its rules' users neither)
    within the clients' override poll, until `controller resume`."""
    return _act(operators.abort, strategy, reason, by, backend, root)


@click.command(
    "promote",
    epilog="""\b
Example:
  controller promote bedrock_gradual_rollout --reason "checks held for a week"
""",
)
@click.argument("strategy")
@_reason_option
@_by_option
@store_option
@root_option
def promote_command(strategy: str, reason: str, by: str, backend: str | None, root: Path) -> int:
    """Move a ramping or holding rollout to its next step (or canary stage), whatever its
    checks say: the rollout controller takes it at its next run."""
    return _act(operators.promote, strategy, reason, by, backend, root)


ROLLOUT_COMMANDS = (rollout_command, pause_command, resume_command, abort_command, promote_command)
