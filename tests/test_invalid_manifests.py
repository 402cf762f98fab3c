"""Invalid manifests, one broken rule at a time, through the public validation entry point.

Each case copies the repository's example tree (flags.d, experiments.d, rollouts.d, costs.d; no
reconciler.toml unless the case brings one), writes, overwrites or deletes one file (or a few),
and runs ``reconciler.validation.validate``. The findings must be exactly the expected ones, as
``(path, line, column, field, severity, message)``; a case that trips any other error fails.

Manifest texts are written out in each case so their line numbers can be read off. They all
start from the small valid manifests of ``valid_manifest`` (shown there with line numbers).

"""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.config import load_config
from reconciler.validation import validate

REPO_ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("flags.d", "experiments.d", "rollouts.d", "costs.d")
MIB = 1024 * 1024

Finding = tuple[str, int, int, str, str, str]  # path, line, column, field, severity, message

SECRET_ADVICE = (
    "secrets do not belong in manifests: keep it in a secret store and reference it by name"
)
NAMING_ERROR = """\
[validate]
naming = "error"
component_prefixes = ["vc", "ai", "dashboard", "auth"]
"""
KNOWN_PREFIXES = """\
[validate]
component_prefixes = ["vc", "ai", "dashboard", "auth"]
"""


def doc(text: str) -> str:
    """A manifest written indented in this file: dedented, without its first newline."""
    return textwrap.dedent(text).removeprefix("\n")


def valid_manifest(kind: str, name: str | None = None) -> str:
    """A small valid manifest of ``kind`` that fits into the example tree.

    Flag (flags.d/vc_demo.yaml)              Experiment (experiments.d/vc_demo_test.yaml)
     1 kind: Flag                              1 kind: Experiment
     2 flag_name: vc_demo                      2 experiment_id: vc_demo_test
     3 description: Demo flag.                 3 name: Demo test
     4 owner: team-demo                        4 description: Demo experiment.
     5 enabled: true                           5 owner: team-demo
                                               6 feature_flag: vc_bedrock_live
    RolloutStrategy (rollouts.d/vc_demo_ramp)  7 status: draft
     1 kind: RolloutStrategy                   8 variants:
     2 strategy_name: vc_demo_ramp             9   - name: a
     3 description: Demo ramp.                10     weight: 50
     4 owner: team-demo                       11   - name: b
     5 feature_flag: vc_bedrock_live          12     weight: 50
     6 rollout_type: percentage               13 success_metrics:
     7 active: false                          14   - metric_name: quality
     8 configuration:                         15     metric_type: numeric
     9   percentage: 10                       16     primary: true
    10   increment_percentage: 10
                                              CostThreshold (costs.d/vc_demo_budget.yaml)
                                               1 kind: CostThreshold
                                               2 threshold_name: vc_demo_budget
                                               3 description: Demo budget.
                                               4 owner: team-finops
                                               5 applies_to:
                                               6   flags: [vc_bedrock_live]
                                               7 throttle:
                                               8   amount_usd: 10
                                               9 emergency:
                                              10   amount_usd: 20

    The experiment is a draft and the strategy inactive, so neither collides with the example
    tree's active ones on the same flags.
    """
    texts = {
        "Flag": "kind: Flag\nflag_name: {name}\ndescription: Demo flag.\nowner: team-demo\n"
        "enabled: true\n",
        "Experiment": "kind: Experiment\nexperiment_id: {name}\nname: Demo test\n"
        "description: Demo experiment.\nowner: team-demo\nfeature_flag: vc_bedrock_live\n"
        "status: draft\nvariants:\n  - name: a\n    weight: 50\n  - name: b\n    weight: 50\n"
        "success_metrics:\n  - metric_name: quality\n    metric_type: numeric\n"
        "    primary: true\n",
        "RolloutStrategy": "kind: RolloutStrategy\nstrategy_name: {name}\n"
        "description: Demo ramp.\nowner: team-demo\nfeature_flag: vc_bedrock_live\n"
        "rollout_type: percentage\nactive: false\nconfiguration:\n  percentage: 10\n"
        "  increment_percentage: 10\n",
        "CostThreshold": "kind: CostThreshold\nthreshold_name: {name}\ndescription: Demo budget.\n"
        "owner: team-finops\napplies_to:\n  flags: [vc_bedrock_live]\nthrottle:\n"
        "  amount_usd: 10\nemergency:\n  amount_usd: 20\n",
    }
    return texts[kind].format(name=name or DEFAULT_NAMES[kind])


DEFAULT_NAMES = {
    "Flag": "vc_demo",
    "Experiment": "vc_demo_test",
    "RolloutStrategy": "vc_demo_ramp",
    "CostThreshold": "vc_demo_budget",
}
DEFAULT_PATHS = {
    "Flag": "flags.d/vc_demo.yaml",
    "Experiment": "experiments.d/vc_demo_test.yaml",
    "RolloutStrategy": "rollouts.d/vc_demo_ramp.yaml",
    "CostThreshold": "costs.d/vc_demo_budget.yaml",
}
FLAG = DEFAULT_PATHS["Flag"]
EXPERIMENT = DEFAULT_PATHS["Experiment"]
ROLLOUT = DEFAULT_PATHS["RolloutStrategy"]
COST = DEFAULT_PATHS["CostThreshold"]


def error(path: str, line: int, column: int, field_text: str, message: str) -> Finding:
    return (path, line, column, field_text, "error", message)


def warning(path: str, line: int, column: int, field_text: str, message: str) -> Finding:
    return (path, line, column, field_text, "warning", message)


@dataclass(frozen=True)
class Case:
    files: dict[str, str | bytes | None]
    """Relative path -> new content (text or raw bytes); None deletes the file."""
    expected: list[Finding] = field(default_factory=list)
    config: str | None = None
    """The reconciler.toml to write at the root, if the case needs one."""


def build(root: Path, files: dict[str, str | bytes | None], config: str | None = None) -> None:
    for folder in FOLDERS:
        shutil.copytree(REPO_ROOT / folder, root / folder)
    if config is not None:
        (root / "reconciler.toml").write_text(config, encoding="utf-8")
    for relative, content in files.items():
        path = root / relative
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode("utf-8"))


def findings(root: Path) -> list[Finding]:
    result = validate(root, load_config(root))
    return [
        (d.path, d.position.line, d.position.column, d.field_text, d.severity.value, d.message)
        for d in sorted(result.diagnostics, key=lambda d: d.sort_key())
    ]


def oversized(size: int) -> bytes:
    """The demo flag padded with a comment line to exactly ``size`` bytes."""
    head = valid_manifest("Flag").encode() + b"# "
    return head + b"x" * (size - len(head) - 1) + b"\n"


