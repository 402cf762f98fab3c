"""``breakglass dashboard``: the browser's way to the dashboard of an API that authorizes with
IAM. A gateway on loopback checks each request's SigV4 signature (recomputed with the secret
key, as API Gateway does) and passes the caller to the dashboard, as API Gateway's proxy
integration does; the proxy in front of it signs what the browser sends it."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from reconciler import breakglass as core
from reconciler.errors import UserError
from reconciler.server.app import ApiSettings, GatewayIdentity, create_app
from reconciler.server.local import serving
from reconciler.server.signing_proxy import SIGN_IN, SigningProxy, Upstream
from reconciler.state.local import LocalStore
from reconciler.state.records import OVERRIDES_RECORD

KEY, SECRET, SESSION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token"
ARN = "arn:aws:sts::123456789012:assumed-role/on-call/ana"
REGION = "eu-west-1"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/\d{8}/(?P<region>[^/]+)/execute-api/"
    r"aws4_request, SignedHeaders=(?P<names>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


def signature_holds(method: str, url: str, headers: dict[str, str], body: bytes) -> bool:
    found = AUTHORIZATION.fullmatch(headers.get("authorization", ""))
    if found is None or found["key"] != KEY or found["region"] != REGION:
        return False
    if headers.get("x-amz-security-token") != SESSION:
        return False
    names = found["names"].split(";")
    if not {"host", "x-amz-date"} <= set(names) or any(n not in headers for n in names):
        return False
    request = AWSRequest(
        method=method, url=url, data=body or None, headers={n: headers[n] for n in names}
    )
    request.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials(KEY, SECRET, SESSION), "execute-api", REGION)
    expected = auth.signature(
        auth.string_to_sign(request, auth.canonical_request(request)), request
    )
    return hmac.compare_digest(expected, found["signature"])


class Gateway:
    """API Gateway's part: refuse what is not signed, then the proxy event's caller and paths
    (the stage ``v1``, over TLS) for the application."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, str]] = []  # each request's headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append(headers)
        # As API Gateway does: the canonical query from the parameters it parsed, encoded as
        # SigV4 says (a "+" sent raw is a space, and signed as %20).
        pairs = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
        query = urlencode(pairs, quote_via=quote)
        url = f"http://{headers.get('host')}{scope['path']}" + (f"?{query}" if query else "")
        if not signature_holds(scope["method"], url, headers, body):
            await send({"type": "http.response.start", "status": 403, "headers": []})
            await send({"type": "http.response.body", "body": b'{"message":"Forbidden"}'})
            return
        route = scope["path"].removeprefix("/v1")
        event = {
            "path": route,
            "resource": route,
            "requestContext": {"path": scope["path"], "identity": {"userArn": ARN}},
        }
        inner = {
            **scope,
            "path": route,
            "raw_path": route.encode(),
            "scheme": "https",
            "aws.event": event,
        }

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(inner, replay, send)


@pytest.fixture
def store(example_store: LocalStore) -> LocalStore:
    return example_store


@pytest.fixture
def gateway(store: LocalStore) -> Iterator[tuple[int, Gateway]]:
    settings = ApiSettings(lambda: LocalStore(store.path), GatewayIdentity(), who_required=False)
    checking = Gateway(create_app(settings))
    with serving(checking) as port:
        yield port, checking


def credentials() -> Any:
    return Credentials(KEY, SECRET, SESSION).get_frozen_credentials()


@pytest.fixture
def proxy(gateway: tuple[int, Gateway]) -> Iterator[tuple[int, str]]:
    """The proxy's port and its launch secret."""
    upstream = Upstream("http", f"127.0.0.1:{gateway[0]}", "/v1", REGION)
    key = SigningProxy.new_key()
    with serving(SigningProxy(upstream, credentials, key)) as port:
        yield port, key


@pytest.fixture
def browser(proxy: tuple[int, str]) -> Iterator[httpx.Client]:
    """A browser that opened the launch link."""
    port, key = proxy
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        opened = client.get(SIGN_IN, params={"key": key})
        assert (opened.status_code, opened.headers["location"]) == (303, "/v1/dashboard")
        client.headers["Origin"] = f"http://127.0.0.1:{port}"
        yield client


