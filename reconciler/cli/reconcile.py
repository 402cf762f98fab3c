"""``reconcile``: validate the manifests in git (plan and apply build on it)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler import __version__
from reconciler.cli.boundary import run
from reconciler.config import load_config
from reconciler.diagnostics import render_json, render_text
from reconciler.errors import ExitCode
from reconciler.validation import validate


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  reconcile --validate                 check the tree in the current directory
  reconcile --validate path/to/repo    check another tree
  reconcile --validate --format json   machine-readable findings
""",
)
@click.option(
    "--validate",
    "mode",
    flag_value="validate",
    required=True,
    help="Check every manifest against its schema and the semantic rules; write nothing.",
)
@click.argument(
    "root",
    required=False,
    default=".",
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one finding per line as path:line:col: field: message; json: for machines.",
)
@click.version_option(__version__, prog_name="reconcile")
def reconcile(mode: str, root: Path, output_format: str) -> int:
    """Reconcile the feature-flag manifests in git with the flag store.

    ROOT is the repository holding flags.d/, experiments.d/, rollouts.d/ and costs.d/
    (default: the current directory).
    """
    config = load_config(root)
    result = validate(root, config)
    if output_format == "json":
        click.echo(render_json(result.diagnostics, len(result.tree.manifests)))
    else:
        for line in render_text(result.diagnostics):
            click.echo(line)
        click.echo(result.summary(), err=not result.ok)
    return ExitCode.CLEAN if result.ok else ExitCode.USER_ERROR


def main() -> None:
    sys.exit(run(reconcile))