# --------------------------------------------------------------------------------------------
# YAML: what the strict loader refuses before any schema sees the file.
# --------------------------------------------------------------------------------------------
YAML_CASES = [
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    enabled: false
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    1,
                    "enabled",
                    "duplicate key 'enabled' (first defined at line 5); "
                    "YAML keeps only one of them, remove the other",
                )
            ],
        ),
        id="yaml-duplicate-key",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                        weight: 40
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    13,
                    5,
                    "variants[1].weight",
                    "duplicate key 'weight' (first defined at line 12); "
                    "YAML keeps only one of them, remove the other",
                )
            ],
        ),
        id="yaml-duplicate-nested-key",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: nordics
                          action: include
                          when: {attribute: country, operator: in, values: [SE, NO, DK]}
                """)
            },
            [
                error(
                    FLAG,
                    10,
                    61,
                    "targeting.rules[0].when.values[1]",
                    "'NO' is ambiguous: YAML 1.1 reads it as false, YAML 1.2 as a string; "
                    'write false for the boolean or quote it ("NO") for the string',
                )
            ],
        ),
        id="yaml-1.1-bool-NO-norway",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: yes
                """)
            },
            [
                error(
                    FLAG,
                    5,
                    10,
                    "enabled",
                    "'yes' is ambiguous: YAML 1.1 reads it as true, YAML 1.2 as a string; "
                    'write true for the boolean or quote it ("yes") for the string',
                )
            ],
        ),
        id="yaml-1.1-bool-yes",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        config:
                          on: 1
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    11,
                    7,
                    "variants[0].config.on",
                    "'on' is ambiguous: YAML 1.1 reads it as true, YAML 1.2 as a string; "
                    'write true for the boolean or quote it ("on") for the string',
                )
            ],
        ),
        id="yaml-1.1-bool-on-as-key",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    cost_threshold: 1e3
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    17,
                    "cost_threshold",
                    "'1e3' is ambiguous: YAML 1.1 reads it as a string, YAML 1.2 as the number "
                    "1000.0; write 1000.0 for the number or quote it for a string",
                )
            ],
        ),
        id="yaml-exponent-1e3",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    cost_threshold: 0777
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    17,
                    "cost_threshold",
                    "'0777' is ambiguous: YAML 1.1 reads it as the octal number 511, YAML 1.2 as "
                    "777; drop the leading zero or quote it for a string",
                )
            ],
        ),
        id="yaml-legacy-octal-0777",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    cost_threshold: 1_000
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    17,
                    "cost_threshold",
                    "'1_000' is ambiguous: YAML 1.1 reads it as a number, YAML 1.2 as a string; "
                    "write the number plainly (no '_' or ':') or quote it for a string",
                )
            ],
        ),
        id="yaml-underscore-1_000",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    active: false
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                      increment_interval_hours: 1:30
                """)
            },
            [
                error(
                    ROLLOUT,
                    11,
                    29,
                    "configuration.increment_interval_hours",
                    "'1:30' is ambiguous: YAML 1.1 reads it as a number, YAML 1.2 as a string; "
                    "write the number plainly (no '_' or ':') or quote it for a string",
                )
            ],
        ),
        id="yaml-sexagesimal-1:30",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    cost_threshold: .inf
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    17,
                    "cost_threshold",
                    "'.inf' is not a finite number; JSON and DynamoDB cannot store it",
                )
            ],
        ),
        id="yaml-infinity",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: json
                    value:
                      defaults: &defaults {model: claude, temperature: 0.2}
                      analysis:
                        <<: *defaults
                        temperature: 0.7
                """)
            },
            [
                error(
                    FLAG,
                    10,
                    5,
                    "value.analysis.<<",
                    "merge keys ('<<') are a YAML 1.1 extension that many tools ignore; "
                    "write the keys out",
                )
            ],
        ),
        id="yaml-merge-key",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: string
                    value: !env BEDROCK_MODEL
                """)
            },
            [error(FLAG, 7, 8, "value", "YAML tag '!env' is not supported; remove it")],
        ),
        id="yaml-unsupported-tag",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    tags:
                      - ai
                    \t- bedrock
                """)
            },
            [
                error(
                    FLAG,
                    8,
                    1,
                    "(file)",
                    "tab character in indentation; YAML indentation must use spaces",
                )
            ],
        ),
        id="yaml-tab-indentation",
    ),
    pytest.param(
        Case(
            {
                # Latin-1 "é" (0xe9) in line 3, column 17.
                FLAG: b"kind: Flag\nflag_name: vc_demo\ndescription: Caf\xe9 flag.\n"
                b"owner: team-demo\nenabled: true\n"
            },
            [
                error(
                    FLAG,
                    3,
                    17,
                    "(file)",
                    "file is not valid UTF-8 (byte 0xe9); save it as UTF-8",
                )
            ],
        ),
        id="yaml-not-utf8",
    ),
    pytest.param(
        Case(
            {FLAG: ""},
            [error(FLAG, 1, 1, "(file)", "file is empty: it holds no YAML document")],
        ),
        id="yaml-empty-file",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    # vc_demo: to be written
                    # kind: Flag
                """)
            },
            [error(FLAG, 1, 1, "(file)", "file is empty: it holds no YAML document")],
        ),
        id="yaml-comment-only-file",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    ---
                    kind: Flag
                    flag_name: vc_demo_two
                    description: Second demo flag.
                    owner: team-demo
                    enabled: true
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    1,
                    "(file)",
                    "file holds more than one YAML document; put one manifest per file",
                )
            ],
        ),
        id="yaml-multiple-documents",
    ),
    pytest.param(
        Case(
            {
                # 64 nested lists under the top-level mapping: 65 levels; the 64th '[' is
                # column 8 + 63 = 71.
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                """)
                + "value: "
                + "[" * 64
                + "]" * 64
                + "\n"
            },
            [error(FLAG, 6, 71, "value" + "[0]" * 63, "nested more than 64 levels deep")],
        ),
        id="yaml-too-deep",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: json
                    value:
                      a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]
                      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
                      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
                      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
                      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
                """)
            },
            [
                error(
                    FLAG,
                    12,
                    38,
                    "value.e[7]",
                    "the document expands to more than 100,000 values (aliases included); "
                    "split it up or use fewer aliases",
                )
            ],
        ),
        id="yaml-billion-laughs",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    tags: [*ai]
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    8,
                    "tags[0]",
                    "alias *ai refers to no complete anchor &ai before it",
                )
            ],
        ),
        id="yaml-undefined-alias",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: json
                    value:
                      1: first
                """)
            },
            [
                error(
                    FLAG,
                    8,
                    3,
                    "value",
                    "mapping keys must be strings, found 1; quote the key",
                )
            ],
        ),
        id="yaml-non-string-key",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag: the new analysis
                    owner: team-demo
                    enabled: true
                """)
            },
            [
                error(
                    FLAG,
                    3,
                    23,
                    "(file)",
                    "invalid YAML: mapping values are not allowed in this context",
                )
            ],
        ),
        id="yaml-syntax-colon-in-plain-value",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    tags: [ai, bedrock
                """)
            },
            [
                error(
                    FLAG,
                    7,
                    1,
                    "(file)",
                    "invalid YAML: did not find expected ',' or ']' "
                    "(while parsing a flow sequence at line 6)",
                )
            ],
        ),
        id="yaml-syntax-unclosed-list",
    ),
    pytest.param(
        Case(
            {FLAG: oversized(2 * MIB + 10)},
            [
                error(
                    FLAG,
                    1,
                    1,
                    "(file)",
                    "file is 2,097,162 bytes; a manifest may be at most 1,048,576 bytes (1 MiB)",
                )
            ],
        ),
        id="yaml-file-over-1MiB",
    ),
    pytest.param(
        Case(
            {FLAG: oversized(MIB + 1)},
            [
                error(
                    FLAG,
                    1,
                    1,
                    "(file)",
                    "file is 1,048,577 bytes; a manifest may be at most 1,048,576 bytes (1 MiB)",
                )
            ],
        ),
        id="yaml-file-just-over-1MiB",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo\x07flag.
                    owner: team-demo
                    enabled: true
                """)
            },
            [error(FLAG, 3, 18, "(file)", "character U+0007 is not allowed in YAML; remove it")],
        ),
        id="yaml-control-character",
    ),
    pytest.param(
        Case(
            {FLAG: "- kind: Flag\n  flag_name: vc_demo\n"},
            [error(FLAG, 1, 1, "(file)", "expected a mapping of fields with 'kind:' at the top")],
        ),
        id="yaml-top-level-list",
    ),
]

# --------------------------------------------------------------------------------------------
# Schema: fields, types, ranges, patterns, enums (the JSON Schema in schemas/).
# --------------------------------------------------------------------------------------------
SCHEMA_CASES = [
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    rollout_percent: 50
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    1,
                    "rollout_percent",
                    "unknown field 'rollout_percent'; did you mean 'rollout_percentage'?",
                )
            ],
        ),
        id="schema-unknown-field-did-you-mean",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: staff
                          action: include
                          when: {attribute: country, operator: in, values: [DE]}
                          rollout_percent: 5
                """)
            },
            [
                error(
                    FLAG,
                    11,
                    7,
                    "targeting.rules[0].rollout_percent",
                    "unknown field 'rollout_percent'; did you mean 'rollout_percentage'?",
                )
            ],
        ),
        id="schema-unknown-nested-field",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    enabled: true
                """)
            },
            [error(FLAG, 1, 1, "owner", "missing required field 'owner'")],
        ),
        id="schema-missing-required-field",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: staff
                          when: {attribute: country, operator: in, values: [DE]}
                """)
            },
            [error(FLAG, 8, 7, "targeting.rules[0].action", "missing required field 'action'")],
        ),
        id="schema-missing-required-nested-field",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: "true"
                """)
            },
            [error(FLAG, 5, 10, "enabled", "expected true or false, got the string 'true'")],
        ),
        id="schema-wrong-type",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    tags: bedrock
                """)
            },
            [error(FLAG, 6, 7, "tags", "expected a list, got the string 'bedrock'")],
        ),
        id="schema-wrong-type-list",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    fail_mode: opened
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    12,
                    "fail_mode",
                    "must be one of: open, closed (got 'opened'); did you mean 'open'?",
                )
            ],
        ),
        id="schema-enum-did-you-mean",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: activ
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    7,
                    9,
                    "status",
                    "must be one of: draft, active, paused, concluded (got 'activ'); "
                    "did you mean 'active'?",
                )
            ],
        ),
        id="schema-enum-experiment-status",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    rollout_percentage: 150
                """)
            },
            [error(FLAG, 6, 21, "rollout_percentage", "must be at most 100 (got 150)")],
        ),
        id="schema-percentage-above-100",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    traffic_percentage: -10
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [error(EXPERIMENT, 8, 21, "traffic_percentage", "must be at least 0 (got -10)")],
        ),
        id="schema-percentage-below-0",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                """)
            },
            [
                error(
                    FLAG,
                    2,
                    12,
                    "flag_name",
                    "must start with a letter and hold only letters, digits, '_' or '-' "
                    "(at most 128 characters) (got 'vc demo')",
                )
            ],
        ),
        id="schema-name-pattern",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    start_time: 2025-01-09 10:00
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    8,
                    13,
                    "start_time",
                    "must be an RFC 3339 time with a time zone, e.g. 2025-01-09T10:00:00Z "
                    "(got '2025-01-09 10:00')",
                )
            ],
        ),
        id="schema-timestamp-pattern",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: new_app
                          action: include
                          when:
                            attribute: app_version
                            operator: semver_greater_than_or_equal
                            value: "2.4"
                """)
            },
            [
                error(
                    FLAG,
                    13,
                    16,
                    "targeting.rules[0].when.value",
                    "must be a semantic version such as 2.4.0 (got '2.4')",
                )
            ],
        ),
        id="schema-semver-pattern",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    tags: [Bedrock]
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    8,
                    "tags[0]",
                    "must be lower case: letters, digits and _ . : / - (at most 63 characters) "
                    "(got 'Bedrock')",
                )
            ],
        ),
        id="schema-tag-pattern",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        weight: 100
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [error(EXPERIMENT, 9, 3, "variants", "must have at least 2 items (got 1)")],
        ),
        id="schema-variants-min-items",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: germany
                          action: include
                          when: {attribute: country, operator: equal, value: DE}
                """)
            },
            [
                error(
                    FLAG,
                    10,
                    44,
                    "targeting.rules[0].when.operator",
                    "must be one of: equals, exists, greater_than, greater_than_or_equal, in, "
                    "less_than, less_than_or_equal, matches, not_equals, not_in, semver_equals, "
                    "semver_greater_than, semver_greater_than_or_equal, semver_less_than, "
                    "semver_less_than_or_equal (got 'equal'); did you mean 'equals'?",
                )
            ],
        ),
        id="schema-unknown-targeting-operator",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: germany
                          action: include
                          when: {country: DE}
                """)
            },
            [
                error(
                    FLAG,
                    10,
                    13,
                    "targeting.rules[0].when",
                    "expected an attribute condition (attribute, operator, value), a mapping "
                    "with 'all', a mapping with 'any' or a mapping with 'not'; got a mapping "
                    "with 'country'",
                )
            ],
        ),
        id="schema-bad-condition-shape",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: germany
                          action: include
                          when: {all: {attribute: country, operator: in, values: [DE]}}
                """)
            },
            [
                error(
                    FLAG,
                    10,
                    19,
                    "targeting.rules[0].when.all",
                    "expected a list, got a mapping with 'attribute', 'operator', 'values'",
                )
            ],
        ),
        id="schema-bad-condition-shape-all-not-a-list",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: germany
                          action: include
                          when: {attribute: country, operater: in, values: [DE]}
                """)
            },
            [
                error(
                    FLAG,
                    10,
                    13,
                    "targeting.rules[0].when.operator",
                    "missing required field 'operator'",
                ),
                error(
                    FLAG,
                    10,
                    34,
                    "targeting.rules[0].when.operater",
                    "unknown field 'operater'; did you mean 'operator'?",
                ),
            ],
        ),
        id="schema-condition-operator-key-typo",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner:
                    enabled: true
                """)
            },
            [error(FLAG, 4, 7, "owner", "expected a string, got null (an empty value)")],
        ),
        id="schema-null-required-field",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    experiment: null
                """)
            },
            [error(FLAG, 6, 13, "experiment", "null is not allowed; remove the field instead")],
        ),
        id="schema-explicit-null-optional-field",
    ),
    pytest.param(
        Case(
            {
                COST: doc("""
                    kind: CostThreshold
                    threshold_name: vc_demo_budget
                    description: Demo budget.
                    owner: team-finops
                    applies_to: everything
                    throttle:
                      amount_usd: 10
                    emergency:
                      amount_usd: 20
                """)
            },
            [
                error(
                    COST,
                    5,
                    13,
                    "applies_to",
                    "expected 'all' or a mapping of flags, request_types; "
                    "got the string 'everything'",
                )
            ],
        ),
        id="schema-applies-to-wrong-value",
    ),
    pytest.param(
        Case(
            {
                COST: doc("""
                    kind: CostThreshold
                    threshold_name: vc_demo_budget
                    description: Demo budget.
                    owner: team-finops
                    applies_to:
                      flag: [vc_bedrock_live]
                    throttle:
                      amount_usd: 10
                    emergency:
                      amount_usd: 20
                """)
            },
            [
                error(
                    COST,
                    6,
                    3,
                    "applies_to.flag",
                    "unknown field 'flag'; did you mean 'flags'?",
                )
            ],
        ),
        id="schema-applies-to-field-typo",
    ),
]

# --------------------------------------------------------------------------------------------
# Kinds: every file says what it is, and lives in its kind's folder.
# --------------------------------------------------------------------------------------------
KIND_CASES = [
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                """)
            },
            [
                error(
                    FLAG,
                    1,
                    1,
                    "kind",
                    "missing required field 'kind'; files in flags.d/ hold kind: Flag",
                )
            ],
        ),
        id="kind-missing",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flags
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                """)
            },
            [
                error(
                    FLAG,
                    1,
                    7,
                    "kind",
                    "unknown kind 'Flags'; expected Flag, Experiment, RolloutStrategy, "
                    "CostThreshold; did you mean 'Flag'?",
                )
            ],
        ),
        id="kind-unknown",
    ),
    pytest.param(
        Case(
            {"experiments.d/vc_demo.yaml": valid_manifest("Flag")},
            [
                error(
                    "experiments.d/vc_demo.yaml",
                    1,
                    7,
                    "kind",
                    "a Flag manifest belongs in flags.d/, not in experiments.d/; move the file",
                )
            ],
        ),
        id="kind-in-wrong-folder",
    ),
    pytest.param(
        Case(
            {"costs.d/vc_demo_test.yaml": valid_manifest("Experiment")},
            [
                error(
                    "costs.d/vc_demo_test.yaml",
                    1,
                    7,
                    "kind",
                    "an Experiment manifest belongs in experiments.d/, not in costs.d/; "
                    "move the file",
                )
            ],
        ),
        id="kind-in-wrong-folder-an",
    ),
    pytest.param(
        Case(
            {"flags.d/notes.txt": "remember to add the dashboard flags\n"},
            [
                warning(
                    "flags.d/notes.txt",
                    1,
                    1,
                    "(file)",
                    "not a manifest (expected a .yaml or .yml file); ignored",
                )
            ],
        ),
        id="layout-stray-file-warning",
    ),
]

# --------------------------------------------------------------------------------------------
# Names: file names, uniqueness, and the naming convention.
# --------------------------------------------------------------------------------------------
NAME_CASES = [
    pytest.param(
        Case(
            {"flags.d/vc_other.yaml": valid_manifest("Flag")},
            [
                error(
                    "flags.d/vc_other.yaml",
                    2,
                    12,
                    "flag_name",
                    "flag_name 'vc_demo' must equal the file name 'vc_other'; "
                    "rename the file or the field",
                )
            ],
        ),
        id="file-name-differs-from-name",
    ),
    pytest.param(
        Case(
            # flags.d/team/ sorts before flags.d/vc_bedrock_live.yaml, so it counts as first.
            {"flags.d/team/vc_bedrock_live.yaml": valid_manifest("Flag", "vc_bedrock_live")},
            [
                error(
                    "flags.d/vc_bedrock_live.yaml",
                    3,
                    12,
                    "flag_name",
                    "flag_name 'vc_bedrock_live' is already defined in "
                    "flags.d/team/vc_bedrock_live.yaml:2; names must be unique",
                )
            ],
        ),
        id="duplicate-name-in-subfolder",
    ),
    pytest.param(
        Case(
            {
                "rollouts.d/old/bedrock_gradual_rollout.yml": doc("""
                kind: RolloutStrategy
                strategy_name: bedrock_gradual_rollout
                description: Demo ramp.
                owner: team-demo
                feature_flag: vc_bedrock_live
                rollout_type: percentage
                active: false
                configuration:
                  percentage: 10
                  increment_percentage: 10
            """)
            },
            [
                error(
                    "rollouts.d/old/bedrock_gradual_rollout.yml",
                    2,
                    16,
                    "strategy_name",
                    "strategy_name 'bedrock_gradual_rollout' is already defined in "
                    "rollouts.d/bedrock_gradual_rollout.yaml:3; names must be unique",
                )
            ],
        ),
        id="duplicate-name-across-files",
    ),
    pytest.param(
        Case(
            {"flags.d/vcDemo.yaml": valid_manifest("Flag", "vcDemo")},
            [
                warning(
                    "flags.d/vcDemo.yaml",
                    2,
                    12,
                    "flag_name",
                    "'vcDemo' is not snake_case; write it as 'vc_demo'",
                )
            ],
        ),
        id="naming-not-snake-case-warning",
    ),
    pytest.param(
        Case(
            {"flags.d/vcDemo.yaml": valid_manifest("Flag", "vcDemo")},
            [
                error(
                    "flags.d/vcDemo.yaml",
                    2,
                    12,
                    "flag_name",
                    "'vcDemo' is not snake_case; write it as 'vc_demo'",
                )
            ],
            config=NAMING_ERROR,
        ),
        id="naming-not-snake-case-error",
    ),
    pytest.param(
        Case(
            {"experiments.d/ClaudeTest.yaml": valid_manifest("Experiment", "ClaudeTest")},
            [
                warning(
                    "experiments.d/ClaudeTest.yaml",
                    2,
                    16,
                    "experiment_id",
                    "'ClaudeTest' is not snake_case; write it as 'claude_test'",
                )
            ],
        ),
        id="naming-experiment-not-snake-case-warning",
    ),
    pytest.param(
        Case(
            {"flags.d/demo.yaml": valid_manifest("Flag", "demo")},
            [
                warning(
                    "flags.d/demo.yaml",
                    2,
                    12,
                    "flag_name",
                    "'demo' has no component prefix; name flags like vc_demo or dashboard_demo",
                )
            ],
        ),
        id="naming-missing-prefix-warning",
    ),
    pytest.param(
        Case(
            {"flags.d/demo.yaml": valid_manifest("Flag", "demo")},
            [
                error(
                    "flags.d/demo.yaml",
                    2,
                    12,
                    "flag_name",
                    "'demo' has no component prefix; name flags like vc_demo or ai_demo",
                )
            ],
            config=NAMING_ERROR,
        ),
        id="naming-missing-prefix-error",
    ),
    pytest.param(
        Case(
            {"flags.d/billing_demo.yaml": valid_manifest("Flag", "billing_demo")},
            [
                warning(
                    "flags.d/billing_demo.yaml",
                    2,
                    12,
                    "flag_name",
                    "'billing_demo' does not start with a known component prefix "
                    "(vc_, ai_, dashboard_, auth_)",
                )
            ],
            config=KNOWN_PREFIXES,
        ),
        id="naming-unknown-prefix-warning",
    ),
    pytest.param(
        Case(
            {"flags.d/billing_demo.yaml": valid_manifest("Flag", "billing_demo")},
            [
                error(
                    "flags.d/billing_demo.yaml",
                    2,
                    12,
                    "flag_name",
                    "'billing_demo' does not start with a known component prefix "
                    "(vc_, ai_, dashboard_, auth_)",
                )
            ],
            config=NAMING_ERROR,
        ),
        id="naming-unknown-prefix-error",
    ),
    pytest.param(
        Case(
            {"flags.d/demo.yaml": valid_manifest("Flag", "demo")},
            [
                error(
                    "flags.d/demo.yaml",
                    2,
                    12,
                    "flag_name",
                    "'demo' has no component prefix; name flags like vc_demo or ai_demo",
                )
            ],
            config='[validate]\nnaming = "error"\ncomponent_prefixes = ["vc", "ai"]\n',
        ),
        id="naming-missing-prefix-suggests-configured-prefixes",
    ),
]

# --------------------------------------------------------------------------------------------
# References between manifests.
# --------------------------------------------------------------------------------------------
REFERENCE_CASES = [
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_lvie
                    status: draft
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    6,
                    15,
                    "feature_flag",
                    "'vc_bedrock_lvie' names no flag in flags.d/; did you mean 'vc_bedrock_live'?",
                )
            ],
        ),
        id="ref-experiment-to-unknown-flag",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_nothing_here
                    rollout_type: percentage
                    active: false
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                """)
            },
            [error(ROLLOUT, 5, 15, "feature_flag", "'vc_nothing_here' names no flag in flags.d/")],
        ),
        id="ref-rollout-to-unknown-flag",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    experiment: claude_vs_gemni
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    13,
                    "experiment",
                    "'claude_vs_gemni' names no experiment in experiments.d/; "
                    "did you mean 'claude_vs_gemini'?",
                )
            ],
        ),
        id="ref-flag-to-unknown-experiment",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    rollout_strategy: demo_ramp_v2
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    19,
                    "rollout_strategy",
                    "'demo_ramp_v2' names no rollout strategy in rollouts.d/",
                )
            ],
        ),
        id="ref-flag-to-unknown-rollout-strategy",
    ),
    pytest.param(
        Case(
            {
                COST: doc("""
                    kind: CostThreshold
                    threshold_name: vc_demo_budget
                    description: Demo budget.
                    owner: team-finops
                    applies_to:
                      flags: [vc_bedrock_live, ai_model_selektion]
                    throttle:
                      amount_usd: 10
                    emergency:
                      amount_usd: 20
                """)
            },
            [
                error(
                    COST,
                    6,
                    28,
                    "applies_to.flags[1]",
                    "'ai_model_selektion' names no flag in flags.d/; "
                    "did you mean 'ai_model_selection'?",
                )
            ],
        ),
        id="ref-cost-scope-unknown-flag",
    ),
    pytest.param(
        Case(
            {
                COST: doc("""
                    kind: CostThreshold
                    threshold_name: vc_demo_budget
                    description: Demo budget.
                    owner: team-finops
                    applies_to:
                      request_types: [vc_analysys]
                    throttle:
                      amount_usd: 10
                    emergency:
                      amount_usd: 20
                """)
            },
            [
                error(
                    COST,
                    6,
                    19,
                    "applies_to.request_types[0]",
                    "request type 'vc_analysys' is declared by no flag (request_type in "
                    "flags.d/); did you mean 'vc_analysis'?",
                )
            ],
        ),
        id="ref-cost-scope-unknown-request-type",
    ),
    pytest.param(
        # flags.d/ai_model_selection.yaml, line 11: "experiment: claude_vs_gemini".
        Case(
            {"experiments.d/claude_vs_gemini.yaml": None},
            [
                error(
                    "flags.d/ai_model_selection.yaml",
                    11,
                    13,
                    "experiment",
                    "'claude_vs_gemini' names no experiment in experiments.d/",
                )
            ],
        ),
        id="ref-flag-to-deleted-experiment",
    ),
    pytest.param(
        # rollouts.d/bedrock_gradual_rollout.yaml, line 6: "feature_flag: vc_bedrock_live".
        Case(
            {"flags.d/vc_bedrock_live.yaml": None},
            [
                error(
                    "rollouts.d/bedrock_gradual_rollout.yaml",
                    6,
                    15,
                    "feature_flag",
                    "'vc_bedrock_live' names no flag in flags.d/",
                )
            ],
        ),
        id="ref-rollout-to-deleted-flag",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    experiment: claude_vs_gemini
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    13,
                    "experiment",
                    "experiment 'claude_vs_gemini' runs on flag 'ai_model_selection' "
                    "(experiments.d/claude_vs_gemini.yaml), not on this flag",
                )
            ],
        ),
        id="backref-flag-experiment-on-other-flag",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    rollout_strategy: bedrock_gradual_rollout
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    19,
                    "rollout_strategy",
                    "rollout strategy 'bedrock_gradual_rollout' ramps flag 'vc_bedrock_live' "
                    "(rollouts.d/bedrock_gradual_rollout.yaml), not this flag",
                )
            ],
        ),
        id="backref-flag-rollout-on-other-flag",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: ai_model_selection
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
                """)
            },
            [
                error(
                    EXPERIMENT,
                    7,
                    9,
                    "status",
                    "flag 'ai_model_selection' already has an active experiment "
                    "'claude_vs_gemini' (experiments.d/claude_vs_gemini.yaml); "
                    "at most one may be active per flag",
                )
            ],
        ),
        id="two-active-experiments-on-one-flag",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    active: true
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                """)
            },
            [
                error(
                    ROLLOUT,
                    7,
                    9,
                    "active",
                    "flag 'vc_bedrock_live' already has an active rollout strategy "
                    "'bedrock_gradual_rollout' (rollouts.d/bedrock_gradual_rollout.yaml); "
                    "at most one may be active per flag",
                )
            ],
        ),
        id="two-active-rollouts-on-one-flag",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                """)
            },
            [
                error(
                    ROLLOUT,
                    5,
                    15,
                    "feature_flag",
                    "flag 'vc_bedrock_live' already has an active rollout strategy "
                    "'bedrock_gradual_rollout' (rollouts.d/bedrock_gradual_rollout.yaml); "
                    "at most one may be active per flag",
                )
            ],
        ),
        id="two-active-rollouts-active-by-default",
    ),
]

# --------------------------------------------------------------------------------------------
# Experiments: variants, winner, metrics, dates.
# --------------------------------------------------------------------------------------------
EXPERIMENT_CASES = [
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 40
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    9,
                    3,
                    "variants",
                    "variant weights sum to 90; they must sum to 100",
                )
            ],
        ),
        id="weights-do-not-sum-to-100",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        weight: 50
                      - name: a
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [error(EXPERIMENT, 11, 11, "variants[1].name", "variant name 'a' is used twice")],
        ),
        id="duplicate-variant-names",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    control: c
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    8,
                    10,
                    "control",
                    "'c' is not a variant of this experiment (a, b)",
                )
            ],
        ),
        id="control-not-a-variant",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: concluded
                    winner: c
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    8,
                    9,
                    "winner",
                    "'c' is not a variant of this experiment (a, b)",
                )
            ],
        ),
        id="winner-not-a-variant",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: concluded
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    7,
                    9,
                    "status",
                    "a concluded experiment needs a winner: the variant to serve",
                )
            ],
        ),
        id="concluded-without-winner",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: paused
                    winner: a
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    8,
                    9,
                    "winner",
                    "winner is only set when status is concluded (status is paused)",
                )
            ],
        ),
        id="winner-without-concluded",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                """)
            },
            [
                error(
                    EXPERIMENT,
                    14,
                    3,
                    "success_metrics",
                    "mark exactly one success metric primary: true; it decides the conclusion",
                )
            ],
        ),
        id="no-primary-metric",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                      - metric_name: cost
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    19,
                    14,
                    "success_metrics[1].primary",
                    "only one success metric may be primary",
                )
            ],
        ),
        id="two-primary-metrics",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    start_time: "2025-13-01T00:00:00Z"
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    8,
                    13,
                    "start_time",
                    "not a real date and time: month must be in 1..12",
                )
            ],
        ),
        id="invalid-date-month-13",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    start_time: "2026-12-10T00:00:00Z"
                    end_time: "2026-12-09T00:00:00Z"
                    variants:
                      - name: a
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    9,
                    11,
                    "end_time",
                    "ends at 2026-12-09T00:00:00Z, not after its start_time 2026-12-10T00:00:00Z",
                )
            ],
        ),
        id="end-before-start",
    ),
]

