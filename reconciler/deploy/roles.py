"""The stack's IAM: a role per Lambda function, the runtime's managed policy, GitHub's roles.

Each role's table access is its ``docs/iam`` document (``reconciler.deploy.policies``); beside it
a role gets only what its function needs around the tables: its own log group, the API token's
secret (token mode), the alert topic and CloudWatch metrics (in the controller document).

With a GitHub repository, four roles for the workflows, assumed through GitHub's OpenID Connect
provider by that repository only: the plan role (read-only, pull requests), the apply and
break-glass roles (jobs in the ``production`` environment), the controller role (main).
"""

from __future__ import annotations

from typing import Any

from reconciler.deploy.policies import stack_policy

Resource = dict[str, Any]

GITHUB_ISSUER = "token.actions.githubusercontent.com"
# Which policy document each role of the template carries: tests/test_iam_policies.py checks
# every one of them against docs/iam and the code.
ROLE_DOCUMENTS = {
    "ApiFunctionRole": "api",
    "ControllerFunctionRole": "controller",
    "RuntimePolicy": "runtime",
    "GitHubPlanRole": "reconciler-plan",
    "GitHubApplyRole": "reconciler-ci",
    "GitHubBreakglassRole": "breakglass",
    "GitHubControllerRole": "controller",
}
# The GitHub roles: the job's subject claim each accepts, after "repo:<owner>/<name>:".
GITHUB_SUBJECTS = {
    "GitHubPlanRole": "pull_request",
    "GitHubApplyRole": "environment:production",
    "GitHubBreakglassRole": "environment:breakglass",  # not apply's: neither takes the other's
    "GitHubControllerRole": "ref:refs/heads/main",
}
# The repository variables the workflows read each role's ARN from (the stack's outputs).
GITHUB_VARIABLES = {
    "GitHubPlanRole": "RECONCILER_PLAN_ROLE_ARN",
    "GitHubApplyRole": "RECONCILER_APPLY_ROLE_ARN",
    "GitHubBreakglassRole": "RECONCILER_BREAKGLASS_ROLE_ARN",
    "GitHubControllerRole": "RECONCILER_CONTROLLER_ROLE_ARN",
}
TOPIC = {"Ref": "AlertsTopic"}


def _inline(name: str, document: dict[str, Any]) -> dict[str, Any]:
    return {"PolicyName": name, "PolicyDocument": document}


def _logs(log_group: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "WriteOwnLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [{"Fn::GetAtt": [log_group, "Arn"]}],
            }
        ],
    }


def function_role(role: str, log_group: str) -> Resource:
    """A Lambda function's role: its document's grants and its own log group."""
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "Description": {"Fn::Sub": f"${{AWS::StackName}}: {role}"},
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [
                _inline(ROLE_DOCUMENTS[role], stack_policy(ROLE_DOCUMENTS[role], TOPIC)),
                _inline("logs", _logs(log_group)),
            ],
        },
    }


def api_token_policy() -> Resource:
    """Token mode: the API function may read its token's secret, and no other."""
    return {
        "Type": "AWS::IAM::Policy",
        "Condition": "TokenAuth",
        "Properties": {
            "PolicyName": "api-token",
            "Roles": [{"Ref": "ApiFunctionRole"}],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "ReadApiToken",
                        "Effect": "Allow",
                        "Action": ["secretsmanager:GetSecretValue"],
                        "Resource": [{"Ref": "ApiTokenSecret"}],
                    }
                ],
            },
        },
    }


def runtime_policy() -> Resource:
    """The managed policy services attach to their own roles to evaluate flags."""
    return {
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {
            "Description": {
                "Fn::Sub": "${AWS::StackName}: what a service's FlagClient reads and writes"
            },
            "PolicyDocument": stack_policy(ROLE_DOCUMENTS["RuntimePolicy"], TOPIC),
        },
    }


def github_resources() -> dict[str, Resource]:
    """GitHub's OIDC provider (unless the account has one) and the workflows' roles."""
    resources: dict[str, Resource] = {
        "GitHubOidcProvider": {
            "Type": "AWS::IAM::OIDCProvider",
            "Condition": "CreateOidcProvider",
            "Properties": {
                "Url": f"https://{GITHUB_ISSUER}",
                "ClientIdList": ["sts.amazonaws.com"],
                # GitHub's certificate chains; IAM trusts GitHub's root CAs besides these.
                "ThumbprintList": [
                    "6938fd4d98bab03faadb97b34396831e3780aea1",
                    "1c58a3a8518e8759bf075b76b750d4f2df264fcd",
                ],
            },
        }
    }
    provider = {
        "Fn::If": [
            "CreateOidcProvider",
            {"Ref": "GitHubOidcProvider"},
            {"Ref": "GitHubOidcProviderArn"},
        ]
    }
    for role, subject in GITHUB_SUBJECTS.items():
        document = ROLE_DOCUMENTS[role]
        resources[role] = {
            "Type": "AWS::IAM::Role",
            "Condition": "HasGitHub",
            "Properties": {
                "Description": {
                    "Fn::Sub": f"${{AWS::StackName}}: GitHub workflows of ${{GitHubRepository}}"
                    f" ({subject})"
                },
                "MaxSessionDuration": 3600,
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Federated": provider},
                            "Action": "sts:AssumeRoleWithWebIdentity",
                            "Condition": {
                                "StringEquals": {
                                    f"{GITHUB_ISSUER}:aud": "sts.amazonaws.com",
                                    f"{GITHUB_ISSUER}:sub": {
                                        "Fn::Sub": f"repo:${{GitHubRepository}}:{subject}"
                                    },
                                }
                            },
                        }
                    ],
                },
                "Policies": [_inline(document, stack_policy(document, TOPIC))],
            },
        }
    return resources