def form_token(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "no form on the page"
    return found[1]


SHUTDOWN = {"reason": "bad answers", "by": "ana", "target": "vc_bedrock_live", "confirm": "yes"}


def test_the_gateway_refuses_what_is_not_signed(gateway: tuple[int, Gateway]) -> None:
    """The test's gateway checks signatures (so the tests below show the proxy's hold)."""
    answer = httpx.get(f"http://127.0.0.1:{gateway[0]}/v1/dashboard")
    assert answer.status_code == 403
    scope = f"{KEY}/20261201/{REGION}/execute-api/aws4_request"
    forged = {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host;x-amz-date, "
        f"Signature={'0' * 64}",
        "X-Amz-Date": "20261201T000000Z",
        "X-Amz-Security-Token": SESSION,
    }
    url = f"http://127.0.0.1:{gateway[0]}/v1/dashboard"
    assert httpx.get(url, headers=forged).status_code == 403


def test_the_browser_reads_and_shuts_down_with_the_operators_identity(
    browser: httpx.Client, store: LocalStore
) -> None:
    assert browser.get("/").headers["location"] == "/v1/dashboard"
    page = browser.get("/v1/dashboard")
    assert page.status_code == 200
    assert 'data-flag="vc_bedrock_live"' in page.text
    assert 'action="/v1/dashboard/shutdown"' in page.text
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("reconciler_form_")
    assert "secure" not in cookie.lower(), "loopback is plain HTTP"
    assert "samesite=strict" in cookie.lower()
    answer = browser.post(
        "/v1/dashboard/shutdown",
        data={**SHUTDOWN, "csrf": form_token(page.text)},
        follow_redirects=True,
    )
    assert answer.status_code == 200, answer.text
    assert "Shut down vc_bedrock_live." in answer.text
    [held] = core.active(store, datetime.now(UTC))
    assert held.by == f"ana (dashboard, {ARN})"
    trail = browser.get("/v1/dashboard/audit", params={"flag": "vc_bedrock_live"})
    assert trail.status_code == 200
    assert ARN in trail.text
    sign_in = browser.get("/v1/dashboard/sign-in")
    assert (sign_in.status_code, sign_in.headers["location"]) == (303, "/v1/dashboard")


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://attacker.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_form_from_another_site_is_not_signed(
    browser: httpx.Client, store: LocalStore, headers: dict[str, str]
) -> None:
    page = browser.get("/v1/dashboard")
    answer = browser.post(
        "/v1/dashboard/shutdown", data={**SHUTDOWN, "csrf": form_token(page.text)}, headers=headers
    )
    assert answer.status_code == 403
    assert store.read_overrides() is None
    assert store.read_audit(OVERRIDES_RECORD) == []


def test_a_post_without_an_origin_is_not_signed(browser: httpx.Client, store: LocalStore) -> None:
    page = browser.get("/v1/dashboard")
    del browser.headers["Origin"]
    answer = browser.post(
        "/v1/dashboard/shutdown", data={**SHUTDOWN, "csrf": form_token(page.text)}
    )
    assert answer.status_code == 403
    assert store.read_overrides() is None


def test_it_signs_only_the_dashboard_and_only_for_its_own_address(browser: httpx.Client) -> None:
    assert browser.get("/v1/health/detail").status_code == 404, "the JSON API signs for itself"
    assert browser.get("/v1/dashboardx").status_code == 404
    rebound = browser.get("/v1/dashboard", headers={"Host": "attacker.example"})
    assert rebound.status_code == 421, "a DNS name rebound to loopback is not this proxy"
    assert browser.request("PUT", "/v1/dashboard").status_code == 405


def test_the_url_names_the_region() -> None:
    upstream = Upstream.parse("https://abc123.execute-api.eu-west-1.amazonaws.com/v1/")
    assert (upstream.host, upstream.path, upstream.region) == (
        "abc123.execute-api.eu-west-1.amazonaws.com",
        "/v1",
        "eu-west-1",
    )
    with pytest.raises(UserError, match="give --region"):
        Upstream.parse("https://flags.example.com/v1")
    assert Upstream.parse("https://flags.example.com/v1", "us-east-1").region == "us-east-1"
    assert Upstream.parse("https://flags.example.com/v1", fallback="ap-south-1").region == (
        "ap-south-1"
    ), "a custom domain: the profile's region"
    gateway = "https://abc123.execute-api.eu-west-1.amazonaws.com/v1"
    assert Upstream.parse(gateway, fallback="ap-south-1").region == "eu-west-1"
    with pytest.raises(UserError, match="https only"):
        Upstream.parse("http://flags.example.com/v1", "us-east-1")


def test_only_the_browser_that_opened_the_launch_link_is_served(
    proxy: tuple[int, str], store: LocalStore
) -> None:
    """Another user or process on the machine can write any Host and Origin, but not the
    launch secret: without its cookie nothing is signed."""
    port, key = proxy
    base = f"http://127.0.0.1:{port}"
    origin = {"Origin": base}
    with httpx.Client(base_url=base, timeout=10, headers=origin) as other:
        assert other.get("/v1/dashboard").status_code == 401
        answer = other.post("/v1/dashboard/shutdown", data={**SHUTDOWN, "csrf": "x"})
        assert answer.status_code == 401
        assert other.get(SIGN_IN, params={"key": key[::-1]}).status_code == 401
        other.cookies.set(f"reconciler_proxy_{port}", "a" * 43)
        assert other.get("/v1/dashboard").status_code == 401
    assert store.read_overrides() is None


