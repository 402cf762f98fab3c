"""The GitHub workflows: what makes them safe, read from the YAML and run where it can be.

CI lints them against GitHub's schema (check-jsonschema); these tests hold what the schema cannot:
no script injection, the right role for each job, an apply that applies the reviewed plan and
never plans on a push, queues that never cancel, and the break-glass script itself, run against
the local store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.state.local import LocalStore
from tests.conftest import REPO_ROOT
from tests.test_cli import invoke

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
BIN = Path(sys.executable).parent


def load(name: str) -> dict[Any, Any]:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(document, dict)
    return document


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on".
    value = workflow.get("on", workflow.get(True))
    assert isinstance(value, dict)
    return value


def steps(workflow: dict[Any, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def scripts(workflow: dict[Any, Any]) -> Iterator[tuple[str, str, str]]:
    """Every piece of code a step runs: ``run:`` shell scripts and github-script's ``script:``."""
    for job_name, step in steps(workflow):
        if "run" in step:
            yield job_name, "bash", step["run"]
        if str(step.get("uses", "")).startswith("actions/github-script@"):
            yield job_name, "javascript", step["with"]["script"]


def step_named(workflow: dict[Any, Any], job: str, name: str) -> dict[str, Any]:
    found = [s for j, s in steps(workflow) if j == job and s.get("name") == name]
    assert len(found) == 1, f"job {job} has no single step named {name!r}"
    return found[0]


