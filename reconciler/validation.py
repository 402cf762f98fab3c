"""Validation of the whole tree: load every file, then run every semantic check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.checks import check_tree
from reconciler.config import RepoConfig
from reconciler.deploy.alarms import alarm_problems
from reconciler.diagnostics import Diagnostic, Severity, count
from reconciler.loader import Tree, load_tree

TEMPLATE_FILE = "deploy/template.yaml"  # reconciler.deploy.template.TEMPLATE_PATH


@dataclass(frozen=True)
class Validation:
    """The loaded tree and everything found wrong with it."""

    tree: Tree
    diagnostics: tuple[Diagnostic, ...]
    files: int

    @property
    def errors(self) -> int:
        return count(self.diagnostics, Severity.ERROR)

    @property
    def warnings(self) -> int:
        return count(self.diagnostics, Severity.WARNING)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def summary(self) -> str:
        if not self.ok:
            return (
                f"{_plural(self.errors, 'error')}, {_plural(self.warnings, 'warning')} "
                f"in {_plural(self.files, 'file')}."
            )
        kinds = Counter(type(m.manifest).__name__ for m in self.tree.manifests)
        by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        detail = f" ({by_kind})" if by_kind else ""
        return (
            f"{_plural(len(self.tree.manifests), 'manifest')} valid{detail}, "
            f"{_plural(self.warnings, 'warning')}."
        )


def validate(root: Path, config: RepoConfig) -> Validation:
    """Load ``root`` and check it; reports, never raises, for anything the files contain.

    With a committed deployment template (``deploy/template.yaml``), also that it is still the
    one the manifests and the code generate (a cost threshold changed, say, and the template
    not regenerated)."""
    result = validate_manifests(root, config)
    if not result.ok or not (root / TEMPLATE_FILE).is_file():
        return result
    from reconciler.deploy.template import check_committed  # noqa: PLC0415 - boto3, only here

    found = check_committed(root, result.tree, config)
    return replace(result, diagnostics=(*result.diagnostics, *found))


def validate_manifests(root: Path, config: RepoConfig) -> Validation:
    """Load ``root`` and check its manifests (not the deployment template), and the alarms
    they and ``reconciler.toml`` make (warnings for those that cannot be made)."""
    result = load_tree(root)
    diagnostics = [*result.diagnostics, *check_tree(result.tree, config)]
    if not any(d.severity is Severity.ERROR for d in diagnostics):  # no alarm of a wrong tree
        diagnostics.extend(alarm_problems(result.tree, config))
    return Validation(result.tree, tuple(diagnostics), result.files)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
