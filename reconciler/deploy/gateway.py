"""The HTTP API behind API Gateway: a REST API (v1) with a Lambda proxy integration.

``GET /health`` needs no authorization (load balancers' liveness checks). The other routes need
AWS_IAM in ``iam`` mode; in ``token`` mode the gateway lets them through and the application
checks the bearer token. The stage throttles every route.

A REST API's deployment is a snapshot: CloudFormation makes a new one only for a new logical
id. The id carries a hash of the routes, and there is one deployment per auth mode, so that a
changed route or a changed ``ApiAuth`` deploys anew instead of leaving the stage on the old
snapshot.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

Resource = dict[str, Any]

STAGE = "v1"
THROTTLE_RATE = 50  # requests per second, every route together
THROTTLE_BURST = 100
# method, path, always public
ROUTES = (
    ("GET", "/health", True),
    ("GET", "/health/detail", False),
    ("GET", "/feature-flags/status", False),
    ("POST", "/emergency-shutdown", False),
    ("POST", "/emergency-restore", False),
    # The dashboard: in token mode its own sign-in; in IAM mode every page signed by the
    # caller (``breakglass dashboard`` does it for a browser).
    ("GET", "/dashboard", False),
    ("GET", "/dashboard/sign-in", False),
    ("POST", "/dashboard/sign-in", False),
    ("GET", "/dashboard/audit", False),
    ("POST", "/dashboard/shutdown", False),
    ("POST", "/dashboard/restore", False),
)


def _camel(path: str) -> str:
    return "".join(part.capitalize() for part in path.replace("-", "/").split("/") if part)


def _resource_id(path: str) -> str:
    return f"ApiResource{_camel(path)}"


def _paths() -> list[str]:
    """Every path the routes need, parents first."""
    found: list[str] = []
    for _, path, _ in ROUTES:
        parts = path.strip("/").split("/")
        for end in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:end])
            if prefix not in found:
                found.append(prefix)
    return found


def _method(method: str, path: str, public: bool) -> Resource:
    authorization = "NONE" if public else {"Fn::If": ["IamAuth", "AWS_IAM", "NONE"]}
    uri = (
        "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/"
        "${ApiFunction.Arn}/invocations"
    )
    return {
        "Type": "AWS::ApiGateway::Method",
        "Properties": {
            "RestApiId": {"Ref": "Api"},
            "ResourceId": {"Ref": _resource_id(path)},
            "HttpMethod": method,
            "AuthorizationType": authorization,
            "Integration": {
                "Type": "AWS_PROXY",
                "IntegrationHttpMethod": "POST",
                "Uri": {"Fn::Sub": uri},
            },
        },
    }


def gateway_resources() -> dict[str, Resource]:
    resources: dict[str, Resource] = {
        "Api": {
            "Type": "AWS::ApiGateway::RestApi",
            "Properties": {
                "Name": {"Fn::Sub": "${AWS::StackName}-api"},
                "Description": "AI feature flags: health, status, break-glass, dashboard",
                "EndpointConfiguration": {"Types": ["REGIONAL"]},
            },
        }
    }
    for path in _paths():
        parent, _, part = path.rpartition("/")
        parent_id = (
            {"Ref": _resource_id(parent)} if parent else {"Fn::GetAtt": ["Api", "RootResourceId"]}
        )
        resources[_resource_id(path)] = {
            "Type": "AWS::ApiGateway::Resource",
            "Properties": {"RestApiId": {"Ref": "Api"}, "ParentId": parent_id, "PathPart": part},
        }
    methods = {
        f"ApiMethod{method.capitalize()}{_camel(path)}": _method(method, path, public)
        for method, path, public in ROUTES
    }
    resources.update(methods)
    digest = hashlib.sha256(json.dumps(methods, sort_keys=True).encode()).hexdigest()[:10]
    deployments = {}
    for condition in ("TokenAuth", "IamAuth"):
        deployment = f"ApiDeployment{condition.removesuffix('Auth')}{digest}"
        deployments[condition] = deployment
        resources[deployment] = {
            "Type": "AWS::ApiGateway::Deployment",
            "Condition": condition,
            "DependsOn": sorted(methods),
            "Properties": {"RestApiId": {"Ref": "Api"}, "Description": f"routes {digest}"},
        }
    resources["ApiStage"] = {
        "Type": "AWS::ApiGateway::Stage",
        "Properties": {
            "RestApiId": {"Ref": "Api"},
            "StageName": STAGE,
            "DeploymentId": {
                "Fn::If": [
                    "TokenAuth",
                    {"Ref": deployments["TokenAuth"]},
                    {"Ref": deployments["IamAuth"]},
                ]
            },
            "MethodSettings": [
                {
                    "ResourcePath": "/*",
                    "HttpMethod": "*",
                    "ThrottlingRateLimit": THROTTLE_RATE,
                    "ThrottlingBurstLimit": THROTTLE_BURST,
                }
            ],
        },
    }
    resources["ApiInvokePermission"] = {
        "Type": "AWS::Lambda::Permission",
        "Properties": {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Ref": "ApiFunction"},
            "Principal": "apigateway.amazonaws.com",
            "SourceArn": {
                "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:"
                f"${{Api}}/{STAGE}/*"
            },
        },
    }
    return resources


def token_secret() -> Resource:
    """Token mode: the bearer token, made by Secrets Manager (48 letters and digits)."""
    return {
        "Type": "AWS::SecretsManager::Secret",
        "Condition": "TokenAuth",
        "DeletionPolicy": "Delete",  # a new stack makes a new token
        "UpdateReplacePolicy": "Delete",
        "Properties": {
            "Description": {"Fn::Sub": "${AWS::StackName}: the HTTP API's bearer token"},
            "GenerateSecretString": {"PasswordLength": 48, "ExcludePunctuation": True},
        },
    }


def api_url() -> dict[str, Any]:
    return {"Fn::Sub": f"https://${{Api}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{STAGE}"}
