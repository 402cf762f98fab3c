"""AWS for the deployment commands: a session, and AWS's failures as clear user errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    WaiterError,
)

from reconciler.errors import UserError


class StackError(UserError):
    """The stack cannot be deployed, shown or removed as asked; the message says why."""


def session(region: str | None, profile: str | None) -> Any:
    """A boto3 session for ``profile`` (else the environment's) in ``region`` (else the
    profile's); one without a region is refused."""
    with aws_errors():
        found = boto3.Session(profile_name=profile, region_name=region)
    if not found.region_name:
        raise StackError("no AWS region: pass --region, or set AWS_REGION or the profile's region")
    return found


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn what boto3 raises into a ``StackError`` naming the call and AWS's reason."""
    try:
        yield
    except NoCredentialsError:
        raise StackError(
            "no AWS credentials: pass --profile, set AWS_PROFILE, or sign in (aws sso login)"
        ) from None
    except NoRegionError:
        raise StackError("no AWS region: pass --region, or set AWS_REGION") from None
    except WaiterError as exc:
        raise StackError(f"gave up waiting: {exc}") from None
    except ClientError as exc:
        operation = getattr(exc, "operation_name", "a call")
        message = exc.response.get("Error", {}).get("Message", "")
        raise StackError(f"AWS refused {operation}: {error_code(exc)}: {message}") from None
    except BotoCoreError as exc:
        raise StackError(f"cannot call AWS: {exc}") from None
