"""``reconcile --apply``: make the store equal to git, exactly as planned."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import click

from reconciler.apply import LEASE_SECONDS, apply_plan
from reconciler.codec import DesiredState, content_hash, git_owned
from reconciler.commands.common import Context, desired_state
from reconciler.commands.plan import make_plan, print_plan
from reconciler.errors import ExitCode, UserError
from reconciler.gitinfo import head_commit
from reconciler.plan.build import desired_digest, with_rollout_starts
from reconciler.plan.model import Plan
from reconciler.render.text import SYMBOL
from reconciler.runtime.client import utc_now
from reconciler.runtime.sources import overrides_from_item
from reconciler.state.records import RecordKind, format_time
from reconciler.state.store import StateStore

LEASE_ENV = "RECONCILER_LEASE_SECONDS"


def lease_seconds(environ: Mapping[str, str] | None = None) -> float:
    """The apply lease's length: ``RECONCILER_LEASE_SECONDS``, else a minute."""
    text = (os.environ if environ is None else environ).get(LEASE_ENV, "").strip()
    if not text:
        return LEASE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(
            f"{LEASE_ENV}={text!r}: give the apply lease's length in seconds, such as 60"
        )
    return seconds


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
    seconds = lease_seconds()
    echo_store = click.echo
    if plan_file is None:
        plan = make_plan(context, allow_empty=allow_empty, force_delete_held=force_delete_held)
        echo_store = _silent  # make_plan named the store already
        if not plan.has_changes or not yes:
            print_plan(plan, "text", show_all=True)  # what a person confirms is the whole plan
        else:
            for line in brief(plan):  # the plan once: `reconcile --plan` shows its fields
                click.echo(line)
        if not plan.has_changes:
            return ExitCode.CLEAN
        _confirm(yes)
    else:
        plan = load_saved_plan(plan_file)
        desired = desired_state(context)  # the tree must still be valid
        plan = planned_tree(plan, desired, head_commit(context.root))
        click.echo(f"Applying saved plan {plan.plan_id}: {plan.summary()}", err=True)
    store = context.open_store(echo_store)
    try:
        if plan.store != store.describe():
            raise UserError(
                f"the plan was made against {plan.store!r}, not {store.describe()!r}; "
                "make a new plan against this store"
            )
        if plan_file is not None:
            verify_writes(plan, desired, store)
        result = apply_plan(
            plan,
            store,
            actor=context.actor,
            now=utc_now,
            max_deletions=max_deletions,
            progress=lambda message: click.echo(message, err=True),
            lease_seconds=seconds,
        )
    finally:
        store.close()
    for address in result.held:
        click.echo(f"held: {address} is under an emergency shutdown; its change waits", err=True)
    click.echo(result.summary())
    return ExitCode.CLEAN


class TreeChangedError(UserError):
    """The work tree declares other records than the tree the saved plan was made from."""

    def __init__(self, plan: Plan, digest: str, commit: str | None) -> None:
        super().__init__(
            f"the work tree's manifests are not the ones plan {plan.plan_id} was made from: "
            f"the plan was made from {_commit(plan.git_commit)} (desired state "
            f"{_short(plan.desired_digest)}), the work tree at {_commit(commit)} declares "
            f"{_short(digest)}: they changed after the plan was made (a later commit, another "
            "change merged since, or an edit). Nothing was written. Make a new plan of this tree "
            "(reconcile --plan --out plan.json), review it, and apply that one."
        )
        self.digest = digest


