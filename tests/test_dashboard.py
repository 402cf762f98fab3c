"""The dashboard through the local server as a browser uses it: sign in with the token, read
the flags' effective states, shut down and restore through the forms (CSRF, confirmation,
the same break-glass code and audit), markup in stored text shown as text."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from reconciler import breakglass as core
from reconciler.server.app import ApiSettings, BearerToken, create_app
from reconciler.server.local import serving
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD
from tests.api_transports import TOKEN


@pytest.fixture
def store(example_store: LocalStore) -> LocalStore:
    return example_store


@pytest.fixture
def browser(store: LocalStore) -> Iterator[httpx.Client]:
    settings = ApiSettings(lambda: LocalStore(store.path), BearerToken(lambda: TOKEN))
    with (
        serving(create_app(settings)) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        yield client


def signed_in(browser: httpx.Client) -> str:
    """Sign in; the CSRF token of the page's forms."""
    answer = browser.post("/dashboard/sign-in", data={"token": TOKEN}, follow_redirects=True)
    assert answer.status_code == 200
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', answer.text)
    assert found is not None
    return found[1]


def row(page: str, flag: str) -> str:
    found = re.search(rf'<tr data-flag="{flag}">(.*?)</tr>', page)
    assert found is not None, f"no row for {flag}"
    return found[1]


def test_the_page_needs_the_token(browser: httpx.Client) -> None:
    answer = browser.get("/dashboard")
    assert answer.status_code == 200
    assert "Sign in" in answer.text
    assert "vc_bedrock_live" not in answer.text, "nothing before signing in"
    wrong = browser.post("/dashboard/sign-in", data={"token": "not-the-token-at-all"})
    assert wrong.status_code == 401
    assert "that is not the API&#x27;s token" in wrong.text
    assert browser.get("/dashboard/audit").status_code == 303


def test_a_session_cookie_a_script_cannot_read(browser: httpx.Client) -> None:
    answer = browser.post("/dashboard/sign-in", data={"token": TOKEN})
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/dashboard" in cookie


def test_the_flags_show_their_effective_state(browser: httpx.Client) -> None:
    signed_in(browser)
    page = browser.get("/dashboard").text
    live = row(page, "vc_bedrock_live")
    assert '<td class="partial">partial</td>' in live
    assert '<td class="serving">10%</td>' in live, "the gated rollout's first step"
    assert "bedrock_gradual_rollout ramping at 10%" in live
    assert "edit in git: flags.d/vc_bedrock_live.yaml" in live
    assert "Content-Security-Policy" in browser.get("/dashboard").headers


def test_a_shutdown_needs_the_forms_token_and_a_confirmation(
    browser: httpx.Client, store: LocalStore
) -> None:
    csrf = signed_in(browser)
    form = {"reason": "bad answers", "by": "ana", "target": "", "confirm": "yes"}
    assert browser.post("/dashboard/shutdown", data=form).status_code == 403
    assert browser.post("/dashboard/shutdown", data={**form, "csrf": "0" * 64}).status_code == 403
    unconfirmed = {k: v for k, v in form.items() if k != "confirm"}
    answer = browser.post("/dashboard/shutdown", data={**unconfirmed, "csrf": csrf})
    assert answer.status_code == 400
    assert "tick the confirmation: nothing was done" in answer.text
    nameless = {**form, "by": "\u200b", "csrf": csrf}
    answer = browser.post("/dashboard/shutdown", data=nameless)
    assert answer.status_code == 400
    assert "your name is required" in answer.text
    assert store.read_overrides() is None
    assert store.read_audit(OVERRIDES_RECORD) == []


