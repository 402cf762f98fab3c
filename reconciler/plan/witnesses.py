"""Witness values: for each attribute a targeting condition reads, values that make the
condition true and values that make it false (absence is always one of them).

They are what the plan's synthetic population is made of (``reconciler.plan.population``), so
that every rule of a flag matches some of its units and misses others. The conditions are read
as they are stored (``{"attribute", "operator", "value"|"values"}``, ``all``, ``any``, ``not``)
and the values chosen for the semantics of ``reconciler.runtime.rules.compile_condition``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from re import _parser as regex_parser  # type: ignore[attr-defined]  # the parser re uses
from typing import Any

from reconciler.runtime.rules import semver_key

Witnesses = dict[str, list[Any]]  # attribute path -> values, in the order found

OTHER = "~other"  # a string no list of values is expected to hold
LOWEST_VERSION = "0.0.0-0"  # the lowest semantic version there is


def witnesses(conditions: Iterable[Mapping[str, Any]]) -> Witnesses:
    """Every attribute the conditions read, with values that make each condition true and
    false; duplicates (by type as well as value: ``True`` is not ``1``) are dropped."""
    found: Witnesses = {}
    for condition in conditions:
        for attribute, value in _of(condition):
            values = found.setdefault(attribute, [])
            if not any(_same(value, v) for v in values):
                values.append(value)
    return found


def rule_conditions(targeting: Any) -> Iterator[Mapping[str, Any]]:
    """The conditions of a stored ``targeting`` (any shape: what is not a rule is skipped)."""
    if not isinstance(targeting, Mapping):
        return
    for rule in targeting.get("rules") or ():
        if isinstance(rule, Mapping) and isinstance(rule.get("when"), Mapping):
            yield rule["when"]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _of(condition: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for combinator in ("all", "any"):
        if combinator in condition:
            for part in condition[combinator] or ():
                if isinstance(part, Mapping):
                    yield from _of(part)
            return
    if "not" in condition:
        if isinstance(condition["not"], Mapping):
            yield from _of(condition["not"])
        return
    attribute = condition.get("attribute")
    if not isinstance(attribute, str):
        return
    for value in _values(str(condition.get("operator")), condition):
        yield attribute, value


def _values(operator: str, condition: Mapping[str, Any]) -> list[Any]:
    expected: Any = condition.get("value")
    if operator in ("in", "not_in"):
        members = list(condition.get("values") or ())
        return [*members, *_outside(members)]
    if operator in ("equals", "not_equals"):
        return [expected, *_outside([expected])]
    if operator == "exists":
        return ["present"]
    if operator == "matches":
        return _matching(str(expected))
    if operator.startswith("semver_"):
        return _versions(str(expected))
    try:
        limit = float(expected)
    except (TypeError, ValueError):
        return []
    near = [limit - 1, limit, limit + 1]
    return [int(v) if v.is_integer() else v for v in near]


def _outside(members: list[Any]) -> list[Any]:
    """Values equal to none of the members: a string, and a number or a boolean when the
    members have numbers or booleans."""
    result: list[Any] = [OTHER]
    numbers = [float(m) for m in members if isinstance(m, int | float) and not isinstance(m, bool)]
    if numbers:
        result.append(int(max(numbers)) + 1)
    flags = {m for m in members if isinstance(m, bool)}
    result.extend(b for b in (True, False) if flags and b not in flags)
    return result


def _versions(version: str) -> list[Any]:
    """The version, one above it and, where there is one, one below it."""
    key = semver_key(version)
    if key is None:
        return [version]
    result = [version, f"{key[0] + 1}.0.0"]
    lowest = semver_key(LOWEST_VERSION)
    if lowest is not None and lowest < key:
        result.append(LOWEST_VERSION)
    return result


def _matching(pattern: str) -> list[Any]:
    """A string the pattern finds, when one can be made from it, and one it does not."""
    try:
        compiled = re.compile(pattern)
    except re.error:
        return []
    result: list[Any] = []
    example = regex_example(pattern)
    if example is not None and compiled.search(example):
        result.append(example)
    miss = next((s for s in ("", OTHER, "0", " ") if not compiled.search(s)), None)
    result.append(miss if miss is not None else 0)  # a number: matches needs a string
    return result


def regex_example(pattern: str) -> str | None:
    """A short string built from the pattern's parse tree (literals, classes, repeats at their
    minimum, first alternatives); None when the pattern uses what this cannot build. The
    caller checks that the pattern finds it."""
    try:
        return _build(regex_parser.parse(pattern))
    except Exception:  # a private module: whatever it does, there is just no example
        return None


_CATEGORY = {
    "CATEGORY_DIGIT": "0",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "a",
    "CATEGORY_WORD": "a",
    "CATEGORY_NOT_WORD": " ",
}


def _build(tree: Any) -> str | None:
    parts = []
    for op, arg in tree:
        part = _node(str(op), arg)
        if part is None:
            return None
        parts.append(part)
    return "".join(parts)


def _node(op: str, arg: Any) -> str | None:
    if op == "LITERAL":
        return chr(arg)
    if op == "NOT_LITERAL":
        return "a" if arg != ord("a") else "b"
    if op == "ANY":
        return "a"
    if op in ("AT", "ASSERT", "ASSERT_NOT"):
        return ""
    if op == "IN":
        return _in(arg)
    if op == "CATEGORY":
        return _CATEGORY.get(str(arg))
    if op == "BRANCH":
        return _build(arg[1][0])
    if op == "SUBPATTERN":
        return _build(arg[-1])
    if op == "ATOMIC_GROUP":
        return _build(arg)
    if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        low, _, item = arg
        inner = _build(item)
        return None if inner is None else inner * int(low)
    return None


def _in(items: Any) -> str | None:
    if items and str(items[0][0]) == "NEGATE":
        return "~"  # rarely excluded; the caller checks the whole example anyway
    for op, arg in items:
        if str(op) == "LITERAL":
            return chr(arg)
        if str(op) == "RANGE":
            return chr(arg[0])
        if str(op) == "CATEGORY":
            return _CATEGORY.get(str(arg))
    return None
