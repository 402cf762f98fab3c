"""``reconcile``: validate, plan and apply the manifests in git against the flag store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler import __version__
from reconciler.apply import DEFAULT_MAX_DELETIONS, default_actor
from reconciler.cli.boundary import run
from reconciler.commands.admin import run_bootstrap, run_force_unlock
from reconciler.commands.apply import run_apply
from reconciler.commands.common import make_context
from reconciler.commands.plan import run_plan
from reconciler.commands.validate import run_validate
from reconciler.errors import UserError

MODES = ("validate", "plan", "apply", "bootstrap", "force-unlock")


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  reconcile --validate                        check the tree in the current directory
  reconcile --validate --format json          findings for machines
  reconcile --plan                            what apply would change, field by field
  reconcile --plan --format markdown          the plan as a pull-request comment
  reconcile --plan --out plan.json --detailed-exitcode
                                              save the plan; exit 2 when changes are pending
  reconcile --apply plan.json                 apply exactly the saved plan
  reconcile --apply --yes                     plan and apply in one go (CI)
  reconcile --bootstrap                       create the store's tables if missing
  reconcile --force-unlock --reason "apply job killed"

\b
Exit codes: 0 clean, 1 user or configuration error, 2 changes pending
(--plan --detailed-exitcode), 3 internal error, 130 interrupted.
""",
)
# The modes share one list (each occurrence appends its name), so two of them are seen and
# refused, not silently decided by whichever came last.
@click.option(
    "--validate",
    "modes",
    flag_value="validate",
    multiple=True,
    help="Check every manifest; write nothing.",
)
@click.option(
    "--plan", "modes", flag_value="plan", multiple=True, help="Show what apply would change."
)
@click.option(
    "--apply", "modes", flag_value="apply", multiple=True, help="Make the store equal to git."
)
@click.option(
    "--bootstrap", "modes", flag_value="bootstrap", multiple=True, help="Create missing tables."
)
@click.option(
    "--force-unlock",
    "modes",
    flag_value="force-unlock",
    multiple=True,
    help="Break a dead apply's lock.",
)
@click.argument("target", required=False, type=click.Path(path_type=Path))
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="The repository (default: TARGET for the other modes, else the current directory).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
    help="Output of --validate (text, json) and --plan (text, markdown, json).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="--plan: also save the plan (JSON) for `reconcile --apply FILE`; usually plan.json "
    "(the repository's .gitignore ignores it). Nothing is saved without --out.",
)
@click.option("--detailed-exitcode", is_flag=True, help="--plan exits 2 when changes are pending.")
@click.option(
    "--show-all",
    is_flag=True,
    help="--plan: every change field by field, however many (a plan of more than 200 changes "
    "otherwise shows its risks, holds and deletions in full and counts the rest).",
)
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (for CI).")
@click.option(
    "--max-deletions",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_DELETIONS,
    show_default=True,
    help="Refuse to apply a plan that deletes more records than this.",
)
@click.option("--allow-empty", is_flag=True, help="Allow a tree with no manifests to delete all.")
@click.option(
    "--force-delete-held",
    is_flag=True,
    help="Delete flags removed from git even while an emergency shutdown holds them.",
)
@click.option(
    "--store",
    "backend",
    type=click.Choice(["local", "dynamodb"]),
    help="The backend (default: reconciler.toml [store], then the environment, then local).",
)
@click.option("--actor", default=default_actor, help="Who is acting, for the audit trail.")
@click.option("--reason", help="Why (required by --force-unlock).")
@click.version_option(__version__, prog_name="reconcile")
def reconcile(
    modes: tuple[str, ...],
    target: Path | None,
    root: Path | None,
    output_format: str,
    out: Path | None,
    detailed_exitcode: bool,
    show_all: bool,
    yes: bool,
    max_deletions: int,
    allow_empty: bool,
    force_delete_held: bool,
    backend: str | None,
    actor: str,
    reason: str | None,
) -> int:
    """Reconcile the feature-flag manifests in git with the flag store.

    TARGET is the repository holding flags.d/, experiments.d/, rollouts.d/ and costs.d/
    (default: the current directory); for --apply it is a saved plan file.
    """
    chosen = list(dict.fromkeys(modes))
    if len(chosen) != 1:
        given = f"{' and '.join('--' + m for m in chosen)} are different modes; " if chosen else ""
        raise click.UsageError(f"{given}choose one of: {', '.join('--' + m for m in MODES)}")
    [mode] = chosen
    plan_file = None
    if mode == "apply" and target is not None and not target.is_dir():
        plan_file = target
    elif target is not None:
        if root is not None:
            raise click.UsageError("give the repository either as TARGET or as --root, not both")
        root = target
    root = root or Path(".")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    if output_format == "markdown" and mode != "plan":
        raise click.UsageError("--format markdown is only for --plan")
    if out is not None and mode != "plan":
        raise click.UsageError(
            "--out saves a plan and is only for --plan (apply a saved plan with --apply FILE)"
        )
    context = make_context(root, backend, actor)
    if mode == "validate":
        return run_validate(context, output_format)
    if mode == "plan":
        return run_plan(
            context,
            output_format=output_format,
            out=out,
            detailed_exitcode=detailed_exitcode,
            allow_empty=allow_empty,
            force_delete_held=force_delete_held,
            show_all=show_all,
        )
    if mode == "apply":
        return run_apply(
            context,
            plan_file=plan_file,
            yes=yes,
            max_deletions=max_deletions,
            allow_empty=allow_empty,
            force_delete_held=force_delete_held,
        )
    if mode == "bootstrap":
        return run_bootstrap(context)
    return run_force_unlock(context, reason)


def main() -> None:
    sys.exit(run(reconcile))
