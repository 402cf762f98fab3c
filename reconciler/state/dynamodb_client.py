"""DynamoDB through boto3: the client, the table names and the one retry helper.

Every call goes through ``DynamoDBBase._call``: throttling, transaction conflicts, server errors
and timeouts are retried with exponential backoff and full jitter, anything else is reported at
once. The store (``reconciler.state.dynamodb``) and its telemetry part build on this.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from boto3.dynamodb.types import TypeSerializer
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    ParamValidationError,
)

from reconciler.runtime.attributes import plain_item
from reconciler.state.records import (
    AUDIT_TABLE,
    CONTROL_TABLE,
    Item,
    RecordKind,
    format_time,
    table_names,
)
from reconciler.state.store import StoreBugError, StoreUnavailableError, TablesMissingError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

DEFAULT_REGION = "eu-central-1"

BACKOFF_BASE = 0.05
BACKOFF_CAP = 5.0
# Error codes that mean "not now": the same call may succeed when repeated.
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "TransactionConflictException",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)
# Cancellation reasons of a transaction that are "not now" too; ConditionalCheckFailed is not.
TRANSIENT_REASONS = frozenset(
    {"TransactionConflict", "ProvisionedThroughputExceeded", "ThrottlingError"}
)
CONDITION_FAILED = "ConditionalCheckFailedException"

T = TypeVar("T")

_serializer = TypeSerializer()


class DynamoDBRequestError(StoreUnavailableError):
    """DynamoDB refused a request in a way that repeating it cannot fix (permissions,
    credentials, validation, limits); the store cannot be used until that is fixed."""

    retryable = False


def to_dynamodb(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain JSON item as DynamoDB attribute values (floats as exact decimals, at any depth)."""
    return {key: _serializer.serialize(_decimals(value)) for key, value in item.items()}


def from_dynamodb(item: Mapping[str, Any]) -> Item:
    """DynamoDB attribute values as a plain JSON item (integral numbers as ints, others as
    floats), read straight from DynamoDB's JSON: several times faster than TypeDeserializer."""
    return plain_item(item)


def _decimals(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decimals(v) for v in value]
    return value


