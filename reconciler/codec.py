"""From manifests to stored items: a pure translation, in the original tables' field names.

A flag item carries what the runtime needs in one read: its targeting, its active rollout
strategy (``rollout``) and its experiment (``ab_test_config``, as the original stored it).
Every item's git-owned content is hashed, so drift (an edit outside git) is visible.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from reconciler.loader import Tree
from reconciler.manifests import CostThreshold, Experiment, Flag, Manifest, RolloutStrategy
from reconciler.state.records import (
    CONTROLLER_FIELDS,
    META_FIELDS,
    OVERRIDE_FIELDS,
    Item,
    RecordKind,
)

NOT_GIT_OWNED = frozenset(META_FIELDS) | frozenset(OVERRIDE_FIELDS) | frozenset(CONTROLLER_FIELDS)

DesiredState = dict[RecordKind, dict[str, Item]]


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
    text = json.dumps(git_owned(item), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def git_owned(item: Item) -> Item:
    """The attributes of an item that git owns (everything but metadata and other owners')."""
    return {k: v for k, v in item.items() if k not in NOT_GIT_OWNED}


def encode(tree: Tree) -> DesiredState:
    """Every record the tree describes, keyed by kind and name."""
    flags = [m for m, _ in tree.of(Flag)]
    experiments = [m for m, _ in tree.of(Experiment)]
    strategies = [m for m, _ in tree.of(RolloutStrategy)]
    thresholds = [m for m, _ in tree.of(CostThreshold)]
    experiments_of: dict[str, list[Experiment]] = {}
    for experiment in experiments:
        experiments_of.setdefault(experiment.feature_flag, []).append(experiment)
    strategies_of: dict[str, list[RolloutStrategy]] = {}
    for strategy in strategies:
        strategies_of.setdefault(strategy.feature_flag, []).append(strategy)
    return {
        RecordKind.FLAG: {
            f.flag_name: encode_flag(
                f, experiments_of.get(f.flag_name, []), strategies_of.get(f.flag_name, [])
            )
            for f in flags
        },
        RecordKind.EXPERIMENT: {e.experiment_id: encode_experiment(e) for e in experiments},
        RecordKind.ROLLOUT: {r.strategy_name: _plain(r) for r in strategies},
        RecordKind.COST_THRESHOLD: {t.threshold_name: encode_threshold(t) for t in thresholds},
    }


def encode_threshold(threshold: CostThreshold) -> Item:
    return _plain(threshold)


def encode_flag(
    flag: Flag, experiments: list[Experiment], strategies: list[RolloutStrategy]
) -> Item:
    """The flag's item; ``experiments`` and ``strategies`` are those naming this flag."""
    item = _plain(flag)
    item["flag_type"] = item.pop("type")
    experiment = _experiment_for(flag, experiments)
    if experiment is not None:
        item["experiment"] = experiment.experiment_id
        item["ab_test_config"] = canonical(
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
    strategy = _strategy_for(flag, strategies)
    if strategy is not None:
        item["rollout_strategy"] = strategy.strategy_name
        item["rollout"] = canonical(
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
    return item


def encode_experiment(experiment: Experiment) -> Item:
    item = _plain(experiment)
    item["traffic_allocation"] = canonical({v.name: v.weight for v in experiment.variants})
    return item


def _plain(manifest: Manifest) -> Item:
    data = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("kind", None)
    result = canonical(data)
    assert isinstance(result, dict)
    return result


def _experiment_for(flag: Flag, experiments: list[Experiment]) -> Experiment | None:
    mine = [e for e in experiments if e.feature_flag == flag.flag_name]
    linked = [e for e in mine if e.experiment_id == flag.experiment]
    active = [e for e in mine if e.status == "active"]
    return next(iter(linked or active), None)


def _strategy_for(flag: Flag, strategies: list[RolloutStrategy]) -> RolloutStrategy | None:
    mine = [s for s in strategies if s.feature_flag == flag.flag_name]
    active = [s for s in mine if s.active]
    linked = [s for s in active if s.strategy_name == flag.rollout_strategy]
    return next(iter(linked or active), None)  # an inactive strategy drives nothing
