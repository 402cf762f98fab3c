"""The stack's DynamoDB tables: every table the code uses, with the code's names, keys and TTL.

On-demand billing, point-in-time recovery everywhere, TTL (attribute ``ttl``) on the tables whose
items expire, the audit table's index by month (its newest entries), and ``Retain`` on deletion
and replacement: removing the stack keeps the data unless ``reconcile-stack teardown
--delete-tables`` is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.state.dynamodb import (
    TABLE_KEYS,
    TTL_ATTRIBUTE,
    TTL_TABLES,
    attribute_definitions,
    table_indexes,
)

Resource = dict[str, Any]

# Every table carries this tag with the stack's name: how teardown and deploy tell the stack's
# tables (also those a teardown kept) from tables made some other way.
STACK_TAG = "reconciler-stack"


def logical_id(variable: str) -> str:
    """The table's logical id in the template: FEATURE_FLAGS_TABLE is FeatureFlagsTable."""
    return "".join(part.capitalize() for part in variable.split("_"))


def table_resources(names: Mapping[str, str]) -> dict[str, Resource]:
    """One ``AWS::DynamoDB::Table`` per table variable; ``names`` maps variables to names."""
    resources: dict[str, Resource] = {}
    for variable, keys in TABLE_KEYS.items():
        properties: Resource = {
            "TableName": names[variable],
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": attribute_definitions(keys, table_indexes(variable)),
            "KeySchema": [dict(key) for key in keys],
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "Tags": [{"Key": STACK_TAG, "Value": {"Ref": "AWS::StackName"}}],
        }
        if table_indexes(variable):
            properties["GlobalSecondaryIndexes"] = table_indexes(variable)
        if variable in TTL_TABLES:
            properties["TimeToLiveSpecification"] = {
                "AttributeName": TTL_ATTRIBUTE,
                "Enabled": True,
            }
        resources[logical_id(variable)] = {
            "Type": "AWS::DynamoDB::Table",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": properties,
        }
    return resources


def table_environment() -> dict[str, Any]:
    """Every table variable set to its table in the stack (a Ref: the table's name)."""
    return {variable: {"Ref": logical_id(variable)} for variable in sorted(TABLE_KEYS)}
