"""A saved plan applies only to the tree it was made from: the pull request's reviewed plan.

CI plans a pull request on GitHub's test merge and applies the saved plan on main's merge
commit: two commits, one tree. The plan records the digest of the desired state it was made
from, and ``reconcile --apply PLAN`` recomputes it from the work tree, so the commits may differ
and the manifests may not. Driven through the real CLI on the local store.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from reconciler.codec import encode
from reconciler.config import load_config
from reconciler.plan.build import desired_digest
from reconciler.state.local import LocalStore
from reconciler.state.records import RecordKind
from reconciler.validation import validate
from tests.test_cli import invoke

FLAG = Path("flags.d") / "vc_bedrock_live.yaml"
OTHER_FLAG = Path("flags.d") / "ai_model_selection.yaml"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    )
    return result.stdout.strip()


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "HEAD")


def edit(root: Path, path: Path, old: str, new: str) -> None:
    text = (root / path).read_text()
    assert old in text, f"{path} has no {old!r}"
    (root / path).write_text(text.replace(old, new, 1))


@pytest.fixture
def repo(example_tree: Path) -> Path:
    """The example manifests in a git repository on branch main, applied to the local store
    (so a plan of an edit is an update of version 1)."""
    git(example_tree, "init", "-q", "-b", "main")
    commit_all(example_tree, "manifests")
    code, out, err = invoke("--apply", str(example_tree), "--yes", "--store", "local")
    assert code == 0, err
    assert "Apply complete: 5 written" in out
    return example_tree


def plan_to(root: Path, name: str = "plan.json") -> tuple[Path, dict[str, object]]:
    """``reconcile --plan --out`` into a file outside the work tree (as CI's artifact is)."""
    path = root.parent / name
    code, _, err = invoke("--plan", str(root), "--store", "local", "--out", str(path))
    assert code == 0, err
    return path, json.loads(path.read_text())


def apply_saved(root: Path, plan: Path) -> tuple[int, str, str]:
    return invoke("--apply", str(plan), "--root", str(root), "--store", "local")


def stored(root: Path) -> tuple[dict[str, dict[str, object]], int]:
    """Every flag item and the number of audit entries: what a refused apply must not change."""
    store = LocalStore(root / ".reconciler" / "state.db")
    try:
        flags = {name: dict(r.item) for name, r in store.read_records(RecordKind.FLAG).items()}
        return flags, len(store.read_audit(limit=10_000))
    finally:
        store.close()


def test_the_plan_records_the_digest_of_the_tree_it_was_made_from(repo: Path) -> None:
    _, saved = plan_to(repo)
    tree = validate(repo, load_config(repo))
    assert tree.ok
    digest = desired_digest(encode(tree.tree))
    assert saved["desired_digest"] == digest
    assert digest.startswith("sha256:")
    assert len(digest) == len("sha256:") + 64

    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    _, changed = plan_to(repo, "changed.json")
    assert changed["desired_digest"] != digest


def test_a_plan_applied_to_a_changed_tree_is_refused_and_writes_nothing(repo: Path) -> None:
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    planned_at = commit_all(repo, "vc_bedrock_live to 30%")
    plan, saved = plan_to(repo)
    edit(repo, OTHER_FLAG, "enabled: true\n", "enabled: false\n")
    now_at = commit_all(repo, "a commit after the plan")
    before = stored(repo)

    code, out, err = apply_saved(repo, plan)

    assert code == 1
    assert out == ""
    assert f"the work tree's manifests are not the ones plan {saved['plan_id']} was made" in err
    assert f"made from commit {planned_at[:12]}" in err
    assert f"the work tree at commit {now_at[:12]} declares" in err
    assert "Nothing was written. Make a new plan of this tree" in err
    assert "Store:" not in err, "refused before the store is opened"
    assert stored(repo) == before
    assert stored(repo)[0]["vc_bedrock_live"]["rollout_percentage"] == 100


def test_an_edit_in_the_work_tree_after_the_plan_is_refused(repo: Path) -> None:
    """Same commit, other manifests: the commit alone could not tell."""
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    commit_all(repo, "vc_bedrock_live to 30%")
    plan, _ = plan_to(repo)
    edit(repo, FLAG, "rollout_percentage: 30\n", "rollout_percentage: 31\n")
    before = stored(repo)

    code, _, err = apply_saved(repo, plan)

    assert code == 1
    assert "they changed after the plan was made" in err
    assert stored(repo) == before


def test_the_unchanged_tree_applies_the_plan(repo: Path) -> None:
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    planned_at = commit_all(repo, "vc_bedrock_live to 30%")
    plan, _ = plan_to(repo)

    code, out, err = apply_saved(repo, plan)

    assert code == 0, err
    assert "Apply complete: 1 written" in out
    assert "declares the same desired state" not in err, "same commit: nothing to explain"
    flag = stored(repo)[0]["vc_bedrock_live"]
    assert flag["rollout_percentage"] == 30
    assert flag["git_commit"] == planned_at


def test_another_commit_with_the_same_manifests_applies_and_is_audited_as_it(repo: Path) -> None:
    """What CI does: plan the pull request's test merge, apply on main's merge commit."""
    git(repo, "switch", "-q", "-c", "feature")
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    reviewed_at = commit_all(repo, "vc_bedrock_live to 30%")
    plan, saved = plan_to(repo)
    git(repo, "switch", "-q", "main")
    (repo / "NOTES.md").write_text("not a manifest\n")
    commit_all(repo, "documentation on main meanwhile")
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request #7", "feature")
    merged_at = git(repo, "rev-parse", "HEAD")
    assert merged_at != reviewed_at

    code, out, err = apply_saved(repo, plan)

    assert code == 0, err
    assert "Apply complete: 1 written" in out
    assert (
        f"The plan was made from commit {reviewed_at[:12]}; the work tree at commit "
        f"{merged_at[:12]} declares the same desired state" in err
    )
    assert stored(repo)[0]["vc_bedrock_live"]["git_commit"] == merged_at
    store = LocalStore(repo / ".reconciler" / "state.db")
    try:
        latest = store.read_audit("flag/vc_bedrock_live")[0]
    finally:
        store.close()
    assert latest["git_commit"] == merged_at
    assert latest["plan_id"] == saved["plan_id"]


def test_a_comment_or_layout_change_keeps_the_digest(repo: Path) -> None:
    """The digest is of what the manifests declare, not of their bytes."""
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    plan, _ = plan_to(repo)
    text = (repo / FLAG).read_text()
    (repo / FLAG).write_text(f"# reviewed in pull request #7\n\n{text}\n# end of file\n")

    code, out, err = apply_saved(repo, plan)

    assert code == 0, err
    assert "Apply complete: 1 written" in out


def test_another_change_merged_since_the_plan_is_refused(repo: Path) -> None:
    """Two pull requests from the same base: the second one's plan never saw the first."""
    git(repo, "switch", "-q", "-c", "second")
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    commit_all(repo, "vc_bedrock_live to 30%")
    plan, _ = plan_to(repo)
    git(repo, "switch", "-q", "main")
    edit(repo, OTHER_FLAG, "enabled: true\n", "enabled: false\n")
    commit_all(repo, "Merge pull request #6: ai_model_selection off")
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request #7", "second")
    before = stored(repo)

    code, _, err = apply_saved(repo, plan)

    assert code == 1
    assert "another change merged since" in err
    assert stored(repo) == before


def test_the_store_moved_since_the_plan_is_refused_with_the_same_tree(repo: Path) -> None:
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    plan, _ = plan_to(repo)
    edit(repo, FLAG, "rollout_percentage: 30\n", "rollout_percentage: 40\n")
    assert invoke("--apply", str(repo), "--yes", "--store", "local")[0] == 0  # another apply
    edit(repo, FLAG, "rollout_percentage: 40\n", "rollout_percentage: 30\n")  # the plan's tree
    before = stored(repo)

    code, _, err = apply_saved(repo, plan)

    assert code == 1
    assert "the store changed since the plan was made; nothing was written" in err
    assert "flag/vc_bedrock_live" in err
    assert stored(repo) == before


def test_a_damaged_digest_is_refused(repo: Path) -> None:
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    plan, saved = plan_to(repo)
    plan.write_text(json.dumps({**saved, "desired_digest": "sha256:" + "0" * 64}))
    code, _, err = apply_saved(repo, plan)
    assert code == 1
    assert "declares sha256:" in err
    assert stored(repo)[0]["vc_bedrock_live"]["rollout_percentage"] == 100

    plan.write_text(json.dumps({**saved, "desired_digest": 42}))
    code, _, err = apply_saved(repo, plan)
    assert code == 1
    assert "the plan file is damaged or not a plan" in err


def test_a_plan_without_a_digest_is_checked_by_its_commit(repo: Path) -> None:
    """Plans saved before they recorded a digest: only the commit can prove the tree."""
    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 30\n")
    commit_all(repo, "vc_bedrock_live to 30%")
    plan, saved = plan_to(repo)
    del saved["desired_digest"]
    plan.write_text(json.dumps(saved))
    (repo / "NOTES.md").write_text("not a manifest\n")
    commit_all(repo, "another commit")

    code, _, err = apply_saved(repo, plan)

    assert code == 1
    assert "the plan records no digest of its manifests" in err
    assert stored(repo)[0]["vc_bedrock_live"]["rollout_percentage"] == 100


def test_the_digest_does_not_depend_on_order_or_absent_kinds() -> None:
    item = {"flag_name": "vc_x", "enabled": True, "rollout_percentage": 10.0}
    one = {RecordKind.FLAG: {"vc_x": item, "vc_y": {"flag_name": "vc_y", "enabled": False}}}
    other = {
        RecordKind.EXPERIMENT: {},
        RecordKind.FLAG: {"vc_y": {"enabled": False, "flag_name": "vc_y"}, "vc_x": item},
    }
    assert desired_digest(one) == desired_digest(other)  # type: ignore[arg-type]
    changed = {RecordKind.FLAG: {**one[RecordKind.FLAG], "vc_x": {**item, "enabled": False}}}
    assert desired_digest(changed) != desired_digest(one)  # type: ignore[arg-type]
    renamed = {RecordKind.ROLLOUT: one[RecordKind.FLAG]}
    assert desired_digest(renamed) != desired_digest(one)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "forge",
    [
        "after",  # the write itself changed, its recorded hash left alone
        "after-and-hash",  # both changed, consistently
        "extra-delete",  # a declared record deleted
        "dropped",  # a declared record's change left out
        "unchanged",  # the update relabelled as nothing to do
        "held",  # a hold the store does not show, so that apply skips the write
        "start",  # a rollout's start moved into the past, its hash recomputed
    ],
)
def test_a_plan_file_edited_after_it_was_made_is_refused(repo: Path, forge: str) -> None:
    """The digest says what the plan was made from; the writes must be those records too."""
    from reconciler.codec import content_hash

    edit(repo, FLAG, "rollout_percentage: 100\n", "rollout_percentage: 90\n")
    commit_all(repo, "vc_bedrock_live to 90%")
    plan, saved = plan_to(repo)
    changes: list[dict[str, object]] = saved["changes"]  # type: ignore[assignment]
    [update] = [c for c in changes if c["action"] == "update"]
    if forge.startswith("after"):
        after = dict(update["after"])  # type: ignore[arg-type]
        after["rollout_percentage"] = 100
        after["description"] = "tampered"
        update["after"] = after
        if forge == "after-and-hash":
            update["desired_hash"] = content_hash(after)
    elif forge == "unchanged":
        update["action"] = "unchanged"
    elif forge == "held":
        update["holds"] = [{"owner": "override", "detail": "an operator", "since": None}]
    elif forge == "start":
        after = dict(update["after"])  # type: ignore[arg-type]
        rollout = dict(after["rollout"])
        rollout["configuration"] = {
            **rollout["configuration"],
            "start_time": "2000-01-01T00:00:00Z",
        }
        after["rollout"] = rollout
        update["after"] = after
        update["desired_hash"] = content_hash(after)
    elif forge == "extra-delete":
        other = next(c for c in changes if c["name"] == "ai_model_selection")
        other["action"] = "delete"
    else:
        changes.remove(next(c for c in changes if c["name"] == "ai_model_selection"))
    plan.write_text(json.dumps(saved))
    before = stored(repo)

    code, _, err = apply_saved(repo, plan)

    assert code == 1
    assert "the plan file was edited after it was made, or the store moved since" in err
    assert "Nothing was written" in err
    assert stored(repo) == before