def role_steps(workflow: dict[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (job, step)
        for job, step in steps(workflow)
        if str(step.get("uses", "")).startswith("aws-actions/configure-aws-credentials@")
    ]


def test_every_workflow_passes_githubs_schema() -> None:
    """What CI runs: `check-jsonschema --builtin-schema vendor.github-workflows`."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, FILES),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert {f.name for f in FILES} >= {
        "validate.yml",
        "plan.yml",
        "apply.yml",
        "breakglass.yml",
        "controllers.yml",
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_expression_is_interpolated_into_a_script(path: Path) -> None:
    """`${{ inputs.reason }}` or `${{ github.event.pull_request.title }}` inside a script would
    be pasted into its text before it runs: script injection. Values reach scripts through
    `env:` (or github-script's `context`), never through the script's text."""
    for job, language, code in scripts(load(path.name)):
        found = EXPRESSION.findall(code)
        assert not found, f"{path.name} job {job}: {language} script interpolates {found}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_shell_script_parses(path: Path, tmp_path: Path) -> None:
    for index, (job, language, code) in enumerate(scripts(load(path.name))):
        if language != "bash":
            continue
        script = tmp_path / f"{job}-{index}.sh"
        script.write_text(code)
        result = subprocess.run(
            ["bash", "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{path.name} job {job}: {result.stderr}"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_github_script_parses(path: Path, tmp_path: Path) -> None:
    for index, (job, language, code) in enumerate(scripts(load(path.name))):
        if language != "javascript":
            continue
        script = tmp_path / f"{job}-{index}.js"
        script.write_text(f"(async function () {{\n{code}\n}});\n")
        result = subprocess.run(
            ["node", "--check", str(script)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{path.name} job {job}: {result.stderr}"


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("plan.yml", "RECONCILER_PLAN_ROLE_ARN"),
        ("apply.yml", "RECONCILER_APPLY_ROLE_ARN"),
        ("breakglass.yml", "RECONCILER_BREAKGLASS_ROLE_ARN"),
        ("controllers.yml", "RECONCILER_CONTROLLER_ROLE_ARN"),
    ],
)
def test_each_workflow_assumes_its_own_role_through_oidc(name: str, variable: str) -> None:
    workflow = load(name)
    assert workflow["permissions"]["id-token"] == "write"
    assumed = role_steps(workflow)
    assert assumed, f"{name} assumes no role"
    for job, step in assumed:
        assert step["with"]["role-to-assume"] == f"${{{{ vars.{variable} }}}}", job
        assert step["with"]["aws-region"] == "${{ env.AWS_REGION }}", job
        assert "aws-access-key-id" not in step["with"], "no stored keys"
        env = workflow["jobs"][job]["env"]
        assert env["AWS_REGION"] == "${{ vars.AWS_REGION || 'eu-central-1' }}"
        assert env["RECONCILER_STORE"] == "dynamodb"


# -- break-glass ---------------------------------------------------------------------------------


def test_breakglass_is_dispatched_by_hand_with_its_inputs() -> None:
    workflow = load("breakglass.yml")
    on = triggers(workflow)
    assert set(on) == {"workflow_dispatch"}, "break-glass runs only when a person dispatches it"
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["action"]["type"] == "choice"
    assert inputs["action"]["options"] == ["shutdown", "restore", "status"]
    assert inputs["reason"] == {**inputs["reason"], "type": "string", "required": True}
    for optional in ("flags", "expires"):
        assert inputs[optional]["type"] == "string"
        assert inputs[optional]["required"] is False
    job = workflow["jobs"]["breakglass"]
    assert job["environment"] == "breakglass", "not apply's: each role trusts its own"
    assert workflow["permissions"] == {"contents": "read", "id-token": "write"}
    assert job["env"]["OPERATOR"] == "${{ github.triggering_actor }}"
    passed = {k: v for k, v in job["env"].items() if "inputs." in str(v)}
    assert passed == {
        "ACTION": "${{ inputs.action }}",
        "REASON": "${{ inputs.reason }}",
        "FLAGS": "${{ inputs.flags }}",
        "EXPIRES": "${{ inputs.expires }}",
    }


def test_applies_and_break_glass_queue_and_are_never_cancelled() -> None:
    groups = {}
    for name in ("apply.yml", "breakglass.yml"):
        workflow = load(name)
        concurrency = workflow["concurrency"]
        assert concurrency["cancel-in-progress"] is False, name
        assert concurrency["queue"] == "max", f"{name}: a third run would drop the waiting one"
        groups[name] = concurrency["group"]
        for job in workflow["jobs"].values():
            assert "concurrency" not in job, f"{name}: a job-level group would override it"
    assert groups["apply.yml"] != groups["breakglass.yml"], "a shutdown never waits for an apply"


@pytest.fixture
def applied(example_tree: Path) -> Path:
    code, _, err = invoke("--apply", str(example_tree), "--yes", "--store", "local")
    assert code == 0, err
    return example_tree


def run_breakglass_step(
    root: Path, name: str, **inputs: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run a step of breakglass.yml as the runner does (`bash -e`), with the job's environment
    made of these inputs, against the local store in ``root``."""
    script = step_named(load("breakglass.yml"), "breakglass", name)["run"]
    summary = root / "summary.md"
    summary.write_text("")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RECONCILER_STORE": "local",
        "GITHUB_STEP_SUMMARY": str(summary),
        "OPERATOR": "octocat",
        "ACTION": "status",
        "REASON": "",
        "FLAGS": "",
        "EXPIRES": "",
        **inputs,
    }
    env.pop("RECONCILER_STATE_PATH", None)
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    return result, summary.read_text()


def shut_down(root: Path) -> dict[str, Any]:
    store = LocalStore(root / ".reconciler" / "state.db")
    try:
        return store.read_overrides() or {}
    finally:
        store.close()


needs_breakglass = pytest.mark.skipif(
    not (BIN / "breakglass").exists(), reason="the breakglass console script is not installed"
)


@needs_breakglass
def test_breakglass_shuts_down_the_flags_given_as_the_operator(applied: Path) -> None:
    reason = "bad answers $(touch injected) `touch injected` INC-7"
    result, summary = run_breakglass_step(
        applied,
        "breakglass",
        ACTION="shutdown",
        REASON=reason,
        FLAGS="vc_bedrock_live, ai_model_selection",
        EXPIRES="2h",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (applied / "injected").exists(), "the reason was run as code"
    lines = result.stdout.splitlines()
    for flag in ("vc_bedrock_live", "ai_model_selection"):
        line = next(x for x in lines if x.startswith(f"{flag}: shut down by octocat since "))
        assert line.endswith(f"({reason})")
        assert ", until 20" in line, "--expires reached the command"
    assert "ALL AI features" not in result.stdout
    assert "## breakglass shutdown" in summary
    assert f"reason: {reason}" in summary
    assert "vc_bedrock_live: shut down by octocat" in summary

    status, summary = run_breakglass_step(applied, "breakglass status --history")
    assert status.returncode == 0, status.stderr
    assert f"shutdown ai_model_selection, vc_bedrock_live by octocat: {reason}" in summary


@needs_breakglass
def test_breakglass_without_flags_means_all_and_restores_with_the_same(applied: Path) -> None:
    result, _ = run_breakglass_step(applied, "breakglass", ACTION="shutdown", REASON="cost")
    assert result.returncode == 0, result.stderr
    assert "ALL AI features: shut down by octocat" in result.stdout
    assert "--all" in result.stdout.splitlines()[0]

    result, summary = run_breakglass_step(
        applied, "breakglass", ACTION="restore", REASON="cost under control", FLAGS="  "
    )
    assert result.returncode == 0, result.stderr
    assert "Restored ALL AI features." in result.stdout
    assert "## breakglass restore" in summary
    status, _ = run_breakglass_step(applied, "breakglass", ACTION="status", REASON="check")
    assert "No shutdown in force" in status.stdout


@needs_breakglass
@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        (
            {"ACTION": "restore", "EXPIRES": "2h"},
            "::error::expires applies to a shutdown only; leave it empty to restore.",
        ),
        ({"ACTION": "shutdown", "FLAGS": "--all"}, "::error::flags: '--all' is not a flag name."),
        ({"ACTION": "shutdown", "FLAGS": "vc_ok,$(id)"}, "::error::flags: '$(id)' is not a flag"),
        ({"ACTION": "shutdown", "FLAGS": "vc_bedrok_live"}, "did you mean 'vc_bedrock_live'?"),
    ],
)
def test_breakglass_refuses_bad_inputs_and_writes_nothing(
    applied: Path, inputs: dict[str, str], error: str
) -> None:
    before = shut_down(applied)
    result, _ = run_breakglass_step(applied, "breakglass", REASON="r", **inputs)
    assert result.returncode != 0
    assert error in result.stdout
    assert shut_down(applied) == before


