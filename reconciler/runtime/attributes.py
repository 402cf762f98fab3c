"""DynamoDB's JSON attribute values as plain values, for the store and the runtime alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def plain_item(raw: Mapping[str, Any]) -> dict[str, Any]:
    """One item from DynamoDB's JSON: integral numbers as ints, maps as dicts, lists as lists."""
    return {key: plain_value(value) for key, value in raw.items()}


def plain_value(attribute: Mapping[str, Any]) -> Any:
    [(tag, value)] = attribute.items()
    if tag in {"S", "BOOL"}:
        return value
    if tag == "N":
        return number(value)
    if tag == "M":
        return {key: plain_value(inner) for key, inner in value.items()}
    if tag == "L":
        return [plain_value(inner) for inner in value]
    if tag == "NULL":
        return None
    if tag == "SS":
        return sorted(value)
    if tag == "NS":
        return sorted(number(v) for v in value)
    raise ValueError(f"attribute type {tag} is not used by flag records")


def number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        value = float(text)
        return int(value) if value.is_integer() else value
