"""One source of truth: the JSON Schemas and the pydantic models accept the same documents.

Documents come from the schemas themselves (hypothesis-jsonschema) and from random mutations of
every example manifest, which probe the boundaries: missing and unknown fields, wrong types,
numbers just inside and outside their ranges, nulls, empty strings and lists.
"""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from reconciler.loader import load_file
from reconciler.manifests import KINDS
from reconciler.schema import schema_for
from tests.conftest import REPO_ROOT


def _examples(kind: str) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = list(schema_for(kind)["examples"])
    folder = REPO_ROOT / KINDS[kind].folder
    for path in sorted(folder.glob("*.yaml")):
        loaded, diagnostics = load_file(path, path.relative_to(REPO_ROOT).as_posix())
        assert loaded is not None, diagnostics
        data = loaded.source.document.data
        assert isinstance(data, dict)
        documents.append(data)
    return documents


def _agree(kind: str, document: object) -> None:
    by_schema = Draft202012Validator(schema_for(kind)).is_valid(document)
    try:
        KINDS[kind].model.model_validate(document)
        by_model = True
    except pydantic.ValidationError:
        by_model = False
    assert by_schema == by_model, (
        f"schema says {'valid' if by_schema else 'invalid'}, "
        f"model says {'valid' if by_model else 'invalid'}: {document!r}"
    )


def _paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_paths(value, (*prefix, index)))
    return found


BOUNDARY_VALUES = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        7.0,
        0.5,
        99.999,
        100,
        100.0001,
        101,
        1e9,
        -0.0,
        "",
        "x",
        "vc_flag",
        "Not A Name!",
        "2025-01-09T10:00:00Z",
        "2025-01-09",
        "2.4.0",
        "open",
        "all",
        "include",
        "in",
        "equals",
        [],
        ["a"],
        [1, 1],
        {},
        {"x": 1},
    ]
)
json_scalars = (
    st.none() | st.booleans() | st.integers(-5, 200) | st.floats(-5, 200) | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    document = copy.deepcopy(draw(st.sampled_from(_examples(kind))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(document)))
        if not path:
            continue
        parent: Any = document
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        operation = draw(st.sampled_from(["replace", "replace", "delete", "add-key", "duplicate"]))
        if operation == "replace":
            parent[last] = copy.deepcopy(draw(BOUNDARY_VALUES | json_values))
        elif operation == "delete":
            del parent[last]
        elif operation == "add-key" and isinstance(parent[last], dict):
            key = draw(st.sampled_from(["extra", "name", "value", "all", "not"]))
            parent[last][key] = copy.deepcopy(draw(BOUNDARY_VALUES))
        elif operation == "duplicate" and isinstance(parent[last], list) and parent[last]:
            parent[last].append(copy.deepcopy(parent[last][0]))
    return document


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_examples_get_the_same_verdict(kind: str, data: st.DataObject) -> None:
    _agree(kind, data.draw(mutated(kind)))


@pytest.mark.parametrize("kind", list(KINDS))
def test_examples_are_valid(kind: str) -> None:
    for document in _examples(kind):
        _agree(kind, document)
        assert Draft202012Validator(schema_for(kind)).is_valid(document)