# -- apply: the reviewed plan --------------------------------------------------------------------


def gated_to(job: dict[str, Any]) -> str:
    """The one event a job runs on, from its `if:`."""
    found = re.fullmatch(r"github\.event_name == '(\w+)'", str(job.get("if", "")).strip())
    assert found, f"job is not gated to one event: {job.get('if')!r}"
    return found[1]


def test_apply_runs_one_job_per_event() -> None:
    workflow = load("apply.yml")
    assert set(triggers(workflow)) == {"push", "workflow_dispatch"}
    assert triggers(workflow)["push"]["branches"] == ["main"]
    events = sorted(gated_to(job) for job in workflow["jobs"].values())
    assert events == ["push", "workflow_dispatch"]
    for job in workflow["jobs"].values():
        assert job["environment"] == "production"


def test_apply_on_push_applies_the_downloaded_plan_and_never_plans() -> None:
    workflow = load("apply.yml")
    [(name, job)] = [(n, j) for n, j in workflow["jobs"].items() if gated_to(j) == "push"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert not [r for r in runs if re.search(r"reconcile\s+--plan", r)], "push path plans"
    assert not [r for r in runs if re.search(r"--apply\s+--yes|--yes\s+--apply", r)]
    uses = [str(s.get("uses", "")) for s in job["steps"]]
    download = next(s for s in job["steps"] if str(s.get("uses")).startswith("actions/download-"))
    assert download["uses"] == "actions/download-artifact@v4"
    assert download["with"] == {
        "name": "${{ steps.reviewed.outputs.artifact }}",
        "run-id": "${{ steps.reviewed.outputs.run-id }}",
        "github-token": "${{ github.token }}",
        "path": "reviewed",
    }
    [applying] = [r for r in runs if "reconcile --apply" in r]
    assert re.search(r"^\s*reconcile --apply reviewed/plan\.json\b", applying, re.M)
    credentials = uses.index("aws-actions/configure-aws-credentials@v4")
    assert uses.index("actions/download-artifact@v4") < credentials, "no role while it looks"
    assert workflow["permissions"]["actions"] == "read"
    assert workflow["permissions"]["pull-requests"] == "read"
    assert "write" not in {workflow["permissions"][k] for k in ("contents", "actions")}
    assert name == "reviewed"


def test_apply_on_dispatch_plans_main_and_applies_exactly_that_plan() -> None:
    workflow = load("apply.yml")
    [job] = [j for j in workflow["jobs"].values() if gated_to(j) == "workflow_dispatch"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert "refs/heads/main" in runs[0], "the first step refuses any branch but main"
    planning = [r for r in runs if "reconcile --plan" in r]
    assert len(planning) == 1
    assert "--out plan.json" in planning[0]
    assert "$GITHUB_STEP_SUMMARY" in planning[0], "the plan applied is in the run's summary"
    assert runs[-1].strip() == "reconcile --apply plan.json"


def test_the_plan_workflow_uploads_the_plan_it_comments() -> None:
    workflow = load("plan.yml")
    job = workflow["jobs"]["plan"]
    plan = step_named(workflow, "plan", "reconcile --plan")["run"]
    [command] = [line for line in plan.splitlines() if "reconcile --plan" in line]
    assert "--format markdown" in command
    assert "--out plan.json" in command
    assert command.rstrip().endswith("> plan.md"), "one command: plan.md and plan.json agree"
    upload = next(s for s in job["steps"] if str(s.get("uses")).startswith("actions/upload-"))
    assert upload["with"]["name"] == "plan-${{ github.event.pull_request.number }}"
    assert upload["with"]["path"].split() == ["plan.json", "plan.md"]
    assert upload["with"]["if-no-files-found"] == "error"
    assert upload["with"]["retention-days"] >= 30
    comment = step_named(workflow, "plan", "post or update the plan comment")["with"]["script"]
    assert "readFileSync('plan.md'" in comment
    assert "readFileSync('plan.json'" in comment, "the comment names the saved plan's id"
    find = step_named(load("apply.yml"), "reviewed", "find the reviewed plan")["with"]["script"]
    assert "workflow_id: 'plan.yml'" in find
    assert "`plan-${pull.number}`" in find


HARNESS = """
const fs = require('fs');
const [scriptPath, scenarioPath] = process.argv.slice(2);
const script = fs.readFileSync(scriptPath, 'utf8');
const scenario = JSON.parse(fs.readFileSync(scenarioPath, 'utf8'));
const result = { failed: null, outputs: {}, runs: null, pulls: null, artifacts: [] };
const core = {
  setFailed: (m) => { result.failed = m; },
  setOutput: (k, v) => { result.outputs[k] = v; },
  info: () => {},
};
const context = { sha: scenario.sha, repo: { owner: 'acme', repo: 'flags' } };
const rest = {
  repos: {
    listPullRequestsAssociatedWithCommit: async (p) => {
      result.pulls = p;
      return { data: scenario.pulls };
    },
  },
  actions: {
    listWorkflowRuns: async () => { throw new Error('use github.paginate'); },
    listWorkflowRunArtifacts: async (p) => {
      result.artifacts.push(p);
      return { data: { artifacts: scenario.artifacts[String(p.run_id)] || [] } };
    },
  },
};
const github = {
  rest,
  paginate: async (fn, params) => {
    if (fn !== rest.actions.listWorkflowRuns) throw new Error('unexpected paginate');
    result.runs = params;
    return JSON.parse(JSON.stringify(scenario.runs));
  },
};
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
new AsyncFunction('github', 'context', 'core', 'require', script)(github, context, core, require)
  .then(() => console.log(JSON.stringify(result)));
"""

MERGE = "a" * 40
HEAD = "b" * 40


def find_reviewed_plan(tmp_path: Path, scenario: dict[str, Any]) -> dict[str, Any]:
    """Run apply.yml's github-script that finds the reviewed plan, against a fake GitHub API."""
    step = step_named(load("apply.yml"), "reviewed", "find the reviewed plan")
    (tmp_path / "script.js").write_text(step["with"]["script"])
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    (tmp_path / "harness.js").write_text(HARNESS)
    result = subprocess.run(
        ["node", "harness.js", "script.js", "scenario.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert isinstance(found, dict)
    return found


def merged_pull(number: int = 7) -> dict[str, Any]:
    return {
        "number": number,
        "merged_at": "2026-01-09T10:00:00Z",
        "merge_commit_sha": MERGE,
        "head": {"sha": HEAD},
    }


def run(run_id: int, created_at: str) -> dict[str, Any]:
    return {"id": run_id, "created_at": created_at, "html_url": f"https://x/runs/{run_id}"}


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


@needs_node
def test_apply_finds_the_latest_successful_plan_of_the_merged_pull_requests_head(
    tmp_path: Path,
) -> None:
    found = find_reviewed_plan(
        tmp_path,
        {
            "sha": MERGE,
            "pulls": [
                {**merged_pull(6), "merge_commit_sha": "c" * 40},  # merged by another push
                {**merged_pull(9), "merged_at": None},  # open, contains the commit
                merged_pull(7),
            ],
            "runs": [
                run(101, "2026-01-09T08:00:00Z"),
                run(103, "2026-01-09T09:30:00Z"),  # newest, its artifact expired
                run(102, "2026-01-09T09:00:00Z"),
            ],
            "artifacts": {
                "101": [{"name": "plan-7", "expired": False}],
                "102": [{"name": "plan-7", "expired": False}],
                "103": [{"name": "plan-7", "expired": True}],
            },
        },
    )
    assert found["failed"] is None
    assert found["pulls"] == {"owner": "acme", "repo": "flags", "commit_sha": MERGE}
    assert found["runs"] == {
        "owner": "acme",
        "repo": "flags",
        "workflow_id": "plan.yml",
        "event": "pull_request",
        "head_sha": HEAD,
        "status": "success",
        "per_page": 100,
    }
    assert [a["run_id"] for a in found["artifacts"]] == [103, 102]
    assert {a["name"] for a in found["artifacts"]} == {"plan-7"}
    assert found["outputs"] == {
        "pull": "7",
        "artifact": "plan-7",
        "run-id": "102",
        "run-url": "https://x/runs/102",
    }


@needs_node
def test_apply_refuses_a_push_that_merged_no_pull_request(tmp_path: Path) -> None:
    found = find_reviewed_plan(
        tmp_path,
        {
            "sha": MERGE,
            "pulls": [{**merged_pull(), "merge_commit_sha": "c" * 40}],
            "runs": [],
            "artifacts": {},
        },
    )
    assert found["outputs"] == {}
    assert found["runs"] is None, "nothing else is looked up"
    assert found["failed"].startswith(f"Commit {MERGE[:12]} reached main without a pull request")
    assert "Run this workflow on main" in found["failed"]


@needs_node
def test_apply_refuses_when_the_pull_request_has_no_plan(tmp_path: Path) -> None:
    found = find_reviewed_plan(
        tmp_path,
        {
            "sha": MERGE,
            "pulls": [merged_pull()],
            "runs": [run(101, "2026-01-09T08:00:00Z")],
            "artifacts": {"101": []},
        },
    )
    assert found["outputs"] == {}
    assert "No successful plan run with the artifact plan-7" in found["failed"]
    assert "Run this workflow on main" in found["failed"]
