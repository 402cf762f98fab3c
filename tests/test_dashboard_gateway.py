"""The dashboard behind API Gateway, as the deployed function serves it: under the stage's path
(``/v1``), signed in with the token or, in IAM mode, by the caller the gateway authorized."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from reconciler import breakglass as core
from reconciler.server.app import ApiSettings, BearerToken, GatewayIdentity, create_app
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD
from tests.api_transports import TOKEN, GatewayBrowser

ARN = "arn:aws:sts::123456789012:assumed-role/on-call/ana"
SHUTDOWN = {"reason": "bad answers", "by": "ana", "target": "vc_bedrock_live", "confirm": "yes"}


@pytest.fixture
def store(example_store: LocalStore) -> LocalStore:
    return example_store


def token_mode(store: LocalStore) -> GatewayBrowser:
    settings = ApiSettings(lambda: LocalStore(store.path), BearerToken(lambda: TOKEN))
    return GatewayBrowser(create_app(settings))


def iam_mode(store: LocalStore, identity: str | None = ARN) -> GatewayBrowser:
    settings = ApiSettings(lambda: LocalStore(store.path), GatewayIdentity(), who_required=False)
    return GatewayBrowser(create_app(settings), identity)


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "no form on the page"
    return found[1]


def test_every_link_form_and_redirect_stays_under_the_stage(store: LocalStore) -> None:
    browser = token_mode(store)
    status, _, page = browser.get("/v1/dashboard")
    assert status == 200
    assert 'action="/v1/dashboard/sign-in"' in page
    status, headers, _ = browser.post("/v1/dashboard/sign-in", {"token": TOKEN})
    assert status == 303
    assert headers["location"] == "/v1/dashboard"
    [cookie] = browser.set_cookies
    assert "Path=/v1/dashboard" in cookie
    assert "Secure" in cookie, "over TLS"
    assert cookie.startswith("reconciler_session_443=")

    status, _, page = browser.get("/v1/dashboard")
    assert status == 200
    assert 'href="/v1/dashboard/audit"' in page
    assert 'action="/v1/dashboard/shutdown"' in page
    assert 'action="/v1/dashboard/restore"' in page
    assert not re.search(r'(href|action)="/dashboard', page), "no path outside the stage"
    status, headers, _ = browser.post("/v1/dashboard/shutdown", {**SHUTDOWN, "csrf": csrf(page)})
    assert status == 303
    assert headers["location"] == "/v1/dashboard?done=shutdown&what=vc_bedrock_live"
    status, _, page = browser.get(headers["location"])
    assert "Shut down vc_bedrock_live." in page
    status, _, trail = browser.get("/v1/dashboard/audit?flag=vc_bedrock_live")
    assert status == 200
    assert 'href="/v1/dashboard"' in trail
    assert "ana (dashboard)" in trail


def test_iam_mode_takes_the_gateways_caller_and_records_it(store: LocalStore) -> None:
    browser = iam_mode(store)
    status, _, page = browser.get("/v1/dashboard")
    assert status == 200
    assert "vc_bedrock_live" in page
    assert "Sign in" not in page, "the gateway has signed the request"
    [cookie] = browser.set_cookies
    assert cookie.startswith("reconciler_form_443=")
    for attribute in ("HttpOnly", "SameSite=strict", "Secure"):
        assert attribute in cookie
    status, _, page = browser.post("/v1/dashboard/shutdown", {**SHUTDOWN, "csrf": csrf(page)})
    assert status == 303, page
    [held] = core.active(store, datetime.now(UTC))
    assert held.by == f"ana (dashboard, {ARN})"
    assert browser.set_cookies == [], "the form's token is kept, not made anew"
    status, headers, _ = browser.get("/v1/dashboard/sign-in")
    assert (status, headers["location"]) == (303, "/v1/dashboard")


def test_iam_mode_refuses_a_form_without_its_cookie(store: LocalStore) -> None:
    """Another site's form reaches the page without the SameSite=Strict cookie; a token read
    from an older page is no use without it."""
    browser = iam_mode(store)
    _, _, page = browser.get("/v1/dashboard")
    token = csrf(page)
    browser.cookies.clear()
    status, _, _ = browser.post("/v1/dashboard/shutdown", {**SHUTDOWN, "csrf": token})
    assert status == 403
    forged = {"reconciler_form_443": "A" * 43}
    browser.cookies.update(forged)
    status, _, _ = browser.post("/v1/dashboard/shutdown", {**SHUTDOWN, "csrf": token})
    assert status == 403
    assert store.read_overrides() is None
    assert store.read_audit(OVERRIDES_RECORD) == []


def test_iam_mode_without_a_caller_shows_nothing(store: LocalStore) -> None:
    browser = iam_mode(store, identity=None)
    status, _, page = browser.get("/v1/dashboard")
    assert status == 401
    assert "breakglass dashboard" in page
    assert "vc_bedrock_live" not in page
    status, _, _ = browser.post("/v1/dashboard/shutdown", {**SHUTDOWN, "csrf": "x"})
    assert status == 303
    assert store.read_overrides() is None


def test_behind_a_custom_domain_the_pages_keep_to_its_base_path(store: LocalStore) -> None:
    """A base path mapping (flags.example.com/flags -> the stage): the event's path has the
    base in it, the resource does not."""
    settings = ApiSettings(lambda: LocalStore(store.path), BearerToken(lambda: TOKEN))
    browser = GatewayBrowser(create_app(settings), base="/flags", custom_domain=True)
    status, _, page = browser.get("/flags/dashboard")
    assert status == 200
    assert 'action="/flags/dashboard/sign-in"' in page
    status, headers, _ = browser.post("/flags/dashboard/sign-in", {"token": TOKEN})
    assert (status, headers["location"]) == (303, "/flags/dashboard")
    status, _, page = browser.get("/flags/dashboard")
    assert status == 200
    assert 'href="/flags/dashboard/audit"' in page


@pytest.mark.parametrize(
    "asked", ["//evil.example/dashboard", "/a/../dashboard", "/v1/x/dashboards"]
)
def test_a_request_path_that_is_not_plain_segments_moves_no_link(
    store: LocalStore, asked: str
) -> None:
    settings = ApiSettings(lambda: LocalStore(store.path), BearerToken(lambda: TOKEN))
    browser = GatewayBrowser(create_app(settings), asked=asked)
    status, _, page = browser.get("/v1/dashboard")
    assert status == 200
    assert "evil.example" not in page
    assert re.findall(r'action="([^"]+)"', page) == ["/dashboard/sign-in"]


def test_a_trailing_slash_is_not_redirected_out_of_the_stage(store: LocalStore) -> None:
    status, headers, _ = token_mode(store).get("/v1/dashboard/")
    assert status == 404
    assert "location" not in headers