def _raw_items(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> None:
    """Hand Scan and Query items over as DynamoDB's own JSON, skipping botocore's slow parse
    of every attribute; ``from_dynamodb`` reads them."""
    if response_dict.get("status_code") != 200:
        return
    body = json.loads(response_dict["body"])
    items = body.pop("Items", None)
    if items is None:
        return
    customized_response_dict["Items"] = items
    response_dict["body"] = json.dumps(body).encode()


def backoff(attempt: int) -> float:
    """Full jitter: a uniform wait up to 50 ms, 100 ms, 200 ms, ... capped at 5 s."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


def now_text() -> str:
    return format_time(datetime.now(UTC))


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def cancellation_reasons(exc: ClientError) -> list[dict[str, Any]]:
    reasons = exc.response.get("CancellationReasons") or []
    return [dict(reason) for reason in reasons]


def _transient(exc: ClientError, extra_codes: Collection[str]) -> bool:
    code = error_code(exc)
    if code in RETRYABLE_CODES or code in extra_codes:
        return True
    if code == "TransactionCanceledException":
        codes = {str(r.get("Code")) for r in cancellation_reasons(exc)} - {"None", ""}
        return bool(codes) and codes <= TRANSIENT_REASONS
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return isinstance(status, int) and status >= 500


class DynamoDBBase:
    """The connection to DynamoDB that every part of the store shares: the client, the table
    names, and the one retry helper every call goes through."""

    def __init__(
        self,
        client: DynamoDBClient | None = None,
        *,
        tables: Mapping[str, str] | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 8,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.tables = table_names() if tables is None else table_names(tables)
        self.region = (
            region
            or (client.meta.region_name if client is not None else None)
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        self._sleep = sleep
        self._max_attempts = max_attempts
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self._owns_client = client is None
        if client is None:
            # One retry policy, ours: botocore's own retries would multiply the attempts and
            # sleep outside the injected ``sleep``, so it makes one attempt per call.
            config = Config(
                connect_timeout=3,
                read_timeout=10,
                retries={"mode": "standard", "total_max_attempts": 1},
            )
            client = boto3.client(
                "dynamodb", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        self.client: DynamoDBClient = client
        self._handlers: list[tuple[str, Callable[..., None]]] = [
            ("before-call.dynamodb", self._count),
            ("before-parse.dynamodb.Scan", _raw_items),
            ("before-parse.dynamodb.Query", _raw_items),
        ]
        for event, handler in self._handlers:
            self.client.meta.events.register(event, handler)

    def _count(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            with self._calls_lock:
                self.calls[model.name] += 1

    def table(self, kind: RecordKind) -> str:
        return self.tables[kind.table_env]

    @property
    def audit_table(self) -> str:
        return self.tables[AUDIT_TABLE[0]]

    @property
    def control_table(self) -> str:
        return self.tables[CONTROL_TABLE[0]]

    def describe(self) -> str:
        endpoint = f", endpoint {self.endpoint_url}" if self.endpoint_url else ""
        return (
            f"DynamoDB (region {self.region}{endpoint}): tables {', '.join(self.tables.values())}"
        )

    def close(self) -> None:
        for event, handler in self._handlers:
            self.client.meta.events.unregister(event, handler)
        if self._owns_client:
            self.client.close()

    # -- the one retry helper ---------------------------------------------------------------

    def _call(
        self,
        operation: str,
        request: Callable[[], T],
        *,
        handled: Collection[str] = (),
        retry_codes: Collection[str] = (),
        tables: Sequence[str] = (),
        attempts: int | None = None,
    ) -> T:
        """Run one DynamoDB request, repeating the very same request (same parameters, same
        idempotency token) on throttling and transient failures, with backoff.

        Error codes in ``handled`` are the caller's to interpret and come back as the
        ``ClientError``; a missing table is ``TablesMissingError``; anything else that is not
        transient is ``DynamoDBRequestError`` at once.
        """
        limit = attempts or self._max_attempts
        for attempt in range(1, limit + 1):
            try:
                return request()
            except ClientError as exc:
                code = error_code(exc)
                transient = _transient(exc, retry_codes)
                if code in handled and not transient:
                    raise
                if code == "ResourceNotFoundException":
                    raise TablesMissingError(self._missing_tables(tables)) from None
                if not transient:
                    message = exc.response.get("Error", {}).get("Message", "")
                    raise DynamoDBRequestError(
                        f"DynamoDB refused {operation}: {code}: {message}"
                    ) from exc
                failure = code
            except (ConnectionError, HTTPClientError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            except ParamValidationError as exc:
                raise StoreBugError(f"an invalid {operation} request: {exc}") from exc
            except BotoCoreError as exc:  # no credentials, no region, ...: not transient
                raise DynamoDBRequestError(f"cannot call DynamoDB {operation}: {exc}") from exc
            if attempt < limit:
                self._sleep(backoff(attempt))
        where = self.endpoint_url or f"region {self.region}"
        raise StoreUnavailableError(
            f"DynamoDB ({where}) kept failing {operation} ({failure}) after {limit} attempts"
        )

    def _missing_tables(self, tables: Sequence[str]) -> list[str]:
        """Which of ``tables`` (or of all tables) do not exist; a call that found no table."""
        candidates = list(tables) or list(self.tables.values())
        missing = []
        for name in candidates:
            if self._describe_table(name) is None:
                missing.append(name)
        return missing or candidates

    def _describe_table(self, name: str) -> dict[str, Any] | None:
        try:
            answer = self._call(
                "DescribeTable",
                lambda: self.client.describe_table(TableName=name),
                handled={"ResourceNotFoundException"},
            )
        except ClientError:
            return None
        return dict(answer["Table"])

    # -- bootstrap --------------------------------------------------------------------------

    def _scan(self, table: str) -> Iterator[Item]:
        arguments: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = self._call(
                "Scan",
                lambda arguments=arguments: self.client.scan(**arguments),  # type: ignore[misc]
                tables=[table],
            )
            for raw in page.get("Items", []):
                yield from_dynamodb(raw)
            start = page.get("LastEvaluatedKey")
            if not start:
                return
            arguments = {**arguments, "ExclusiveStartKey": start}