# --------------------------------------------------------------------------------------------
# Rollout strategies: schedule, rollout_type, canary, metrics.
# --------------------------------------------------------------------------------------------
ROLLOUT_CASES = [
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    active: false
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                      max_percentage: 5
                """)
            },
            [
                error(
                    ROLLOUT,
                    9,
                    15,
                    "configuration.percentage",
                    "starts at 10%, above max_percentage 5%",
                )
            ],
        ),
        id="percentage-above-max-percentage",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    active: false
                    configuration:
                      percentage: 10
                """)
            },
            [
                error(
                    ROLLOUT,
                    9,
                    3,
                    "configuration.increment_percentage",
                    "the schedule never reaches max_percentage 100%: set increment_percentage, "
                    "or max_percentage: 10 to stay put",
                )
            ],
        ),
        id="schedule-never-reaches-max",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: targeting
                    active: false
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                """)
            },
            [
                error(
                    ROLLOUT,
                    9,
                    3,
                    "configuration.targeting",
                    "missing required field 'targeting' for rollout_type targeting",
                )
            ],
        ),
        id="targeting-type-without-targeting",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: canary
                    active: false
                    configuration:
                      percentage: 10
                """)
            },
            [
                error(
                    ROLLOUT,
                    9,
                    3,
                    "configuration.stages",
                    "missing required field 'stages' for rollout_type canary",
                )
            ],
        ),
        id="canary-without-stages",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: canary
                    active: false
                    configuration:
                      percentage: 5
                      stages:
                        - name: canary
                          percentage: 5
                        - name: early
                          percentage: 50
                        - name: half
                          percentage: 25
                """)
            },
            [
                error(
                    ROLLOUT,
                    16,
                    19,
                    "configuration.stages[2].percentage",
                    "canary stage percentages must rise from stage to stage",
                )
            ],
        ),
        id="canary-stages-fall",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: canary
                    active: false
                    configuration:
                      percentage: 1
                      stages:
                        - name: canary
                          percentage: 1
                        - name: half
                          percentage: 50
                        - name: full
                          percentage: 100
                """)
            },
            [],
        ),
        id="canary-without-increment-is-valid",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    active: false
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                    health_checks:
                      - check_name: answer_quality
                        check_type: custom_metric
                        threshold: 0.9
                        comparison: greater_than
                """)
            },
            [
                error(
                    ROLLOUT,
                    13,
                    17,
                    "health_checks[0].check_type",
                    "check_type custom_metric needs metric_name (the CloudWatch metric it reads)",
                ),
                error(
                    ROLLOUT,
                    13,
                    17,
                    "health_checks[0].check_type",
                    "check_type custom_metric needs namespace (the CloudWatch metric it reads)",
                ),
            ],
        ),
        id="custom-metric-without-its-cloudwatch-metric",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    active: false
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                    health_checks:
                      - check_name: errors
                        check_type: error_rate
                        namespace: VcPlatform
                        threshold: 5
                        comparison: less_than
                """)
            },
            [
                error(
                    ROLLOUT,
                    14,
                    16,
                    "health_checks[0].namespace",
                    "namespace is only used with check_type custom_metric",
                )
            ],
        ),
        id="cloudwatch-field-on-a-recorded-check",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: canary
                    active: false
                    configuration:
                      percentage: 5
                      stages:
                        - {name: canary, percentage: 5}
                        - {name: full, percentage: 100}
                      promotion_criteria:
                        - metric_name: error_ratio
                          comparison: less_than
                          threshold: 1
                """)
            },
            [
                error(
                    ROLLOUT,
                    14,
                    20,
                    "configuration.promotion_criteria[0].metric_name",
                    "unknown metric 'error_ratio': a promotion criterion measures one of "
                    "error_rate, latency_p50, latency_p95, latency_p99, cost_per_request, "
                    "quality_score",
                )
            ],
        ),
        id="promotion-criterion-of-an-unknown-metric",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: canary
                    active: false
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                      stages:
                        - {name: canary, percentage: 5}
                        - {name: full, percentage: 100}
                """)
            },
            [
                error(
                    ROLLOUT,
                    9,
                    15,
                    "configuration.percentage",
                    "a canary starts at its first stage's 5%, not 10%: leave percentage out",
                ),
                error(
                    ROLLOUT,
                    10,
                    25,
                    "configuration.increment_percentage",
                    "increment_percentage is not used with rollout_type canary (its stages set "
                    "the shares and min_duration_hours the timing)",
                ),
            ],
        ),
        id="canary-with-a-ramp-s-fields",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    active: false
                    configuration:
                      increment_percentage: 10
                """)
            },
            [
                error(
                    ROLLOUT,
                    9,
                    3,
                    "configuration",
                    "missing required field 'percentage' for rollout_type percentage",
                )
            ],
        ),
        id="ramp-without-its-start-percentage",
    ),
    pytest.param(
        Case(
            {
                FLAG: valid_manifest("Flag"),
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_demo
                    rollout_type: percentage
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                    health_checks:
                      - check_name: errors
                        check_type: error_rate
                        threshold: 5
                        comparison: less_than
                """),
            },
            [
                error(
                    ROLLOUT,
                    12,
                    17,
                    "health_checks[0].check_type",
                    "flag 'vc_demo' declares no request_type, so nothing records the outcomes "
                    "this check reads (record_ai_success and record_ai_failure count by request "
                    "type): give the flag a request_type, or use a custom_metric",
                )
            ],
        ),
        id="health-check-on-a-flag-without-request-type",
    ),
    pytest.param(
        Case(
            {
                ROLLOUT: doc("""
                    kind: RolloutStrategy
                    strategy_name: vc_demo_ramp
                    description: Demo ramp.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    rollout_type: percentage
                    active: false
                    configuration:
                      percentage: 10
                      increment_percentage: 10
                      start_time: "2025-02-30T00:00:00Z"
                """)
            },
            [
                error(
                    ROLLOUT,
                    11,
                    15,
                    "configuration.start_time",
                    "not a real date and time: day is out of range for month",
                )
            ],
        ),
        id="invalid-date-february-30",
    ),
]

