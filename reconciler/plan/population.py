"""The plan's synthetic population: the users a flag's risk is measured over when its targeting
rules make users differ by more than their buckets.

For a flag change, the population is 100,000 units (``POPULATION_SIZE``), fixed and seeded:

- the attributes are every attribute the targeting rules of the flag before and after read;
- each attribute's values are its witnesses (``reconciler.plan.witnesses``: values that make each
  condition on it true and values that make it false) and absence; every unit draws one of them
  for each attribute, uniformly and independently (``Population.combinations``), from
  ``random.Random`` seeded with ``SEED`` and the witnesses, so the same rules always give the
  same population;
- unit ``i`` has the user id ``synthetic-<i>`` (unless a rule reads ``user_id``: then the drawn
  value is its id, and absence leaves it ``synthetic-<i>``).

A decision reads the context through the rules only, so units that meet the same rules (the
first rule that matches before and after) are decided alike but for their buckets: the
population is summed up in classes (``targeting_classes``), each with its share of the units and
one of their contexts.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from reconciler.plan.witnesses import rule_conditions, witnesses
from reconciler.runtime.evaluate import UNIT_ATTRIBUTE
from reconciler.runtime.rules import Predicate, compile_condition

POPULATION_SIZE = 100_000
SEED = "reconciler.plan.population/1"
UNIT_PREFIX = "synthetic-"
_ONE_DRAW = 2**31  # products up to this size are drawn from at once


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()  # the attribute is not in the context


@dataclass(frozen=True)
class Population:
    """The units: for each attribute its values (``ABSENT`` last), and how many units."""

    attributes: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    size: int = POPULATION_SIZE

    @property
    def seed(self) -> str:
        return f"{SEED}:{self.size}:{list(zip(self.attributes, self.values, strict=True))!r}"

    @property
    def reads_unit(self) -> bool:
        """A rule reads the unit's id itself (``user_id``): its buckets are not uniform."""
        return UNIT_ATTRIBUTE in self.attributes

    def combinations(self) -> list[int]:
        """For each unit, its combination of values: an index into the product of the
        attributes' values (the first attribute varies fastest), drawn uniformly, so every
        attribute's value is uniform and independent of the others'."""
        rng = random.Random(self.seed)
        total = math.prod(len(v) for v in self.values)
        if total <= _ONE_DRAW:
            return rng.choices(range(total), k=self.size)
        columns = [rng.choices(range(len(v)), k=self.size) for v in self.values]
        strides = [math.prod(len(v) for v in self.values[:i]) for i in range(len(self.values))]
        return [
            sum(i * s for i, s in zip(d, strides, strict=True)) for d in zip(*columns, strict=True)
        ]

    def draw(self, combination: int) -> tuple[int, ...]:
        """The index of each attribute's value in a combination."""
        indexes = []
        for values in self.values:
            combination, index = divmod(combination, len(values))
            indexes.append(index)
        return tuple(indexes)

    def context(self, draw: tuple[int, ...], unit: int | None = None) -> dict[str, Any]:
        """The context of a unit with these draws; with ``unit``, its user id too."""
        context: dict[str, Any] = {}
        if unit is not None:
            context[UNIT_ATTRIBUTE] = f"{UNIT_PREFIX}{unit}"
        for attribute, values, index in zip(self.attributes, self.values, draw, strict=True):
            if values[index] is not ABSENT:
                _place(context, attribute, values[index])
        return context

    def units(self) -> Iterator[dict[str, Any]]:
        """Every unit's context, user id included, in order."""
        for unit, combination in enumerate(self.combinations()):
            yield self.context(self.draw(combination), unit)


def population_for(targetings: Sequence[Any], size: int = POPULATION_SIZE) -> Population:
    """The population for a flag whose targeting was and becomes these (stored) targetings."""
    found = witnesses(c for t in targetings for c in rule_conditions(t))
    attributes = tuple(sorted(found))
    return Population(attributes, tuple((*found[a], ABSENT) for a in attributes), size)


@dataclass(frozen=True)
class TargetingClass:
    """Units the rules treat alike: their share, one of their contexts (no user id), and the
    rule that matches them in each targeting (None: no rule)."""

    weight: float
    context: Mapping[str, Any]
    rules: tuple[str | None, ...]


def targeting_classes(targetings: Sequence[Any]) -> tuple[TargetingClass, ...] | None:
    """The population's classes for these targetings (a rollout's before and after, then the
    flag's before and after: classes are named by the last's rules); None when a rule reads
    the unit's id (the classes would depend on the buckets). Cached: many flags share their
    rules."""
    return _classes(json.dumps(list(targetings), sort_keys=True, default=str))


@lru_cache(maxsize=256)
def _classes(key: str) -> tuple[TargetingClass, ...] | None:
    targetings = json.loads(key)
    population = population_for(targetings)
    if population.reads_unit:
        return None
    rule_sets = [_rules(t) for t in targetings]
    classes: dict[tuple[int, ...], list[Any]] = {}
    for combination, count in Counter(population.combinations()).items():
        context = population.context(population.draw(combination))
        signature = tuple(
            next((i for i, (_, test) in enumerate(rules) if test(context)), -1)
            for rules in rule_sets
        )
        entry = classes.setdefault(signature, [0, context])
        entry[0] += count
    return tuple(
        TargetingClass(
            count / population.size,
            context,
            tuple(rules[i][0] if i >= 0 else None for rules, i in zip(rule_sets, sig, strict=True)),
        )
        for sig, (count, context) in sorted(classes.items())
    )


def _rules(targeting: Any) -> list[tuple[str, Predicate]]:
    """The rules' names and predicates, compiled as the runtime compiles them; none for a
    targeting the runtime cannot compile (its flag is broken: decided without its rules)."""
    if not isinstance(targeting, Mapping):
        return []
    try:
        return [(str(r["name"]), compile_condition(r["when"])) for r in targeting.get("rules", [])]
    except Exception:  # re.error, a missing key, a wrong type: the runtime's flag is broken
        return []


def _place(context: dict[str, Any], path: str, value: Any) -> None:
    """Set ``device.os`` as ``{"device": {"os": value}}``, keeping what is there."""
    *parents, leaf = path.split(".")
    node = context
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return  # a value of the parent itself was drawn: it stays
        node = child
    node.setdefault(leaf, value)
