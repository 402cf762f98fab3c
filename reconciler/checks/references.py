"""References between manifests resolve, agree in both directions, and do not collide."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator

from reconciler.config import RepoConfig
from reconciler.diagnostics import Diagnostic
from reconciler.index import Entry, Index
from reconciler.loader import Source
from reconciler.manifests import CostThreshold, Experiment, Flag, RolloutStrategy
from reconciler.manifests.cost import CostScope


def check_references(index: Index, config: RepoConfig) -> Iterator[Diagnostic]:
    flags = {flag.name: flag for flag in index.of(Flag)}
    experiments = {e.name: e for e in index.of(Experiment)}
    strategies = {r.name: r for r in index.of(RolloutStrategy)}
    request_types = {f.request_type for f in flags.values() if f.request_type}
    # A file that failed to load reports its own errors; references to it are not new ones.
    broken_flags = index.unloaded_names(Flag.folder)
    broken_experiments = index.unloaded_names(Experiment.folder)
    broken_strategies = index.unloaded_names(RolloutStrategy.folder)
    named = flags.keys() | set(broken_flags)  # once: not a copy of every flag per reference

    for experiment in index.of(Experiment):
        assert experiment.feature_flag is not None
        if experiment.feature_flag not in named:
            yield _unresolved(
                experiment.source, ("feature_flag",), experiment.feature_flag, "flag", flags
            )
    for strategy in index.of(RolloutStrategy):
        assert strategy.feature_flag is not None
        if strategy.feature_flag not in named:
            yield _unresolved(
                strategy.source, ("feature_flag",), strategy.feature_flag, "flag", flags
            )
            continue
        target = flags.get(strategy.feature_flag)
        needs_type = target is not None and target.request_type is None and strategy.active
        if needs_type and target is not None and strategy.recorded:
            yield strategy.source.diagnostic(
                strategy.recorded[0],
                f"flag '{target.name}' declares no request_type, so nothing records "
                "the outcomes this check reads (record_ai_success and record_ai_failure "
                "count by request type): give the flag a request_type, or use a "
                "custom_metric",
                "reference",
            )

    for flag in index.of(Flag):
        source = flag.source
        if flag.experiment is not None:
            found = experiments.get(flag.experiment)
            if found is None and flag.experiment not in broken_experiments:
                yield _unresolved(
                    source, ("experiment",), flag.experiment, "experiment", experiments
                )
            elif found is not None and found.feature_flag != flag.name:
                yield source.diagnostic(
                    ("experiment",),
                    f"experiment '{flag.experiment}' runs on flag '{found.feature_flag}' "
                    f"({found.source.path}), not on this flag",
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
            elif found_strategy is not None and found_strategy.feature_flag != flag.name:
                yield source.diagnostic(
                    ("rollout_strategy",),
                    f"rollout strategy '{flag.rollout_strategy}' ramps flag "
                    f"'{found_strategy.feature_flag}' ({found_strategy.source.path}), not this "
                    "flag",
                    "reference",
                )

    for entry in index.of(CostThreshold):
        assert entry.threshold is not None
        scope = entry.threshold.applies_to
        if not isinstance(scope, CostScope):
            continue
        for position, name in enumerate(scope.flags):
            if name not in flags and name not in broken_flags:
                yield _unresolved(
                    entry.source, ("applies_to", "flags", position), name, "flag", flags
                )
        for position, name in enumerate(scope.request_types):
            if name not in request_types and not broken_flags:
                close = _close(name, request_types)
                yield entry.source.diagnostic(
                    ("applies_to", "request_types", position),
                    f"request type '{name}' is declared by no flag (request_type in flags.d/)"
                    f"{close}",
                    "reference",
                )


def check_one_active_per_flag(index: Index, config: RepoConfig) -> Iterator[Diagnostic]:
    for label, kind in (("experiment", Experiment), ("rollout strategy", RolloutStrategy)):
        first: dict[str, Entry] = {}
        for entry in index.of(kind):
            if not entry.active:
                continue
            assert entry.feature_flag is not None
            other = first.setdefault(entry.feature_flag, entry)
            if other is not entry:
                yield entry.source.diagnostic(
                    entry.active_field,
                    f"flag '{entry.feature_flag}' already has an active {label} '{other.name}' "
                    f"({other.source.path}); at most one may be active per flag",
                    "one-active",
                )


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
