"""``reconcile --bootstrap`` and ``reconcile --force-unlock``: looking after the store itself."""

from __future__ import annotations

import click

from reconciler.commands.common import Context
from reconciler.errors import ExitCode, UserError
from reconciler.runtime.client import utc_now


def run_bootstrap(context: Context) -> int:
    store = context.open_store()
    try:
        for line in store.bootstrap():
            click.echo(line)
    finally:
        store.close()
    return ExitCode.CLEAN


def run_force_unlock(context: Context, reason: str | None) -> int:
    if not reason:
        raise UserError("--force-unlock needs --reason: say why the lock may be broken")
    store = context.open_store()
    try:
        removed = store.force_unlock(context.actor, reason, utc_now())
    finally:
        store.close()
    if removed is None:
        click.echo("No lock was held.")
    else:
        click.echo(
            f"Removed the lock held by {removed.holder} since {removed.acquired_at}; "
            "the audit trail records who and why."
        )
    return ExitCode.CLEAN