# --------------------------------------------------------------------------------------------
# Cost thresholds: limits and scope.
# --------------------------------------------------------------------------------------------
COST_CASES = [
    pytest.param(
        Case(
            {
                COST: doc("""
                    kind: CostThreshold
                    threshold_name: vc_demo_budget
                    description: Demo budget.
                    owner: team-finops
                    applies_to:
                      flags: [vc_bedrock_live]
                    throttle:
                      amount_usd: 20
                    emergency:
                      amount_usd: 20
                """)
            },
            [
                error(
                    COST,
                    8,
                    15,
                    "throttle.amount_usd",
                    "throttle (20 USD) must be below emergency (20 USD)",
                )
            ],
        ),
        id="throttle-not-below-emergency",
    ),
    pytest.param(
        Case(
            {
                COST: doc("""
                    kind: CostThreshold
                    threshold_name: vc_demo_budget
                    description: Demo budget.
                    owner: team-finops
                    applies_to:
                      flags: [vc_bedrock_live]
                    alert_at_percentage: 80
                """)
            },
            [
                error(
                    COST,
                    2,
                    17,
                    "threshold_name",
                    "set throttle, emergency or both: a threshold needs a limit",
                )
            ],
        ),
        id="threshold-without-limits",
    ),
    pytest.param(
        Case(
            {
                COST: doc("""
                    kind: CostThreshold
                    threshold_name: vc_demo_budget
                    description: Demo budget.
                    owner: team-finops
                    applies_to:
                      flags: []
                    throttle:
                      amount_usd: 10
                    emergency:
                      amount_usd: 20
                """)
            },
            [
                error(
                    COST,
                    6,
                    3,
                    "applies_to",
                    "applies_to names no flags or request types; write 'applies_to: all' for "
                    "every AI feature",
                )
            ],
        ),
        id="empty-scope",
    ),
    pytest.param(
        Case(
            {
                COST: doc("""
                    kind: CostThreshold
                    threshold_name: vc_demo_budget
                    description: Demo budget.
                    owner: team-finops
                    applies_to: all
                    time_zone: Europe/Berlinn
                    throttle:
                      amount_usd: 10
                """)
            },
            [
                error(
                    COST,
                    6,
                    12,
                    "time_zone",
                    "unknown time zone 'Europe/Berlinn': give an IANA name such as UTC, "
                    "Europe/Berlin or America/New_York",
                )
            ],
        ),
        id="unknown-time-zone",
    ),
]

