"""The stack in an AWS account: deploy through a change set, show it, remove it.

``deploy`` refuses, before it creates anything, a stack that is busy or broken and tables of
the stack's names that exist outside it. It uploads the artifact and the template by content
hash, and when the stack already has this very template and these parameters it says "nothing
to change" and calls no update at all: a second run changes nothing, on AWS as on moto.
Otherwise it applies a change set (``reconciler.deploy.change_set``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from botocore.exceptions import ClientError

from reconciler.deploy.artifact import Artifact
from reconciler.deploy.aws import StackError, aws_errors, error_code
from reconciler.deploy.bucket import ArtifactBucket, bucket_name
from reconciler.deploy.change_set import WAIT, ChangeSet
from reconciler.deploy.roles import GITHUB_ISSUER
from reconciler.deploy.tables import STACK_TAG
from reconciler.deploy.template import OUTPUT_VARIABLES

Echo = Callable[[str], None]

DEFAULT_STACK = "bedrock-feature-flags"
BROKEN = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED"}
STUCK = {"UPDATE_ROLLBACK_FAILED"}


@dataclass(frozen=True)
class Deployment:
    """What a deploy is asked for; everything but the template is a stack parameter."""

    api_auth: str = "token"
    github_repository: str = ""
    oidc_provider_arn: str = ""
    alert_email: str = ""


class StackShell:
    """One stack (by name) in the account and region of ``session``."""

    def __init__(
        self, session: Any, stack_name: str, echo: Echo, wait: Mapping[str, int] = WAIT
    ) -> None:
        self.name = stack_name
        self.region = str(session.region_name)
        self.echo = echo
        self.wait = dict(wait)
        with aws_errors():
            self.cfn = session.client("cloudformation")
            self.dynamodb = session.client("dynamodb")
            self.cloudwatch = session.client("cloudwatch")
            self.iam = session.client("iam")
            account = str(session.client("sts").get_caller_identity()["Account"])
            s3 = session.client("s3")
        name = bucket_name(stack_name, account, self.region)
        self.bucket = ArtifactBucket(s3, name, account, self.region, echo)

    # -- reading ----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any] | None:
        try:
            stacks = self.cfn.describe_stacks(StackName=self.name)["Stacks"]
        except ClientError as exc:
            if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
                return None
            raise
        return dict(stacks[0]) if stacks else None

    def resources(self, stack: Mapping[str, Any] | None, kind: str) -> dict[str, str]:
        """The stack's resources of one type: logical id to physical id."""
        if stack is None or stack["StackStatus"] == "REVIEW_IN_PROGRESS":
            return {}
        found = {}
        for page in self.cfn.get_paginator("list_stack_resources").paginate(StackName=self.name):
            for resource in page["StackResourceSummaries"]:
                if resource["ResourceType"] == kind and resource.get("PhysicalResourceId"):
                    found[resource["LogicalResourceId"]] = resource["PhysicalResourceId"]
        return found

    def table_owner(self, table: str) -> str | None:
        """The stack a table says it belongs to ("" untagged; None: no such table)."""
        try:
            arn = self.dynamodb.describe_table(TableName=table)["Table"]["TableArn"]
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return None
            raise
        tags = self.dynamodb.list_tags_of_resource(ResourceArn=arn).get("Tags", [])
        return next((str(t["Value"]) for t in tags if t["Key"] == STACK_TAG), "")

    # -- deploy -----------------------------------------------------------------------------

    def deploy(
        self,
        body: str,
        tables: Sequence[str],
        artifact: Callable[[], Artifact],
        asked: Deployment,
    ) -> None:
        with aws_errors():
            stack = self.describe()
            status = stack["StackStatus"] if stack else None
            self._refuse_busy(status)
            self._refuse_foreign_tables(stack, tables)
            self._refuse_foreign_alarms(stack, body)
            provider = asked.oidc_provider_arn
            if asked.github_repository and not provider:
                provider = self._github_provider(stack)
            built = artifact()
            self.bucket.ensure()
            self.bucket.put(built.key, built.path)
            parameters = {
                "ApiAuth": asked.api_auth,
                "ArtifactBucket": self.bucket.name,
                "ArtifactKey": built.key,
                "GitHubRepository": asked.github_repository,
                "GitHubOidcProviderArn": provider,
                "AlertEmail": asked.alert_email,
            }
            creating = stack is None or status == "REVIEW_IN_PROGRESS"
            if not creating and self._deployed(stack) == (body, parameters):
                self.echo(f"Stack {self.name}: nothing to change")
                return
            key = f"templates/{hashlib.sha256(body.encode()).hexdigest()}.yaml"
            self.bucket.put(key, body.encode())
            change = ChangeSet(self.cfn, self.name, self.echo, self.wait)
            if change.apply(self.bucket.url(key), parameters, creating, self.region):
                self._print_outputs()

    def _refuse_busy(self, status: str | None) -> None:
        if status is None or status == "REVIEW_IN_PROGRESS":
            return
        if status.endswith("_IN_PROGRESS"):
            raise StackError(f"stack {self.name} is {status}: wait for it to finish, then retry")
        if status in BROKEN:
            raise StackError(
                f"stack {self.name} is {status} and cannot be updated: remove it with "
                "`reconcile-stack teardown` (its tables are kept), then deploy again"
            )
        if status in STUCK:
            raise StackError(
                f"stack {self.name} is {status}: continue the rollback first "
                f"(aws cloudformation continue-update-rollback --stack-name {self.name})"
            )

    def _refuse_foreign_tables(
        self, stack: Mapping[str, Any] | None, tables: Sequence[str]
    ) -> None:
        inside = set(self.resources(stack, "AWS::DynamoDB::Table").values())
        kept, foreign = [], []
        for table in tables:
            if table in inside:
                continue
            owner = self.table_owner(table)
            if owner == self.name:
                kept.append(table)
            elif owner is not None:
                foreign.append(table)
        problems = []
        if kept:
            problems.append(
                f"kept by an earlier teardown of stack {self.name}: {', '.join(kept)}. If their "
                f"data may go: reconcile-stack teardown --stack-name {self.name} "
                "--delete-tables --yes"
            )
        if foreign:
            problems.append(
                f"made outside the stack (reconcile --bootstrap, by hand, another stack): "
                f"{', '.join(foreign)}. Give the stack other names ([store.tables] in "
                "reconciler.toml), or back the tables up and delete them, deploy, and restore "
                "the backups' items"
            )
        if problems:
            raise StackError(
                "nothing was created: tables of the stack's names exist already, and "
                "CloudFormation does not take over existing tables; " + "; ".join(problems)
            )

    def _refuse_foreign_alarms(self, stack: Mapping[str, Any] | None, body: str) -> None:
        """The original's alarm names are fixed (``BedrockAI-DailyCostHigh``, ...): one of them
        that exists outside this stack (the original system's, another stack's) would fail the
        deploy halfway, so it is refused first, before anything is created."""
        resources = (yaml.safe_load(body) or {}).get("Resources", {})
        names = sorted(
            str(r["Properties"]["AlarmName"])
            for r in resources.values()
            if r.get("Type") == "AWS::CloudWatch::Alarm"
            and isinstance(r.get("Properties", {}).get("AlarmName"), str)
        )
        own = set(self.resources(stack, "AWS::CloudWatch::Alarm").values())
        found: list[str] = []
        for start in range(0, len(names), 100):
            page = self.cloudwatch.describe_alarms(AlarmNames=names[start : start + 100])
            found += [str(a["AlarmName"]) for a in page.get("MetricAlarms", [])]
        foreign = sorted(set(found) - own)
        if foreign:
            raise StackError(
                f"nothing was created: alarms of the stack's names exist already outside it: "
                f"{', '.join(foreign)} (the original system's, or another stack's in this "
                "account and region). Delete them, or deploy to another account or region"
            )

    def _github_provider(self, stack: Mapping[str, Any] | None) -> str:
        """The account's GitHub OIDC provider, unless it is the stack's own ("": create)."""
        own = set(self.resources(stack, "AWS::IAM::OIDCProvider").values())
        for provider in self.iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
            arn = str(provider["Arn"])
            if arn.endswith(f"/{GITHUB_ISSUER}") and arn not in own:
                self.echo(f"Using the account's GitHub OIDC provider {arn}")
                return arn
        return ""

    def _deployed(self, stack: Mapping[str, Any] | None) -> tuple[str, dict[str, str]] | None:
        if stack is None:
            return None
        body = self.cfn.get_template(StackName=self.name, TemplateStage="Original")
        parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
        return str(body["TemplateBody"]), parameters

    # -- status and teardown ----------------------------------------------------------------

    def status(self) -> None:
        with aws_errors():
            stack = self.describe()
            if stack is None:
                raise StackError(
                    f"no stack {self.name} in {self.region}; create it with reconcile-stack deploy"
                )
            reason = f" ({stack['StackStatusReason']})" if stack.get("StackStatusReason") else ""
            self.echo(f"Stack {self.name} in {self.region}: {stack['StackStatus']}{reason}")
            self._print_outputs(stack)

    def _print_outputs(self, stack: Mapping[str, Any] | None = None) -> None:
        found = stack or self.describe() or {}
        outputs = {o["OutputKey"]: str(o["OutputValue"]) for o in found.get("Outputs", [])}
        for key, value in sorted(outputs.items()):
            self.echo(f"  {key}: {value}")
        variables = [(v, outputs[k]) for k, v in OUTPUT_VARIABLES.items() if k in outputs]
        if variables:
            self.echo("The workflows' repository variables:")
        for variable, value in variables:
            self.echo(f"  gh variable set {variable} --body {value}")

    def teardown(self, tables: Sequence[str], delete_tables: bool) -> None:
        with aws_errors():
            stack = self.describe()
            if stack is None:
                self.echo(f"No stack {self.name} in {self.region}")
            else:
                status = str(stack["StackStatus"])
                if status.endswith("_IN_PROGRESS") and status != "REVIEW_IN_PROGRESS":
                    raise StackError(f"stack {self.name} is {status}: wait for it, then retry")
                self.cfn.delete_stack(StackName=stack["StackId"])
                self.cfn.get_waiter("stack_delete_complete").wait(
                    StackName=stack["StackId"], WaiterConfig=self.wait
                )
                self.echo(f"Deleted stack {self.name}")
            ours = [t for t in tables if self.table_owner(t) == self.name]
            if delete_tables:
                for table in ours:
                    self.dynamodb.delete_table(TableName=table)
                for table in ours:
                    self.dynamodb.get_waiter("table_not_exists").wait(TableName=table)
                    self.echo(f"Deleted table {table}")
            elif ours:
                self.echo(
                    f"Kept the tables (their data stays): {', '.join(ours)}. Delete them with "
                    f"reconcile-stack teardown --stack-name {self.name} --delete-tables"
                )
            self.bucket.remove()
