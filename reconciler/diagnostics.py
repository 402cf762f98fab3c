"""Diagnostics: one finding about one place in one file, and their renderings."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

FieldPath = tuple[str | int, ...]

DIAGNOSTICS_FORMAT_VERSION = 1


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Position(NamedTuple):
    """A 1-based line and column in a file (a tuple: cheap to make for every YAML node)."""

    line: int
    column: int


@dataclass(frozen=True)
class Diagnostic:
    """One finding: where it is (file, line, column, field) and what to do about it."""

    path: str
    position: Position
    field: FieldPath
    message: str
    rule: str
    severity: Severity = Severity.ERROR

    @property
    def field_text(self) -> str:
        return format_field(self.field)

    def sort_key(self) -> tuple[str, Position, str, str]:
        return (self.path, self.position, self.field_text, self.message)


def format_field(field: FieldPath) -> str:
    """Render a field path as ``variants[1].weight``; the empty path is ``(file)``."""
    text = ""
    for part in field:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(file)"


def render_text(diagnostics: Sequence[Diagnostic]) -> Iterator[str]:
    """One line per diagnostic: ``path:line:col: field: [warning: ]message``."""
    for d in sorted(diagnostics, key=Diagnostic.sort_key):
        prefix = "warning: " if d.severity is Severity.WARNING else ""
        yield (
            f"{d.path}:{d.position.line}:{d.position.column}: {d.field_text}: {prefix}{d.message}"
        )


def render_json(diagnostics: Sequence[Diagnostic], manifest_count: int) -> str:
    """The machine-readable report; its shape is versioned by ``format_version``."""
    ordered = sorted(diagnostics, key=Diagnostic.sort_key)
    errors = count(ordered, Severity.ERROR)
    document = {
        "format_version": DIAGNOSTICS_FORMAT_VERSION,
        "valid": errors == 0,
        "manifests": manifest_count,
        "errors": errors,
        "warnings": count(ordered, Severity.WARNING),
        "diagnostics": [
            {
                "path": d.path,
                "line": d.position.line,
                "column": d.position.column,
                "field": d.field_text,
                "field_path": list(d.field),
                "severity": d.severity.value,
                "rule": d.rule,
                "message": d.message,
            }
            for d in ordered
        ],
    }
    return json.dumps(document, indent=2)


def count(diagnostics: Iterable[Diagnostic], severity: Severity) -> int:
    return sum(1 for d in diagnostics if d.severity is severity)
