"""The invalid manifests of the rule table (tests/test_validate_rules.py), one or more per rule."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT

Expected = tuple[str, int, int, str, str, str]  # path, line, column, field, severity, message

FLAG = """\
kind: Flag
flag_name: vc_demo
description: Demo flag.
owner: team-demo
enabled: true
"""
EXPERIMENT = """\
kind: Experiment
experiment_id: vc_demo_test
name: Demo test
description: Demo experiment.
owner: team-demo
feature_flag: vc_demo
status: active
variants:
  - name: a
    weight: 50
  - name: b
    weight: 50
success_metrics:
  - metric_name: quality
    metric_type: numeric
    primary: true
"""
ROLLOUT = """\
kind: RolloutStrategy
strategy_name: vc_demo_ramp
description: Demo ramp.
owner: team-demo
feature_flag: vc_demo
rollout_type: percentage
configuration:
  percentage: 10
  increment_percentage: 10
"""
COST = """\
kind: CostThreshold
threshold_name: vc_demo_budget
description: Demo budget.
owner: team-finops
applies_to:
  flags: [vc_demo]
throttle:
  amount_usd: 10
emergency:
  amount_usd: 20
"""


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | bytes | None]
    expected: list[Expected] = field(default_factory=list)
    config: str | None = None


def build(root: Path, case: Case) -> None:
    """The repository's example tree, plus the demo flag, changed as the case says."""
    for folder in ("flags.d", "experiments.d", "rollouts.d", "costs.d"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    (root / "flags.d" / "vc_demo.yaml").write_text(FLAG)
    if case.config is not None:
        (root / "reconciler.toml").write_text(case.config)
    for relative, content in case.files.items():
        path = root / relative
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


F = "flags.d/vc_demo.yaml"
E = "experiments.d/vc_demo_test.yaml"
R = "rollouts.d/vc_demo_ramp.yaml"
C = "costs.d/vc_demo_budget.yaml"


def flag(extra: str = "", base: str = FLAG) -> dict[str, str | bytes | None]:
    return {F: base + extra}


CASES: list[Case] = [
    # -- YAML ----------------------------------------------------------------------------------
    Case("yaml-duplicate-key", flag("enabled: false\n")),
    Case(
        "yaml-norway",
        flag(
            "targeting:\n  rules:\n    - name: nordics\n      action: include\n      when: {attribute: country, operator: in, values: [SE, NO]}\n"
        ),
    ),
    Case("yaml-yes", {F: FLAG.replace("enabled: true", "enabled: yes")}),
    Case("yaml-on", {F: FLAG.replace("enabled: true", "enabled: on")}),
    Case("yaml-exponent", flag("cost_threshold: 1e3\n")),
    Case("yaml-octal", flag("rollout_percentage: 010\n")),
    Case("yaml-underscore", flag("cost_threshold: 1_000\n")),
    Case("yaml-sexagesimal", flag("type: string\nvalue: 1:30\n")),
    Case("yaml-infinity", flag("cost_threshold: .inf\n")),
    Case(
        "yaml-merge-key",
        {F: "base: &b {owner: team-demo}\n" + FLAG.replace("owner: team-demo\n", "<<: *b\n")},
    ),
    Case("yaml-tag", flag("type: string\nvalue: !!binary aGVsbG8=\n")),
    Case("yaml-tab", {F: FLAG + "tags:\n\t- ai\n"}),
    Case("yaml-not-utf8", {F: FLAG.encode() + b"description: caf\xe9\n"}),
    Case("yaml-empty", {F: ""}),
    Case("yaml-comments-only", {F: "# nothing here yet\n"}),
    Case("yaml-two-documents", {F: FLAG + "---\n" + FLAG}),
    Case("yaml-deep", {F: FLAG + "value: " + "[" * 70 + "]" * 70 + "\n"}),
    Case(
        "yaml-billion-laughs",
        {
            F: FLAG
            + "type: json\nvalue:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n  f: [*e, *e]\n"
        },
    ),
    Case("yaml-undefined-alias", flag("owner2: *nowhere\n")),
    Case("yaml-non-string-key", flag("1: one\n")),
    Case("yaml-syntax", {F: FLAG.replace("owner: team-demo", "owner: [team-demo")}),
    Case("yaml-too-big", {F: FLAG + "description: '" + "x" * (1024 * 1024) + "'\n"}),
    # -- schema ----------------------------------------------------------------------------------
    Case("schema-unknown-field", flag("rollout_percent: 50\n")),
    Case("schema-missing-field", {F: FLAG.replace("owner: team-demo\n", "")}),
    Case("schema-wrong-type", {F: FLAG.replace("enabled: true", "enabled: 'true'")}),
    Case("schema-enum", flag("fail_mode: opened\n")),
    Case("schema-percentage-high", flag("rollout_percentage: 150\n")),
    Case("schema-percentage-negative", flag("rollout_percentage: -5\n")),
    Case("schema-name-pattern", {F: FLAG.replace("flag_name: vc_demo", "flag_name: vc demo!")}),
    Case("schema-timestamp", {R: ROLLOUT + "  start_time: '2025-01-09 10:00'\n"}),
    Case(
        "schema-semver",
        flag(
            "targeting:\n  rules:\n    - name: new_app\n      action: include\n      when: {attribute: app_version, operator: semver_greater_than, value: '2.4'}\n"
        ),
    ),
    Case("schema-one-variant", {E: EXPERIMENT.replace("  - name: b\n    weight: 50\n", "")}),
    Case(
        "schema-unknown-operator",
        flag(
            "targeting:\n  rules:\n    - name: pro\n      action: include\n      when: {attribute: plan, operator: equal, value: pro}\n"
        ),
    ),
    Case(
        "schema-condition-shape",
        flag(
            "targeting:\n  rules:\n    - name: pro\n      action: include\n      when: {every: []}\n"
        ),
    ),
    Case("schema-null", flag("description2: x\n".replace("description2: x", "request_type:"))),
    Case(
        "schema-applies-to",
        {C: COST.replace("applies_to:\n  flags: [vc_demo]\n", "applies_to: everything\n")},
    ),
    Case("schema-missing-kind", {F: FLAG.replace("kind: Flag\n", "")}),
    Case("schema-unknown-kind", {F: FLAG.replace("kind: Flag", "kind: Flagg")}),
    Case("layout-wrong-folder", {"flags.d/vc_demo_test.yaml": EXPERIMENT}),
    # -- files and names -------------------------------------------------------------------------
    Case("file-name", {"flags.d/vc_other.yaml": FLAG}),
    Case("unique-name", {"flags.d/team/vc_demo.yaml": FLAG}),
    Case("naming-snake-case", {"flags.d/vcDemo.yaml": FLAG.replace("vc_demo", "vcDemo")}),
    Case(
        "naming-prefix-warning",
        {"flags.d/bedrock.yaml": FLAG.replace("vc_demo", "bedrock")},
        config="",
    ),
    Case(
        "naming-prefix-error",
        {"flags.d/billing_demo.yaml": FLAG.replace("vc_demo", "billing_demo")},
        config='[validate]\nnaming = "error"\ncomponent_prefixes = ["vc", "ai"]\n',
    ),
    # -- references ------------------------------------------------------------------------------
    Case(
        "ref-experiment-flag",
        {E: EXPERIMENT.replace("feature_flag: vc_demo", "feature_flag: vc_dmeo")},
    ),
    Case(
        "ref-rollout-flag",
        {R: ROLLOUT.replace("feature_flag: vc_demo", "feature_flag: vc_nothing")},
    ),
    Case("ref-flag-experiment", flag("experiment: vc_demo_tset\n")),
    Case("ref-flag-strategy", flag("rollout_strategy: vc_demo_ramp\n")),
    Case("ref-back-reference", {E: EXPERIMENT, F: FLAG + "experiment: claude_vs_gemini\n"}),
    Case("ref-cost-flag", {C: COST.replace("flags: [vc_demo]", "flags: [vc_demo, vc_gone]")}),
    Case(
        "ref-cost-request-type",
        {C: COST.replace("flags: [vc_demo]", "request_types: [vc_analysys]")},
    ),
    Case("ref-control", {E: EXPERIMENT + "control: c\n"}),
    # -- experiments -------------------------------------------------------------------------------
    Case(
        "weights",
        {
            E: EXPERIMENT.replace("weight: 50\nsuccess", "weight: 40\nsuccess").replace(
                "  - name: b\n    weight: 50", "  - name: b\n    weight: 40"
            )
        },
    ),
    Case("variant-names", {E: EXPERIMENT.replace("name: b", "name: a")}),
    Case(
        "concluded-without-winner", {E: EXPERIMENT.replace("status: active", "status: concluded")}
    ),
    Case("winner-while-active", {E: EXPERIMENT + "winner: a\n"}),
    Case("no-primary", {E: EXPERIMENT.replace("    primary: true\n", "")}),
    Case(
        "two-primaries",
        {E: EXPERIMENT + "  - metric_name: speed\n    metric_type: numeric\n    primary: true\n"},
    ),
    Case(
        "two-active-experiments",
        {
            E: EXPERIMENT,
            "experiments.d/vc_demo_second.yaml": EXPERIMENT.replace(
                "vc_demo_test", "vc_demo_second"
            ),
        },
    ),
    # -- rollouts ----------------------------------------------------------------------------------
    Case(
        "two-active-rollouts",
        {
            R: ROLLOUT,
            "rollouts.d/vc_demo_again.yaml": ROLLOUT.replace("vc_demo_ramp", "vc_demo_again"),
        },
    ),
    Case("start-above-max", {R: ROLLOUT + "  max_percentage: 5\n"}),
    Case("never-reaches-max", {R: ROLLOUT.replace("  increment_percentage: 10\n", "")}),
    Case(
        "targeting-type-without-targeting",
        {R: ROLLOUT.replace("rollout_type: percentage", "rollout_type: targeting")},
    ),
    Case(
        "canary-without-stages",
        {R: ROLLOUT.replace("rollout_type: percentage", "rollout_type: canary")},
    ),
    Case(
        "canary-falling-stages",
        {
            R: ROLLOUT.replace("rollout_type: percentage", "rollout_type: canary")
            + "  stages:\n    - {name: one, percentage: 5}\n    - {name: two, percentage: 1}\n"
        },
    ),
    Case(
        "custom-metric-without-name",
        {
            R: ROLLOUT
            + "health_checks:\n  - {check_name: latency, check_type: custom_metric, threshold: 1, comparison: less_than}\n"
        },
    ),
    Case("bad-date", {R: ROLLOUT + "  start_time: '2025-13-01T00:00:00Z'\n"}),
    # -- flags -------------------------------------------------------------------------------------
    Case(
        "exclude-with-rollout",
        flag(
            "targeting:\n  rules:\n    - name: banned\n      action: exclude\n      rollout_percentage: 50\n      when: {attribute: country, operator: in, values: [KP]}\n"
        ),
    ),
    Case(
        "bad-regex",
        flag(
            "targeting:\n  rules:\n    - name: staff\n      action: include\n      when: {attribute: email, operator: matches, value: '(unclosed'}\n"
        ),
    ),
    Case("value-type", flag("type: number\nvalue: fast\n")),
    Case("value-missing", flag("type: string\n")),
    # -- costs -------------------------------------------------------------------------------------
    Case("throttle-above-emergency", {C: COST.replace("amount_usd: 10", "amount_usd: 30")}),
    Case("no-limits", {C: COST.split("throttle:", maxsplit=1)[0]}),
    Case("empty-scope", {C: COST.replace("  flags: [vc_demo]\n", "  flags: []\n")}),
    # -- secrets -----------------------------------------------------------------------------------
    Case("secret-aws-key", flag("type: string\nvalue: AKIAIOSFODNN7EXAMPLE\n")),
    Case(
        "secret-github-token",
        {F: FLAG.replace("Demo flag.", "Token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789")},
    ),
    Case(
        "secret-private-key",
        flag("type: string\nvalue: |\n  -----BEGIN RSA PRIVATE KEY-----\n  MIIB\n"),
    ),
    Case(
        "secret-config-field",
        {
            E: EXPERIMENT.replace(
                "  - name: a\n", "  - name: a\n    config: {api_key: zx81-spectrum-48k}\n"
            )
        },
    ),
]


# What validate reports for each case: every line reviewed for file, line, column, field and
# message. No case may report any other error.
EXPECTED: dict[str, list[Expected]] = {
    "yaml-duplicate-key": [
        (
            "flags.d/vc_demo.yaml",
            6,
            1,
            "enabled",
            "error",
            "duplicate key 'enabled' (first defined at line 5); YAML keeps only one of them, remove the other",
        )
    ],
    "yaml-norway": [
        (
            "flags.d/vc_demo.yaml",
            10,
            61,
            "targeting.rules[0].when.values[1]",
            "error",
            "'NO' is ambiguous: YAML 1.1 reads it as false, YAML 1.2 as a string; write false for the boolean or quote it (\"NO\") for the string",
        )
    ],
    "yaml-yes": [
        (
            "flags.d/vc_demo.yaml",
            5,
            10,
            "enabled",
            "error",
            "'yes' is ambiguous: YAML 1.1 reads it as true, YAML 1.2 as a string; write true for the boolean or quote it (\"yes\") for the string",
        )
    ],
    "yaml-on": [
        (
            "flags.d/vc_demo.yaml",
            5,
            10,
            "enabled",
            "error",
            "'on' is ambiguous: YAML 1.1 reads it as true, YAML 1.2 as a string; write true for the boolean or quote it (\"on\") for the string",
        )
    ],
    "yaml-exponent": [
        (
            "flags.d/vc_demo.yaml",
            6,
            17,
            "cost_threshold",
            "error",
            "'1e3' is ambiguous: YAML 1.1 reads it as a string, YAML 1.2 as the number 1000.0; write 1000.0 for the number or quote it for a string",
        )
    ],
    "yaml-octal": [
        (
            "flags.d/vc_demo.yaml",
            6,
            21,
            "rollout_percentage",
            "error",
            "'010' is ambiguous: YAML 1.1 reads it as the octal number 8, YAML 1.2 as 10; drop the leading zero or quote it for a string",
        )
    ],
    "yaml-underscore": [
        (
            "flags.d/vc_demo.yaml",
            6,
            17,
            "cost_threshold",
            "error",
            "'1_000' is ambiguous: YAML 1.1 reads it as a number, YAML 1.2 as a string; write the number plainly (no '_' or ':') or quote it for a string",
        )
    ],
    "yaml-sexagesimal": [
        (
            "flags.d/vc_demo.yaml",
            7,
            8,
            "value",
            "error",
            "'1:30' is ambiguous: YAML 1.1 reads it as a number, YAML 1.2 as a string; write the number plainly (no '_' or ':') or quote it for a string",
        )
    ],
    "yaml-infinity": [
        (
            "flags.d/vc_demo.yaml",
            6,
            17,
            "cost_threshold",
            "error",
            "'.inf' is not a finite number; JSON and DynamoDB cannot store it",
        )
    ],
    "yaml-merge-key": [
        ("flags.d/vc_demo.yaml", 1, 1, "base", "error", "unknown field 'base'"),
        ("flags.d/vc_demo.yaml", 1, 1, "owner", "error", "missing required field 'owner'"),
        (
            "flags.d/vc_demo.yaml",
            5,
            1,
            "<<",
            "error",
            "merge keys ('<<') are a YAML 1.1 extension that many tools ignore; write the keys out",
        ),
    ],
    "yaml-tag": [
        (
            "flags.d/vc_demo.yaml",
            7,
            8,
            "value",
            "error",
            "YAML tag 'tag:yaml.org,2002:binary' is not supported; remove it",
        )
    ],
    "yaml-tab": [
        (
            "flags.d/vc_demo.yaml",
            7,
            1,
            "(file)",
            "error",
            "tab character in indentation; YAML indentation must use spaces",
        )
    ],
    "yaml-not-utf8": [
        (
            "flags.d/vc_demo.yaml",
            6,
            17,
            "(file)",
            "error",
            "file is not valid UTF-8 (byte 0xe9); save it as UTF-8",
        )
    ],
    "yaml-empty": [
        (
            "flags.d/vc_demo.yaml",
            1,
            1,
            "(file)",
            "error",
            "file is empty: it holds no YAML document",
        )
    ],
    "yaml-comments-only": [
        (
            "flags.d/vc_demo.yaml",
            1,
            1,
            "(file)",
            "error",
            "file is empty: it holds no YAML document",
        )
    ],
    "yaml-two-documents": [
        (
            "flags.d/vc_demo.yaml",
            6,
            1,
            "(file)",
            "error",
            "file holds more than one YAML document; put one manifest per file",
        )
    ],
    "yaml-deep": [
        (
            "flags.d/vc_demo.yaml",
            6,
            71,
            "value[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]",
            "error",
            "nested more than 64 levels deep",
        )
    ],
    "yaml-billion-laughs": [
        (
            "flags.d/vc_demo.yaml",
            12,
            38,
            "value.e[7]",
            "error",
            "the document expands to more than 100,000 values (aliases included); split it up or use fewer aliases",
        )
    ],
    "yaml-undefined-alias": [
        (
            "flags.d/vc_demo.yaml",
            6,
            9,
            "owner2",
            "error",
            "alias *nowhere refers to no complete anchor &nowhere before it",
        )
    ],
    "yaml-non-string-key": [
        (
            "flags.d/vc_demo.yaml",
            6,
            1,
            "(file)",
            "error",
            "mapping keys must be strings, found 1; quote the key",
        )
    ],
    "yaml-syntax": [
        (
            "flags.d/vc_demo.yaml",
            5,
            8,
            "(file)",
            "error",
            "invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence at line 4)",
        )
    ],
    "yaml-too-big": [
        (
            "flags.d/vc_demo.yaml",
            1,
            1,
            "(file)",
            "error",
            "file is 1.0 MiB; a manifest may be at most 1 MiB",
        )
    ],
    "schema-unknown-field": [
        (
            "flags.d/vc_demo.yaml",
            6,
            1,
            "rollout_percent",
            "error",
            "unknown field 'rollout_percent'; did you mean 'rollout_percentage'?",
        )
    ],
    "schema-missing-field": [
        ("flags.d/vc_demo.yaml", 1, 1, "owner", "error", "missing required field 'owner'")
    ],
    "schema-wrong-type": [
        (
            "flags.d/vc_demo.yaml",
            5,
            10,
            "enabled",
            "error",
            "expected true or false, got the string 'true'",
        )
    ],
    "schema-enum": [
        (
            "flags.d/vc_demo.yaml",
            6,
            12,
            "fail_mode",
            "error",
            "must be one of: open, closed (got 'opened'); did you mean 'open'?",
        )
    ],
    "schema-percentage-high": [
        (
            "flags.d/vc_demo.yaml",
            6,
            21,
            "rollout_percentage",
            "error",
            "must be at most 100 (got 150)",
        )
    ],
    "schema-percentage-negative": [
        (
            "flags.d/vc_demo.yaml",
            6,
            21,
            "rollout_percentage",
            "error",
            "must be at least 0 (got -5)",
        )
    ],
    "schema-name-pattern": [
        (
            "flags.d/vc_demo.yaml",
            2,
            12,
            "flag_name",
            "error",
            "must start with a letter and hold only letters, digits, '_' or '-' (at most 128 characters) (got 'vc demo!')",
        )
    ],
    "schema-timestamp": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            10,
            15,
            "configuration.start_time",
            "error",
            "must be an RFC 3339 time with a time zone, e.g. 2025-01-09T10:00:00Z (got '2025-01-09 10:00')",
        )
    ],
    "schema-semver": [
        (
            "flags.d/vc_demo.yaml",
            10,
            76,
            "targeting.rules[0].when.value",
            "error",
            "must be a semantic version such as 2.4.0 (got '2.4')",
        )
    ],
    "schema-one-variant": [
        (
            "experiments.d/vc_demo_test.yaml",
            9,
            3,
            "variants",
            "error",
            "must have at least 2 items (got 1)",
        )
    ],
    "schema-unknown-operator": [
        (
            "flags.d/vc_demo.yaml",
            10,
            41,
            "targeting.rules[0].when.operator",
            "error",
            "must be one of: equals, exists, greater_than, greater_than_or_equal, in, less_than, less_than_or_equal, matches, not_equals, not_in, semver_equals, semver_greater_than, semver_greater_than_or_equal, semver_less_than, semver_less_than_or_equal (got 'equal'); did you mean 'equals'?",
        )
    ],
    "schema-condition-shape": [
        (
            "flags.d/vc_demo.yaml",
            10,
            13,
            "targeting.rules[0].when",
            "error",
            "expected an attribute condition (attribute, operator, value), a mapping with 'all', a mapping with 'any' or a mapping with 'not'; got a mapping with 'every'",
        )
    ],
    "schema-null": [
        (
            "flags.d/vc_demo.yaml",
            6,
            14,
            "request_type",
            "error",
            "expected a string, got null (an empty value)",
        )
    ],
    "schema-applies-to": [
        (
            "costs.d/vc_demo_budget.yaml",
            5,
            13,
            "applies_to",
            "error",
            "expected 'all' or a mapping of flags, request_types; got the string 'everything'",
        )
    ],
    "schema-missing-kind": [
        (
            "flags.d/vc_demo.yaml",
            1,
            1,
            "kind",
            "error",
            "missing required field 'kind'; files in flags.d/ hold kind: Flag",
        )
    ],
    "schema-unknown-kind": [
        (
            "flags.d/vc_demo.yaml",
            1,
            7,
            "kind",
            "error",
            "unknown kind 'Flagg'; expected Flag, Experiment, RolloutStrategy, CostThreshold; did you mean 'Flag'?",
        )
    ],
    "layout-wrong-folder": [
        (
            "flags.d/vc_demo_test.yaml",
            1,
            7,
            "kind",
            "error",
            "an Experiment manifest belongs in experiments.d/, not in flags.d/; move the file",
        )
    ],
    "file-name": [
        (
            "flags.d/vc_other.yaml",
            2,
            12,
            "flag_name",
            "error",
            "flag_name 'vc_demo' is already defined in flags.d/vc_demo.yaml:2; names must be unique",
        ),
        (
            "flags.d/vc_other.yaml",
            2,
            12,
            "flag_name",
            "error",
            "flag_name 'vc_demo' must equal the file name 'vc_other'; rename the file or the field",
        ),
    ],
    "unique-name": [
        (
            "flags.d/vc_demo.yaml",
            2,
            12,
            "flag_name",
            "error",
            "flag_name 'vc_demo' is already defined in flags.d/team/vc_demo.yaml:2; names must be unique",
        )
    ],
    "naming-snake-case": [
        (
            "flags.d/vcDemo.yaml",
            2,
            12,
            "flag_name",
            "warning",
            "'vcDemo' is not snake_case; write it as 'vc_demo'",
        )
    ],
    "naming-prefix-warning": [
        (
            "flags.d/bedrock.yaml",
            2,
            12,
            "flag_name",
            "warning",
            "'bedrock' has no component prefix; name flags like vc_bedrock or dashboard_bedrock",
        )
    ],
    "naming-prefix-error": [
        (
            "flags.d/billing_demo.yaml",
            2,
            12,
            "flag_name",
            "error",
            "'billing_demo' does not start with a known component prefix (vc_, ai_)",
        )
    ],
    "ref-experiment-flag": [
        (
            "experiments.d/vc_demo_test.yaml",
            6,
            15,
            "feature_flag",
            "error",
            "'vc_dmeo' names no flag in flags.d/; did you mean 'vc_demo'?",
        )
    ],
    "ref-rollout-flag": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            5,
            15,
            "feature_flag",
            "error",
            "'vc_nothing' names no flag in flags.d/",
        )
    ],
    "ref-flag-experiment": [
        (
            "flags.d/vc_demo.yaml",
            6,
            13,
            "experiment",
            "error",
            "'vc_demo_tset' names no experiment in experiments.d/",
        )
    ],
    "ref-flag-strategy": [
        (
            "flags.d/vc_demo.yaml",
            6,
            19,
            "rollout_strategy",
            "error",
            "'vc_demo_ramp' names no rollout strategy in rollouts.d/",
        )
    ],
    "ref-back-reference": [
        (
            "flags.d/vc_demo.yaml",
            6,
            13,
            "experiment",
            "error",
            "experiment 'claude_vs_gemini' runs on flag 'ai_model_selection' (experiments.d/claude_vs_gemini.yaml), not on this flag",
        )
    ],
    "ref-cost-flag": [
        (
            "costs.d/vc_demo_budget.yaml",
            6,
            20,
            "applies_to.flags[1]",
            "error",
            "'vc_gone' names no flag in flags.d/",
        )
    ],
    "ref-cost-request-type": [
        (
            "costs.d/vc_demo_budget.yaml",
            6,
            19,
            "applies_to.request_types[0]",
            "error",
            "request type 'vc_analysys' is declared by no flag (request_type in flags.d/); did you mean 'vc_analysis'?",
        )
    ],
    "ref-control": [
        (
            "experiments.d/vc_demo_test.yaml",
            17,
            10,
            "control",
            "error",
            "'c' is not a variant of this experiment (a, b)",
        )
    ],
    "weights": [
        (
            "experiments.d/vc_demo_test.yaml",
            9,
            3,
            "variants",
            "error",
            "variant weights sum to 90; they must sum to 100",
        )
    ],
    "variant-names": [
        (
            "experiments.d/vc_demo_test.yaml",
            11,
            11,
            "variants[1].name",
            "error",
            "variant name 'a' is used twice",
        )
    ],
    "concluded-without-winner": [
        (
            "experiments.d/vc_demo_test.yaml",
            7,
            9,
            "status",
            "error",
            "a concluded experiment needs a winner: the variant to serve",
        )
    ],
    "winner-while-active": [
        (
            "experiments.d/vc_demo_test.yaml",
            17,
            9,
            "winner",
            "error",
            "winner is only set when status is concluded (status is active)",
        )
    ],
    "no-primary": [
        (
            "experiments.d/vc_demo_test.yaml",
            14,
            3,
            "success_metrics",
            "error",
            "mark exactly one success metric primary: true; it decides the conclusion",
        )
    ],
    "two-primaries": [
        (
            "experiments.d/vc_demo_test.yaml",
            19,
            14,
            "success_metrics[1].primary",
            "error",
            "only one success metric may be primary",
        )
    ],
    "two-active-experiments": [
        (
            "experiments.d/vc_demo_test.yaml",
            7,
            9,
            "status",
            "error",
            "flag 'vc_demo' already has an active experiment 'vc_demo_second' (experiments.d/vc_demo_second.yaml); at most one may be active per flag",
        )
    ],
    "two-active-rollouts": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            5,
            15,
            "feature_flag",
            "error",
            "flag 'vc_demo' already has an active rollout strategy 'vc_demo_again' (rollouts.d/vc_demo_again.yaml); at most one may be active per flag",
        )
    ],
    "start-above-max": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            8,
            15,
            "configuration.percentage",
            "error",
            "starts at 10%, above max_percentage 5%",
        )
    ],
    "never-reaches-max": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            8,
            3,
            "configuration.increment_percentage",
            "error",
            "the schedule never reaches max_percentage 100%: set increment_percentage, or max_percentage: 10 to stay put",
        )
    ],
    "targeting-type-without-targeting": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            8,
            3,
            "configuration.targeting",
            "error",
            "missing required field 'targeting' for rollout_type targeting",
        )
    ],
    "canary-without-stages": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            8,
            3,
            "configuration.stages",
            "error",
            "missing required field 'stages' for rollout_type canary",
        )
    ],
    "canary-falling-stages": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            12,
            31,
            "configuration.stages[1].percentage",
            "error",
            "canary stage percentages must rise from stage to stage",
        )
    ],
    "custom-metric-without-name": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            11,
            39,
            "health_checks[0].check_type",
            "error",
            "check_type custom_metric needs metric_name",
        )
    ],
    "bad-date": [
        (
            "rollouts.d/vc_demo_ramp.yaml",
            10,
            15,
            "configuration.start_time",
            "error",
            "not a real date and time: month must be in 1..12",
        )
    ],
    "exclude-with-rollout": [
        (
            "flags.d/vc_demo.yaml",
            10,
            27,
            "targeting.rules[0].rollout_percentage",
            "error",
            "rollout_percentage only applies to include rules",
        )
    ],
    "bad-regex": [
        (
            "flags.d/vc_demo.yaml",
            10,
            58,
            "targeting.rules[0].when.value",
            "error",
            "not a valid regular expression: missing ), unterminated subpattern at position 0",
        )
    ],
    "value-type": [
        (
            "flags.d/vc_demo.yaml",
            7,
            8,
            "value",
            "error",
            "value must be a number because type is 'number'",
        )
    ],
    "value-missing": [
        (
            "flags.d/vc_demo.yaml",
            6,
            7,
            "type",
            "error",
            "a string flag needs a value: the value served while the flag is on",
        )
    ],
    "throttle-above-emergency": [
        (
            "costs.d/vc_demo_budget.yaml",
            8,
            15,
            "throttle.amount_usd",
            "error",
            "throttle (30 USD) must be below emergency (20 USD)",
        )
    ],
    "no-limits": [
        (
            "costs.d/vc_demo_budget.yaml",
            2,
            17,
            "threshold_name",
            "error",
            "set throttle, emergency or both: a threshold needs a limit",
        )
    ],
    "empty-scope": [
        (
            "costs.d/vc_demo_budget.yaml",
            6,
            3,
            "applies_to",
            "error",
            "applies_to names no flags or request types; write 'applies_to: all' for every AI feature",
        )
    ],
    "secret-aws-key": [
        (
            "flags.d/vc_demo.yaml",
            7,
            8,
            "value",
            "error",
            "looks like an AWS access key id; secrets do not belong in manifests: keep it in a secret store and reference it by name",
        )
    ],
    "secret-github-token": [
        (
            "flags.d/vc_demo.yaml",
            3,
            14,
            "description",
            "error",
            "looks like a GitHub token; secrets do not belong in manifests: keep it in a secret store and reference it by name",
        )
    ],
    "secret-private-key": [
        (
            "flags.d/vc_demo.yaml",
            7,
            8,
            "value",
            "error",
            "looks like a private key; secrets do not belong in manifests: keep it in a secret store and reference it by name",
        )
    ],
    "secret-config-field": [
        (
            "experiments.d/vc_demo_test.yaml",
            10,
            23,
            "variants[0].config.api_key",
            "error",
            "looks like a secret (field 'api_key'); secrets do not belong in manifests: keep it in a secret store and reference it by name",
        )
    ],
}
