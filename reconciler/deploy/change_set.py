"""One change set: create it, print what it changes, execute it, wait; or find it empty.

CloudFormation computes the changes itself (resources added, modified, replaced, removed) and
the deploy prints them before executing; a failed execution prints the resources that failed
and why (the stack's events since the change began).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import WaiterError

from reconciler.deploy.aws import StackError

Echo = Callable[[str], None]

CAPABILITIES = ["CAPABILITY_IAM"]  # roles without fixed names
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
WAIT = {"Delay": 10, "MaxAttempts": 360}  # an hour
SYMBOLS = {"Add": "+", "Modify": "~", "Remove": "-", "Import": ">", "Dynamic": "?"}


class ChangeSet:
    def __init__(self, cfn: Any, stack: str, echo: Echo, wait: Mapping[str, int] = WAIT) -> None:
        self.cfn = cfn
        self.stack = stack
        self.echo = echo
        self.wait = dict(wait)

    def apply(
        self, template_url: str, parameters: Mapping[str, str], creating: bool, region: str
    ) -> bool:
        """Create the change set, print it, execute it, wait; False when it changes nothing."""
        change_set = f"reconcile-stack-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
        self.cfn.create_change_set(
            StackName=self.stack,
            ChangeSetName=change_set,
            ChangeSetType="CREATE" if creating else "UPDATE",
            TemplateURL=template_url,
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=CAPABILITIES,
            Description="reconcile-stack deploy",
        )
        names = {"StackName": self.stack, "ChangeSetName": change_set}
        try:
            self.cfn.get_waiter("change_set_create_complete").wait(
                **names, WaiterConfig={"Delay": 5, "MaxAttempts": 120}
            )
        except WaiterError:
            reason = str(self.cfn.describe_change_set(**names).get("StatusReason", ""))
            if any(text in reason for text in NO_CHANGES):
                self.cfn.delete_change_set(**names)
                self.echo(f"Stack {self.stack}: nothing to change")
                return False
            raise StackError(f"the change set was refused: {reason}") from None
        self.echo(f"{'Creating' if creating else 'Updating'} stack {self.stack} in {region}:")
        for page in self.cfn.get_paginator("describe_change_set").paginate(**names):
            for change in page.get("Changes", []):
                self.echo(_change_line(change.get("ResourceChange", {})))
        started = time.time()
        self.cfn.execute_change_set(**names)
        waiter = "stack_create_complete" if creating else "stack_update_complete"
        try:
            self.cfn.get_waiter(waiter).wait(StackName=self.stack, WaiterConfig=self.wait)
        except WaiterError:
            raise StackError(self._failure(started)) from None
        self.echo(f"Stack {self.stack}: {'created' if creating else 'updated'}")
        return True

    def _failure(self, since: float) -> str:
        status = str(self.cfn.describe_stacks(StackName=self.stack)["Stacks"][0]["StackStatus"])
        lines = [f"stack {self.stack} is {status}; what failed:"]
        events = self.cfn.describe_stack_events(StackName=self.stack).get("StackEvents", [])
        for event in reversed(events):
            if not str(event.get("ResourceStatus", "")).endswith("FAILED"):
                continue
            if event["Timestamp"].timestamp() < since - 60:
                continue
            lines.append(
                f"  {event['LogicalResourceId']} ({event['ResourceType']}): "
                f"{event.get('ResourceStatusReason', '')}"
            )
        if status == "ROLLBACK_COMPLETE":  # a first creation that failed: nothing to update
            lines.append("Remove it with `reconcile-stack teardown`, fix the cause, deploy again.")
        return "\n".join(lines)


def _change_line(change: Mapping[str, Any]) -> str:
    action = str(change.get("Action", "?"))
    replacement = change.get("Replacement")
    note = " (replaced)" if replacement == "True" else ""
    if replacement == "Conditional":
        note = " (may be replaced)"
    return (
        f"  {SYMBOLS.get(action, '?')} {action} {change.get('LogicalResourceId')} "
        f"({change.get('ResourceType')}){note}"
    )
