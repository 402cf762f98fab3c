"""The README quickstart, end to end through the CLI, on every backend."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import invoke


@pytest.fixture(params=["local", "moto", "moto-server"])
def backend_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Point the CLI at one backend through the environment, as a user would."""
    if request.param == "local":
        monkeypatch.setenv("RECONCILER_STATE_PATH", str(tmp_path / "state" / "flags.db"))
        yield "local store (SQLite)"
        return
    store = request.getfixturevalue(
        "moto_store" if request.param == "moto" else "moto_server_store"
    )
    monkeypatch.setenv("RECONCILER_STORE", "dynamodb")
    for variable, table in store.tables.items():
        monkeypatch.setenv(variable, table)
    if store.endpoint_url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", store.endpoint_url)
    yield "DynamoDB"


def git_commit_all(root: Path) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "manifests"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def test_quickstart(example_tree: Path, backend_env: str) -> None:
    root = str(example_tree)
    git_commit_all(example_tree)
    assert invoke("--validate", root)[0] == 0

    code, out, err = invoke("--bootstrap", root)
    assert code == 0
    assert f"Store: {backend_env}" in err

    code, out, _ = invoke("--plan", root, "--detailed-exitcode")
    assert code == 2
    assert "Plan: 5 to add, 0 to change, 0 to destroy." in out

    code, out, _ = invoke("--apply", root, "--yes")
    assert code == 0, out
    assert "Apply complete: 5 written" in out

    code, out, _ = invoke("--plan", root, "--detailed-exitcode")
    assert code == 0
    assert "No changes. The store matches git." in out

    flag = example_tree / "flags.d" / "vc_bedrock_live.yaml"
    flag.write_text(
        flag.read_text().replace("rollout_percentage: 100\n", "rollout_percentage: 30\n", 1)
    )
    plan_file = example_tree / "plan.json"
    code, out, _ = invoke("--plan", root, "--detailed-exitcode", "--out", str(plan_file))
    assert code == 2
    changed = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    assert changed == [
        "! rollout 100% -> 30%: no user's decision changes now or in the next 24 h "
        "(rollout strategy bedrock_gradual_rollout's schedule decides)",
        "~ rollout_percentage: 100 -> 30",
    ]
    saved = json.loads(plan_file.read_text())
    assert [c["name"] for c in saved["changes"] if c["action"] != "unchanged"] == [
        "vc_bedrock_live"
    ]

    code, out, _ = invoke("--apply", str(plan_file), "--root", root)
    assert code == 0, out
    assert "Apply complete: 1 written" in out
    code, out, _ = invoke("--plan", root, "--detailed-exitcode")
    assert code == 0

    code, _, err = invoke("--apply", str(plan_file), "--root", root)
    assert code == 0
    code, out, _ = invoke("--plan", root, "--format", "json")
    assert json.loads(out)["summary"] == {
        "add": 0,
        "change": 0,
        "destroy": 0,
        "unchanged": 5,
        "held": 0,
        "blocked": 0,
    }


def test_invalid_tree_plans_and_applies_nothing(example_tree: Path, backend_env: str) -> None:
    root = str(example_tree)
    (example_tree / "flags.d" / "vc_bad.yaml").write_text("kind: Flag\nflag_name: vc_bad\n")
    code, out, err = invoke("--apply", root, "--yes")
    assert code == 1
    assert out == ""
    assert "flags.d/vc_bad.yaml:1:1: description: missing required field 'description'" in err
    assert "Store:" not in err, "the store is not even opened"


def test_apply_without_a_terminal_needs_yes(example_tree: Path, backend_env: str) -> None:
    code, _, err = invoke("--apply", str(example_tree))
    assert code == 1
    assert "refusing to apply without confirmation: pass --yes" in err


def test_saved_plan_from_other_manifests_is_refused(example_tree: Path, backend_env: str) -> None:
    """A later commit that changes a manifest makes the saved plan stale; one that changes
    nothing the plan covers (a README) does not."""
    root = str(example_tree)
    git_commit_all(example_tree)
    plan_file = example_tree / "plan.json"
    assert invoke("--plan", root, "--out", str(plan_file))[0] == 0

    def commit(message: str) -> None:
        subprocess.run(["git", "add", "-A"], cwd=example_tree, check=True)
        subprocess.run(
            [
                "git",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "commit",
                "-qm",
                message,
            ],
            cwd=example_tree,
            check=True,
        )

    flag = example_tree / "flags.d" / "vc_bedrock_live.yaml"
    original = flag.read_text()
    flag.write_text(original.replace("description: ", "description: Changed. ", 1))
    commit("a manifest changed after the plan")
    code, _, err = invoke("--apply", str(plan_file), "--root", root)
    assert code == 1
    assert "the work tree's manifests are not the ones plan" in err

    flag.write_text(original)
    commit("the manifest as planned again")
    (example_tree / "README").write_text("x")
    commit("only a README")
    code, _, _ = invoke("--apply", str(plan_file), "--root", root)
    assert code == 0


def test_force_unlock_needs_a_reason(example_tree: Path, backend_env: str) -> None:
    code, _, err = invoke("--force-unlock", str(example_tree))
    assert code == 1
    assert "--force-unlock needs --reason" in err
    code, out, _ = invoke("--force-unlock", str(example_tree), "--reason", "job killed")
    assert code == 0
    assert out == "No lock was held.\n"
