"""Targeting conditions compiled once per snapshot into plain predicates over the context."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Context = Mapping[str, Any]
Predicate = Callable[[Context], bool]
MISSING = object()

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


def attribute_getter(path: str) -> Callable[[Context], Any]:
    """Reads ``country`` or, with dots, a nested ``device.os``; ``MISSING`` when absent."""
    parts = path.split(".")
    if len(parts) == 1:
        return lambda context: context.get(path, MISSING)

    def nested(context: Context) -> Any:
        value: Any = context
        for part in parts:
            if not isinstance(value, Mapping):
                return MISSING
            value = value.get(part, MISSING)
            if value is MISSING:
                return MISSING
        return value

    return nested


def compile_condition(condition: Mapping[str, Any]) -> Predicate:
    """A predicate for one condition (as stored: attribute conditions, all, any, not)."""
    if "all" in condition:
        parts = tuple(compile_condition(c) for c in condition["all"])

        def every(context: Context) -> bool:
            for part in parts:  # noqa: SIM110 - a loop, not all(<generator>): the hot path
                if not part(context):
                    return False
            return True

        return every
    if "any" in condition:
        options = tuple(compile_condition(c) for c in condition["any"])

        def some(context: Context) -> bool:
            for option in options:  # noqa: SIM110 - as above
                if option(context):
                    return True
            return False

        return some
    if "not" in condition:
        inner = compile_condition(condition["not"])
        return lambda context: not inner(context)
    attribute = condition["attribute"]
    operator, expected = condition["operator"], condition.get("value")
    values: list[Any] = condition.get("values") or []
    if "." not in attribute and operator == "in" and all(isinstance(v, str) for v in values):
        members = frozenset(values)  # the common case, made fast: country in [DE, FR, ...]

        def member(context: Context) -> bool:
            try:
                return context.get(attribute) in members
            except TypeError:  # a list or an object is no member of a set of strings
                return False

        return member
    get = attribute_getter(attribute)
    test = _operator(operator, expected, values)

    def check(context: Context) -> bool:
        value = get(context)
        if value is MISSING or value is None:
            return False  # every operator, negated ones too, needs the attribute
        return test(value)

    return check


def _operator(name: str, expected: Any, values: Any) -> Callable[[Any], bool]:
    if name == "exists":
        return lambda value: True  # present: absence was handled before
    if name in ("in", "not_in"):
        members = frozenset(_key(v) for v in values)

        def contained(value: Any) -> bool:
            try:
                return _key(value) in members
            except TypeError:  # a list or an object: a member of no set of scalars
                return False

        if name == "in":
            return contained
        return lambda value: not contained(value)
    if name in ("equals", "not_equals"):
        wanted = _key(expected)
        if name == "equals":
            return lambda value: _key(value) == wanted
        return lambda value: _key(value) != wanted
    if name == "matches":
        pattern = re.compile(expected)
        return lambda value: isinstance(value, str) and pattern.search(value) is not None
    if name.startswith("semver_"):
        bound = semver_key(expected)
        compare = _COMPARE[name.removeprefix("semver_")]
        return lambda value: (key := semver_key(value)) is not None and compare(key, bound)
    compare = _COMPARE[name]
    limit = float(expected)
    return lambda value: (number := _number(value)) is not None and compare(number, limit)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "equals": lambda a, b: a == b,
    "less_than": lambda a, b: a < b,
    "less_than_or_equal": lambda a, b: a <= b,
    "greater_than": lambda a, b: a > b,
    "greater_than_or_equal": lambda a, b: a >= b,
}


def _key(value: Any) -> Any:
    """Compare values by type as well: True is not 1, and 1 is 1.0."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return ("other", value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def semver_key(value: Any) -> tuple[Any, ...] | None:
    """Semantic-version precedence as a sortable tuple; None when not a version."""
    if not isinstance(value, str):
        return None
    match = _SEMVER.match(value.strip())
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    identifiers = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split(".")
    )
    return (int(major), int(minor), int(patch), 0, identifiers)
