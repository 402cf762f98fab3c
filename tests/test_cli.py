"""The command line as users and CI run it: output, formats and exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli.boundary import run
from reconciler.cli.breakglass import breakglass
from reconciler.cli.reconcile import reconcile
from tests.conftest import REPO_ROOT


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``reconcile`` through the error boundary, as the console script does."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        code = run(reconcile, list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_validate_clean_tree(example_tree: Path) -> None:
    before = snapshot(example_tree)
    code, out, err = invoke("--validate", str(example_tree))
    assert code == 0
    assert out == (
        "5 manifests valid (1 CostThreshold, 1 Experiment, 2 Flag, 1 RolloutStrategy), "
        "0 warnings.\n"
    )
    assert err == ""
    assert snapshot(example_tree) == before, "validate writes nothing"


def test_validate_reports_every_error_then_exits_1(example_tree: Path) -> None:
    flag = example_tree / "flags.d" / "vc_bedrock_live.yaml"
    flag.write_text(
        flag.read_text().replace("rollout_percentage: 100\n", "rollout_percentage: 150\n", 1)
    )
    costs = example_tree / "costs.d" / "ai_daily_budget.yaml"
    costs.write_text(costs.read_text().replace("amount_usd: 100", "amount_usd: 900"))
    code, out, err = invoke("--validate", str(example_tree))
    assert code == 1
    assert out.splitlines() == [
        "costs.d/ai_daily_budget.yaml:11:15: throttle.amount_usd: throttle (900 USD) must be "
        "below emergency (500 USD)",
        "flags.d/vc_bedrock_live.yaml:11:21: rollout_percentage: must be at most 100 (got 150)",
    ]
    assert err == "2 errors, 0 warnings in 5 files.\n"


def test_validate_json_format(example_tree: Path) -> None:
    (example_tree / "flags.d" / "vc_second.yaml").write_text(
        "kind: Flag\nflag_name: vc_second\ndescription: d\nowner: o\nenabled: yes\n"
    )
    code, out, _ = invoke("--validate", "--format", "json", str(example_tree))
    assert code == 1
    report = json.loads(out)
    assert report["format_version"] == 1
    assert report["valid"] is False
    assert report["errors"] == 1
    [diagnostic] = report["diagnostics"]
    assert diagnostic == {
        "path": "flags.d/vc_second.yaml",
        "line": 5,
        "column": 10,
        "field": "enabled",
        "field_path": ["enabled"],
        "severity": "error",
        "rule": "yaml",
        "message": "'yes' is ambiguous: YAML 1.1 reads it as true, YAML 1.2 as a string; "
        'write true for the boolean or quote it ("yes") for the string',
    }


def test_warnings_do_not_fail_the_run(example_tree: Path) -> None:
    (example_tree / "reconciler.toml").write_text('[validate]\nnaming = "warning"\n')
    (example_tree / "flags.d" / "bedrock.yaml").write_text(
        "kind: Flag\nflag_name: bedrock\ndescription: d\nowner: o\nenabled: false\n"
    )
    code, out, _ = invoke("--validate", str(example_tree))
    assert code == 0
    assert out.splitlines() == [
        "flags.d/bedrock.yaml:2:12: flag_name: warning: 'bedrock' has no component prefix; "
        "name flags like vc_bedrock or dashboard_bedrock",
        "6 manifests valid (1 CostThreshold, 1 Experiment, 3 Flag, 1 RolloutStrategy), 1 warning.",
    ]


def test_wrong_directory_is_a_user_error(tmp_path: Path) -> None:
    code, out, _err = invoke("--validate", str(tmp_path))
    assert code == 1
    assert out.startswith(".:1:1: (file): no manifest folders here (flags.d/, experiments.d/")


def test_bad_repository_config_names_file_and_line(example_tree: Path) -> None:
    (example_tree / "reconciler.toml").write_text('[validate]\nnaming = "loud"\n')
    code, _, err = invoke("--validate", str(example_tree))
    assert code == 1
    assert err.startswith("error: reconciler.toml:2: validate.naming: Input should be ")


def test_usage_errors_exit_1_not_2() -> None:
    code, _, err = invoke("--validate", "--format", "yaml")
    assert code == 1
    assert "Invalid value for '--format'" in err
    code, _, err = invoke()
    assert code == 1
    assert "choose one of: --validate, --plan, --apply, --bootstrap, --force-unlock" in err


def test_help_exits_0() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    assert "reconcile --apply plan.json" in out
    assert "Exit codes: 0 clean, 1 user or configuration error, 2 changes pending" in out


def test_breakglass_prints_its_help() -> None:
    result = CliRunner().invoke(breakglass, [])
    assert result.exit_code == 0
    assert "Emergency shutdown of AI features, outranking git." in result.output


def _script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"the {name} console script is missing: pip install -e .")
    return found


def test_console_script_in_a_real_process(example_tree: Path) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    clean = subprocess.run(
        [_script("reconcile"), "--validate"],
        cwd=example_tree,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert clean.returncode == 0, clean.stderr
    assert "5 manifests valid" in clean.stdout
    (example_tree / "rollouts.d" / "bedrock_gradual_rollout.yaml").write_bytes(b"kind: [\n")
    broken = subprocess.run(
        [_script("reconcile"), "--validate"],
        cwd=example_tree,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert broken.returncode == 1
    assert broken.stdout.startswith(
        "rollouts.d/bedrock_gradual_rollout.yaml:2:1: (file): invalid YAML"
    )
    assert broken.stderr == "1 error, 0 warnings in 5 files.\n"


def test_repository_manifests_are_valid() -> None:
    code, out, _ = invoke("--validate", str(REPO_ROOT))
    assert code == 0, out


@pytest.mark.parametrize(
    ("args", "given"),
    [
        (["--validate", "--plan"], "--validate and --plan"),
        (["--plan", "--validate"], "--plan and --validate"),
        (["--plan", "--apply", "--yes"], "--plan and --apply"),
        (["--validate", "--bootstrap", "--force-unlock"], "--validate and --bootstrap and "),
    ],
)
def test_two_modes_are_refused_not_decided_by_the_last(
    example_tree: Path, args: list[str], given: str
) -> None:
    before = snapshot(example_tree)
    code, out, err = invoke(*args, str(example_tree))
    assert (code, out) == (1, "")
    assert given in err
    assert "are different modes; choose one of: --validate, --plan, --apply" in err
    assert snapshot(example_tree) == before, "nothing ran"


def test_the_same_mode_twice_is_that_mode(example_tree: Path) -> None:
    assert invoke("--validate", "--validate", str(example_tree))[0] == 0


def test_out_is_only_for_plan(example_tree: Path) -> None:
    code, _, err = invoke("--validate", "--out", str(example_tree / "plan.json"), str(example_tree))
    assert code == 1
    assert "--out saves a plan and is only for --plan" in err
    assert not (example_tree / "plan.json").exists()


def test_the_saved_plan_the_readme_names_is_ignored_by_git() -> None:
    if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    readme = (REPO_ROOT / "README.md").read_text()
    names = set(re.findall(r"--out (\S+\.json)", readme))
    assert names == {"plan.json"}, "the README names one saved plan"

    def ignored(path: str) -> bool:
        found = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "check-ignore", "-q", path], check=False
        )
        return found.returncode == 0

    assert all(ignored(name) for name in names)
    assert not ignored("tests/golden/plan.json"), "the golden plan stays tracked"