# --------------------------------------------------------------------------------------------
# Flags: value and type, targeting rules.
# --------------------------------------------------------------------------------------------
FLAG_CASES = [
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: number
                    value: "0.5"
                """)
            },
            [error(FLAG, 7, 8, "value", "value must be a number because type is 'number'")],
        ),
        id="flag-value-does-not-match-type",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: json
                    value: [1, 2]
                """)
            },
            [
                error(
                    FLAG,
                    7,
                    8,
                    "value",
                    "value must be a JSON object (a mapping) because type is 'json'",
                )
            ],
        ),
        id="flag-json-value-not-a-mapping",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: string
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    7,
                    "type",
                    "a string flag needs a value: the value served while the flag is on",
                )
            ],
        ),
        id="non-boolean-flag-without-value",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: minors
                          action: exclude
                          rollout_percentage: 50
                          when: {attribute: age_band, operator: equals, value: under_18}
                """)
            },
            [
                error(
                    FLAG,
                    10,
                    27,
                    "targeting.rules[0].rollout_percentage",
                    "rollout_percentage only applies to include rules",
                )
            ],
        ),
        id="exclude-rule-with-rollout-percentage",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    targeting:
                      rules:
                        - name: staff
                          action: include
                          when:
                            not:
                              any:
                                - attribute: email
                                  operator: matches
                                  value: '@example(\\.com$'
                """)
            },
            [
                error(
                    FLAG,
                    15,
                    22,
                    "targeting.rules[0].when.not.any[0].value",
                    "not a valid regular expression: missing ), unterminated subpattern at "
                    "position 8",
                )
            ],
        ),
        id="invalid-regex",
    ),
]

