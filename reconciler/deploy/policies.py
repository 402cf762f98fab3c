"""The IAM documents in ``docs/iam`` as the stack's policies: one source for both.

``tests/test_iam_policies.py`` checks each document against the DynamoDB calls its role's code
makes. Here the same statements are kept as they are (Sid, actions, conditions) and only their
resources change: a table ARN of the default name becomes the stack's table
(``Fn::GetAtt <Table>.Arn``; an index ARN, the table's ARN and ``/index/...``), the alert topic
becomes the stack's topic, and anything else (``*`` for CloudWatch metrics) stays.

The documents are read from the source checkout beside this package (``docs/iam``): the
deployment tooling runs from an editable install of the repository, as the README says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.deploy.tables import logical_id
from reconciler.errors import UserError
from reconciler.state.records import table_names

POLICY_DIR = Path(__file__).resolve().parents[2] / "docs" / "iam"
TABLE_ARN = re.compile(r"^arn:aws:dynamodb:\*:\*:table/(?P<name>[^/]+)(?P<rest>/.*)?$")
TOPIC_ARN = re.compile(r"^arn:aws:sns:\*:\*:")


class PolicyError(UserError):
    """A policy document that cannot be read or names something the stack does not have."""


def read_document(role: str, directory: Path = POLICY_DIR) -> dict[str, Any]:
    """The policy document ``docs/iam/<role>.json``."""
    path = directory / f"{role}.json"
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(
            f"{path} not found: the template is generated from a source checkout of the "
            "repository (pip install -e .)"
        ) from None
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{path}: not JSON: {exc}") from None
    return document


def default_tables() -> dict[str, str]:
    """Each table's default name (as the documents write them) mapped to its variable."""
    return {name: variable for variable, name in table_names({}).items()}


def stack_resource(resource: str, topic: Mapping[str, Any], role: str) -> Any:
    """One resource of a document, as the stack names it."""
    table = TABLE_ARN.match(resource)
    if table is not None:
        variable = default_tables().get(table["name"])
        if variable is None:
            raise PolicyError(
                f"docs/iam/{role}.json names table {table['name']}, which the code does not use"
            )
        if table["rest"]:
            return {"Fn::Sub": f"${{{logical_id(variable)}.Arn}}{table['rest']}"}
        return {"Fn::GetAtt": [logical_id(variable), "Arn"]}
    if TOPIC_ARN.match(resource):
        return dict(topic)
    return resource


def stack_policy(role: str, topic: Mapping[str, Any]) -> dict[str, Any]:
    """``docs/iam/<role>.json`` with its resources in the stack."""
    document = read_document(role)
    statements = []
    for statement in document["Statement"]:
        resources = [stack_resource(r, topic, role) for r in statement["Resource"]]
        statements.append({**statement, "Resource": resources})
    return {"Version": document["Version"], "Statement": statements}
