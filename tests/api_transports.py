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
