"""The README's examples are real: they are run here and compared with what the README shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_cli import invoke

README = (REPO_ROOT / "README.md").read_text()


def _block_after(marker: str) -> list[str]:
    """The lines of the fenced block whose first line is ``marker``, without the marker."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.DOTALL):
        lines = block.splitlines()
        if lines and lines[0] == marker:
            return lines[1:]
    raise AssertionError(f"README has no block starting with {marker!r}")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_validate_example_output(example_tree: Path) -> None:
    flags = example_tree / "flags.d" / "vc_bedrock_live.yaml"
    _edit(flags, "fail_mode: closed", "fail_mode: opened")
    _edit(flags, "rollout_percentage: 100\n", "rollout_percent: 100\n")
    _edit(flags, '"NO"', "NO")
    _edit(example_tree / "costs.d" / "ai_daily_budget.yaml", "amount_usd: 100", "amount_usd: 900")
    _edit(
        example_tree / "experiments.d" / "claude_vs_gemini.yaml",
        "feature_flag: ai_model_selection",
        "feature_flag: ai_model_selektion",
    )
    code, out, err = invoke("--validate", str(example_tree))
    shown = _block_after("$ reconcile --validate")
    assert shown[-2:] == ["$ echo $?", str(code)]
    assert out.splitlines() + err.splitlines() == shown[:-2]


def test_json_example_has_the_documented_shape(example_tree: Path) -> None:
    (example_tree / "flags.d" / "vc_second.yaml").write_text(
        "kind: Flag\nflag_name: vc_second\ndescription: d\nowner: o\nenabled: yes\n"
    )
    _, out, _ = invoke("--validate", "--format", "json", str(example_tree))
    report = json.loads(out)
    documented = json.loads(
        "\n".join(_block_after("{")).join(["{\n", ""]).replace('"..."', '""').replace("; ...", "")
    )
    assert report.keys() == documented.keys()
    assert report["diagnostics"][0].keys() == documented["diagnostics"][0].keys()
    assert report["diagnostics"][0]["message"].startswith(documented["diagnostics"][0]["message"])


def test_first_screen_gives_the_two_commands() -> None:
    first_screen = README[: README.index("---")]
    assert (
        "pip install -e . && reconcile --validate && reconcile --plan && reconcile --apply --yes"
        in first_screen
    )
    assert "pip install -e '.[dev]' && pytest" in first_screen


def test_quickstart_plan_output(example_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(example_tree / "state.db"))
    root = str(example_tree)
    assert invoke("--apply", root, "--yes")[0] == 0
    _edit(
        example_tree / "flags.d" / "vc_bedrock_live.yaml",
        "rollout_percentage: 100\n",
        "rollout_percentage: 30\n",
    )
    code, out, _ = invoke("--plan", root, "--out", str(example_tree / "plan.json"))
    assert code == 0
    shown = _block_after("$ reconcile --plan --out plan.json")
    body = out.splitlines()[3:]  # after the store, commit and blank header lines
    assert body == shown


def test_runtime_example(example_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example, run right after an apply, prints what the README shows."""
    import contextlib
    import io

    monkeypatch.chdir(example_tree)
    assert invoke("--apply", ".", "--yes")[0] == 0
    lines = _block_after("from reconciler.runtime.client import FlagClient")
    code = "from reconciler.runtime.client import FlagClient\n" + "\n".join(lines)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    marker = "True TARGETING_MATCH supported_markets"
    assert printed.getvalue().splitlines() == [marker, *_block_after(marker)]


def _times(text: str) -> str:
    """Times and dates as placeholders: the example ran on another day."""
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "<time>", text)
    return re.sub(r"\d{4}-\d\d-\d\d", "<date>", text)


def test_cost_example_and_report(example_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's cost-control example prints what it says; after the spend the README's
    report shows (1,300 calls at $0.08), `controller cost` prints the README's report."""
    import contextlib
    import io

    from reconciler.cli.boundary import run
    from reconciler.cli.controller import controller
    from reconciler.runtime.client import FlagClient
    from reconciler.runtime.sources import SQLiteSource

    monkeypatch.chdir(example_tree)
    assert invoke("--apply", ".", "--yes")[0] == 0
    marker = "from reconciler.runtime.client import FlagClient"
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    example = next(b for b in blocks if "should_allow_request" in b and b.startswith(marker))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example, "README.md", "exec"), {})
    assert printed.getvalue() == "True WITHIN_BUDGET 0 500\n"
    assert "prints `True WITHIN_BUDGET 0 500`" in README
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        assert run(controller, ["run"]) == 0  # the README's next step

    with FlagClient(SQLiteSource(".reconciler/state.db")) as flags:
        for n in range(1299):
            flags.record_request_cost("vc_analysis", 1500, 0.08, {"user_id": f"u{n}"})
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        assert run(controller, ["run"]) == 0
    command = "$ controller cost --processes 200 --rate 5 --max-request-cost 0.08"
    shown = _block_after(command)
    report = io.StringIO()
    with contextlib.redirect_stdout(report), contextlib.redirect_stderr(io.StringIO()):
        assert run(controller, command.split()[2:]) == 0
    assert _times(report.getvalue()).splitlines() == _times("\n".join(shown)).splitlines()


