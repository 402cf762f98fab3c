"""``reconcile --validate``: every finding in the tree; writes nothing."""

from __future__ import annotations

import click

from reconciler.commands.common import Context
from reconciler.diagnostics import render_json, render_text
from reconciler.errors import ExitCode
from reconciler.validation import examine


def run_validate(context: Context, output_format: str) -> int:
    result = examine(context.root, context.config)
    if output_format == "json":
        click.echo(render_json(result.diagnostics, len(result.index.entries)))
    else:
        for line in render_text(result.diagnostics):
            click.echo(line)
        click.echo(result.summary(), err=not result.ok)
    return ExitCode.CLEAN if result.ok else ExitCode.USER_ERROR
