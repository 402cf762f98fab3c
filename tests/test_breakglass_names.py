"""Break-glass names what it shuts down: typos are refused; the trail says what each entry did."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler import breakglass as core
from reconciler.cli.boundary import run
from reconciler.cli.breakglass import breakglass
from reconciler.server.app import ApiSettings, BearerToken, create_app
from reconciler.server.local import serving
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD, format_time
from reconciler.state.store import StateStore
from tests.api_transports import TOKEN, Http
from tests.test_apply import apply, desired, plan

NOW = datetime(2026, 1, 9, 3, 0, tzinfo=UTC)


@pytest.fixture
def applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStore]:
    """The repository's flags applied to a local store, which the command line uses."""
    path = tmp_path / "state.db"
    store = LocalStore(path)
    apply(store, plan(store, desired()))
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(path))
    yield store
    store.close()


def invoke(root: Path, *args: str) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        code = run(breakglass, [*args, "--root", str(root)])
        return code, out.getvalue().decode(), err.getvalue().decode()


def nothing_written(store: StateStore) -> bool:
    return store.read_overrides() is None and store.read_audit(OVERRIDES_RECORD) == []


def test_a_typo_is_refused_with_the_name_it_meant(applied: LocalStore, tmp_path: Path) -> None:
    code, out, err = invoke(
        tmp_path, "shutdown", "--flag", "vc_bedrok_live", "--reason", "bad answers", "--by", "ana"
    )
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] + "\n" == (
        "error: no flag 'vc_bedrok_live' (did you mean 'vc_bedrock_live'?) in the store: "
        "nothing was written; to shut down a flag that is not applied yet, give --force\n"
    )
    assert nothing_written(applied)


def test_one_unknown_name_refuses_the_whole_shutdown(store: StateStore) -> None:
    apply(store, plan(store, desired()))
    with pytest.raises(core.UnknownFlagError) as caught:
        core.shutdown(
            store,
            ["vc_bedrock_live", "ai_model_selektion", "zz_nothing_like_it"],
            reason="incident",
            by="ana",
            expires_at=None,
            now=NOW,
        )
    assert caught.value.unknown == {
        "ai_model_selektion": ("ai_model_selection",),
        "zz_nothing_like_it": (),
    }
    assert str(caught.value).startswith(
        "no flags 'ai_model_selektion' (did you mean 'ai_model_selection'?); "
        "'zz_nothing_like_it' in the store: nothing was written"
    )
    assert nothing_written(store), "not even the flag that exists"


def test_force_shuts_down_a_flag_not_applied_yet(applied: LocalStore, tmp_path: Path) -> None:
    args = ("shutdown", "--flag", "vc_next_feature", "--reason", "hold it", "--by", "ana")
    assert invoke(tmp_path, *args)[0] == 1
    assert nothing_written(applied)
    code, out, _ = invoke(tmp_path, *args, "--force")
    assert code == 0
    assert out.startswith("vc_next_feature: shut down by ana since ")
    assert [a.target for a in core.active(applied, datetime.now(UTC))] == ["vc_next_feature"]


def test_a_flag_shutdown_already_recorded_is_a_known_name(store: StateStore) -> None:
    core.shutdown(store, ["vc_retired"], reason="x", by="ana", expires_at=None, now=NOW, force=True)
    assert core.unknown_flags(store, ["vc_retird", "vc_retired"]) == {"vc_retird": ["vc_retired"]}
    [held] = core.shutdown(store, ["vc_retired"], reason="y", by="bo", expires_at=None, now=NOW)
    assert [h["by"] for h in held.history] == ["ana", "bo"], "renewed without --force"


def test_the_drill_refuses_an_unknown_flag_without_offering_force(store: StateStore) -> None:
    apply(store, plan(store, desired()))
    with pytest.raises(core.UnknownFlagError) as caught:
        core.drill(store, object(), "vc_bedrok_live", by="drill-bot")
    assert str(caught.value) == (
        "no flag 'vc_bedrok_live' (did you mean 'vc_bedrock_live'?) in the store: "
        "nothing was written"
    )
    assert nothing_written(store)


@pytest.fixture
def api(applied: LocalStore) -> Iterator[Http]:
    settings = ApiSettings(lambda: LocalStore(applied.path), BearerToken(lambda: TOKEN))
    with serving(create_app(settings)) as port:
        yield Http(port)


def test_the_api_refuses_unknown_flags_the_same_way(api: Http, applied: LocalStore) -> None:
    body = {"reason": "bad answers", "shutdown_by": "admin", "flags": ["vc_bedrok_live"]}
    assert api.request("POST", "/emergency-shutdown", body) == (
        404,
        {
            "error": "no flag 'vc_bedrok_live' (did you mean 'vc_bedrock_live'?) in the store: "
            'nothing was written; to shut down a flag that is not applied yet, give "force": true'
        },
    )
    assert api.request("POST", "/emergency-shutdown", {**body, "force": "yes"}) == (
        400,
        {"error": "'force' must be true or false"},
    )
    assert nothing_written(applied)
    status, answer = api.request("POST", "/emergency-shutdown", {**body, "force": True})
    assert status == 200
    assert [a["target"] for a in answer["shut_down"]] == ["vc_bedrok_live"]
    status, answer = api.request(
        "POST", "/emergency-shutdown", {**body, "flags": ["vc_bedrock_live"]}
    )
    assert (status, [a["target"] for a in answer["shut_down"]]) == (200, ["vc_bedrock_live"])


def test_history_says_what_each_entry_shut_down_or_restored(
    applied: LocalStore, tmp_path: Path
) -> None:
    moments = [NOW + timedelta(minutes=m) for m in range(5)]
    flag = ["vc_bedrock_live"]
    both = ["ai_model_selection", "vc_bedrock_live"]
    core.shutdown(applied, flag, reason="bad answers", by="ana", expires_at=None, now=moments[0])
    core.shutdown(applied, None, reason="runaway cost", by="bo", expires_at=None, now=moments[1])
    core.shutdown(applied, both, reason="still bad", by="ana", expires_at=None, now=moments[2])
    core.restore(applied, None, reason="cost fixed", by="bo", now=moments[3])
    core.restore(applied, flag, reason="answers fixed", by="ana", now=moments[4])
    at = [format_time(m) for m in moments]

    code, out, _ = invoke(tmp_path, "status", "--history")
    assert code == 0
    assert out.splitlines()[-5:] == [
        f"{at[4]}  restore  vc_bedrock_live by ana: answers fixed",
        f"{at[3]}  restore  ALL AI features by bo: cost fixed",
        f"{at[2]}  shutdown ai_model_selection, vc_bedrock_live by ana: still bad",
        f"{at[1]}  shutdown ALL AI features by bo: runaway cost",
        f"{at[0]}  shutdown vc_bedrock_live by ana: bad answers",
    ]
    code, out, _ = invoke(tmp_path, "status", "--history", "--format", "json")
    assert code == 0
    history = json.loads(out)["history"]
    assert [(e["action"], e["scope"]) for e in history] == [
        ("restore", ["vc_bedrock_live"]),
        ("restore", ["global"]),
        ("shutdown", both),
        ("shutdown", ["global"]),
        ("shutdown", ["vc_bedrock_live"]),
    ]
