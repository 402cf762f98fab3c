"""The JSON Schemas: generated from the models, complete, usable by editors and tools."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from reconciler.manifests import KINDS
from reconciler.schema import schema_for
from tests.conftest import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "schemas"


@pytest.mark.parametrize("kind", list(KINDS))
def test_committed_schema_is_the_generated_one(kind: str) -> None:
    committed = json.loads((SCHEMA_DIR / KINDS[kind].schema_file).read_text())
    assert committed == schema_for(kind), (
        "schemas/ is out of date: run `python -m reconciler.schema schemas` and commit the result"
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_is_valid_draft_2020_12(kind: str) -> None:
    schema = schema_for(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("urn:reconciler:schema:")
    Draft202012Validator.check_schema(schema)


def _objects(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            yield where, node
        for key, value in node.items():
            yield from _objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _objects(value, f"{where}/{index}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_field_is_described_and_closed(kind: str) -> None:
    undocumented, open_objects = [], []
    for where, node in _objects(schema_for(kind)):
        if node.get("additionalProperties") is not False:
            open_objects.append(where)
        for name, field in node["properties"].items():
            if not field.get("description"):
                undocumented.append(f"{where}/properties/{name}")
    assert undocumented == []
    assert open_objects == []


@pytest.mark.parametrize("kind", list(KINDS))
def test_closed_sets_are_enums(kind: str) -> None:
    properties = schema_for(kind)["properties"]
    assert properties["kind"]["const"] == kind
    if kind == "Flag":
        assert properties["type"]["enum"] == ["boolean", "string", "number", "json"]
        assert properties["fail_mode"]["enum"] == ["open", "closed"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_examples_are_valid_manifests(kind: str) -> None:
    schema = schema_for(kind)
    assert schema["examples"], "every kind carries at least one example"
    for example in schema["examples"]:
        Draft202012Validator(schema).validate(example)
        KINDS[kind].model.model_validate(example)


def _check_jsonschema() -> str:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("check-jsonschema is a test dependency: pip install -e '.[test]'")
    return found


def test_check_jsonschema_accepts_the_schemas_and_the_examples() -> None:
    tool = _check_jsonschema()
    schemas = sorted(SCHEMA_DIR.glob("*.schema.json"))
    assert len(schemas) == len(KINDS)
    subprocess.run([tool, "--check-metaschema", *map(str, schemas)], check=True)
    for kind in KINDS.values():
        manifests = sorted((REPO_ROOT / kind.folder).glob("*.yaml"))
        assert manifests, f"{kind.folder}/ has an example"
        subprocess.run(
            [tool, "--schemafile", str(SCHEMA_DIR / kind.schema_file), *map(str, manifests)],
            check=True,
        )


def test_check_jsonschema_rejects_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "vc_broken.yaml"
    broken.write_text(
        "kind: Flag\nflag_name: vc_broken\ndescription: d\nowner: o\nenabled: maybe\n"
    )
    result = subprocess.run(
        [_check_jsonschema(), "--schemafile", str(SCHEMA_DIR / "flag.schema.json"), str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "maybe" in result.stdout


def test_example_manifests_point_editors_at_their_schema() -> None:
    for kind in KINDS.values():
        for manifest in sorted((REPO_ROOT / kind.folder).glob("*.yaml")):
            first_line = manifest.read_text().splitlines()[0]
            assert first_line == f"# yaml-language-server: $schema=../schemas/{kind.schema_file}"
