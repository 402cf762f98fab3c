"""``breakglass``: the on-call operator's emergency shutdown, which outranks git."""

from __future__ import annotations

import sys

import click

from reconciler import __version__
from reconciler.cli.boundary import run


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
)
@click.version_option(__version__, prog_name="breakglass")
@click.pass_context
def breakglass(ctx: click.Context) -> None:
    """Emergency shutdown of AI features, outranking git.

    The shutdown, restore and status commands act on the flag store's override records;
    they arrive with the break-glass release. Until then this prints this help.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def main() -> None:
    sys.exit(run(breakglass))
