"""``reconcile --apply``: make the store equal to git, exactly as planned."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from reconciler.apply import apply_plan
from reconciler.commands.common import Context, desired_state
from reconciler.commands.plan import make_plan, print_plan
from reconciler.errors import ExitCode, UserError
from reconciler.gitinfo import head_commit
from reconciler.plan.model import Plan
from reconciler.runtime.client import utc_now


def load_saved_plan(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the plan {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a plan made by `reconcile --plan --out`")
    return Plan.from_dict(data)


def run_apply(
    context: Context,
    *,
    plan_file: Path | None,
    yes: bool,
    max_deletions: int,
    allow_empty: bool,
    force_delete_held: bool = False,
) -> int:
    if plan_file is None:
        plan = make_plan(context, allow_empty=allow_empty, force_delete_held=force_delete_held)
        print_plan(plan, "text")
        if not plan.has_changes:
            return ExitCode.CLEAN
        _confirm(yes)
    else:
        plan = load_saved_plan(plan_file)
        desired_state(context)  # the tree must still be valid
        commit = head_commit(context.root)
        if plan.git_commit and commit and commit != plan.git_commit:
            raise UserError(
                f"the plan was made from commit {plan.git_commit[:12]} but the work tree is at "
                f"{commit[:12]}; make a new plan"
            )
        click.echo(f"Applying saved plan {plan.plan_id}: {plan.summary()}", err=True)
    store = context.open_store()
    try:
        if plan.store != store.describe():
            raise UserError(
                f"the plan was made against {plan.store!r}, not {store.describe()!r}; "
                "make a new plan against this store"
            )
        result = apply_plan(
            plan,
            store,
            actor=context.actor,
            now=utc_now,
            max_deletions=max_deletions,
            progress=lambda message: click.echo(message, err=True),
        )
    finally:
        store.close()
    for address in result.held:
        click.echo(f"held: {address} is under an emergency shutdown; its change waits", err=True)
    click.echo(result.summary())
    return ExitCode.CLEAN


def _confirm(yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError("refusing to apply without confirmation: pass --yes (as CI does)")
    if not click.confirm("Apply these changes?", default=False):
        raise click.exceptions.Abort()
