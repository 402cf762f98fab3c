"""The whole system in one AWS account: a CloudFormation template generated from this package.

``reconcile-stack template`` writes it (committed as ``deploy/template.yaml``, so a reviewer sees
every infrastructure change as a diff and CI lints a real file); ``reconcile-stack deploy``
builds the Lambda artifact, uploads it and creates or updates the stack through a change set.

Why plain CloudFormation generated from Python, not the CDK or SAM: the CDK needs Node and its
toolchain, SAM its own CLI, and neither knows this code. The generator reads the very
definitions the code and its tests use: the tables' names, keys and TTL attribute from
``reconciler.state``, the IAM policies in ``docs/iam`` that ``tests/test_iam_policies.py``
checks against the DynamoDB calls each role's code makes, and the cost thresholds in
``costs.d/`` for the alarms. A table, a key or an IAM action cannot drift from what the code
calls without the template test failing, and ``reconcile --validate`` names a committed
template that no longer matches.

Modules, one job each: ``tables`` (the DynamoDB tables), ``policies`` (docs/iam documents as
the stack's policies), ``roles`` (the IAM roles and the runtime's managed policy), ``functions``
(the two Lambda functions, their logs, schedule and alarms), ``gateway`` (the REST API),
``template`` (the whole template and its YAML; ``alarms``, the CloudWatch alarms), ``artifact``
(the reproducible Lambda zip), and the AWS calls: ``aws`` (session, errors), ``bucket`` (the
artifact bucket), ``change_set`` (one change set), ``stack`` (deploy, status, teardown).
"""
