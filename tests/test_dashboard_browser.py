"""The dashboard in a real browser (headless Chromium, started here on loopback): the page as
an on-call engineer uses it, against the example manifests applied to a local store.

CI sets REQUIRE_BROWSER=1 (it installs Chromium and Playwright), so there these tests run or
fail; elsewhere they are skipped with the reason when no browser is at hand."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.runtime.client import FlagClient
from reconciler.runtime.decision import Reason
from reconciler.runtime.sources import SQLiteSource
from reconciler.server.app import ApiSettings, BearerToken, create_app
from reconciler.server.local import serving
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD
from tests import browser
from tests.api_transports import TOKEN

WHY = browser.available()
if WHY is not None and os.environ.get("REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"the browser tests must run here: {WHY}")
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")


@pytest.fixture
def store(example_store: LocalStore) -> LocalStore:
    return example_store


@pytest.fixture
def site(store: LocalStore) -> Iterator[tuple[str, Any]]:
    settings = ApiSettings(lambda: LocalStore(store.path), BearerToken(lambda: TOKEN))
    with serving(create_app(settings)) as port, browser.page() as tab:
        yield f"http://127.0.0.1:{port}", tab


def sign_in(base: str, tab: Any, token: str = TOKEN) -> None:
    tab.goto(f"{base}/dashboard")
    tab.fill("input[name=token]", token)
    with tab.expect_navigation():
        tab.click("button:has-text('Sign in')")


def test_without_the_token_the_page_shows_nothing(site: tuple[str, Any]) -> None:
    base, tab = site
    sign_in(base, tab, "a-wrong-token-0123456789")
    assert "that is not the API's token" in tab.inner_text("body")
    assert tab.locator("tr[data-flag]").count() == 0


def test_the_flags_and_the_spend_against_its_limits(
    site: tuple[str, Any], store: LocalStore
) -> None:
    base, tab = site
    with FlagClient(SQLiteSource(store.path), background=False) as flags:
        for n in range(1_500):  # $120 of vc_analysis calls at $0.08
            flags.record_request_cost("vc_analysis", 1500, 0.08, {"user_id": f"u-{n % 50}"})
        assert flags.flush()
    sign_in(base, tab)
    live = tab.locator('tr[data-flag="vc_bedrock_live"]')
    assert live.locator("td.serving").inner_text() == "10%"
    assert live.locator("td.partial").count() == 1
    bar = tab.locator('rect.bar[data-name="vc_analysis"]')
    assert int(bar.get_attribute("width") or 0) > 0
    limits = tab.locator("svg[aria-label^='AI spend on'] line.limit")
    assert limits.count() == 2, "the throttle and the emergency lines"
    assert "$120.00" in (tab.locator("svg").first.text_content() or "")
    assert tab.locator("circle.day").count() == 7


def test_the_shutdown_button_turns_every_decision_off(
    site: tuple[str, Any], store: LocalStore
) -> None:
    base, tab = site
    sign_in(base, tab)
    reason = "<script>window.pwned = 1</script> runaway cost"
    with FlagClient(SQLiteSource(store.path), override_interval=0.2) as flags:
        flags.wait_until_ready()
        assert flags.decide("ai_model_selection", {"user_id": "u-1"}).enabled
        form = tab.locator("form[action='/dashboard/shutdown']")
        form.locator("input[name=reason]").fill(reason)
        form.locator("input[name=by]").fill("ana")
        form.locator("input[name=confirm]").check()
        with tab.expect_navigation():
            form.locator("button").click()
        assert "Shut down ALL AI features." in tab.inner_text("body")
        assert reason in tab.inner_text("body"), "shown as text"
        assert tab.evaluate("window.pwned === undefined"), "and never run"
        deadline = time.monotonic() + 5
        while flags.decide("ai_model_selection", {"user_id": "u-1"}).reason != (
            Reason.EMERGENCY_SHUTDOWN
        ):
            assert time.monotonic() < deadline, "a client obeys within its override poll"
            time.sleep(0.05)
    tab.goto(f"{base}/dashboard/audit")
    assert "ana (dashboard)" in tab.inner_text("table")
    assert [e["action"] for e in store.read_audit(OVERRIDES_RECORD)] == ["shutdown"]


def test_the_documented_command_writes_the_screenshots(tmp_path: Path) -> None:
    written = browser.screenshots(tmp_path)
    assert [p.name for p in written] == ["dashboard.png", "audit.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000


def test_behind_iam_the_browser_goes_through_the_signing_proxy(
    store: LocalStore, tmp_path: Path
) -> None:
    """``breakglass dashboard``: Chromium at the proxy on loopback, the proxy signing for it, a
    gateway that checks each signature; the shutdown is recorded with the IAM identity."""
    from datetime import UTC, datetime

    from botocore.credentials import Credentials

    from reconciler import breakglass as core
    from reconciler.server.app import GatewayIdentity
    from reconciler.server.signing_proxy import SIGN_IN, SigningProxy, Upstream, opener
    from tests.test_signing_proxy import ARN, KEY, REGION, SECRET, SESSION, Gateway

    settings = ApiSettings(lambda: LocalStore(store.path), GatewayIdentity(), who_required=False)
    credentials = Credentials(KEY, SECRET, SESSION)
    with serving(Gateway(create_app(settings))) as upstream:
        key = SigningProxy.new_key()
        proxy = SigningProxy(
            Upstream("http", f"127.0.0.1:{upstream}", "/v1", REGION),
            credentials.get_frozen_credentials,
            key,
        )
        with serving(proxy) as port, browser.page() as tab:
            tab.goto(f"http://127.0.0.1:{port}/")
            assert "open the link breakglass dashboard printed" in tab.inner_text("body")
            # As breakglass dashboard opens it: a file that sends the browser on.
            link = f"http://127.0.0.1:{port}{SIGN_IN}?key={key}"
            with tab.expect_navigation(url=f"http://127.0.0.1:{port}/v1/dashboard"):
                tab.goto(opener(tmp_path, link).as_uri())
            assert tab.url == f"http://127.0.0.1:{port}/v1/dashboard"
            live = tab.locator('tr[data-flag="vc_bedrock_live"]')
            assert live.locator("td.serving").inner_text() == "10%"
            form = tab.locator("form[action='/v1/dashboard/shutdown']")
            form.locator("select[name=target]").select_option("vc_bedrock_live")
            form.locator("input[name=reason]").fill("bad answers")
            form.locator("input[name=by]").fill("ana")
            form.locator("input[name=confirm]").check()
            with tab.expect_navigation():
                form.locator("button").click()
            assert "Shut down vc_bedrock_live." in tab.inner_text("body")
    [held] = core.active(store, datetime.now(UTC))
    assert held.by == f"ana (dashboard, {ARN})"
