"""What several verbs share: loading and validating the tree, opening the store, clocks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from reconciler.codec import DesiredState
from reconciler.config import RepoConfig, load_config
from reconciler.diagnostics import render_text
from reconciler.errors import ValidationFailed
from reconciler.state.select import open_store
from reconciler.state.store import StateStore
from reconciler.validation import examine

Echo = Callable[..., None]


@dataclass(frozen=True)
class Context:
    """Everything a verb needs about where it runs."""

    root: Path
    config: RepoConfig
    backend: str | None
    actor: str

    def open_store(self, echo: Echo = click.echo) -> StateStore:
        store = open_store(self.root, self.config, backend=self.backend)
        echo(f"Store: {store.describe()}", err=True)
        return store


def make_context(root: Path, backend: str | None, actor: str) -> Context:
    return Context(root, load_config(root), backend, actor)


def desired_state(context: Context, echo: Echo = click.echo) -> DesiredState:
    """Validate the whole tree first: an invalid tree plans nothing and applies nothing. The
    records are encoded where each file loads (``examine``): no model is kept."""
    result = examine(context.root, context.config, records=True)
    for line in render_text(result.diagnostics):  # stdout stays for the plan itself
        echo(line, err=True)
    if not result.ok:
        echo(result.summary(), err=True)
        raise ValidationFailed(result.errors)
    assert result.desired is not None  # a valid tree's
    return result.desired