def planned_tree(plan: Plan, desired: DesiredState, commit: str | None) -> Plan:
    """The saved plan, once the work tree is proved to be the tree it was made from.

    A plan records the digest of the desired state it was made from: the work tree must
    declare exactly that, or apply refuses before it opens the store. The commit may differ
    (the pull request's plan is made from GitHub's test merge, then applied on the branch's
    merge commit): with the same desired state the plan's writes are the reviewed ones, and
    the audit trail names the commit that is applied. A plan without a digest (made before
    plans recorded one) can only be checked by its commit."""
    if plan.desired_digest is None:
        if plan.git_commit and commit and commit != plan.git_commit:
            raise UserError(
                f"the plan was made from commit {plan.git_commit[:12]} but the work tree is at "
                f"{commit[:12]}, and the plan records no digest of its manifests to prove them "
                "the same; make a new plan"
            )
        return plan
    digest = desired_digest(desired)
    if digest != plan.desired_digest:
        raise TreeChangedError(plan, digest, commit)
    if commit is None or commit == plan.git_commit:
        return plan
    click.echo(
        f"The plan was made from {_commit(plan.git_commit)}; the work tree at {_commit(commit)} "
        f"declares the same desired state ({_short(digest)}), so the plan applies as made.",
        err=True,
    )
    return replace(plan, git_commit=commit)


def verify_writes(plan: Plan, desired: DesiredState, store: StateStore) -> None:
    """A saved plan's writes must be the records the work tree declares, as this store makes
    them (the start a rollout without ``start_time`` gets is the store's): its digest alone is
    the plan's own word about what it was made from. Refuses, writing nothing, otherwise."""
    actual = {kind: store.read_records(kind) for kind in RecordKind}
    made_at = datetime.fromisoformat(plan.created_at.replace("Z", "+00:00"))
    expected = with_rollout_starts(desired, actual, made_at)
    now = format_time(utc_now())
    held = overrides_from_item(store.read_overrides()).in_force(utc_now()).flags
    wrong = []
    planned = set()
    for change in plan.changes:
        declared = expected.get(change.kind, {}).get(change.name)
        record = actual.get(change.kind, {}).get(change.name)
        planned.add((change.kind, change.name))
        if change.action == "delete":
            ok = declared is None
        elif change.action == "unchanged":  # nothing to write: the store must hold it already
            ok = declared is not None and record is not None
            ok = ok and git_owned(record.item) == declared  # type: ignore[union-attr]
        else:
            ok = (
                declared is not None
                and change.after == declared
                and content_hash(declared) == change.desired_hash
            )
        if ok and change.held:  # a hold the store no longer shows is no reason to skip it
            ok = change.name in held or (record is not None and record.override_active(now))
        if not ok:
            wrong.append(change.address)
    for kind, items in expected.items():
        wrong.extend(f"{kind.label}/{name}" for name in items if (kind, name) not in planned)
    if wrong:
        shown = ", ".join(sorted(set(wrong))[:5]) + (" and more" if len(set(wrong)) > 5 else "")
        raise UserError(
            f"plan {plan.plan_id} does not write what the work tree declares to this store "
            f"({shown}): the plan file was edited after it was made, or the store moved "
            "since. Nothing was written. Make a new plan of this tree."
        )


def _commit(commit: str | None) -> str:
    return f"commit {commit[:12]}" if commit else "a tree outside git"


def _short(digest: str | None) -> str:
    return digest[: len("sha256:") + 12] if digest else "(none)"


def brief(plan: Plan) -> Iterator[str]:
    """What ``--apply --yes`` shows of the plan it makes: each record it changes, with its
    holds, risks and blocks, and the summary; not the field-by-field diff, which
    ``reconcile --plan`` shows (so ``reconcile --plan && reconcile --apply --yes`` prints the
    plan once)."""
    commit = plan.git_commit[:12] if plan.git_commit else "not a git work tree"
    yield f"Applying plan {plan.plan_id} (commit {commit}):"
    for change in plan.pending:
        version = f", version {change.expected_version}" if change.expected_version else ""
        yield f"{SYMBOL[change.action]} {change.address} ({change.action}{version})"
        if change.blocked:
            yield f"    x blocked: {change.blocked}"
        for hold in change.holds:
            yield f"    | held by {hold.detail}"
        for risk in change.risks:
            yield f"    ! {risk.message}"
    yield plan.summary()


def _silent(*_: object, **__: object) -> None:
    return None


def _confirm(yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError("refusing to apply without confirmation: pass --yes (as CI does)")
    if not click.confirm("Apply these changes?", default=False):
        raise click.exceptions.Abort()