# --------------------------------------------------------------------------------------------
# Secrets: nothing that looks like a credential.
# --------------------------------------------------------------------------------------------
SECRET_CASES = [
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Calls Bedrock as AKIAIOSFODNN7EXAMPLE.
                    owner: team-demo
                    enabled: true
                """)
            },
            [
                error(
                    FLAG,
                    3,
                    14,
                    "description",
                    f"looks like an AWS access key id; {SECRET_ADVICE}",
                )
            ],
        ),
        id="secret-aws-access-key-id",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: string
                    value: ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8
                """)
            },
            [error(FLAG, 7, 8, "value", f"looks like a GitHub token; {SECRET_ADVICE}")],
        ),
        id="secret-github-token",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    type: string
                    value: |
                      -----BEGIN RSA PRIVATE KEY-----
                      MIIEowIBAAKCAQEA
                """)
            },
            [error(FLAG, 7, 8, "value", f"looks like a private key; {SECRET_ADVICE}")],
        ),
        id="secret-private-key",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        config:
                          model: claude-3.5-sonnet
                          api_key: 3f9c2a71d4e8b6a0
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [
                error(
                    EXPERIMENT,
                    12,
                    16,
                    "variants[0].config.api_key",
                    f"looks like a secret (field 'api_key'); {SECRET_ADVICE}",
                )
            ],
        ),
        id="secret-api-key-in-variant-config",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Demo flag.
                    owner: team-demo
                    enabled: true
                    # old key, rotated: AKIAIOSFODNN7EXAMPLE
                """)
            },
            [
                error(
                    FLAG,
                    6,
                    21,
                    "(file)",
                    f"looks like an AWS access key id; {SECRET_ADVICE}",
                )
            ],
        ),
        id="secret-in-comment",
    ),
    pytest.param(
        Case(
            {
                FLAG: doc("""
                    kind: Flag
                    flag_name: vc_demo
                    description: Calls Bedrock as AKIAIOSFODNN7EXAMPLE.
                    owner: team-demo
                    enabled: true
                    rollout_percent: 50
                """)
            },
            [
                error(
                    FLAG,
                    3,
                    14,
                    "description",
                    f"looks like an AWS access key id; {SECRET_ADVICE}",
                ),
                error(
                    FLAG,
                    6,
                    1,
                    "rollout_percent",
                    "unknown field 'rollout_percent'; did you mean 'rollout_percentage'?",
                ),
            ],
        ),
        id="secret-in-file-with-schema-error",
    ),
    pytest.param(
        Case(
            {
                EXPERIMENT: doc("""
                    kind: Experiment
                    experiment_id: vc_demo_test
                    name: Demo test
                    description: Demo experiment.
                    owner: team-demo
                    feature_flag: vc_bedrock_live
                    status: draft
                    variants:
                      - name: a
                        config:
                          api_key: arn:aws:secretsmanager:eu-central-1:123456789012:secret:bedrock
                        weight: 50
                      - name: b
                        weight: 50
                    success_metrics:
                      - metric_name: quality
                        metric_type: numeric
                        primary: true
                """)
            },
            [],
        ),
        id="secret-reference-by-name-is-not-a-secret",
    ),
]

