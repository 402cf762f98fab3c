"""``controller new-experiment``: parse the options, call the core, render, exit."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click

from reconciler.commands import new_experiment as core
from reconciler.config import load_config
from reconciler.diagnostics import Severity, render_text
from reconciler.errors import ExitCode, UserError
from reconciler.loader import load_tree

T = TypeVar("T")

NEXT_STEPS = (
    "Next: review it, set status: active when ready, open a pull request; "
    "`reconcile --plan` shows what merging does."
)


def _parsed(parse: Callable[[str], T]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback from one of the core's parsers, which raise ValueError."""

    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            if isinstance(value, tuple):
                return tuple(parse(item) for item in value)
            return None if value is None else parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return convert


@click.command(
    "new-experiment",
    epilog="""\b
Examples:
  controller new-experiment claude_vs_gpt --flag vc_bedrock_live \\
      --variant claude=claude-3.5-sonnet --variant gpt=gpt-4o
  controller new-experiment three_models --flag vc_bedrock_live \\
      --variant a=claude-3.5-sonnet --variant b=gemini-pro --variant c=gpt-4o  # 34/33/33
  controller new-experiment canary_haiku --flag vc_bedrock_live \\
      --variant sonnet=claude-3.5-sonnet:90 --variant haiku=claude-3-haiku:10 \\
      --guardrail error_rate:decrease:5:binary --dry-run

\b
A MODEL whose id ends in ':NUMBER' (Bedrock's anthropic.claude-v2:1) needs its weight
spelled out after it: claude=anthropic.claude-v2:1:50.
""",
)
@click.argument("experiment_id", callback=_parsed(core.parse_name))
@click.option(
    "--flag",
    "flag",
    required=True,
    metavar="FLAG",
    callback=_parsed(core.parse_name),
    help="The flag in flags.d/ to test on.",
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    required=True,
    metavar="NAME=MODEL[:WEIGHT]",
    callback=_parsed(core.parse_variant),
    help="At least two; MODEL goes into config.model; missing weights share the rest of 100 "
    "evenly (three: 34/33/33).",
)
@click.option(
    "--name",
    metavar="TITLE",
    help="The title (default: from the id, claude_vs_gemini: Claude vs Gemini).",
)
@click.option(
    "--description", metavar="TEXT", help="What it compares (default: the models and the metric)."
)
@click.option("--hypothesis", help="What you expect to happen, and why.")
@click.option("--owner", metavar="TEAM", help="The team accountable (default: the flag's owner).")
@click.option(
    "--control",
    metavar="VARIANT",
    callback=_parsed(core.parse_name),
    help="The variant compared against (default: the first).",
)
@click.option(
    "--metric",
    metavar="METRIC",
    callback=_parsed(core.parse_name),
    default="response_quality",
    show_default=True,
    help="Primary metric.",
)
@click.option(
    "--metric-type", type=click.Choice(core.METRIC_TYPES), default="numeric", show_default=True
)
@click.option(
    "--direction", type=click.Choice(core.DIRECTIONS), default="increase", show_default=True
)
@click.option(
    "--target-improvement",
    metavar="PERCENT",
    callback=_parsed(core.parse_percentage),
    help="Relative change in percent worth detecting.",
)
@click.option(
    "--guardrail",
    "guardrails",
    multiple=True,
    metavar="METRIC:DIRECTION:MAX[:TYPE]",
    callback=_parsed(core.parse_guardrail),
    help="METRIC:DIRECTION:MAX_DEGRADATION[:TYPE], repeatable (default: "
    "response_time_ms:decrease:20 and cost_usd:decrease:25).",
)
@click.option("--no-guardrails", is_flag=True, help="No guardrail metrics at all.")
@click.option(
    "--confidence-level",
    type=click.FloatRange(0.8, 1, max_open=True),
    default=0.95,
    show_default=True,
)
@click.option("--minimum-duration-days", type=click.IntRange(0, 365), default=7, show_default=True)
@click.option(
    "--minimum-sample-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Users per variant.",
)
@click.option(
    "--start-time",
    metavar="RFC3339",
    callback=_parsed(core.parse_timestamp),
    help="When assignment starts (default: on apply).",
)
@click.option(
    "--end-time",
    metavar="RFC3339",
    callback=_parsed(core.parse_timestamp),
    help="When assignment ends (default: open-ended).",
)
@click.option(
    "--status",
    type=click.Choice(["draft", "active"]),
    default="draft",
    show_default=True,
    help="draft assigns nobody until a reviewed change sets it active.",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The repository holding flags.d/ and experiments.d/.",
)
@click.option("--force", is_flag=True, help="Overwrite experiments.d/EXPERIMENT_ID.yaml.")
@click.option("--dry-run", is_flag=True, help="Print the manifest; write nothing.")
def new_experiment_command(
    experiment_id: str,
    flag: str,
    variants: tuple[core.VariantSpec, ...],
    name: str | None,
    description: str | None,
    hypothesis: str | None,
    owner: str | None,
    control: str | None,
    metric: str,
    metric_type: str,
    direction: str,
    target_improvement: Decimal | None,
    guardrails: tuple[core.Guardrail, ...],
    no_guardrails: bool,
    confidence_level: float,
    minimum_duration_days: int,
    minimum_sample_size: int,
    start_time: str | None,
    end_time: str | None,
    status: str,
    root: Path,
    force: bool,
    dry_run: bool,
) -> int:
    """Write experiments.d/EXPERIMENT_ID.yaml, an A/B test of models on a flag, and link
    the flag to it, for a pull request.

    The result is validated with the whole tree, as `reconcile --validate` does, before
    anything is written.
    """
    if no_guardrails and guardrails:
        raise click.UsageError("give --guardrail or --no-guardrails, not both")
    if len(variants) < 2:
        raise click.BadParameter("give at least two variants", param_hint="'--variant'")
    request = core.Request(
        experiment_id=experiment_id,
        flag=flag,
        variants=variants,
        name=name,
        description=description,
        hypothesis=hypothesis,
        owner=owner,
        control=control,
        metric=metric,
        metric_type=metric_type,
        direction=direction,
        target_improvement=target_improvement,
        guardrails=() if no_guardrails else guardrails or core.DEFAULT_GUARDRAILS,
        confidence_level=confidence_level,
        minimum_duration_days=minimum_duration_days,
        minimum_sample_size=minimum_sample_size,
        start_time=start_time,
        end_time=end_time,
        status=status,
        force=force,
    )
    config = load_config(root)
    plan = core.scaffold(request, load_tree(root).tree)
    result = core.check(root, config, plan)
    for line in render_text(result.diagnostics):
        click.echo(line, err=True)
    if not result.ok:
        errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
        ours = sum(1 for d in errors if d.path in plan.paths)
        elsewhere = (
            f", {len(errors) - ours} elsewhere (fix those first)" if ours < len(errors) else ""
        )
        raise UserError(
            f"the tree with {plan.path} would not validate: {ours} error(s) in the files this "
            f"writes{elsewhere}; nothing written"
        )
    link = plan.flag_link
    if dry_run:
        click.echo(plan.text, nl=False)
        also = f" and add 'experiment: {experiment_id}' to {link.path}:{link.line}" if link else ""
        click.echo(f"Dry run: would write {plan.path}{also}; nothing written.", err=True)
        click.echo(_status_note(status), err=True)
        return ExitCode.CLEAN
    written = core.write(root, plan)
    click.echo(f"Wrote {written[0]}.")
    if link is not None:
        click.echo(
            f"Linked the flag: added 'experiment: {experiment_id}' to {written[1]}:{link.line}."
        )
    click.echo(_status_note(status))
    steps = (
        NEXT_STEPS
        if status == "draft"
        else NEXT_STEPS.replace(" set status: active when ready,", "")
    )
    click.echo(steps)
    return ExitCode.CLEAN


def _status_note(status: str) -> str:
    if status == "draft":
        return "Status is draft: nobody is assigned a variant until it is set to active."
    return "Status is active: users are assigned once the merged change is applied."
