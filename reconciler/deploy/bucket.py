"""The artifact bucket: outside the stack (the stack's functions need their code before the
stack exists), one per stack, account and region, private, encrypted, unversioned.

Objects are named by their content hash and uploaded only when absent: a second deploy of the
same code writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from reconciler.deploy.aws import StackError, error_code

Echo = Callable[[str], None]
MAX_BUCKET_NAME = 63


def bucket_name(stack: str, account: str, region: str) -> str:
    """``<stack>-artifacts-<account>-<region>``, lower case, the stack part cut to fit."""
    suffix = f"-artifacts-{account}-{region}"
    return (stack[: MAX_BUCKET_NAME - len(suffix)] + suffix).lower()


class ArtifactBucket:
    def __init__(self, s3: Any, name: str, account: str, region: str, echo: Echo) -> None:
        self.s3 = s3
        self.name = name
        self.account = account
        self.region = region
        self.echo = echo

    def exists(self) -> bool:
        try:
            self.s3.head_bucket(Bucket=self.name, ExpectedBucketOwner=self.account)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                return False
            if error_code(exc) in ("403", "AccessDenied"):
                raise StackError(
                    f"the artifact bucket {self.name} belongs to another account, or this one "
                    "may not read it; pass another --stack-name"
                ) from None
            raise
        return True

    def ensure(self) -> None:
        """Create the bucket, private and encrypted, unless it exists."""
        if self.exists():
            return
        arguments: dict[str, Any] = {"Bucket": self.name}
        if self.region != "us-east-1":  # the one region that refuses its own name here
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.s3.create_bucket(**arguments)
        self.s3.put_public_access_block(
            Bucket=self.name,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        self.s3.put_bucket_encryption(
            Bucket=self.name,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        self.echo(f"Created the artifact bucket {self.name} (private, encrypted)")

    def has(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def put(self, key: str, body: bytes | Path) -> None:
        """Upload ``body`` as ``key`` unless it is there (the key is its content hash)."""
        if self.has(key):
            return
        data = body.read_bytes() if isinstance(body, Path) else body
        self.s3.put_object(Bucket=self.name, Key=key, Body=data)
        self.echo(f"Uploaded s3://{self.name}/{key} ({len(data):,} bytes)")

    def url(self, key: str) -> str:
        return f"https://{self.name}.s3.{self.region}.amazonaws.com/{key}"

    def remove(self) -> None:
        """Delete every object, then the bucket; nothing to do when it is gone."""
        if not self.exists():
            return
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.name, Delete={"Objects": keys, "Quiet": True})
        self.s3.delete_bucket(Bucket=self.name)
        self.echo(f"Removed the artifact bucket {self.name}")
