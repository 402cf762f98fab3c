"""What the whole-tree steps read of each manifest: its name, its file and its links to others.

The checks that span manifests (unique names, references, one active per flag) and the codec's
choice of a flag's experiment and strategy read only these few facts. An entry is made where
the manifest loads (in a worker process for a large tree), so the model itself need not travel
back or be kept: a tree of tens of thousands of manifests is held as this index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from reconciler.diagnostics import FieldPath
from reconciler.loader import Source, Tree
from reconciler.manifests import CostThreshold, Experiment, Flag, Manifest, RolloutStrategy


@dataclass(frozen=True, slots=True)
class Entry:
    """One built manifest, as the whole-tree steps see it."""

    kind: str  # "Flag", "Experiment", "RolloutStrategy" or "CostThreshold" (KINDS)
    name: str
    name_field: str
    source: Source
    feature_flag: str | None = None  # experiments, strategies: the flag it runs on
    experiment: str | None = None  # flags: the experiment they name
    rollout_strategy: str | None = None  # flags: the strategy they name
    request_type: str | None = None  # flags
    active: bool = False  # experiments: status active; strategies: active
    active_field: FieldPath = ()  # where that is said (or the field to point at)
    recorded: tuple[FieldPath, ...] = ()  # strategies: checks that read recorded outcomes
    threshold: CostThreshold | None = None  # cost thresholds: the model (few, read whole)


@dataclass(frozen=True)
class Index:
    """Every built manifest's entry, in the tree's order, and the files that did not build."""

    root: Path
    entries: tuple[Entry, ...]
    unloaded: frozenset[str] = frozenset()

    def of(self, kind: type[Manifest]) -> list[Entry]:
        """The entries of one kind, in the tree's order."""
        return self._by_kind.get(kind.__name__, [])

    @functools.cached_property
    def _by_kind(self) -> dict[str, list[Entry]]:
        grouped: dict[str, list[Entry]] = {}
        for entry in self.entries:
            grouped.setdefault(entry.kind, []).append(entry)
        return grouped

    def unloaded_names(self, folder: str) -> set[str]:
        """Names of the files in ``folder`` that could not be built (their errors stand)."""
        return {Path(p).stem for p in self.unloaded if p.startswith(folder + "/")}


def entry_of(manifest: Manifest, source: Source) -> Entry:
    """The entry of one manifest."""
    kind = type(manifest).__name__
    common = (kind, manifest.object_name, manifest.name_field, source)
    if isinstance(manifest, Flag):
        return Entry(
            *common,
            experiment=manifest.experiment,
            rollout_strategy=manifest.rollout_strategy,
            request_type=manifest.request_type,
        )
    if isinstance(manifest, Experiment):
        active = manifest.status == "active"
        flag = manifest.feature_flag
        return Entry(*common, feature_flag=flag, active=active, active_field=("status",))
    if isinstance(manifest, RolloutStrategy):
        said = ("active",) if "active" in manifest.model_fields_set else ("feature_flag",)
        return Entry(
            *common,
            feature_flag=manifest.feature_flag,
            active=manifest.active,
            active_field=said,
            recorded=tuple(recorded_checks(manifest)),
        )
    if isinstance(manifest, CostThreshold):
        return Entry(*common, threshold=manifest)
    return Entry(*common)


def index_of(tree: Tree) -> Index:
    """The index of a tree of built models."""
    entries = tuple(entry_of(m.manifest, m.source) for m in tree.manifests)
    return Index(tree.root, entries, tree.unloaded)


def recorded_checks(strategy: RolloutStrategy) -> list[FieldPath]:
    """Where the strategy's checks on recorded outcomes are (custom metrics are not)."""
    found: list[FieldPath] = [
        ("health_checks", i, "check_type")
        for i, c in enumerate(strategy.health_checks)
        if c.enabled and c.check_type != "custom_metric"
    ]
    found += [
        ("rollback_conditions", i, "check_type")
        for i, c in enumerate(strategy.rollback_conditions)
        if c.check_type != "custom_metric"
    ]
    found += [
        ("configuration", "promotion_criteria", i, "metric_name")
        for i in range(len(strategy.configuration.promotion_criteria))
    ]
    return found
