"""``breakglass``: the on-call operator's emergency shutdown, which outranks git."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from reconciler import __version__
from reconciler import breakglass as core
from reconciler.cli.boundary import run
from reconciler.cli.options import root_option, store_option
from reconciler.cli.serve import dashboard, serve
from reconciler.commands.common import make_context
from reconciler.controllers.rollout_report import OPERATOR, read_status
from reconciler.controllers.rollout_report import held as held_rollouts
from reconciler.errors import ExitCode
from reconciler.render import rollout as rollout_render
from reconciler.runtime.client import FlagClient, utc_now
from reconciler.runtime.sources import DynamoDBSource, SnapshotSource, SQLiteSource
from reconciler.state.dynamodb import DynamoDBStore
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD
from reconciler.state.store import StateStore


def _store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    return root_option(store_option(command))


def _targets(everything: bool, flags: tuple[str, ...]) -> list[str] | None:
    if everything == bool(flags):
        raise click.UsageError("give either --all or one or more --flag NAME")
    return None if everything else list(flags)


def _operator(by: str | None, store: StateStore) -> str:
    """--by, else the AWS caller identity on DynamoDB, else the OS user."""
    if by:
        return by
    if isinstance(store, DynamoDBStore):
        try:
            import boto3  # noqa: PLC0415 - only needed on DynamoDB without --by

            sts = boto3.client("sts", region_name=store.region)
            return str(sts.get_caller_identity()["Arn"])
        except Exception:  # no STS reachable: fall back to the OS user, as documented
            pass
    return core.default_operator()


def _what(targets: list[str]) -> str:
    """``ALL AI features``, or the flags, for people: the scope of a shutdown or restore."""
    names = ["ALL AI features" if t == core.GLOBAL else core.printable(t) for t in targets]
    return ", ".join(names) if names else "(nothing)"


def _describe(entry: core.Active) -> str:
    what = _what([entry.target])
    until = f", until {entry.expires_at}" if entry.expires_at else ", until restored"
    by, reason = core.printable(entry.by), core.printable(entry.reason)
    return f"{what}: shut down by {by} since {entry.since}{until} ({reason})"


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="breakglass")
@click.pass_context
def breakglass(ctx: click.Context) -> None:
    """Emergency shutdown of AI features, outranking git.

    A shutdown reaches every service's runtime client within seconds, and no
    `reconcile --apply` turns it back on: only `breakglass restore` does. Every
    shutdown and restore is in the audit trail (`breakglass status --history`).
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@breakglass.command(
    epilog="""\b
Examples:
  breakglass shutdown --all --reason "runaway Bedrock cost, INC-4211"
  breakglass shutdown --flag vc_bedrock_live --reason "bad answers" --expires 2h
  breakglass shutdown --flag vc_new_feature --force --reason "hold it from its first apply"
"""
)
@click.option("--all", "everything", is_flag=True, help="Every AI feature.")
@click.option("--flag", "flags", multiple=True, metavar="NAME", help="One flag (repeatable).")
@click.option("--reason", required=True, help="Why: for the people who read the trail later.")
@click.option("--by", help="Who (default: the AWS caller identity, else the OS user).")
@click.option("--expires", help="Lift it automatically: 30m, 2h, 1d, or an RFC 3339 time.")
@click.option(
    "--force",
    is_flag=True,
    help="Shut down a --flag the store has no record of yet (not applied yet).",
)
@_store_options
def shutdown(
    everything: bool,
    flags: tuple[str, ...],
    reason: str,
    by: str | None,
    expires: str | None,
    force: bool,
    root: Path,
    backend: str | None,
) -> int:
    """Shut AI features down now.

    A --flag the store has no record of is refused, with the closest names, unless --force.
    """
    targets = _targets(everything, flags)
    now = utc_now()
    expires_at = core.parse_expiry(expires, now)
    store = make_context(root, backend, "").open_store()
    try:
        held = core.shutdown(
            store,
            targets,
            reason=reason,
            by=_operator(by, store),
            expires_at=expires_at,
            now=now,
            force=force,
        )
    finally:
        store.close()
    for entry in held:
        click.echo(_describe(entry))
    return ExitCode.CLEAN


@breakglass.command()
@click.option("--all", "everything", is_flag=True, help="Lift the global shutdown.")
@click.option("--flag", "flags", multiple=True, metavar="NAME", help="One flag (repeatable).")
@click.option("--reason", required=True, help="Why it is safe again.")
@click.option("--by", help="Who (default: the AWS caller identity, else the OS user).")
@_store_options
def restore(
    everything: bool,
    flags: tuple[str, ...],
    reason: str,
    by: str | None,
    root: Path,
    backend: str | None,
) -> int:
    """Lift a shutdown: git's configuration decides again."""
    targets = _targets(everything, flags)
    store = make_context(root, backend, "").open_store()
    try:
        now = utc_now()
        lifted = core.restore(store, targets, reason=reason, by=_operator(by, store), now=now)
        still = core.active(store, now)
        held = core.cost_holds(store, now)
    finally:
        store.close()
    for target in lifted:
        click.echo(f"Restored {_what([target])}.")
    if not lifted:
        click.echo("Nothing to restore: no such shutdown was in force (nothing written).")
    for entry in still:
        click.echo(f"Still shut down: {_describe(entry)}; lift it with {_selector(entry)}")
    for hold in held:
        if targets is None or hold.flag in targets:
            click.echo(f"Still held by the cost guard (not break-glass's to lift): {_hold(hold)}")
    return ExitCode.CLEAN


