"""The HTTP API: the same shutdown as the command, effective states, and nothing written for a
bad request; every test over HTTP from uvicorn and over API Gateway events on Lambda."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler import breakglass as core
from reconciler.runtime.cost_state import COST_GUARD_ID, BudgetState, CostState
from reconciler.server.app import ApiSettings, BearerToken, GatewayIdentity, create_app
from reconciler.server.inputs import MAX_BODY
from reconciler.server.local import serving
from reconciler.server.status import PUBLIC_FIELDS
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD, AuditEntry, RecordKind
from tests.api_transports import TOKEN, Http, Lambda
from tests.test_apply import apply, desired, plan

Client = Http | Lambda
SHUTDOWN = {"reason": "Critical system error detected", "shutdown_by": "admin"}


@pytest.fixture
def applied(example_store: LocalStore) -> LocalStore:
    return example_store


def settings(store: LocalStore, **kwargs: Any) -> ApiSettings:
    auth = kwargs.pop("auth", BearerToken(lambda: TOKEN))
    return ApiSettings(lambda: LocalStore(store.path), auth, **kwargs)


@pytest.fixture(params=["http", "lambda"])
def api(request: pytest.FixtureRequest, applied: LocalStore) -> Iterator[tuple[Client, LocalStore]]:
    app = create_app(settings(applied))
    if request.param == "http":
        with serving(app) as port:
            yield Http(port), applied
    else:
        yield Lambda(app), applied


def nothing_written(store: LocalStore) -> bool:
    return store.read_overrides() is None and store.read_audit(OVERRIDES_RECORD) == []


def test_shutdown_and_restore_through_the_api(api: tuple[Client, LocalStore]) -> None:
    client, store = api
    status, answer = client.request("POST", "/emergency-shutdown", SHUTDOWN)
    assert status == 200
    assert answer["shut_down"][0]["target"] == "global"
    assert [a.target for a in core.active(store, datetime.now(UTC))] == ["global"]
    status, detail = client.request("GET", "/health/detail")
    assert (status, detail["shutdowns"][0]["by"]) == (200, "admin")
    status, flag = client.request("GET", "/feature-flags/status?flag=vc_bedrock_live")
    assert status == 200
    assert (flag["flag"], flag["state"], flag["serving_percentage"]) == (
        "vc_bedrock_live",
        "off",
        0,
    )
    assert flag["held_by"] == [
        {
            "owner": "break-glass",
            "state": "shut down",
            "scope": "all AI features",
            "by": "admin",
            "reason": "Critical system error detected",
            "since": answer["shut_down"][0]["since"],
            "expires_at": None,
        }
    ]
    status, answer = client.request(
        "POST", "/emergency-restore", {"reason": "fixed", "restored_by": "admin"}
    )
    assert (status, answer) == (200, {"restored": ["global"], "still_shut_down": []})
    actions = [e["action"] for e in store.read_audit(OVERRIDES_RECORD)]
    assert actions == ["restore", "shutdown"]


def test_health_is_open_and_says_nothing_but_its_detail_needs_the_token(
    api: tuple[Client, LocalStore],
) -> None:
    client, store = api
    core.shutdown(
        store, None, reason="incident 7", by="ana", expires_at=None, now=datetime.now(UTC)
    )
    assert client.request("GET", "/health", token=None) == (200, {"status": "ok"})
    assert client.request("GET", "/health", token="wrong-token-wrong-token") == (
        200,
        {"status": "ok"},
    )
    assert client.request("GET", "/health/detail", token=None) == (
        401,
        {"error": "a valid bearer token is required"},
    )
    status, detail = client.request("GET", "/health/detail")
    assert status == 200
    assert detail["store"]["reachable"] is True
    assert [s["reason"] for s in detail["shutdowns"]] == ["incident 7"]
    assert detail["configuration"]["applied_at"] is not None
    assert detail["configuration"]["age_seconds"] >= 0
    assert set(detail["controllers"]) == {"cost guard", "rollout controller", "experiment analyser"}
    assert [r["strategy"] for r in detail["rollouts"]] == ["bedrock_gradual_rollout"]
    assert "server" not in client.last_headers


NESTED = b"[" * MAX_BODY
BAD_REQUESTS = [
    ({"token": None}, 401, "a valid bearer token is required"),
    ({"token": "wrong-token-wrong-token"}, 401, "a valid bearer token is required"),
    ({"raw": b"{not json"}, 400, "the body is not JSON"),
    ({"raw": b"[1, 2]"}, 400, "the body must be a JSON object"),
    ({"raw": NESTED}, 400, "the body is nested too deeply"),
    ({"raw": b'{"reason": NaN}'}, 400, "the body is not JSON"),
    ({"raw": b"\xff\xfe"}, 400, "the body is not UTF-8"),
    ({"raw": b"x" * (MAX_BODY + 1)}, 413, f"at most {MAX_BODY} bytes"),
    (
        {"content_type": "text/plain"},
        415,
        "send the body as Content-Type: application/json",
    ),
    ({"body": {"shutdown_by": "admin"}}, 400, "'reason' is required (a non-empty string)"),
    ({"body": {"reason": "x"}}, 400, "'shutdown_by' is required (who is acting)"),
    (
        {"body": {**SHUTDOWN, "flags": []}},
        400,
        "'flags' must be a non-empty list of names",
    ),
    (
        {"body": {**SHUTDOWN, "flags": [""]}},
        400,
        "'(empty)' is not a flag name: a letter, then letters, digits, '_' or '-' (at most 128)",
    ),
    (
        {"body": {**SHUTDOWN, "urgent": True}},
        400,
        "unknown field 'urgent': the fields are 'reason', 'shutdown_by', 'flags', 'expires', "
        "'force'",
    ),
    (
        {"body": {**SHUTDOWN, "expires": "soon"}},
        400,
        "'expires' 'soon': give a duration such as 30m, 2h or 1d, or a time such as "
        "2026-01-09T06:00:00Z",
    ),
    (
        {"body": {**SHUTDOWN, "expires": "0s"}},
        400,
        "'expires' '0s': a shutdown must last longer than that",
    ),
    (
        {"body": {**SHUTDOWN, "expires": "99999999999d"}},
        400,
        "'expires' '99999999999d': at most 366d; leave it out for a shutdown that holds until "
        "it is restored",
    ),
    ({"body": {**SHUTDOWN, "expires": 5}}, 400, "'expires' must be a string such as \"2h\""),
    (
        {"body": {**SHUTDOWN, "reason": "\u200b\u200b\u200b"}},
        400,
        "a reason is required: say it in words, for whoever reads the trail later",
    ),
    (
        {"body": {**SHUTDOWN, "reason": "see \x1b[2J\x1b[31mFIXED"}},
        400,
        "a reason contains the unprintable character U+001B: use plain text on one line",
    ),
    (
        {"body": {**SHUTDOWN, "shutdown_by": "ana\nrestored by: bob"}},
        400,
        "who is acting contains the unprintable character U+000A: use plain text on one line",
    ),
    (
        {"body": {**SHUTDOWN, "flags": ["vc_bedrock_live\n"], "force": True}},
        400,
        "'vc_bedrock_live\\n' is not a flag name: a letter, then letters, digits, '_' or '-' "
        "(at most 128)",
    ),
    (
        {"raw": b'{"reason": "fine\\ud800", "shutdown_by": "admin"}'},
        400,
        "a reason contains the unprintable character U+D800: use plain text on one line",
    ),
    (
        {"body": {**SHUTDOWN, "expires": "1" * 5000 + "s"}},
        400,
        f"'expires' '{'1' * 5000}s': give a duration such as 30m, 2h or 1d, or a time such as "
        "2026-01-09T06:00:00Z",
    ),
    (
        {"body": {**SHUTDOWN, "flags": ["vc_bedrok_live"]}},
        404,
        "no flag 'vc_bedrok_live' (did you mean 'vc_bedrock_live'?) in the store: nothing was "
        'written; to shut down a flag that is not applied yet, give "force": true',
    ),
]


@pytest.mark.parametrize(("kwargs", "status", "message"), BAD_REQUESTS)
def test_bad_requests_are_refused_and_write_nothing(
    api: tuple[Client, LocalStore], kwargs: dict[str, Any], status: int, message: str
) -> None:
    client, store = api
    kwargs = dict(kwargs)
    body = kwargs.pop("body", SHUTDOWN)
    assert client.request("POST", "/emergency-shutdown", body, **kwargs) == (
        status,
        {"error": message},
    )
    assert nothing_written(store)


def test_a_restore_is_checked_the_same_way(api: tuple[Client, LocalStore]) -> None:
    client, store = api
    body = {"reason": "fixed", "restored_by": "admin", "flags": ["vc_bedrok_live"]}
    assert client.request("POST", "/emergency-restore", body) == (
        404,
        {
            "error": "no flag 'vc_bedrok_live' (did you mean 'vc_bedrock_live'?) in the store: "
            "nothing was written"
        },
    )
    body = {"reason": "\x07", "restored_by": "admin"}
    assert client.request("POST", "/emergency-restore", body)[0] == 400
    body = {"reason": "fixed", "restored_by": "admin", "shutdown_by": "x"}
    assert client.request("POST", "/emergency-restore", body)[0] == 400
    assert nothing_written(store)


def test_unknown_paths_methods_and_flags(api: tuple[Client, LocalStore]) -> None:
    client, _ = api
    assert client.request("GET", "/nope") == (404, {"error": "no endpoint /nope"})
    assert client.request("DELETE", "/health") == (
        405,
        {"error": "DELETE is not allowed on /health"},
    )
    assert client.request("GET", "/feature-flags/status?flag=vc_missing") == (
        404,
        {"error": "no flag 'vc_missing' in the store"},
    )
    assert client.request("GET", "/feature-flags/status")[0] == 400
    assert client.request("GET", "/feature-flags/status?flag=vc_bedrock_live", token=None)[0] == 401


def test_the_status_is_the_effective_state_without_the_rules(
    api: tuple[Client, LocalStore],
) -> None:
    client, store = api
    status, answer = client.request("GET", "/feature-flags/status?flag=vc_bedrock_live")
    assert status == 200
    # A gated rollout serves its first step until the rollout controller has judged it.
    assert (answer["state"], answer["serving_percentage"], answer["held_by"]) == (
        "partial",
        10,
        [],
    )
    rollout = answer["rollout_state"]
    assert (rollout["strategy"], rollout["percentage"]) == ("bedrock_gradual_rollout", 10)
    assert "not judged by the rollout controller yet" in rollout["detail"]
    stored = store.read_records(RecordKind.FLAG)["vc_bedrock_live"].item
    assert set(answer["configured"]) <= set(stored) & set(PUBLIC_FIELDS)
    internal = set(stored) - set(PUBLIC_FIELDS)
    assert {"targeting", "value"} <= internal, "the stored record has more"
    assert not internal & set(json.dumps(answer).split('"')), "the rules stay internal"

    core.shutdown(
        store,
        ["vc_bedrock_live"],
        reason="bad answers",
        by="ana",
        expires_at=None,
        now=datetime.now(UTC),
    )
    status, answer = client.request("GET", "/feature-flags/status?flag=vc_bedrock_live&user_id=u-1")
    assert answer["held_by"][0]["scope"] == "this flag"
    assert answer["decision"]["reason"] == "EMERGENCY_SHUTDOWN"
    assert answer["decision"]["context"] == ["user_id"], "names the context, not its values"
    assert "u-1" not in json.dumps(answer)


def test_a_throttle_of_the_cost_guard_is_shown(api: tuple[Client, LocalStore]) -> None:
    client, store = api
    now = datetime.now(UTC)
    budget = BudgetState(
        "ai_daily_budget",
        now.date().isoformat(),
        "UTC",
        (now + timedelta(hours=1)).isoformat(),
        120_000_000,
        "throttled",
        now.isoformat(),
        factor=0.5,
    )
    guard = CostState(1, now.isoformat(), now.isoformat(), {"ai_daily_budget": budget}).to_item()
    store.write_control(COST_GUARD_ID, guard, 0, None)
    status, answer = client.request("GET", "/feature-flags/status?flag=vc_bedrock_live")
    assert status == 200
    [held] = answer["held_by"]
    assert (held["owner"], held["state"], held["factor"]) == ("cost guard", "throttled", 0.5)
    assert (answer["state"], answer["serving_percentage"]) == ("partial", 5), "half of 10%"


def test_the_access_log_hashes_users_and_redacts_context(
    applied: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    client = Lambda(create_app(settings(applied)))
    with caplog.at_level(logging.INFO, logger="reconciler.access"):
        client.request(
            "GET", "/feature-flags/status?flag=vc_bedrock_live&user_id=u-4711&email=a@b.c"
        )
        client.request("POST", "/emergency-shutdown", {**SHUTDOWN, "reason": "secret incident"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "reconciler.access"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("GET", "/feature-flags/status", 200),
        ("POST", "/emergency-shutdown", 200),
    ]
    query = lines[0]["query"]
    assert query["flag"] == "vc_bedrock_live"
    assert query["email"] == "[redacted]"
    assert query["user_id"].startswith("h:")
    text = caplog.text
    for secret in ("u-4711", "a@b.c", "secret incident", "198.51.100.7", TOKEN, "admin"):
        assert secret not in text
    assert lines[0]["client"].startswith("h:")
    assert lines[0]["caller"].startswith("h:")
    assert lines[0]["duration_ms"] >= 0


def test_behind_iam_the_gateway_identity_is_the_caller(applied: LocalStore) -> None:
    app = create_app(settings(applied, auth=GatewayIdentity(), who_required=False))
    arn = "arn:aws:sts::123456789012:assumed-role/oncall/ana"
    assert Lambda(app).request("POST", "/emergency-shutdown", {"reason": "x"}, token=None) == (
        401,
        {"error": "a valid bearer token is required"},
    )
    assert nothing_written(applied)
    client = Lambda(app, identity=arn)
    status, answer = client.request("POST", "/emergency-shutdown", {"reason": "runaway cost"})
    assert (status, answer["shut_down"][0]["by"]) == (200, arn)
    status, answer = client.request(
        "POST", "/emergency-restore", {"reason": "ok again", "restored_by": "ana"}
    )
    assert status == 200
    assert applied.read_audit(OVERRIDES_RECORD)[0]["actor"] == f"ana ({arn})"


def test_stored_text_is_escaped_on_the_terminal(applied: LocalStore, tmp_path: Path) -> None:
    """A reason an older writer stored raw is shown escaped by `breakglass status`."""
    from tests.test_breakglass_names import invoke

    raw = "fine\x1b[2J\x1b[31m now"
    record = {
        "version": 1,
        "global": {"by": "old\x07tool", "reason": raw, "since": "2026-01-01T00:00:00Z"},
    }
    audit = AuditEntry(
        OVERRIDES_RECORD, "shutdown", "old\x07tool", "2026-01-01T00:00:00Z", reason=raw
    )
    applied.write_overrides(record, 0, audit)
    import os

    os.environ["RECONCILER_STATE_PATH"] = str(applied.path)
    try:
        code, out, _ = invoke(tmp_path, "status", "--history")
    finally:
        del os.environ["RECONCILER_STATE_PATH"]
    assert code == 0
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "fine\\x1b[2J\\x1b[31m now" in out
    assert "old\\x07tool" in out


@pytest.mark.parametrize("where", ["moto_store", "moto_server_store"])
def test_on_dynamodb_the_status_reads_one_item_of_the_flag_table_and_scans_nothing(
    where: str, request: pytest.FixtureRequest
) -> None:
    from collections import Counter

    from reconciler.state.dynamodb import DynamoDBStore

    store: DynamoDBStore = request.getfixturevalue(where)
    apply(store, plan(store, desired()))
    calls: Counter[tuple[str, str]] = Counter()

    def counted(model: Any, params: dict[str, Any], **_: Any) -> None:
        table = params.get("TableName") or ",".join(params.get("RequestItems", {}))
        calls[(model.name, str(table))] += 1

    store.client.meta.events.register("before-parameter-build.dynamodb", counted)
    app = create_app(ApiSettings(lambda: store, BearerToken(lambda: TOKEN), release=lambda _: None))
    status, answer = Lambda(app).request("GET", "/feature-flags/status?flag=vc_bedrock_live")
    assert (status, answer["flag"]) == (200, "vc_bedrock_live")
    flags_table = store.table(RecordKind.FLAG)
    assert calls[("GetItem", flags_table)] == 1
    assert {name for name, _ in calls} == {"GetItem"}, "no Scan, no Query"
    assert {table for _, table in calls} == {flags_table, store.control_table}


def test_an_experiment_stopped_by_an_operator_holds_its_flag(
    api: tuple[Client, LocalStore], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from reconciler.cli.controller import controller
    from tests.deployments import cli

    client, store = api
    monkeypatch.setenv("RECONCILER_STATE_PATH", str(store.path))
    code, out = cli(
        controller,
        "experiment-stop",
        "claude_vs_gemini",
        "--reason",
        "bad",
        "--root",
        str(tmp_path),
    )
    assert code == 0, out
    status, answer = client.request("GET", "/feature-flags/status?flag=ai_model_selection")
    assert status == 200
    [held] = [h for h in answer["held_by"] if h["owner"] == "operator"]
    assert (held["state"], held["experiment"]) == ("stopped", "claude_vs_gemini")