def test_only_the_dashboards_cookies_go_upstream(
    browser: httpx.Client, gateway: tuple[int, Gateway]
) -> None:
    browser.cookies.set("jupyter-session", "SECRET123")
    assert browser.get("/v1/dashboard").status_code == 200
    assert browser.get("/v1/dashboard").status_code == 200  # now with the form's cookie
    sent = gateway[1].seen[-1].get("cookie", "")
    assert "SECRET123" not in sent
    assert "reconciler_proxy" not in sent, "the launch secret stays here"
    assert re.fullmatch(r"reconciler_form_[0-9]+=[A-Za-z0-9_-]{43}", sent), sent


def test_a_filter_with_spaces_and_symbols_is_signed_as_the_gateway_checks_it(
    browser: httpx.Client,
) -> None:
    answer = browser.get("/v1/dashboard/audit", params={"owner": "ana smith+co*~", "flag": ""})
    assert answer.status_code == 200, answer.text
    assert 'value="ana smith+co*~"' in answer.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/dashboard/..%2Femergency-shutdown",
        "/v1/dashboard/../emergency-shutdown",
        "/v1/dashboard/",
        "/v1/dashboard/%61udit",
        "/v1/dashboard/caf%C3%A9",
    ],
)
def test_only_the_dashboards_routes_as_sent_are_signed(browser: httpx.Client, path: str) -> None:
    with httpx.Client(timeout=10) as raw:  # the path exactly as written, not normalised
        request = raw.build_request("GET", str(browser.base_url).rstrip("/") + "/x")
        request.url = request.url.copy_with(raw_path=path.encode())
        request.headers["cookie"] = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        assert raw.send(request).status_code == 404


def test_a_redirect_leads_only_back_to_the_dashboard() -> None:
    upstream = Upstream("https", "abc.execute-api.eu-west-1.amazonaws.com", "/v1", REGION)
    proxy = SigningProxy(upstream, credentials, SigningProxy.new_key())
    assert proxy._local("/v1/dashboard/audit?flag=a") == "/v1/dashboard/audit?flag=a"
    assert proxy._local(f"https://{upstream.host}/v1/dashboard") == "/v1/dashboard"
    for elsewhere in (
        "//evil.example/v1/dashboard",
        "/\\evil.example",
        "https://evil.example/v1/dashboard",
        "/v1/emergency-shutdown",
        "javascript:alert(1)",
    ):
        assert proxy._local(elsewhere) == "/v1/dashboard", elsewhere


def test_credentials_that_lapsed_get_an_answer_that_says_so(gateway: tuple[int, Gateway]) -> None:
    from botocore.exceptions import TokenRetrievalError

    def lapsed() -> Any:
        raise TokenRetrievalError(provider="sso", error_msg="the SSO session has expired")

    upstream = Upstream("http", f"127.0.0.1:{gateway[0]}", "/v1", REGION)
    key = SigningProxy.new_key()
    with (
        serving(SigningProxy(upstream, lapsed, key)) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        client.get(SIGN_IN, params={"key": key})
        answer = client.get("/v1/dashboard")
    assert answer.status_code == 502
    assert "the SSO session has expired" in answer.text
    assert "aws sso login" in answer.text


def test_breakglass_dashboard_as_an_operator_runs_it(gateway: tuple[int, Gateway]) -> None:
    """The command: the link it prints signs the browser in, and the pages come signed with
    the credentials of its environment."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": SESSION,
    }
    for other in ("AWS_PROFILE", "AWS_SECURITY_TOKEN"):  # the tests' own fake credentials
        env.pop(other, None)
    command = [
        sys.executable,
        "-c",
        "from reconciler.cli.breakglass import main; main()",
        "dashboard",
        f"http://127.0.0.1:{gateway[0]}/v1",
        "--region",
        REGION,
        "--port",
        "0",
        "--no-open",
    ]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)(/_proxy/sign-in\?key=[\w-]+)", line)
        assert found is not None, line
        with httpx.Client(base_url=found[1], timeout=10) as client:
            assert client.get("/v1/dashboard").status_code == 401, "not before the link"
            page = client.get(found[2], follow_redirects=True)
        assert page.status_code == 200
        assert 'data-flag="vc_bedrock_live"' in page.text
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def test_breakglass_dashboard_refuses_what_it_cannot_sign_for() -> None:
    from click.testing import CliRunner

    from reconciler.cli.breakglass import breakglass

    runner = CliRunner(env={"AWS_REGION": None, "AWS_DEFAULT_REGION": None})
    answer = runner.invoke(breakglass, ["dashboard", "https://flags.example.com/v1", "--no-open"])
    assert answer.exit_code != 0
    assert "names no region: give --region" in str(answer.exception or answer.output)
    url = "https://abc.execute-api.eu-west-1.amazonaws.com/v1"
    answer = runner.invoke(
        breakglass, ["dashboard", url, "--profile", "no-such-profile", "--no-open"]
    )
    assert answer.exit_code != 0
    assert "could not be found" in str(answer.exception or answer.output)