def test_shutdown_and_restore_through_the_page(browser: httpx.Client, store: LocalStore) -> None:
    csrf = signed_in(browser)
    reason = "<script>alert(1)</script> INC-7"
    form = {"reason": reason, "by": "ana", "target": "vc_bedrock_live", "confirm": "yes"}
    answer = browser.post("/dashboard/shutdown", data={**form, "csrf": csrf})
    assert answer.status_code == 303, "to the page: a reload does it not again"
    assert answer.headers["location"] == "/dashboard?done=shutdown&what=vc_bedrock_live"
    answer = browser.get(answer.headers["location"])
    assert "Shut down vc_bedrock_live." in answer.text
    live = row(answer.text, "vc_bedrock_live")
    assert '<td class="off">off</td>' in live
    assert '<td class="serving">0%</td>' in live
    assert "<script>" not in answer.text, "stored text is shown as text"
    assert "&lt;script&gt;alert(1)&lt;/script&gt; INC-7" in answer.text
    [held] = core.active(store, core.datetime.now(core.UTC))
    assert (held.target, held.by, held.reason) == ("vc_bedrock_live", "ana (dashboard)", reason)

    trail = browser.get("/dashboard/audit", params={"flag": "vc_bedrock_live"}).text
    assert "&lt;script&gt;" in trail
    assert "<script>" not in trail
    assert "ana (dashboard)" in trail

    form = {**form, "reason": "fixed", "csrf": csrf}
    answer = browser.post("/dashboard/restore", data=form, follow_redirects=True)
    assert "Restored vc_bedrock_live." in answer.text
    everything = browser.post("/dashboard/restore", data={**form, "target": ""})
    assert everything.headers["location"] == "/dashboard?done=restore&what="
    assert "Nothing was shut down." in browser.get(everything.headers["location"]).text
    told = browser.get("/dashboard", params={"done": "shutdown", "what": "global,<b>x</b>"})
    assert "Shut down ALL AI features." in told.text, "only names come from the query"
    assert [e["action"] for e in store.read_audit(OVERRIDES_RECORD)] == ["restore", "shutdown"]
    others = browser.get("/dashboard/audit", params={"owner": "nobody-like-this"}).text
    assert "ana (dashboard)" not in others, "filtered by who acted"


def test_each_experiment_shows_its_intervals_and_what_its_conclusion_waits_for(
    browser: httpx.Client,
) -> None:
    signed_in(browser)
    page = browser.get("/dashboard").text
    assert '<h3 data-experiment="claude_vs_gemini">claude_vs_gemini</h3>' in page
    section = page.split('data-experiment="claude_vs_gemini"')[1]
    assert "<svg" in section.split("<pre>")[0], "the intervals per metric, drawn"
    report = section.split("<pre>")[1].split("</pre>")[0]
    assert "sample ratio" in report.lower()


def test_each_rollout_shows_its_share_over_time_and_its_next_step(
    browser: httpx.Client, store: LocalStore
) -> None:
    from reconciler.cli.controller import controller
    from tests.deployments import cli

    signed_in(browser)
    page = browser.get("/dashboard").text
    section = page.split('data-rollout="bedrock_gradual_rollout"')[1].split("<h3")[0]
    assert section.count('class="share"') == 1, "no move yet: the share now"
    assert 'data-percentage="10"' in section
    assert "next: 20% when its checks pass" in section

    import os

    os.environ["RECONCILER_STATE_PATH"] = str(store.path)
    try:
        code, out = cli(controller, "pause", "bedrock_gradual_rollout", "--reason", "a look")
    finally:
        del os.environ["RECONCILER_STATE_PATH"]
    assert code == 0, out
    section = browser.get("/dashboard").text.split('data-rollout="bedrock_gradual_rollout"')[1]
    assert "paused at 10%" in section.split("<h3")[0]


def test_the_audit_trail_filters_by_the_team_that_owns_the_flag(browser: httpx.Client) -> None:
    signed_in(browser)
    mine = browser.get("/dashboard/audit", params={"owner": "team-vc-platform"}).text
    assert "flag/vc_bedrock_live" in mine
    assert "flag/ai_model_selection" not in mine


def test_a_public_dashboard_shows_the_pages_but_not_the_forms(store: LocalStore) -> None:
    settings = ApiSettings(
        lambda: LocalStore(store.path), BearerToken(lambda: TOKEN), public_dashboard=True
    )
    with (
        serving(create_app(settings)) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as anyone,
    ):
        page = anyone.get("/dashboard").text
        assert "10%" in row(page, "vc_bedrock_live")
        assert 'name="csrf"' not in page, "no forms without signing in"
        assert anyone.get("/dashboard/audit").status_code == 200
        assert anyone.get("/dashboard/sign-in").status_code == 200
        form = {"reason": "x", "by": "y", "target": "", "confirm": "yes", "csrf": "z"}
        assert anyone.post("/dashboard/shutdown", data=form).status_code == 303
    assert store.read_overrides() is None


