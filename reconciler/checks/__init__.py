"""Semantic checks: the rules that span fields, files and kinds, which a schema cannot state.

Each check is a pure function of the loaded tree (and the repository config) that yields
diagnostics pointing at the file, line and field concerned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reconciler.checks import consistency, naming, references
from reconciler.config import RepoConfig
from reconciler.diagnostics import Diagnostic
from reconciler.loader import Tree

Check = Callable[[Tree, RepoConfig], Iterable[Diagnostic]]

CHECKS: tuple[Check, ...] = (
    naming.check_file_names,
    naming.check_unique_names,
    naming.check_convention,
    references.check_references,
    references.check_one_active_per_flag,
    consistency.check_flags,
    consistency.check_experiments,
    consistency.check_rollouts,
    consistency.check_costs,
)


def check_tree(tree: Tree, config: RepoConfig) -> list[Diagnostic]:
    """Every semantic finding about the tree."""
    return [diagnostic for check in CHECKS for diagnostic in check(tree, config)]
