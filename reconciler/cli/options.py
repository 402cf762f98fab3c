"""Options the ``controller`` and ``breakglass`` commands share."""

from __future__ import annotations

from pathlib import Path

import click

store_option = click.option(
    "--store",
    "backend",
    type=click.Choice(["local", "dynamodb"]),
    help="The backend (default: as reconcile chooses it).",
)
root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The repository (for reconciler.toml and the local store).",
)