def test_experiment_example_and_report(example_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's experiment example records what it says; `controller experiment` then
    shows the README's figures (the columns it elides aside) and writes the plot."""
    import contextlib
    import io

    from reconciler.cli.boundary import run
    from reconciler.cli.controller import controller

    monkeypatch.chdir(example_tree)
    assert invoke("--apply", ".", "--yes")[0] == 0
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    example = next(b for b in blocks if "record_response_quality" in b)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example, "README.md", "exec"), {})
    assert printed.getvalue() == "6000 {}\n"
    assert "prints `6000 {}`" in README
    command = "controller experiment claude_vs_gemini --plot intervals.svg"
    assert command in README
    report = io.StringIO()
    with contextlib.redirect_stdout(report), contextlib.redirect_stderr(io.StringIO()):
        assert run(controller, command.split()[1:]) == 0
    produced = [" ".join(line.split()) for line in report.getvalue().splitlines()]
    first = re.search(r"^Variants: claude \(control\).*$", README, flags=re.MULTILINE)
    assert first is not None
    block = [first.group(0), *_block_after(first.group(0))]
    expected = [" ".join(line.split()) for line in block if line and line != "..."]
    for line in expected:
        cells = [c for c in line.split() if c != "[...]"]
        assert any(
            all(cell in got for cell in cells) and got.startswith(cells[0]) for got in produced
        ), f"README line not produced: {line}"
    assert (example_tree / "intervals.svg").read_text().count("<svg") == 1


def test_new_experiment_example(example_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's `controller new-experiment` example runs on the repository's manifests."""
    import contextlib
    import io
    import shlex

    from reconciler.cli.boundary import run
    from reconciler.cli.controller import controller

    monkeypatch.chdir(example_tree)
    block = next(b for b in _sh_blocks() if b.startswith("controller new-experiment"))
    words = shlex.split(block.replace("\\\n", " "))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert run(controller, words[1:]) == 0, err.getvalue()
    assert "experiment_id: sonnet_vs_haiku" in out.getvalue()
    assert "nothing written" in err.getvalue()
    assert not (example_tree / "experiments.d" / "sonnet_vs_haiku.yaml").exists()


def _sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def test_rollout_example(example_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's rollout walk-through: right after the apply, `controller rollout` shows the
    example at its first step; started again at the current hour (the README's sed, run
    here), applied and run, it shows the ramp at 10% with its checks and the next step (times
    aside)."""
    import contextlib
    import io
    import subprocess
    from datetime import UTC, datetime, timedelta

    from reconciler.cli.boundary import run
    from reconciler.cli.controller import controller

    monkeypatch.chdir(example_tree)
    assert invoke("--apply", ".", "--yes")[0] == 0

    def rollout() -> list[str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert run(controller, ["rollout"]) == 0
        return out.getvalue().splitlines()

    first = (
        "bedrock_gradual_rollout → vc_bedrock_live (percentage): ramping at 10% since "
        "2025-01-09 10:00 UTC"
    )
    assert rollout() == [first, *_block_after(first)]
    [sed, commands] = next(b for b in _sh_blocks() if b.startswith("sed -i.bak")).splitlines()
    assert sed.endswith(" && rm rollouts.d/*.bak")
    assert subprocess.run(["sh", "-c", sed], check=False).returncode == 0
    assert not list((example_tree / "rollouts.d").glob("*.bak"))
    assert commands == "reconcile --apply --yes && controller run && controller rollout"
    assert invoke("--apply", ".", "--yes")[0] == 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run(controller, ["run"]) == 0
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    shown = "\n".join(
        [
            "bedrock_gradual_rollout → vc_bedrock_live (percentage): ramping at 10% since "
            "2026-12-01 15:00 UTC",
            *_block_after(
                "bedrock_gradual_rollout → vc_bedrock_live (percentage): ramping at 10% since "
                "2026-12-01 15:00 UTC"
            ),
        ]
    )
    expected = (
        shown.replace("2026-12-01 15:00", hour.strftime("%Y-%m-%d %H:%M"))
        .replace("2026-12-02 15:00", (hour + timedelta(days=1)).strftime("%Y-%m-%d %H:%M"))
        .replace("15:03", datetime.now(UTC).strftime("%H:%M"))
    )
    produced = rollout()
    assert [re.sub(r"last run \d\d:\d\d", "", x) for x in produced] == [
        re.sub(r"last run \d\d:\d\d", "", x) for x in expected.splitlines()
    ]


def test_the_http_api_table_lists_every_endpoint(tmp_path: Path) -> None:
    from reconciler.server.app import ApiSettings, BearerToken, create_app
    from reconciler.state.local import LocalStore

    app: object = create_app(ApiSettings(lambda: LocalStore(tmp_path / "s.db"), BearerToken(str)))
    while not hasattr(app, "routes"):  # through the middleware to the Starlette application
        app = app.app  # type: ignore[attr-defined]
    served = {
        f"{method} {route.path}"  # type: ignore[attr-defined]
        for route in app.routes  # type: ignore[attr-defined]
        for method in route.methods - {"HEAD"}  # type: ignore[attr-defined]
    }
    documented = set(re.findall(r"^\| `((?:GET|POST) /[^ ?`]*)", README, flags=re.MULTILINE))
    assert documented == {r for r in served if " /dashboard" not in r}
    assert "breakglass serve" in README.split("### The dashboard")[1].split("##")[0]