def test_forged_expired_and_foreign_sessions_are_refused(
    browser: httpx.Client, store: LocalStore
) -> None:
    import time

    port = browser.base_url.port
    name = f"reconciler_session_{port}"
    later = int(time.time()) + 3600
    for value in (f"{later}.{'0' * 64}", f"{int(time.time()) - 10}.x", "garbage"):
        browser.cookies.set(name, value)
        assert "Sign in" in browser.get("/dashboard").text, value
        form = {"reason": "x", "by": "y", "target": "", "confirm": "yes", "csrf": "z"}
        assert browser.post("/dashboard/shutdown", data=form).status_code == 303
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # a digit not ASCII
        raw.sendall(f"GET /dashboard HTTP/1.1\r\nHost: x\r\nCookie: {name}=".encode())
        raw.sendall(b"\xb2.x\r\n\r\n")
        assert raw.recv(65536).startswith(b"HTTP/1.1 200"), "the sign-in page, not a 500"
    browser.cookies.clear()
    first = signed_in(browser)
    time.sleep(1.1)  # another second: another session
    browser.cookies.clear()
    second = signed_in(browser)
    assert first != second
    form = {"reason": "x", "by": "y", "target": "", "confirm": "yes", "csrf": first}
    assert browser.post("/dashboard/shutdown", data=form).status_code == 403, "another session's"
    assert store.read_overrides() is None
    csp = browser.get("/dashboard").headers["content-security-policy"]
    assert csp.startswith("default-src 'none'")
    assert "script-src" not in csp, "no script is ever allowed"


def test_store_text_in_the_charts_is_escaped_and_a_bad_record_costs_only_its_section(
    browser: httpx.Client, store: LocalStore
) -> None:
    from reconciler.runtime.client import FlagClient
    from reconciler.runtime.sources import SQLiteSource
    from reconciler.state.records import AuditEntry

    with FlagClient(SQLiteSource(store.path), background=False) as flags:
        flags.record_request_cost("vc_analysis", 10, 0.5, {"user_id": "u"})
        assert flags.flush()
    move = AuditEntry(
        "controller/rollout_controller",
        "rollout-state",
        "rollout-controller",
        "2026-01-01T00:00:00Z",
        after={"bedrock_gradual_rollout": ["not", "an", "entry"]},
    )
    store.write_control("rollout_controller", {"version": 1}, 0, move)
    signed_in(browser)
    page = browser.get("/dashboard").text
    assert 'data-name="vc_analysis"' in page
    assert 'data-rollout="bedrock_gradual_rollout"' in page, "the malformed move is left out"
    assert row(page, "vc_bedrock_live"), "the flags show"
    assert 'name="csrf"' in page, "and the forms"


def test_the_audit_trail_finds_who_acted(browser: httpx.Client, store: LocalStore) -> None:
    core.shutdown(
        store, None, reason="drill", by="ana", expires_at=None, now=core.datetime.now(core.UTC)
    )
    signed_in(browser)
    found = browser.get("/dashboard/audit", params={"owner": "ANA"}).text
    assert "<td>ana</td>" in found
    assert "flag/vc_bedrock_live" not in found


