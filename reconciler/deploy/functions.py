"""The two Lambda functions from one artifact: the HTTP API and the controllers' tick.

The controller tick runs every minute (EventBridge), with a timeout below the minute; two ticks
at once are safe (the controllers' writes are conditional), so no reserved concurrency is set:
a new account's concurrency quota of 10 refuses any reservation. Each function logs to its own
log group, kept ``LOG_RETENTION_DAYS``. Alarms on the functions themselves: the controller
failing, the controller not having run, the API failing.
"""

from __future__ import annotations

from typing import Any

from reconciler.deploy.tables import table_environment

Resource = dict[str, Any]

API_HANDLER = "reconciler.server.lambda_handlers.api"
CONTROLLER_HANDLER = "reconciler.server.lambda_handlers.controller_tick"
RUNTIME = "python3.11"
ARCHITECTURE = "x86_64"
LOG_RETENTION_DAYS = 30
SCHEDULE = "rate(1 minute)"
# name suffix, handler, timeout (s), memory (MB), role, log group
FUNCTIONS = {
    "ApiFunction": ("api", API_HANDLER, 29, 512, "ApiFunctionRole", "ApiLogGroup"),
    "ControllerFunction": (
        "controller-tick",
        CONTROLLER_HANDLER,
        55,
        1024,
        "ControllerFunctionRole",
        "ControllerLogGroup",
    ),
}


def environment(function: str) -> dict[str, Any]:
    """The function's environment: the store, its tables, and what the function needs."""
    variables: dict[str, Any] = {"RECONCILER_STORE": "dynamodb", **table_environment()}
    if function == "ApiFunction":
        variables["RECONCILER_API_AUTH"] = {"Ref": "ApiAuth"}
        variables["RECONCILER_API_TOKEN_SECRET"] = {
            "Fn::If": ["TokenAuth", {"Ref": "ApiTokenSecret"}, {"Ref": "AWS::NoValue"}]
        }
        variables["RECONCILER_REPOSITORY_URL"] = {  # the dashboard links the manifests there
            "Fn::If": [
                "HasGitHub",
                {"Fn::Sub": "https://github.com/${GitHubRepository}"},
                {"Ref": "AWS::NoValue"},
            ]
        }
    else:
        variables["COST_ALERTS_TOPIC_ARN"] = {"Ref": "AlertsTopic"}
    return variables


def function_resources() -> dict[str, Resource]:
    """The functions, their log groups, the schedule and the schedule's permission."""
    resources: dict[str, Resource] = {}
    for function, (suffix, handler, timeout, memory, role, log_group) in FUNCTIONS.items():
        name = f"${{AWS::StackName}}-{suffix}"
        resources[log_group] = {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Delete",  # the logs go with the stack; the tables stay
            "UpdateReplacePolicy": "Delete",
            "Properties": {
                "LogGroupName": {"Fn::Sub": f"/aws/lambda/{name}"},
                "RetentionInDays": LOG_RETENTION_DAYS,
            },
        }
        resources[function] = {
            "Type": "AWS::Lambda::Function",
            "DependsOn": [log_group],  # the group exists, with its retention, before any log
            "Properties": {
                "FunctionName": {"Fn::Sub": name},
                "Description": {"Fn::Sub": f"${{AWS::StackName}}: {handler}"},
                "Runtime": RUNTIME,
                "Architectures": [ARCHITECTURE],
                "Handler": handler,
                "Code": {"S3Bucket": {"Ref": "ArtifactBucket"}, "S3Key": {"Ref": "ArtifactKey"}},
                "Role": {"Fn::GetAtt": [role, "Arn"]},
                "Timeout": timeout,
                "MemorySize": memory,
                "Environment": {"Variables": environment(function)},
            },
        }
    resources["ControllerSchedule"] = {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Description": {"Fn::Sub": "${AWS::StackName}: run the controllers once a minute"},
            "ScheduleExpression": SCHEDULE,
            "State": "ENABLED",
            "Targets": [
                {"Id": "controller-tick", "Arn": {"Fn::GetAtt": ["ControllerFunction", "Arn"]}}
            ],
        },
    }
    resources["ControllerSchedulePermission"] = {
        "Type": "AWS::Lambda::Permission",
        "Properties": {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Ref": "ControllerFunction"},
            "Principal": "events.amazonaws.com",
            "SourceArn": {"Fn::GetAtt": ["ControllerSchedule", "Arn"]},
        },
    }
    return resources


def _alarm(name: str, description: str, *, function: str, metric: str, below: bool) -> Resource:
    """A Sum over 5 minutes of one of ``function``'s metrics: 1 or more, or ``below`` 1."""
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": {"Fn::Sub": f"${{AWS::StackName}}-{name}"},
            "AlarmDescription": description,
            "Namespace": "AWS/Lambda",
            "MetricName": metric,
            "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": function}}],
            "Statistic": "Sum",
            "Period": 300,
            "EvaluationPeriods": 1,
            "Threshold": 1,
            "ComparisonOperator": "LessThanThreshold" if below else "GreaterThanOrEqualToThreshold",
            # No data from a schedule that should run is the alarm; no errors is no data.
            "TreatMissingData": "breaching" if below else "notBreaching",
            "AlarmActions": [{"Ref": "AlertsTopic"}],
            "OKActions": [{"Ref": "AlertsTopic"}],
        },
    }


def function_alarms() -> dict[str, Resource]:
    """The controller failed, the controller did not run for 5 minutes, the API failed."""
    return {
        "ControllerErrorsAlarm": _alarm(
            "controller-errors",
            "A controller tick failed (see the controller's log group).",
            function="ControllerFunction",
            metric="Errors",
            below=False,
        ),
        "ControllerNotRunningAlarm": _alarm(
            "controller-not-running",
            "The controllers did not run for 5 minutes: cost guard, rollouts and experiments "
            "are not being watched (check the schedule rule and the function).",
            function="ControllerFunction",
            metric="Invocations",
            below=True,
        ),
        "ApiErrorsAlarm": _alarm(
            "api-errors",
            "The HTTP API's function failed (not a 4xx answer: an error or a timeout).",
            function="ApiFunction",
            metric="Errors",
            below=False,
        ),
    }
