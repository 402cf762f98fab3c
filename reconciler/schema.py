"""JSON Schemas generated from the manifest models, and schema errors explained for people.

The files in ``schemas/`` are this module's output (``python -m reconciler.schema schemas``); a
test keeps them equal to it. Validation uses the same in-memory schemas, and turns each
jsonschema error into a message that says what was expected and, where it can, how to fix it.
"""

from __future__ import annotations

import difflib
import functools
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from reconciler.diagnostics import FieldPath
from reconciler.manifests import KINDS, Kind
from reconciler.manifests.common import NAME_PATTERN, SEMVER_PATTERN, TAG_PATTERN, TIMESTAMP_PATTERN

SCHEMA_BASE_ID = "urn:reconciler:schema:"

PATTERN_HELP = {
    NAME_PATTERN: "must start with a letter and hold only letters, digits, '_' or '-' "
    "(at most 128 characters)",
    TIMESTAMP_PATTERN: "must be an RFC 3339 time with a time zone, e.g. 2025-01-09T10:00:00Z",
    SEMVER_PATTERN: "must be a semantic version such as 2.4.0",
    TAG_PATTERN: "must be lower case: letters, digits and _ . : / - (at most 63 characters)",
}
TYPE_WORDS = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


class _Generator(GenerateJsonSchema):
    """Pydantic's generator, minus nulls (an absent field is spelled by leaving it out)."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        generated = super().default_schema(schema)
        if generated.get("default", ...) is None:
            del generated["default"]
        return generated


@functools.cache
def schema_for(kind_name: str) -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of one manifest kind."""
    kind = KINDS[kind_name]
    generated = kind.model.model_json_schema(schema_generator=_Generator)
    file_stem = kind.schema_file.removesuffix(".schema.json")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE_ID}{file_stem}",
        **generated,
    }


@functools.cache
def _validator(kind_name: str) -> Draft202012Validator:
    return Draft202012Validator(schema_for(kind_name))


@dataclass(frozen=True)
class SchemaProblem:
    """One schema violation: the field it concerns and whether it points at the key."""

    field: FieldPath
    message: str
    at_key: bool = False
    at_parent: bool = False


def check(kind: Kind, data: object) -> list[SchemaProblem]:
    """Every schema violation of one document, explained."""
    root = schema_for(kind.name)
    problems: dict[SchemaProblem, None] = {}  # ordered, without repeats
    for error in _validator(kind.name).iter_errors(data):
        problems.update(dict.fromkeys(_explain(error, root)))
    return list(problems)


def _explain(error: ValidationError, root: Mapping[str, Any]) -> Iterator[SchemaProblem]:
    path: FieldPath = tuple(error.absolute_path)
    validator: Any = error.validator
    expected: Any = error.validator_value
    instance: Any = error.instance
    node: Any = error.schema
    if validator == "additionalProperties":
        known = list(node.get("properties", {}))
        for key in sorted(set(instance) - set(known)):
            yield SchemaProblem(
                (*path, key), f"unknown field '{key}'{_did_you_mean(key, known)}", at_key=True
            )
    elif validator == "required":
        for key in expected:
            if key not in instance:
                yield SchemaProblem((*path, key), f"missing required field '{key}'", at_parent=True)
    elif validator == "type":
        if instance is None and path and not _required(root, path):
            yield SchemaProblem(path, "null is not allowed; remove the field instead")
        else:
            yield SchemaProblem(
                path, f"expected {_type_words(expected)}, got {_describe(instance)}"
            )
    elif validator in ("enum", "const"):
        options = expected if validator == "enum" else [expected]
        hint = _did_you_mean(instance, options) if isinstance(instance, str) else ""
        yield SchemaProblem(
            path, f"must be one of: {', '.join(map(str, options))} (got {_show(instance)}){hint}"
        )
    elif validator in _BOUNDS:
        yield SchemaProblem(
            path, f"must be {_BOUNDS[validator]} {expected} (got {_show(instance)})"
        )
    elif validator in ("minItems", "maxItems", "minLength", "maxLength"):
        yield SchemaProblem(path, _size_message(validator, expected, instance))
    elif validator == "pattern":
        help_text = PATTERN_HELP.get(expected, f"must match the pattern {expected}")
        yield SchemaProblem(path, f"{help_text} (got {_show(instance)})")
    elif validator == "uniqueItems":
        repeated = next((item for i, item in enumerate(instance) if item in instance[:i]), None)
        yield SchemaProblem(path, f"must not repeat items ({_show(repeated)} appears twice)")
    elif validator in ("anyOf", "oneOf"):
        yield from _explain_union(error, root)
    else:
        yield SchemaProblem(path, error.message)


_BOUNDS = {
    "minimum": "at least",
    "maximum": "at most",
    "exclusiveMinimum": "greater than",
    "exclusiveMaximum": "less than",
}


