"""Names: equal to file names, unique per kind, and in the house convention."""

from __future__ import annotations

import re
from collections.abc import Iterator

from reconciler.config import RepoConfig
from reconciler.diagnostics import Diagnostic, Severity
from reconciler.index import Entry, Index
from reconciler.loader import Source
from reconciler.manifests import Flag, Manifest

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def check_file_name(manifest: Manifest, source: Source, config: RepoConfig) -> Iterator[Diagnostic]:
    if manifest.object_name != source.stem:
        yield source.diagnostic(
            (manifest.name_field,),
            f"{manifest.name_field} '{manifest.object_name}' must equal the file name "
            f"'{source.stem}'; rename the file or the field",
            "file-name",
        )


def check_unique_names(index: Index, config: RepoConfig) -> Iterator[Diagnostic]:
    first_seen: dict[tuple[str, str], Entry] = {}
    for entry in index.entries:
        first = first_seen.setdefault((entry.kind, entry.name), entry)
        if first is not entry:
            field = (entry.name_field,)
            line = first.source.at(field).line  # positions are found only when needed
            yield entry.source.diagnostic(
                field,
                f"{entry.name_field} '{entry.name}' is already defined in "
                f"{first.source.path}:{line}; names must be unique",
                "unique-name",
            )


def check_convention(
    manifest: Manifest, source: Source, config: RepoConfig
) -> Iterator[Diagnostic]:
    settings = config.validate_
    if settings.naming == "off":
        return
    severity = Severity.ERROR if settings.naming == "error" else Severity.WARNING
    name, field = manifest.object_name, manifest.name_field
    message = None
    if not SNAKE_CASE.match(name):
        suggestion = re.sub(
            r"[^a-z0-9]+", "_", re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
        )
        message = f"'{name}' is not snake_case; write it as '{suggestion.strip('_')}'"
    elif isinstance(manifest, Flag):
        message = _prefix_problem(name, settings.component_prefixes)
    if message is not None:
        yield source.diagnostic((field,), message, "naming", severity=severity)


def _prefix_problem(name: str, prefixes: tuple[str, ...]) -> str | None:
    prefix, _, rest = name.partition("_")
    if not rest:
        first, second = (
            ([*list(prefixes), "vc", "dashboard"])[:2] if prefixes else ("vc", "dashboard")
        )
        return (
            f"'{name}' has no component prefix; name flags like {first}_{name} or {second}_{name}"
        )
    if prefixes and prefix not in prefixes:
        allowed = ", ".join(f"{p}_" for p in prefixes)
        return f"'{name}' does not start with a known component prefix ({allowed})"
    return None
