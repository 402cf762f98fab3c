"""Every rule of `reconcile --validate`, broken one at a time: the exact file, line, column,
field and message of each finding, and no other error."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.config import load_config
from reconciler.validation import validate
from tests.rule_cases import CASES, EXPECTED, FLAG, Case, build


def findings(root: Path) -> list[tuple[str, int, int, str, str, str]]:
    result = validate(root, load_config(root))
    return [
        (d.path, d.position.line, d.position.column, d.field_text, d.severity.value, d.message)
        for d in sorted(result.diagnostics, key=lambda d: d.sort_key())
    ]


def test_the_table_is_large_and_complete() -> None:
    assert len(CASES) >= 40
    assert {c.id for c in CASES} == set(EXPECTED)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case, tmp_path: Path) -> None:
    build(tmp_path, case)
    assert findings(tmp_path) == EXPECTED[case.id]


def test_the_unbroken_tree_is_clean(tmp_path: Path) -> None:
    build(tmp_path, Case("clean", {}))
    assert findings(tmp_path) == []


def test_every_broken_file_is_reported_in_one_run(tmp_path: Path) -> None:
    broken = [c for c in CASES if c.id in ("schema-enum", "weights", "throttle-above-emergency")]
    files: dict[str, str | bytes | None] = {}
    for case in broken:
        files.update(case.files)
    build(tmp_path, Case("together", files))
    expected = sorted(d for case in broken for d in EXPECTED[case.id])
    assert sorted(findings(tmp_path)) == expected


def test_many_errors_in_one_file_are_all_reported(tmp_path: Path) -> None:
    text = (
        FLAG.replace("enabled: true", "enabled: 'yes'") + "rollout_percentage: 150\nfail_mode: x\n"
    )
    build(tmp_path, Case("many", {"flags.d/vc_demo.yaml": text}))
    assert [f[3] for f in findings(tmp_path)] == ["enabled", "rollout_percentage", "fail_mode"]