def _explain_union(error: ValidationError, root: Mapping[str, Any]) -> Iterator[SchemaProblem]:
    """Explain a failed union by the branch the author evidently meant, if one is evident."""
    path: FieldPath = tuple(error.absolute_path)
    node: Any = error.schema
    instance: Any = error.instance
    alternatives: Any = error.validator_value
    branches: list[Mapping[str, Any]] = [_resolve(b, root) for b in alternatives]
    by_branch: dict[int, list[ValidationError]] = {}
    for sub in error.context or []:
        by_branch.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    chosen = _chosen_branch(error, branches, root)
    if chosen is not None and by_branch.get(chosen):
        for sub in by_branch[chosen]:
            yield from _explain(sub, root)
        return
    discriminator = node.get("discriminator")
    if discriminator and isinstance(instance, dict):
        key = discriminator["propertyName"]
        if key not in instance:
            yield SchemaProblem((*path, key), f"missing required field '{key}'", at_parent=True)
            known = sorted(_property_names(node, root))
            for extra in sorted(set(instance) - set(known)):
                yield SchemaProblem(
                    (*path, extra),
                    f"unknown field '{extra}'{_did_you_mean(extra, known)}",
                    at_key=True,
                )
            return
        options = sorted(discriminator.get("mapping", {}))
        got = instance[key]
        hint = _did_you_mean(got, options) if isinstance(got, str) else ""
        yield SchemaProblem(
            (*path, key), f"must be one of: {', '.join(options)} (got {_show(got)}){hint}"
        )
        return
    described = [_describe_branch(b, root) for b in branches]
    alternatives = (
        ", ".join(described[:-1]) + " or " + described[-1] if len(described) > 1 else described[0]
    )
    yield SchemaProblem(path, f"expected {alternatives}; got {_describe(instance)}")


def _chosen_branch(
    error: ValidationError,
    branches: list[Mapping[str, Any]],
    root: Mapping[str, Any],
) -> int | None:
    """The branch the instance evidently aims at: by discriminator, by keys, or by type."""
    instance: Any = error.instance
    node: Any = error.schema
    alternatives: Any = error.validator_value
    discriminator = node.get("discriminator")
    if discriminator and isinstance(instance, dict):
        value = instance.get(discriminator["propertyName"])
        target = discriminator.get("mapping", {}).get(value) if isinstance(value, str) else None
        for index, branch in enumerate(alternatives):
            if branch.get("$ref") == target:
                return index
        return None
    if isinstance(instance, dict):
        scores = [len(set(instance) & _property_names(b, root)) for b in branches]
        best = max(scores, default=0)
        if best > 0 and scores.count(best) == 1:
            return scores.index(best)
        mappings = [i for i, b in enumerate(branches) if b.get("type") == "object"]
        return mappings[0] if best == 0 and len(mappings) == 1 else None
    fitting = [i for i, b in enumerate(branches) if _type_fits(b, instance)]
    return fitting[0] if len(fitting) == 1 else None


def _property_names(branch: Mapping[str, Any], root: Mapping[str, Any]) -> set[str]:
    names = set(branch.get("properties", {}))
    for inner in branch.get("oneOf", []) + branch.get("anyOf", []):
        names |= _property_names(_resolve(inner, root), root)
    return names


def _type_fits(branch: Mapping[str, Any], instance: object) -> bool:
    json_type = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
    }.get(type(instance))
    if "const" in branch:
        return bool(branch["const"] == instance)
    expected = branch.get("type")
    if expected is None:
        return False
    return json_type == expected or (json_type == "integer" and expected == "number")


def _required(root: Mapping[str, Any], path: FieldPath) -> bool:
    """Whether the field at ``path`` is required, following the schema along the path."""
    node: Mapping[str, Any] = root
    for part in path[:-1]:
        node = _resolve(node, root)
        node = node.get("items", {}) if isinstance(part, int) else _property(node, part, root)
    node = _resolve(node, root)
    return path[-1] in node.get("required", []) if not isinstance(path[-1], int) else True


def _property(node: Mapping[str, Any], name: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if name in node.get("properties", {}):
        found: Mapping[str, Any] = node["properties"][name]
        return found
    for branch in node.get("anyOf", []) + node.get("oneOf", []):
        resolved = _resolve(branch, root)
        if name in resolved.get("properties", {}):
            inner: Mapping[str, Any] = resolved["properties"][name]
            return inner
    return {}


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: Mapping[str, Any] = root["$defs"][ref.removeprefix("#/$defs/")]
        return resolved
    return node


def _describe_branch(branch: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    if "const" in branch:
        return repr(branch["const"])
    if "enum" in branch:
        return "one of " + ", ".join(map(str, branch["enum"]))
    if "discriminator" in branch:
        return "an attribute condition (attribute, operator, value)"
    if branch.get("type") == "object" and branch.get("required"):
        return "a mapping with " + " and ".join(f"'{key}'" for key in branch["required"])
    if branch.get("type") == "object":
        return "a mapping of " + ", ".join(branch.get("properties", {}))
    if "anyOf" in branch or "oneOf" in branch:
        inner = branch.get("anyOf") or branch.get("oneOf") or []
        return " or ".join(_describe_branch(_resolve(b, root), root) for b in inner)
    return _type_words(branch.get("type", "a value"))


def _size_message(validator: str, expected: int, instance: object) -> str:
    if validator == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters"
    if validator == "maxLength":
        return f"must be at most {expected} characters (got {len(str(instance))})"
    count = len(instance) if isinstance(instance, list) else 0
    if validator == "minItems":
        return f"must have at least {expected} item{'s' if expected > 1 else ''} (got {count})"
    return f"must have at most {expected} items (got {count})"


def _type_words(expected: object) -> str:
    names = expected if isinstance(expected, list) else [expected]
    return " or ".join(TYPE_WORDS.get(str(n), str(n)) for n in names)


def _describe(value: object) -> str:
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, dict):
        keys = ", ".join(f"'{key}'" for key in list(value)[:5])
        return f"a mapping with {keys}" if keys else "an empty mapping"
    return "a list"


def _show(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word: str, options: list[Any]) -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def write_schemas(directory: Path) -> list[Path]:
    """Write every kind's schema into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS.values():
        target = directory / kind.schema_file
        target.write_text(json.dumps(schema_for(kind.name), indent=2) + "\n", encoding="utf-8")
        written.append(target)
    return written


if __name__ == "__main__":  # python -m reconciler.schema schemas
    for written_path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(written_path)
