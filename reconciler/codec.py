"""From manifests to stored items: a pure translation, in the original tables' field names.

A flag item carries what the runtime needs in one read: its targeting, its active rollout
strategy (``rollout``) and its experiment (``ab_test_config``, as the original stored it).
Every item's git-owned content is hashed, so drift (an edit outside git) is visible.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.index import Entry, entry_of
from reconciler.loader import Source, Tree
from reconciler.manifests import CostThreshold, Experiment, Flag, Manifest, RolloutStrategy
from reconciler.state.records import (
    CONTROLLER_FIELDS,
    META_FIELDS,
    OVERRIDE_FIELDS,
    Item,
    RecordKind,
)

NOT_GIT_OWNED = frozenset(META_FIELDS) | frozenset(OVERRIDE_FIELDS) | frozenset(CONTROLLER_FIELDS)

DesiredState = Mapping[RecordKind, Mapping[str, Item]]


_RECORD_KINDS = {
    Flag.__name__: RecordKind.FLAG,
    Experiment.__name__: RecordKind.EXPERIMENT,
    RolloutStrategy.__name__: RecordKind.ROLLOUT,
    CostThreshold.__name__: RecordKind.COST_THRESHOLD,
}
_NESTED = (dict, list, tuple, float)  # what canonical may change; other values stay as they are


def canonical(value: Any) -> Any:
    """JSON values in one canonical form: integral floats become ints (100.0 is 100)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {
            k if type(k) is str else str(k): canonical(v) if isinstance(v, _NESTED) else v
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [canonical(v) if isinstance(v, _NESTED) else v for v in value]
    return value


def content_hash(item: Item) -> str:
    """The hash of an item's git-owned content; items are canonical (the codec makes them so,
    and stores return numbers as ints when integral)."""
    return _hash(_json(git_owned(item)))


def git_owned(item: Item) -> Item:
    """The attributes of an item that git owns (everything but metadata and other owners')."""
    return {k: v for k, v in item.items() if k not in NOT_GIT_OWNED}


@dataclass(frozen=True, slots=True)
class Piece:
    """One manifest's share of the desired records, as canonical JSON: made where the manifest
    loads (in a worker process for a large tree), so the models need not be kept to plan."""

    record: str | None = None  # its record's canonical JSON (not a flag's: see fields)
    fields: dict[str, str] | None = None  # a flag: its own attributes, each as canonical JSON
    part: str | None = None  # what it adds to its flag's record: ab_test_config or rollout
    unstarted: bool = False  # a strategy without a start_time: it starts when first applied


class Records(Mapping[str, Item]):
    """One kind's desired records by name, each kept as its canonical JSON (the text its
    content hash is of) and read into a dict only when asked for: a plan of tens of thousands
    of records that changes nothing holds their text and hashes, not their dicts. Each read
    gives a fresh dict."""

    __slots__ = ("_hashes", "_texts", "unstarted")

    def __init__(self, texts: dict[str, str], unstarted: frozenset[str] = frozenset()) -> None:
        self._texts = texts
        self._hashes: dict[str, str] = {}
        self.unstarted = unstarted
        """Flags whose rollout has no start_time (the plan gives it the one it started at)."""

    def __getitem__(self, name: str) -> Item:
        item = _read(self._texts[name])
        assert isinstance(item, dict)
        return item

    def __contains__(self, name: object) -> bool:
        return name in self._texts

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def content_hash(self, name: str) -> str:
        """``content_hash(self[name])``, without reading the record (and computed once)."""
        found = self._hashes.get(name)
        if found is None:
            found = self._hashes[name] = _hash(self._texts[name])
        return found

    def replaced(self, items: Mapping[str, Item]) -> Records:
        """These records with ``items`` in place of those of the same names."""
        texts = {**self._texts, **{name: _json(item) for name, item in items.items()}}
        records = Records(texts, self.unstarted - items.keys())
        records._hashes = {k: v for k, v in self._hashes.items() if k not in items}
        return records


def hash_of(records: Mapping[str, Item], name: str) -> str:
    """The content hash of one desired record (read from its text where it is kept so)."""
    if isinstance(records, Records):
        return records.content_hash(name)
    return content_hash(records[name])


def encode(tree: Tree) -> DesiredState:
    """Every record the tree describes, keyed by kind and name (dicts of its own)."""
    pairs = [(entry_of(m.manifest, m.source), piece_of(m.manifest)) for m in tree.manifests]
    return {kind: dict(records.items()) for kind, records in assemble(pairs).items()}


def piece_of(manifest: Manifest) -> Piece:
    """The manifest's share of the records: its own, and what it adds to its flag's."""
    if isinstance(manifest, Flag):
        item = _plain(manifest)
        item["flag_type"] = item.pop("type")
        return Piece(fields={key: _json(value) for key, value in item.items()})
    if isinstance(manifest, Experiment):
        return Piece(_json(encode_experiment(manifest)), part=_json(_ab_test_config(manifest)))
    if isinstance(manifest, RolloutStrategy):
        unstarted = manifest.configuration.start_time is None
        return Piece(_json(_plain(manifest)), part=_json(_rollout(manifest)), unstarted=unstarted)
    return Piece(_json(_plain(manifest)))


def assemble(pieces: Iterable[tuple[Entry, Piece]]) -> dict[RecordKind, Records]:
    """The records of every manifest's piece (``entry`` says whose): each flag's with its
    experiment's and its active strategy's parts in it."""
    texts: dict[RecordKind, dict[str, str]] = {kind: {} for kind in RecordKind}
    flags: list[tuple[Entry, Piece]] = []
    experiments_of: dict[str | None, list[tuple[Entry, Piece]]] = {}
    strategies_of: dict[str | None, list[tuple[Entry, Piece]]] = {}
    for entry, piece in pieces:
        if piece.fields is not None:
            flags.append((entry, piece))
            continue
        assert piece.record is not None
        texts[_RECORD_KINDS[entry.kind]][entry.name] = piece.record
        if entry.kind == Experiment.__name__:
            experiments_of.setdefault(entry.feature_flag, []).append((entry, piece))
        elif entry.kind == RolloutStrategy.__name__:
            strategies_of.setdefault(entry.feature_flag, []).append((entry, piece))
    unstarted = set()
    for flag, piece in flags:
        assert piece.fields is not None
        fields = dict(piece.fields)
        experiment = _experiment_for(flag, experiments_of.get(flag.name, []))
        if experiment is not None:
            fields["experiment"] = _json(experiment[0].name)
            fields["ab_test_config"] = str(experiment[1].part)
        strategy = _strategy_for(flag, strategies_of.get(flag.name, []))
        if strategy is not None:
            fields["rollout_strategy"] = _json(strategy[0].name)
            fields["rollout"] = str(strategy[1].part)
            if strategy[1].unstarted:
                unstarted.add(flag.name)
        texts[RecordKind.FLAG][flag.name] = _object(fields)
    return {
        kind: Records(found, frozenset(unstarted) if kind is RecordKind.FLAG else frozenset())
        for kind, found in texts.items()
    }


def encode_threshold(threshold: CostThreshold) -> Item:
    return _plain(threshold)


def encode_flag(
    flag: Flag, experiments: list[Experiment], strategies: list[RolloutStrategy]
) -> Item:
    """The flag's item; ``experiments`` and ``strategies`` are those naming this flag."""
    source = Source(f"{Flag.folder}/{flag.flag_name}.yaml")
    pieces = [(entry_of(m, source), piece_of(m)) for m in (flag, *experiments, *strategies)]
    return assemble(pieces)[RecordKind.FLAG][flag.flag_name]


def encode_experiment(experiment: Experiment) -> Item:
    item = _plain(experiment)
    item["traffic_allocation"] = canonical({v.name: v.weight for v in experiment.variants})
    return item


def _ab_test_config(experiment: Experiment) -> Any:
    """What the flag's item carries of its experiment (as the original stored it)."""
    return canonical(
        {
            "test_name": experiment.experiment_id,
            "variants": [
                {"name": v.name, "config": v.config, "weight": v.weight}
                for v in experiment.variants
            ],
            "traffic_split": {v.name: v.weight for v in experiment.variants},
            "active": experiment.status == "active",
            "status": experiment.status,
            "control": experiment.control or experiment.variants[0].name,
            "traffic_percentage": experiment.traffic_percentage,
            **({"winner": experiment.winner} if experiment.winner else {}),
            **({"start_time": experiment.start_time} if experiment.start_time else {}),
            **({"end_time": experiment.end_time} if experiment.end_time else {}),
            "metrics": {
                **{m.metric_name: m.metric_type for m in experiment.success_metrics},
                **{m.metric_name: m.metric_type for m in experiment.guardrail_metrics},
            },
        }
    )


def _rollout(strategy: RolloutStrategy) -> Any:
    """What the flag's item carries of its active rollout strategy."""
    return canonical(
        {
            "strategy_name": strategy.strategy_name,
            "rollout_type": strategy.rollout_type,
            "configuration": strategy.configuration.model_dump(
                mode="json", by_alias=True, exclude_none=True
            ),
            # Moved by the rollout controller's checks (else by time alone).
            "gated": bool(
                [c for c in strategy.health_checks if c.enabled]
                or strategy.rollback_conditions
                or strategy.configuration.promotion_criteria
            ),
        }
    )


# Canonical JSON: the text ``content_hash`` hashes (``json.dumps`` with these settings, without
# making an encoder for each call).
_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


# Records read with their keys interned: thousands of items share one copy of each key.
_read = json.JSONDecoder(
    object_pairs_hook=lambda pairs: {sys.intern(k): v for k, v in pairs}
).decode


@functools.cache
def _member(key: str) -> str:
    """An object's key as canonical JSON starts its member (few keys, each made once)."""
    return _json(key) + ":"


def _object(fields: Mapping[str, str]) -> str:
    """The canonical JSON of an object whose attributes are already canonical JSON."""
    return "{" + ",".join(_member(key) + fields[key] for key in sorted(fields)) + "}"


def _hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _plain(manifest: Manifest) -> Item:
    data = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("kind", None)
    result = canonical(data)
    assert isinstance(result, dict)
    return result


Chosen = tuple[Entry, Piece]


def _experiment_for(flag: Entry, experiments: list[Chosen]) -> Chosen | None:
    mine = [e for e in experiments if e[0].feature_flag == flag.name]
    linked = [e for e in mine if e[0].name == flag.experiment]
    active = [e for e in mine if e[0].active]
    return next(iter(linked or active), None)


def _strategy_for(flag: Entry, strategies: list[Chosen]) -> Chosen | None:
    mine = [s for s in strategies if s[0].feature_flag == flag.name]
    active = [s for s in mine if s[0].active]
    linked = [s for s in active if s[0].name == flag.rollout_strategy]
    return next(iter(linked or active), None)  # an inactive strategy drives nothing
