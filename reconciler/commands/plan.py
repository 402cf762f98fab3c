"""``reconcile --plan``: what apply would change in the store, field by field."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from reconciler.commands.common import Context, desired_state
from reconciler.errors import ExitCode
from reconciler.gitinfo import has_uncommitted_manifests, head_commit
from reconciler.plan.build import build_plan
from reconciler.plan.model import Plan
from reconciler.render.markdown import render_markdown
from reconciler.render.text import render_text
from reconciler.runtime.client import utc_now


def make_plan(context: Context, *, allow_empty: bool, force_delete_held: bool = False) -> Plan:
    desired = desired_state(context)
    notes = []
    if has_uncommitted_manifests(context.root):
        notes.append("the manifests have uncommitted changes; the plan shows the work tree")
    store = context.open_store()
    try:
        return build_plan(
            desired,
            store,
            git_commit=head_commit(context.root),
            now=utc_now(),
            allow_empty=allow_empty,
            force_delete_held=force_delete_held,
            notes=tuple(notes),
        )
    finally:
        store.close()


def print_plan(plan: Plan, output_format: str, *, show_all: bool = False) -> None:
    if output_format == "json":
        click.echo(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
    elif output_format == "markdown":
        click.echo(render_markdown(plan, show_all=show_all), nl=False)
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        lines = render_text(plan, color=color, show_all=show_all)
        click.echo("\n".join(lines))  # one write: a plan may have a million lines


def save_plan(plan: Plan, path: Path) -> None:
    path.write_text(json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    click.echo(
        f"Saved the plan to {path}; apply exactly it with: reconcile --apply {path}", err=True
    )


def run_plan(
    context: Context,
    *,
    output_format: str,
    out: Path | None,
    detailed_exitcode: bool,
    allow_empty: bool,
    force_delete_held: bool = False,
    show_all: bool = False,
) -> int:
    plan = make_plan(context, allow_empty=allow_empty, force_delete_held=force_delete_held)
    print_plan(plan, output_format, show_all=show_all)
    if out is not None:
        save_plan(plan, out)
    if plan.blocked:
        click.echo(
            f"error: {len(plan.blocked)} change(s) are blocked; apply would refuse this plan",
            err=True,
        )
        return ExitCode.USER_ERROR
    if detailed_exitcode and plan.has_changes:
        return ExitCode.CHANGES_PENDING
    return ExitCode.CLEAN