def _others(entry: dict[str, Any]) -> list[str]:
    """The rollouts and experiments an audit entry of the overrides record changed (an
    operator's pause, abort, resume or promote; an experiment's stop or resume)."""
    before, after = entry.get("before") or {}, entry.get("after") or {}
    touched = []
    for key, what in (("rollouts", "rollout"), ("experiments", "experiment")):
        old, new = before.get(key) or {}, after.get(key) or {}
        touched += [f"{what} {n}" for n in sorted({*old, *new}) if old.get(n) != new.get(n)]
    return touched


def _selector(entry: core.Active) -> str:
    return "--all" if entry.target == core.GLOBAL else f"--flag {entry.target}"


def _hold(hold: core.CostHold) -> str:
    what = "off" if hold.state == "emergency" else f"rollout x {hold.factor:g}"
    return f"{hold.flag} {what} ({hold.budget}) until {hold.until}"


@breakglass.command()
@click.option(
    "--history",
    is_flag=True,
    help="Also every shutdown and restore (what, who, why), newest first.",
)
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text")
@_store_options
def status(history: bool, output_format: str, root: Path, backend: str | None) -> int:
    """What is shut down now, what the cost guard holds, and where each rollout is (held by an
    operator or the rollout controller, its share and next step); with --history, who shut
    down, restored, paused or resumed what, when."""
    store = make_context(root, backend, "").open_store()
    try:
        now = utc_now()
        held = core.active(store, now)
        guard = core.cost_holds(store, now)
        rollouts = read_status(store, now)
        trail = store.read_audit(OVERRIDES_RECORD) if history else []
    finally:
        store.close()
    if output_format == "json":
        document = {
            "active": [
                {
                    "target": a.target,
                    "by": a.by,
                    "reason": a.reason,
                    "since": a.since,
                    "expires_at": a.expires_at,
                }
                for a in held
            ],
            "history": [
                {
                    **{k: e.get(k) for k in ("at", "action", "actor", "reason")},
                    "scope": core.scope(e),
                }
                for e in trail
            ],
            "cost_guard": [
                {"flag": h.flag, "state": h.state, "budget": h.budget, "until": h.until}
                for h in guard
            ],
            "rollouts": [rollout_render.status_json(r) for r in rollouts.rollouts],
        }
        click.echo(json.dumps(document, indent=2))
        return ExitCode.CLEAN
    stopped = held_rollouts(rollouts)
    if not held:
        if any(r.held_by == OPERATOR for r in stopped):
            decides = "an operator holds a rollout (below)"
        elif guard or stopped:
            decides = "no operator holds anything"
        else:
            decides = "git's configuration decides"
        click.echo(f"No shutdown in force: {decides}.")
    for entry in held:
        click.echo(_describe(entry))
    for hold in guard:
        click.echo(f"Held by the cost guard: {_hold(hold)} (see `controller cost`)")
    for rollout in [*stopped, *(r for r in rollouts.rollouts if r not in stopped)]:
        click.echo(rollout_render.one_line(rollout, now))
    for error in rollouts.errors:
        click.echo(f"Rollout not readable: {error}")
    for event in trail:
        action = event.get("action")
        actor, why = core.printable(event.get("actor")), core.printable(event.get("reason"))
        what = _what(core.scope(event) or _others(event))
        click.echo(f"{event.get('at')}  {action:<8} {what} by {actor}: {why}")
    return ExitCode.CLEAN


@breakglass.command()
@click.option("--flag", required=True, help="The flag to shut down and restore.")
@click.option("--interval", default=5.0, show_default=True, help="The client's override poll (s).")
@click.option("--by", help="Who runs the drill (default: as for shutdown).")
@_store_options
def drill(flag: str, interval: float, by: str | None, root: Path, backend: str | None) -> int:
    """Rehearse: shut one flag down, time until a runtime client obeys, restore it."""
    store = make_context(root, backend, "").open_store()
    source: SnapshotSource
    if isinstance(store, DynamoDBStore):
        source = DynamoDBSource(store.client, tables=store.tables)
    else:
        assert isinstance(store, LocalStore)
        source = SQLiteSource(store.path)
    try:
        with FlagClient(source, override_interval=interval) as client:
            client.wait_until_ready()  # the first load is not part of the time to obey
            result = core.drill(store, client, flag, by=_operator(by, store))
    finally:
        store.close()
    click.echo(
        f"{flag}: the client obeyed the shutdown after {result.to_off * 1000:.0f} ms and the "
        f"restore after {result.to_on * 1000:.0f} ms (poll interval {interval:g} s)."
    )
    return ExitCode.CLEAN


breakglass.add_command(serve)
breakglass.add_command(dashboard)


def main() -> None:
    sys.exit(run(breakglass))
