"""The four manifest kinds and where each lives in the repository."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.manifests.common import Manifest
from reconciler.manifests.cost import CostThreshold
from reconciler.manifests.experiment import Experiment
from reconciler.manifests.flag import Flag
from reconciler.manifests.rollout import RolloutStrategy

__all__ = [
    "KINDS",
    "CostThreshold",
    "Experiment",
    "Flag",
    "Kind",
    "Manifest",
    "RolloutStrategy",
    "kind_for_folder",
]


@dataclass(frozen=True)
class Kind:
    """A manifest kind: its model, its folder and its schema file."""

    name: str
    model: type[Manifest]
    schema_file: str

    @property
    def folder(self) -> str:
        return self.model.folder

    @property
    def name_field(self) -> str:
        return self.model.name_field


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("Flag", Flag, "flag.schema.json"),
        Kind("Experiment", Experiment, "experiment.schema.json"),
        Kind("RolloutStrategy", RolloutStrategy, "rollout-strategy.schema.json"),
        Kind("CostThreshold", CostThreshold, "cost-threshold.schema.json"),
    )
}


def kind_for_folder(folder: str) -> Kind | None:
    """The kind whose manifests belong in ``folder`` (e.g. ``flags.d``)."""
    return next((k for k in KINDS.values() if k.folder == folder), None)
