"""Validation of the whole tree: load every file, then run every semantic check.

Two ways, with the same findings. ``validate`` keeps every manifest's model (for the code that
reads them: scaffolding, the deployment template, tests). ``examine`` keeps none: each file is
loaded, checked on its own and (for a plan) encoded where it loads, in a worker process for a
large tree, and only its findings, its entry in the index and its records come back; the
checks that span manifests then read the index. That is what ``reconcile`` runs.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.checks import check_index, check_manifest, check_tree
from reconciler.codec import DesiredState, Piece, assemble, piece_of
from reconciler.config import RepoConfig
from reconciler.deploy.alarms import Inputs, alarm_problems
from reconciler.diagnostics import Diagnostic, Severity, count
from reconciler.index import Entry, Index, entry_of, index_of
from reconciler.loader import Tree, list_manifests, load_file, load_tree, map_files
from reconciler.manifests import CostThreshold, Flag

TEMPLATE_FILE = "deploy/template.yaml"  # reconciler.deploy.template.TEMPLATE_PATH


@dataclass(frozen=True)
class Findings:
    """Everything found wrong with a tree, and its index."""

    index: Index
    diagnostics: tuple[Diagnostic, ...]
    files: int

    @property
    def errors(self) -> int:
        return count(self.diagnostics, Severity.ERROR)

    @property
    def warnings(self) -> int:
        return count(self.diagnostics, Severity.WARNING)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def summary(self) -> str:
        if not self.ok:
            return (
                f"{_plural(self.errors, 'error')}, {_plural(self.warnings, 'warning')} "
                f"in {_plural(self.files, 'file')}."
            )
        kinds = Counter(entry.kind for entry in self.index.entries)
        by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        detail = f" ({by_kind})" if by_kind else ""
        return (
            f"{_plural(len(self.index.entries), 'manifest')} valid{detail}, "
            f"{_plural(self.warnings, 'warning')}."
        )


@dataclass(frozen=True)
class Validation(Findings):
    """The findings, and the loaded tree with every manifest's model."""

    tree: Tree


@dataclass(frozen=True)
class Examination(Findings):
    """The findings, and (when asked for) the records the tree describes."""

    desired: DesiredState | None = None


def validate(root: Path, config: RepoConfig) -> Validation:
    """Load ``root`` and check it; reports, never raises, for anything the files contain.

    With a committed deployment template (``deploy/template.yaml``), also that it is still the
    one the manifests and the code generate (a cost threshold changed, say, and the template
    not regenerated)."""
    result = validate_manifests(root, config)
    found = _template(root, result, result.tree, config)
    return replace(result, diagnostics=(*result.diagnostics, *found))


def validate_manifests(root: Path, config: RepoConfig) -> Validation:
    """Load ``root`` and check its manifests (not the deployment template), and the alarms
    they and ``reconciler.toml`` make (warnings for those that cannot be made)."""
    result = load_tree(root)
    diagnostics = [*result.diagnostics, *check_tree(result.tree, config)]
    if not any(d.severity is Severity.ERROR for d in diagnostics):  # no alarm of a wrong tree
        diagnostics.extend(alarm_problems(result.tree, config))
    index = index_of(result.tree)
    return Validation(index, tuple(diagnostics), result.files, result.tree)


def examine(root: Path, config: RepoConfig, *, records: bool = False) -> Examination:
    """What ``validate`` finds, without keeping a model: each file is checked (and with
    ``records``, encoded) where it loads. With ``records`` and no error, ``desired`` holds the
    records the tree describes (``reconciler.codec.Records``)."""
    files, diagnostics = list_manifests(root)
    entries: list[Entry] = []
    pieces: list[tuple[Entry, Piece]] = []
    unloaded: list[str] = []
    job = functools.partial(_examine_file, config=config, records=records)
    for (_, relative), (entry, piece, found) in zip(
        files, map_files(job, root, files), strict=True
    ):
        diagnostics.extend(found)
        if entry is None:
            unloaded.append(relative)
            continue
        entries.append(entry)
        if piece is not None:
            pieces.append((entry, piece))
    index = Index(root, tuple(entries), frozenset(unloaded))
    diagnostics.extend(check_index(index, config))
    alarms = _deploy_inputs(index)
    if not any(d.severity is Severity.ERROR for d in diagnostics):  # no alarm of a wrong tree
        diagnostics.extend(alarm_problems(alarms, config))
    result = Examination(index, tuple(diagnostics), len(files))
    result = replace(result, diagnostics=(*diagnostics, *_template(root, result, alarms, config)))
    return replace(result, desired=assemble(pieces)) if records and result.ok else result


def _examine_file(
    path: Path, relative: str, root: Path, *, config: RepoConfig, records: bool
) -> tuple[Entry | None, Piece | None, list[Diagnostic]]:
    """One file loaded and checked on its own: its findings, its entry and (with ``records``)
    its share of the records; the model stays here."""
    loaded, diagnostics = load_file(path, relative, root)
    if loaded is None:
        return None, None, diagnostics
    manifest, source = loaded.manifest, loaded.source
    diagnostics.extend(check_manifest(manifest, source, config))  # may read the document
    entry = entry_of(manifest, source.released())  # which need not travel
    return entry, piece_of(manifest) if records else None, diagnostics


def _deploy_inputs(index: Index) -> Inputs:
    """What the alarms and the deployment template read of a tree (``reconciler.deploy``):
    the cost thresholds, and each flag's name and request type (none when no threshold reads
    them), from the index: no model of any flag."""
    thresholds = tuple(
        (entry.threshold, entry.source)
        for entry in index.of(CostThreshold)
        if entry.threshold is not None
    )
    flags = tuple((e.name, e.request_type) for e in index.of(Flag)) if thresholds else ()
    return Inputs(thresholds, flags)


def _template(
    root: Path, result: Findings, tree: Tree | Inputs, config: RepoConfig
) -> list[Diagnostic]:
    """With a committed deployment template, whether it is still the one generated."""
    if not result.ok or not (root / TEMPLATE_FILE).is_file():
        return []
    from reconciler.deploy.template import check_committed  # noqa: PLC0415 - boto3, only here

    return check_committed(root, tree, config)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