def test_a_shutdown_from_the_page_queues_behind_the_apis_writes(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process writes one override change at a time, whichever door it came in by: while
    an API shutdown is in the store, the page's waits (here 0.5 s), then says it is busy."""
    import threading

    from reconciler.server import app

    monkeypatch.setattr(app, "WRITE_WAIT", 0.5)
    entered, release = threading.Event(), threading.Event()

    class Slow(LocalStore):
        def write_overrides(self, *args: object, **kwargs: object) -> None:
            entered.set()
            assert release.wait(10)
            super().write_overrides(*args, **kwargs)  # type: ignore[arg-type]

    settings = ApiSettings(lambda: Slow(store.path), BearerToken(lambda: TOKEN))
    with (
        serving(create_app(settings)) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as page,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api,
    ):
        csrf = signed_in(page)
        first: list[httpx.Response] = []
        body = {"reason": "runaway cost", "shutdown_by": "bob"}
        writer = threading.Thread(
            target=lambda: first.append(
                api.post(
                    "/emergency-shutdown", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
                )
            )
        )
        writer.start()
        assert entered.wait(10)
        form = {"reason": "bad answers", "by": "ana", "target": "", "confirm": "yes", "csrf": csrf}
        busy = page.post("/dashboard/shutdown", data=form)
        assert busy.status_code == 503
        assert "busy with other writes: nothing was done" in busy.text
        release.set()
        writer.join(10)
        assert first[0].status_code == 200
    assert [e["actor"] for e in store.read_audit(OVERRIDES_RECORD)] == ["bob"]


def test_each_flag_links_its_manifest_at_the_commit_that_applied_it(store: LocalStore) -> None:
    from reconciler.errors import ConfigError
    from reconciler.server.sections import repository_url
    from reconciler.state.records import RecordKind

    commit = "0123456789abcdef0123456789abcdef01234567"
    [live] = [r for n, r in store.read_records(RecordKind.FLAG).items() if n == "vc_bedrock_live"]
    assert live.item.get("git_commit") != commit
    settings = ApiSettings(
        lambda: LocalStore(store.path),
        BearerToken(lambda: TOKEN),
        repository="https://github.com/acme/flags/",
    )
    with (
        serving(create_app(settings)) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        signed_in(client)
        cell = row(client.get("/dashboard").text, "vc_bedrock_live")
    at = live.item.get("git_commit") or ""
    expected = at if re.fullmatch(r"[0-9a-f]{40}", str(at)) else "HEAD"
    link = f"https://github.com/acme/flags/blob/{expected}/flags.d/vc_bedrock_live.yaml"
    assert f'edit in git: <a href="{link}">flags.d/vc_bedrock_live.yaml</a>' in cell
    for bad in ("http://github.com/acme/flags", "javascript:alert(1)", 'https://x/"><b>'):
        with pytest.raises(ConfigError, match="not a repository's https address"):
            repository_url(bad)


def test_a_link_names_the_commit_when_the_apply_had_one() -> None:
    from reconciler.server.sections import manifest_links

    commit = "0123456789abcdef0123456789abcdef01234567"
    links = manifest_links(
        "https://github.com/acme/flags",
        [{"flag_name": "a_x", "git_commit": commit}, {"flag_name": "b_y", "git_commit": None}],
    )
    assert links == {
        "a_x": f"https://github.com/acme/flags/blob/{commit}/flags.d/a_x.yaml",
        "b_y": "https://github.com/acme/flags/blob/HEAD/flags.d/b_y.yaml",
    }


def test_a_page_view_makes_each_read_once(store: LocalStore) -> None:
    """However many sections (and days of the spend chart) ask for the same record."""
    from collections import Counter

    from reconciler.server.sections import DAYS

    calls: Counter[tuple[object, ...]] = Counter()

    class Counting:
        def __init__(self) -> None:
            self.inner = LocalStore(store.path)

        def __getattr__(self, name: str) -> object:
            found = getattr(self.inner, name)
            if not name.startswith("read_"):
                return found

            def counted(*args: object, **kwargs: object) -> object:
                calls[(name, *args, *sorted(kwargs.items()))] += 1
                return found(*args, **kwargs)

            return counted

    settings = ApiSettings(Counting, BearerToken(lambda: TOKEN))  # type: ignore[arg-type]
    with (
        serving(create_app(settings)) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        signed_in(client)
        calls.clear()
        assert client.get("/dashboard").status_code == 200
    repeated = {call: n for call, n in calls.items() if n > 1}
    assert repeated == {}
    past_days = sum(1 for call in calls if call[0] == "read_cost_metrics")
    assert past_days == DAYS - 1, "today's spend is in the telemetry shards"


def test_the_audit_trail_says_what_each_shutdown_covered(
    browser: httpx.Client, store: LocalStore
) -> None:
    """A flag's trail lists the shutdowns of everything too (they turned it off as well), and
    each break-glass row names what it shut down or restored."""
    now = core.datetime.now(core.UTC)
    second = core.timedelta(seconds=1)
    core.shutdown(store, None, reason="runaway cost", by="bob", expires_at=None, now=now)
    core.restore(store, None, reason="fixed", by="bob", now=now + second)
    later = now + 2 * second
    core.shutdown(store, ["ai_model_selection"], reason="bad", by="cy", expires_at=None, now=later)
    signed_in(browser)
    trail = browser.get("/dashboard/audit", params={"flag": "vc_bedrock_live"}).text
    assert trail.count("overrides/breakglass: ALL AI features") == 2
    assert "ai_model_selection" not in trail, "another flag's shutdown"
    everything = browser.get("/dashboard/audit").text
    assert "overrides/breakglass: ai_model_selection" in everything
    assert everything.index("ai_model_selection") < everything.index("ALL AI features")
    unknown = browser.get("/dashboard/audit", params={"flag": "vc_bedrok_live"}).text
    assert "There is no flag &#x27;vc_bedrok_live&#x27; in the store" in unknown
