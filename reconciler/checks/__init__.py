"""Semantic checks: the rules that span fields, files and kinds, which a schema cannot state.

Two sorts, each a pure function yielding diagnostics that point at the file, line and field
concerned. A manifest check reads one manifest (and the repository config), so it runs where
the manifest loads, in a worker process for a large tree. An index check reads what spans
manifests (names, references), from the tree's index (``reconciler.index``), never its models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reconciler.checks import consistency, naming, references
from reconciler.config import RepoConfig
from reconciler.diagnostics import Diagnostic
from reconciler.index import Index, index_of
from reconciler.loader import Source, Tree
from reconciler.manifests import Manifest

ManifestCheck = Callable[[Manifest, Source, RepoConfig], Iterable[Diagnostic]]
IndexCheck = Callable[[Index, RepoConfig], Iterable[Diagnostic]]

MANIFEST_CHECKS: tuple[ManifestCheck, ...] = (
    naming.check_file_name,
    naming.check_convention,
    consistency.check_manifest,
)
INDEX_CHECKS: tuple[IndexCheck, ...] = (
    naming.check_unique_names,
    references.check_references,
    references.check_one_active_per_flag,
)


def check_manifest(manifest: Manifest, source: Source, config: RepoConfig) -> list[Diagnostic]:
    """Every finding about one manifest on its own."""
    return [d for check in MANIFEST_CHECKS for d in check(manifest, source, config)]


def check_index(index: Index, config: RepoConfig) -> list[Diagnostic]:
    """Every finding that spans manifests."""
    return [d for check in INDEX_CHECKS for d in check(index, config)]


def check_tree(tree: Tree, config: RepoConfig) -> list[Diagnostic]:
    """Every semantic finding about a tree of built models."""
    found = [d for m in tree.manifests for d in check_manifest(m.manifest, m.source, config)]
    return found + check_index(index_of(tree), config)