CASES = [
    *YAML_CASES,
    *SCHEMA_CASES,
    *KIND_CASES,
    *NAME_CASES,
    *REFERENCE_CASES,
    *EXPERIMENT_CASES,
    *ROLLOUT_CASES,
    *COST_CASES,
    *FLAG_CASES,
    *SECRET_CASES,
]


def test_the_table_is_large() -> None:
    assert len(CASES) >= 45
    ids = [param.id for param in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES)
def test_invalid_manifest(case: Case, tmp_path: Path) -> None:
    build(tmp_path, case.files, case.config)
    found = findings(tmp_path)
    expected = sorted(case.expected)
    unexpected_errors = [f for f in found if f[4] == "error" and f not in expected]
    assert unexpected_errors == [], "the case breaks something besides its rule"
    assert found == expected


@pytest.mark.parametrize("config", [None, "repository"])
def test_the_example_tree_is_valid(tmp_path: Path, config: str | None) -> None:
    toml = (REPO_ROOT / "reconciler.toml").read_text() if config else None
    build(tmp_path, {}, toml)
    result = validate(tmp_path, load_config(tmp_path))
    assert result.errors == 0, findings(tmp_path)
    assert result.warnings == 0, findings(tmp_path)
    assert len(result.tree.manifests) == 5


