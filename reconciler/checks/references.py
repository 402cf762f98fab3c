"""References between manifests resolve, agree in both directions, and do not collide."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator

from reconciler.config import RepoConfig
from reconciler.diagnostics import Diagnostic, FieldPath
from reconciler.loader import Source, Tree
from reconciler.manifests import CostThreshold, Experiment, Flag, RolloutStrategy
from reconciler.manifests.cost import CostScope


def check_references(tree: Tree, config: RepoConfig) -> Iterator[Diagnostic]:
    flags = {flag.flag_name: flag for flag, _ in tree.of(Flag)}
    experiments = {e.experiment_id: (e, s) for e, s in tree.of(Experiment)}
    strategies = {r.strategy_name: (r, s) for r, s in tree.of(RolloutStrategy)}
    request_types = {f.request_type for f in flags.values() if f.request_type}
    # A file that failed to load reports its own errors; references to it are not new ones.
    broken_flags = tree.unloaded_names(Flag.folder)
    broken_experiments = tree.unloaded_names(Experiment.folder)
    broken_strategies = tree.unloaded_names(RolloutStrategy.folder)
    named = flags.keys() | set(broken_flags)  # once: not a copy of every flag per reference

    for experiment, source in tree.of(Experiment):
        if experiment.feature_flag not in named:
            yield _unresolved(source, ("feature_flag",), experiment.feature_flag, "flag", flags)
    for strategy, source in tree.of(RolloutStrategy):
        if strategy.feature_flag not in named:
            yield _unresolved(source, ("feature_flag",), strategy.feature_flag, "flag", flags)
            continue
        target = flags.get(strategy.feature_flag)
        if target is not None and target.request_type is None and strategy.active:
            recorded = _recorded_checks(strategy)
            if recorded:
                yield source.diagnostic(
                    recorded[0],
                    f"flag '{target.flag_name}' declares no request_type, so nothing records "
                    "the outcomes this check reads (record_ai_success and record_ai_failure "
                    "count by request type): give the flag a request_type, or use a "
                    "custom_metric",
                    "reference",
                )

    for flag, source in tree.of(Flag):
        if flag.experiment is not None:
            found = experiments.get(flag.experiment)
            if found is None and flag.experiment not in broken_experiments:
                yield _unresolved(
                    source, ("experiment",), flag.experiment, "experiment", experiments
                )
            elif found is not None and found[0].feature_flag != flag.flag_name:
                yield source.diagnostic(
                    ("experiment",),
                    f"experiment '{flag.experiment}' runs on flag '{found[0].feature_flag}' "
                    f"({found[1].path}), not on this flag",
                    "reference",
                )
        if flag.rollout_strategy is not None:
            found_strategy = strategies.get(flag.rollout_strategy)
            if found_strategy is None and flag.rollout_strategy not in broken_strategies:
                yield _unresolved(
                    source,
                    ("rollout_strategy",),
                    flag.rollout_strategy,
                    "rollout strategy",
                    strategies,
                )
            elif found_strategy is not None and found_strategy[0].feature_flag != flag.flag_name:
                yield source.diagnostic(
                    ("rollout_strategy",),
                    f"rollout strategy '{flag.rollout_strategy}' ramps flag "
                    f"'{found_strategy[0].feature_flag}' ({found_strategy[1].path}), not this flag",
                    "reference",
                )

    for threshold, source in tree.of(CostThreshold):
        scope = threshold.applies_to
        if not isinstance(scope, CostScope):
            continue
        for index, name in enumerate(scope.flags):
            if name not in flags and name not in broken_flags:
                yield _unresolved(source, ("applies_to", "flags", index), name, "flag", flags)
        for index, name in enumerate(scope.request_types):
            if name not in request_types and not broken_flags:
                close = _close(name, request_types)
                yield source.diagnostic(
                    ("applies_to", "request_types", index),
                    f"request type '{name}' is declared by no flag (request_type in flags.d/)"
                    f"{close}",
                    "reference",
                )


def check_one_active_per_flag(tree: Tree, config: RepoConfig) -> Iterator[Diagnostic]:
    active_experiments = [
        (e.feature_flag, e.experiment_id, s, ("status",))
        for e, s in tree.of(Experiment)
        if e.status == "active"
    ]
    active_strategies = [
        (
            r.feature_flag,
            r.strategy_name,
            s,
            ("active",) if "active" in r.model_fields_set else ("feature_flag",),
        )
        for r, s in tree.of(RolloutStrategy)
        if r.active
    ]
    for label, entries in (
        ("experiment", active_experiments),
        ("rollout strategy", active_strategies),
    ):
        first: dict[str, tuple[str, Source]] = {}
        for flag_name, name, source, field in entries:
            if flag_name in first:
                other, other_source = first[flag_name]
                yield source.diagnostic(
                    field,
                    f"flag '{flag_name}' already has an active {label} '{other}' "
                    f"({other_source.path}); at most one may be active per flag",
                    "one-active",
                )
            else:
                first[flag_name] = (name, source)


def _recorded_checks(strategy: RolloutStrategy) -> list[FieldPath]:
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


def _unresolved(
    source: Source, field: tuple[str | int, ...], name: str, what: str, known: Iterable[str]
) -> Diagnostic:
    folder = {"flag": "flags.d", "experiment": "experiments.d"}.get(what, "rollouts.d")
    return source.diagnostic(
        field, f"'{name}' names no {what} in {folder}/{_close(name, known)}", "reference"
    )


def _close(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{match[0]}'?" if match else ""
