"""The HTTP API two ways, for the same tests: over HTTP from uvicorn on loopback (as
``breakglass serve`` runs it), and as API Gateway REST proxy events through the Lambda
adapter (as the deployed function runs it)."""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from typing import Any

from mangum import Mangum

TOKEN = "s3cr3t-token-for-tests-0123456789"
Answer = tuple[int, dict[str, Any]]


def _headers(token: str | None, content_type: str | None) -> dict[str, str]:
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _payload(body: Any, raw: bytes | None) -> bytes | None:
    if raw is not None:
        return raw
    return json.dumps(body).encode() if body is not None else None


class Http:
    name = "http"

    def __init__(self, port: int) -> None:
        self.port = port
        self.last_headers: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(
                method, path, body=_payload(body, raw), headers=_headers(token, content_type)
            )
            response = connection.getresponse()
            self.last_headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()


class Lambda:
    """API Gateway (REST API, Lambda proxy integration) events, as the gateway sends them."""

    name = "lambda"

    def __init__(self, app: Any, identity: str | None = None) -> None:
        self.handler = Mangum(app, lifespan="off")
        self.identity = identity
        self.last_headers: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> Answer:
        route, _, query = path.partition("?")
        params: dict[str, list[str]] = {}
        for pair in filter(None, query.split("&")):
            key, _, value = pair.partition("=")
            params.setdefault(key, []).append(value)
        payload = _payload(body, raw)
        headers = _headers(token, content_type)
        if payload is not None:
            headers["Content-Length"] = str(len(payload))
        event = {
            "resource": route,
            "path": route,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": {k: v[-1] for k, v in params.items()} or None,
            "multiValueQueryStringParameters": params or None,
            "pathParameters": None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": route,
                "httpMethod": method,
                "path": f"/v1{route}",
                "stage": "v1",
                "requestId": str(uuid.uuid4()),
                "identity": {"sourceIp": "198.51.100.7", "userArn": self.identity},
            },
            "body": base64.b64encode(payload).decode() if payload is not None else None,
            "isBase64Encoded": payload is not None,
        }
        answer = self.handler(event, _Context())
        self.last_headers = {k.lower(): v for k, v in (answer.get("headers") or {}).items()}
        text = answer.get("body") or "{}"
        if answer.get("isBase64Encoded"):
            text = base64.b64decode(text).decode()
        return int(answer["statusCode"]), json.loads(text)


class _Context:
    function_name = "bedrock-feature-flags-api"
    aws_request_id = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


class GatewayBrowser:
    """A browser at the dashboard behind API Gateway: form posts and cookies, as REST proxy
    events of the stage ``v1`` (the page's own paths start with ``/v1``)."""

    host = "abc123.execute-api.eu-west-1.amazonaws.com"

    def __init__(
        self,
        app: Any,
        identity: str | None = None,
        *,
        base: str = "/v1",
        custom_domain: bool = False,
        asked: str | None = None,
    ) -> None:
        self.handler = Mangum(app, lifespan="off")
        self.identity = identity
        self.base = base  # the stage's path, or a custom domain's base path mapping
        self.custom_domain = custom_domain  # then the event's path has the base in it
        self.asked = asked  # a request context's path other than base + route
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, str], str]:
        from urllib.parse import urlencode

        return self.request("POST", path, urlencode(form).encode())

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], str]:
        assert path.startswith(self.base + "/"), f"{path} is not under {self.base}"
        route, _, query = path.removeprefix(self.base).partition("?")
        params = dict(pair.partition("=")[::2] for pair in filter(None, query.split("&")))
        headers = {"Host": self.host, "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Content-Length"] = str(len(body))
        event = {
            "resource": route,
            "path": self.base + route if self.custom_domain else route,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": params or None,
            "multiValueQueryStringParameters": {k: [v] for k, v in params.items()} or None,
            "pathParameters": None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": route,
                "httpMethod": method,
                "path": self.asked or self.base + route,
                "stage": "v1",
                "requestId": str(uuid.uuid4()),
                "identity": {"sourceIp": "198.51.100.7", "userArn": self.identity},
            },
            "body": base64.b64encode(body).decode() if body is not None else None,
            "isBase64Encoded": body is not None,
        }
        answer = self.handler(event, _Context())
        headers = {k.lower(): v for k, v in (answer.get("headers") or {}).items()}
        multi = {k.lower(): v for k, v in (answer.get("multiValueHeaders") or {}).items()}
        self.set_cookies = list(multi.get("set-cookie") or [])
        if "set-cookie" in headers:
            self.set_cookies.append(headers["set-cookie"])
        for cookie in self.set_cookies:
            name, _, value = cookie.split(";")[0].partition("=")
            self.cookies[name.strip()] = value.strip().strip('"')
        text = answer.get("body") or ""
        if answer.get("isBase64Encoded"):
            text = base64.b64decode(text).decode()
        return int(answer["statusCode"]), headers, text