@pytest.mark.parametrize("kind", list(DEFAULT_PATHS))
def test_the_helper_manifests_are_valid(tmp_path: Path, kind: str) -> None:
    build(tmp_path, {DEFAULT_PATHS[kind]: valid_manifest(kind)})
    assert findings(tmp_path) == []


def test_every_broken_file_is_reported_in_one_run(tmp_path: Path) -> None:
    """A YAML, a schema, a kind, a reference and a cross-field error, all in one run."""
    files: dict[str, str | bytes | None] = {
        FLAG: valid_manifest("Flag").replace("enabled: true", "enabled: yes"),
        "flags.d/vc_second.yaml": valid_manifest("Flag", "vc_second") + "fail_mode: opened\n",
        "flags.d/vc_third.yaml": valid_manifest("Flag", "vc_third").replace("kind: Flag\n", ""),
        EXPERIMENT: valid_manifest("Experiment").replace("weight: 50\n", "weight: 40\n", 1),
        ROLLOUT: valid_manifest("RolloutStrategy").replace("vc_bedrock_live", "vc_nothing"),
        COST: valid_manifest("CostThreshold").replace("amount_usd: 20", "amount_usd: 5"),
    }
    build(tmp_path, files)
    assert findings(tmp_path) == [
        error(
            COST,
            8,
            15,
            "throttle.amount_usd",
            "throttle (10 USD) must be below emergency (5 USD)",
        ),
        error(EXPERIMENT, 9, 3, "variants", "variant weights sum to 90; they must sum to 100"),
        error(
            FLAG,
            5,
            10,
            "enabled",
            "'yes' is ambiguous: YAML 1.1 reads it as true, YAML 1.2 as a string; "
            'write true for the boolean or quote it ("yes") for the string',
        ),
        error(
            "flags.d/vc_second.yaml",
            6,
            12,
            "fail_mode",
            "must be one of: open, closed (got 'opened'); did you mean 'open'?",
        ),
        error(
            "flags.d/vc_third.yaml",
            1,
            1,
            "kind",
            "missing required field 'kind'; files in flags.d/ hold kind: Flag",
        ),
        error(ROLLOUT, 5, 15, "feature_flag", "'vc_nothing' names no flag in flags.d/"),
    ]
