"""Read the manifest tree: every ``*.d/`` folder, every file, every error at once.

Parse (strict YAML), then validate (JSON Schema), then build (pydantic). A file that fails a step
is reported and skipped for the next; the tree keeps every manifest that was built, so the
semantic checks still run over the rest and one run reports everything.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydantic

from reconciler import schema
from reconciler.diagnostics import Diagnostic, FieldPath, Position, Severity
from reconciler.manifests import KINDS, Kind, Manifest, kind_for_folder
from reconciler.secrets import find_secrets
from reconciler.yaml_strict import YamlDocument, load_yaml

MANIFEST_SUFFIXES = (".yaml", ".yml")
PARALLEL_FROM = 2000  # manifest files; below, one process is quicker than starting others
IGNORED_NAMES = ("README", "readme", "CODEOWNERS", "OWNERS")

M = TypeVar("M", bound=Manifest)


@dataclass(frozen=True)
class Source:
    """A manifest file: its path relative to the tree's root, and its parsed document.

    A source in a loaded tree keeps only its path: the document (the file's text and data)
    is read again on first use, to say where a problem is. A tree of tens of thousands of
    manifests holds their models, not their text."""

    path: str
    _document: YamlDocument | None = field(default=None, repr=False, compare=False)
    root: Path | None = field(default=None, compare=False)

    @property
    def document(self) -> YamlDocument:
        if self._document is None:
            document = None
            if self.root is not None:
                with contextlib.suppress(OSError):
                    document = load_yaml((self.root / self.path).read_bytes())[0]
            object.__setattr__(self, "_document", document or YamlDocument(None, ""))
        assert self._document is not None
        return self._document

    def released(self) -> Source:
        """The same source without its document in memory."""
        return Source(self.path, None, self.root)

    @property
    def folder(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def stem(self) -> str:
        return Path(self.path).stem

    def at(self, field_path: FieldPath, *, key: bool = False) -> Position:
        return self.document.position_of(field_path, key=key)

    def diagnostic(
        self,
        field_path: FieldPath,
        message: str,
        rule: str,
        *,
        severity: Severity = Severity.ERROR,
        key: bool = False,
    ) -> Diagnostic:
        return Diagnostic(
            self.path, self.at(field_path, key=key), field_path, message, rule, severity
        )


@dataclass(frozen=True)
class Loaded:
    """One manifest that passed the schema and was built, with the file it came from."""

    manifest: Manifest
    source: Source


@dataclass(frozen=True)
class Tree:
    """The desired state: every manifest built from the repository."""

    root: Path
    manifests: tuple[Loaded, ...]
    unloaded: frozenset[str] = frozenset()
    """Paths (``flags.d/x.yaml``) of manifest files that had errors and were not built."""

    def unloaded_names(self, folder: str) -> set[str]:
        """Names of the files in ``folder`` that could not be built (their errors stand)."""
        return {Path(p).stem for p in self.unloaded if p.startswith(folder + "/")}

    def of(self, model: type[M]) -> list[tuple[M, Source]]:
        """The manifests of one kind (or of its subclasses), in the tree's order."""
        if any(kind is not model and issubclass(kind, model) for kind in self._by_kind):
            chosen = [m for m in self.manifests if isinstance(m.manifest, model)]
        else:
            chosen = self._by_kind.get(model, [])
        return [(m.manifest, m.source) for m in chosen]  # type: ignore[misc]

    @functools.cached_property
    def _by_kind(self) -> dict[type, list[Loaded]]:
        grouped: dict[type, list[Loaded]] = {}
        for loaded in self.manifests:
            grouped.setdefault(type(loaded.manifest), []).append(loaded)
        return grouped


@dataclass
class LoadResult:
    tree: Tree
    diagnostics: list[Diagnostic] = field(default_factory=list)
    files: int = 0


def load_tree(root: Path) -> LoadResult:
    """Load every manifest under ``root``; never raises for anything a file contains."""
    loaded: list[Loaded] = []
    unloaded: list[str] = []
    diagnostics: list[Diagnostic] = []
    folders = [root / kind.folder for kind in KINDS.values()]
    if not any(folder.is_dir() for folder in folders):
        names = ", ".join(f"{kind.folder}/" for kind in KINDS.values())
        diagnostics.append(
            Diagnostic(
                ".",
                Position(1, 1),
                (),
                f"no manifest folders here ({names}); run from the repository root or pass it",
                "layout",
            )
        )
    manifests: list[tuple[Path, str]] = []
    for folder in folders:
        for path in _files(folder):
            relative = path.relative_to(root).as_posix()
            if path.suffix not in MANIFEST_SUFFIXES:
                diagnostics.append(
                    Diagnostic(
                        relative,
                        Position(1, 1),
                        (),
                        "not a manifest (expected a .yaml or .yml file); ignored",
                        "layout",
                        Severity.WARNING,
                    )
                )
                continue
            manifests.append((path, relative))
    for (_, relative), (built, found) in zip(manifests, _load_all(root, manifests), strict=True):
        diagnostics.extend(found)
        if built is not None:
            loaded.append(built)
        else:
            unloaded.append(relative)
    return LoadResult(Tree(root, tuple(loaded), frozenset(unloaded)), diagnostics, len(manifests))


Outcome = tuple["Loaded | None", list[Diagnostic]]


def _load_all(root: Path, files: Sequence[tuple[Path, str]]) -> list[Outcome]:
    """Each file loaded, in order: in worker processes when the tree is large, the machine has
    cores to spare and this process runs no other thread (a fork copies a lock another thread
    may hold, and the runtime's fork hooks would start its threads again in each worker); each
    file is independent, and the results come back as models and diagnostics, which pickle
    small. Else here."""
    workers = _workers(len(files)) if threading.active_count() == 1 else 1  # fork: no threads
    if workers <= 1:
        return [load_file(path, relative, root) for path, relative in files]
    size = -(-len(files) // (workers * 4))  # a few chunks per worker: none waits on the last
    chunks = [(root, files[i : i + size]) for i in range(0, len(files), size)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return [outcome for chunk in pool.map(_load_chunk, chunks) for outcome in chunk]


def _load_chunk(job: tuple[Path, Sequence[tuple[Path, str]]]) -> list[Outcome]:
    root, files = job
    return [load_file(path, relative, root) for path, relative in files]


def _workers(files: int) -> int:
    """Processes for loading ``files`` files: one below ``PARALLEL_FROM`` files, without fork
    (not Linux), or when ``RECONCILER_WORKERS`` says so; else one per usable core, up to 8."""
    if files < PARALLEL_FROM or not sys.platform.startswith("linux"):
        return 1
    chosen = os.environ.get("RECONCILER_WORKERS", "")
    if chosen.isdigit():
        return max(1, int(chosen))
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _files(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.stem not in IGNORED_NAMES:
            yield path


def load_file(
    path: Path, relative: str, root: Path | None = None
) -> tuple[Loaded | None, list[Diagnostic]]:
    """Parse, validate and build one manifest file (``relative`` to ``root``: a built
    manifest's source reads its document again from there when it is needed)."""
    if root is None:  # the folders above the file that ``relative`` names
        root = path.parents[len(Path(relative).parts) - 1]

    def at_file(position: Position, field_path: FieldPath, message: str, rule: str) -> Diagnostic:
        return Diagnostic(relative, position, field_path, message, rule)

    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [at_file(Position(1, 1), (), f"cannot read the file: {exc.strerror}", "io")]
    document, problems = load_yaml(raw)
    diagnostics = [at_file(p.position, p.field, p.message, "yaml") for p in problems]
    if document is None:
        return None, diagnostics
    source = Source(relative, document, root)
    diagnostics.extend(find_secrets(relative, document))
    data = document.data
    if not isinstance(data, dict):
        diagnostics.append(
            source.diagnostic((), "expected a mapping of fields with 'kind:' at the top", "schema")
        )
        return None, diagnostics
    kind, kind_diagnostics = _kind_of(source, data)
    diagnostics.extend(kind_diagnostics)
    if kind is None:
        return None, diagnostics
    if not diagnostics:
        # The fast path: the model and the schema accept the same documents (a tested
        # property), so a document the model builds needs no jsonschema pass.
        try:
            return Loaded(kind.model.model_validate(data), source.released()), diagnostics
        except pydantic.ValidationError as exc:
            model_errors = exc.errors()
    else:
        model_errors = []
    # Explain with the schema, whose errors say more. A value the YAML step already refused
    # (e.g. an ambiguous 'yes') is not reported again.
    refused = {problem.field for problem in problems}
    for problem in schema.check(kind, data):
        if problem.field in refused:
            continue
        at = problem.field[:-1] if problem.at_parent else problem.field
        position = source.at(at, key=problem.at_key)
        diagnostics.append(Diagnostic(relative, position, problem.field, problem.message, "schema"))
    if not diagnostics:  # only the model objected: report its words rather than nothing
        for error in model_errors:
            loc = tuple(error["loc"])
            diagnostics.append(source.diagnostic(loc, error["msg"], "schema"))
    return None, diagnostics


def _kind_of(source: Source, data: dict[str, object]) -> tuple[Kind | None, list[Diagnostic]]:
    folder_kind = kind_for_folder(source.folder)
    expected = folder_kind.name if folder_kind else "one of " + ", ".join(KINDS)
    value = data.get("kind")
    if value is None:
        message = f"missing required field 'kind'; files in {source.folder}/ hold kind: {expected}"
        return None, [source.diagnostic(("kind",), message, "schema")]
    if not isinstance(value, str) or value not in KINDS:
        close = difflib.get_close_matches(str(value), list(KINDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        message = f"unknown kind '{value}'; expected {', '.join(KINDS)}{hint}"
        return None, [source.diagnostic(("kind",), message, "schema")]
    kind = KINDS[value]
    if folder_kind is not None and kind is not folder_kind:
        article = "an" if kind.name[0] in "AEIOU" else "a"
        message = (
            f"{article} {kind.name} manifest belongs in {kind.folder}/, not in {source.folder}/; "
            "move the file"
        )
        return kind, [source.diagnostic(("kind",), message, "layout")]
    return kind, []
