"""``reconcile-stack``: the whole system in an AWS account, from one command.

The template comes from the repository (manifests, reconciler.toml) and the code; ``deploy``
builds the Lambda artifact (or takes ``--artifact``), uploads it and creates or updates the
CloudFormation stack; a second run with the same inputs changes nothing.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from reconciler.cli.boundary import run
from reconciler.config import load_config
from reconciler.deploy.artifact import Artifact, build_artifact, existing_artifact
from reconciler.deploy.aws import session
from reconciler.deploy.stack import DEFAULT_STACK, Deployment, StackShell
from reconciler.deploy.template import generate
from reconciler.diagnostics import render_text
from reconciler.errors import ValidationFailed
from reconciler.runtime.sources import aws_region
from reconciler.state.records import table_names
from reconciler.validation import validate_manifests

REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")  # the template's AllowedPattern
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

stack_name_option = click.option(
    "--stack-name",
    default=DEFAULT_STACK,
    show_default=True,
    help="The CloudFormation stack (its artifact bucket and resources are named after it).",
)
region_option = click.option(
    "--region",
    default=aws_region,
    help="The AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, then the profile's).",
)
root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The repository: its manifests and reconciler.toml.",
)
profile_option = click.option(
    "--profile", envvar="AWS_PROFILE", help="The AWS profile (default: AWS_PROFILE)."
)


def repository_template(root: Path) -> tuple[str, list[str]]:
    """The template for the repository at ``root`` and the stack's table names."""
    config = load_config(root)
    result = validate_manifests(root, config)
    for line in render_text(result.diagnostics):
        click.echo(line, err=True)
    if not result.ok:
        click.echo(result.summary(), err=True)
        raise ValidationFailed(result.errors)
    names = sorted(set(table_names(config.store.tables).values()))
    return generate(result.tree, config), names


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  reconcile-stack template --out deploy/template.yaml   regenerate the committed template
  AWS_PROFILE=admin reconcile-stack deploy --region eu-central-1
  reconcile-stack deploy --github-repository acme/flags --alert-email oncall@acme.example
  reconcile-stack status
  reconcile-stack teardown --yes                         remove the stack, keep the tables
""",
)
def stack() -> None:
    """Deploy the feature-flag system to AWS as one CloudFormation stack."""


@stack.command()
@root_option
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write it here, not stdout."
)
def template(root: Path, out: Path | None) -> int:
    """Print the CloudFormation template (or write it with --out)."""
    body, _ = repository_template(root)
    if out is None:
        click.echo(body, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body, encoding="utf-8")
        click.echo(f"Wrote {out}", err=True)
    return 0


@stack.command()
@stack_name_option
@region_option
@profile_option
@root_option
@click.option(
    "--api-auth",
    type=click.Choice(["token", "iam"]),
    default="token",
    show_default=True,
    help="token: a bearer token kept in Secrets Manager; iam: AWS_IAM (SigV4) at the gateway.",
)
@click.option(
    "--github-repository",
    metavar="OWNER/NAME",
    default="",
    help="Create the roles this repository's workflows assume (GitHub OIDC).",
)
@click.option(
    "--github-oidc-provider-arn",
    default="",
    help="The account's GitHub OIDC provider (default: the one the account has, else created).",
)
@click.option("--alert-email", default="", help="Subscribe this address to the alert topic.")
@click.option(
    "--artifact",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A Lambda zip built before, instead of building one (pip, a minute or two).",
)
def deploy(
    stack_name: str,
    region: str | None,
    profile: str | None,
    root: Path,
    api_auth: str,
    github_repository: str,
    github_oidc_provider_arn: str,
    alert_email: str,
    artifact: Path | None,
) -> int:
    """Create or update the stack; with nothing changed, change nothing."""
    if github_oidc_provider_arn and not github_repository:
        raise click.UsageError("--github-oidc-provider-arn is for --github-repository's roles")
    if github_repository and not REPOSITORY.fullmatch(github_repository):
        raise click.UsageError(f"--github-repository {github_repository!r}: give OWNER/NAME")
    if alert_email and not EMAIL.fullmatch(alert_email):
        raise click.UsageError(f"--alert-email {alert_email!r} is not an e-mail address")
    body, tables = repository_template(root)
    shell = StackShell(session(region, profile), stack_name, click.echo)
    asked = Deployment(api_auth, github_repository, github_oidc_provider_arn, alert_email)
    with tempfile.TemporaryDirectory(prefix="reconcile-stack-") as work:
        shell.deploy(body, tables, _artifact(artifact, Path(work) / "lambda.zip"), asked)
    return 0


def _artifact(given: Path | None, out: Path) -> Callable[[], Artifact]:
    def take() -> Artifact:
        if given is not None:
            return existing_artifact(given)
        click.echo("Building the Lambda artifact (pip, for python3.11 on x86_64) ...", err=True)
        built = build_artifact(out)
        click.echo(f"Built {built.key} ({built.unzipped_bytes:,} bytes unzipped)", err=True)
        return built

    return take


@stack.command()
@stack_name_option
@region_option
@profile_option
def status(stack_name: str, region: str | None, profile: str | None) -> int:
    """The stack's status and outputs (the API's URL, the roles for the workflows, ...)."""
    StackShell(session(region, profile), stack_name, click.echo).status()
    return 0


@stack.command()
@stack_name_option
@region_option
@profile_option
@root_option
@click.option("--delete-tables", is_flag=True, help="Delete the stack's tables too: their data.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
def teardown(
    stack_name: str,
    region: str | None,
    profile: str | None,
    root: Path,
    delete_tables: bool,
    yes: bool,
) -> int:
    """Delete the stack and its artifact bucket; the tables stay unless --delete-tables."""
    tables = sorted(set(table_names(load_config(root).store.tables).values()))
    shell = StackShell(session(region, profile), stack_name, click.echo)
    what = "and its tables' data " if delete_tables else "(its tables are kept) "
    if not yes:
        click.confirm(f"Delete stack {stack_name} {what}in {shell.region}?", abort=True)
    shell.teardown(tables, delete_tables)
    return 0


def main() -> None:
    sys.exit(run(stack))
