"""The ways of reading a tree that keep no models (``examine``, records kept as text, the quick
YAML reading, the listing) find, encode and plan exactly what the model-keeping ways do."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import loader, yaml_strict
from reconciler.codec import Records, content_hash, encode
from reconciler.config import load_config
from reconciler.diagnostics import render_text
from reconciler.plan.build import build_plan, desired_digest
from reconciler.state.local import LocalStore
from reconciler.state.records import RecordKind
from reconciler.validation import examine, validate
from tests.conftest import REPO_ROOT
from tests.test_yaml_strict import YAML_ALPHABET

NOW = datetime(2026, 1, 9, 10, 0, tzinfo=UTC)


def _grown(root: Path) -> Path:
    """The example tree with a clone of each manifest, and problems of every sort: in one
    file (schema, YAML, secret, naming) and across files (duplicates, references, two active
    experiments on one flag)."""
    for folder in ("flags.d", "experiments.d", "rollouts.d", "costs.d"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    shutil.copy(REPO_ROOT / "reconciler.toml", root / "reconciler.toml")
    flags, experiments = root / "flags.d", root / "experiments.d"
    text = (flags / "vc_bedrock_live.yaml").read_text()
    (flags / "vc_copy.yaml").write_text(
        text.replace("flag_name: vc_bedrock_live", "flag_name: vc_copy")
    )
    (flags / "vc_dup.yaml").write_text(text)  # a second vc_bedrock_live, in the wrong file
    (flags / "vc_broken.yaml").write_text("kind: Flag\nflag_name: [\n")
    (flags / "vc_yes.yaml").write_text(
        "kind: Flag\nflag_name: vc_yes\ndescription: d\nowner: o\nenabled: yes\n"
    )
    (flags / "vc_range.yaml").write_text(
        "kind: Flag\nflag_name: vc_range\ndescription: d\nowner: o\nenabled: true\n"
        "rollout_percentage: 150\n"
    )
    (flags / "vc_secret.yaml").write_text(
        "kind: Flag\nflag_name: vc_secret\ndescription: d\nowner: o\nenabled: true\n"
        "experiment: nowhere\n# key AKIAABCDEFGHIJKLMNOP\n"
    )
    (flags / "BadName.yaml").write_text(
        "kind: Flag\nflag_name: BadName\ndescription: d\nowner: o\nenabled: true\n"
    )
    experiment = (experiments / "claude_vs_gemini.yaml").read_text()
    (experiments / "second.yaml").write_text(
        experiment.replace("experiment_id: claude_vs_gemini", "experiment_id: second")
    )
    return root


def _in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "PARALLEL_FROM", 1)
    monkeypatch.setenv("RECONCILER_WORKERS", "2")
    monkeypatch.setattr(loader.threading, "active_count", lambda: 1)  # the test's own threads


@pytest.mark.parametrize("where", ["here", "workers"])
def test_examine_finds_what_validate_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    root = _grown(tmp_path)
    config = load_config(root)
    expected = validate(root, config)
    if where == "workers":
        _in_workers(monkeypatch)
    found = examine(root, config)
    assert list(render_text(found.diagnostics)) == list(render_text(expected.diagnostics))
    assert {d.rule for d in found.diagnostics} >= {
        "yaml",
        "schema",
        "secret",
        "naming",
        "file-name",
        "unique-name",
        "reference",
        "one-active",
    }
    assert found.summary() == expected.summary()
    assert found.files == expected.files
    assert found.index.unloaded == expected.tree.unloaded
    assert [e.source.path for e in found.index.entries] == [
        m.source.path for m in expected.tree.manifests
    ]
    assert found.desired is None


@pytest.mark.parametrize("where", ["here", "workers"])
def test_examined_records_are_the_encoded_ones(
    example_tree: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    config = load_config(example_tree)
    encoded = encode(validate(example_tree, config).tree)
    if where == "workers":
        _in_workers(monkeypatch)
    desired = examine(example_tree, config, records=True).desired
    assert desired is not None
    assert {kind: dict(records) for kind, records in desired.items()} == encoded
    for kind, records in desired.items():
        assert isinstance(records, Records)
        for name in records:
            assert records.content_hash(name) == content_hash(encoded[kind][name])
    assert desired_digest(desired) == desired_digest(encoded)
    flag = desired[RecordKind.FLAG]["ai_model_selection"]
    assert flag["ab_test_config"]["test_name"] == "claude_vs_gemini", "the experiment's part"
    assert desired[RecordKind.FLAG]["vc_bedrock_live"]["rollout"]["strategy_name"] == (
        "bedrock_gradual_rollout"
    )


def test_an_invalid_tree_has_no_records(example_tree: Path) -> None:
    (example_tree / "flags.d" / "vc_broken.yaml").write_text("kind: Flag\n")
    result = examine(example_tree, load_config(example_tree), records=True)
    assert not result.ok
    assert result.desired is None


def _plans(root: Path, store: LocalStore) -> tuple[dict[str, object], dict[str, object]]:
    config = load_config(root)
    from_models = build_plan(encode(validate(root, config).tree), store, git_commit="c", now=NOW)
    desired = examine(root, config, records=True).desired
    assert desired is not None
    from_text = build_plan(desired, store, git_commit="c", now=NOW)
    return from_models.to_dict(), from_text.to_dict()


def test_a_plan_of_records_kept_as_text_is_the_plan_of_dicts(
    example_tree: Path, tmp_path: Path
) -> None:
    """Creates, then no change, then drift and an update: the same plan, JSON and all."""
    from reconciler.apply import apply_plan

    store = LocalStore(tmp_path / "state.db")
    models, text = _plans(example_tree, store)
    assert text == models
    assert {c["action"] for c in text["changes"]} == {"create"}  # type: ignore[index]
    desired = examine(example_tree, load_config(example_tree), records=True).desired
    assert desired is not None
    apply_plan(
        build_plan(desired, store, git_commit="c", now=NOW),
        store,
        actor="t",
        now=lambda: NOW,
    )
    models, text = _plans(example_tree, store)
    assert text == models
    assert {c["action"] for c in text["changes"]} == {"unchanged"}  # type: ignore[index]
    # An edit outside git (drift) on one record, a change in git on another.
    with sqlite3.connect(tmp_path / "state.db") as connection:
        where = "WHERE kind = 'flag' AND name = 'vc_bedrock_live'"
        row = connection.execute(f"SELECT item FROM records {where}").fetchone()
        item = json.loads(row[0])
        item["rollout_percentage"] = 55
        connection.execute(f"UPDATE records SET item = ? {where}", (json.dumps(item),))
    connection.close()
    path = example_tree / "flags.d" / "ai_model_selection.yaml"
    path.write_text(path.read_text().replace("fail_mode: open", "fail_mode: closed"))
    models, text = _plans(example_tree, store)
    assert text == models
    changes = {c["name"]: c for c in text["changes"]}  # type: ignore[attr-defined]
    assert changes["vc_bedrock_live"]["drift"] is True
    assert changes["vc_bedrock_live"]["action"] == "update"
    assert changes["ai_model_selection"]["action"] == "update"
    assert changes["ai_model_selection"]["drift"] is False
    assert changes["bedrock_gradual_rollout"]["action"] == "unchanged"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=YAML_ALPHABET, max_size=300))
def test_the_quick_reading_agrees_with_the_careful_one(text: str) -> None:
    quick = yaml_strict._plain_build(text)
    if quick is yaml_strict._CAREFUL:
        return
    careful = yaml_strict._build(text, track=False)
    assert isinstance(careful, yaml_strict._Builder)
    assert careful.problems == []
    assert careful.root == quick
    assert json.dumps(careful.root) == json.dumps(quick)  # 1 and 1.0, True and 1 apart


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "a: 1\na: 2\n",
        "a: yes\n",
        "a: 1e3\n",
        "a: 0777\n",
        "a: 1\n---\nb: 2\n",
        "? [a]\n: 1\n",
        "1: a\n",
        "a: [\n",
        "a: " + "[" * 70 + "]" * 70 + "\n",
    ],
)
def test_what_the_quick_reading_leaves_to_the_careful_one(text: str) -> None:
    assert yaml_strict._plain_build(text) is yaml_strict._CAREFUL


def test_the_quick_reading_reads_numbers_and_words_as_yaml_1_2_does() -> None:
    text = "a: 12\nb: -0.5\nc: true\nd: false\ne: null\nf: ~\ng: word\nh: '7'\ni: 0x1F\n"
    assert yaml_strict._plain_build(text) == {
        "a": 12,
        "b": -0.5,
        "c": True,
        "d": False,
        "e": None,
        "f": None,
        "g": "word",
        "h": "7",
        "i": 31,
    }


def test_files_are_listed_in_the_order_of_their_paths(tmp_path: Path) -> None:
    folder = tmp_path / "flags.d"
    for relative in ("b.yaml", "a/z.yaml", "a.yaml", "a-b/c.yaml", ".hidden/x.yaml", "README.md"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text("")
    (folder / ".gitkeep").write_text("")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.yaml").write_text("")
    os.symlink(tmp_path / "elsewhere", folder / "linked")
    os.symlink(tmp_path / "elsewhere" / "far.yaml", folder / "c.yaml")
    expected = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.stem not in loader.IGNORED_NAMES
    ]
    listed = list(loader._files(folder))
    assert [path for path, _ in listed] == expected
    assert [inside for _, inside in listed] == [p.relative_to(folder).as_posix() for p in expected]
    assert "c.yaml" in [inside for _, inside in listed], "a linked file is read"
