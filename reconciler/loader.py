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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydantic

from reconciler.diagnostics import Diagnostic, FieldPath, Position, Severity
from reconciler.manifests import KINDS, Kind, Manifest, kind_for_folder
from reconciler.secrets import find_secrets
from reconciler.yaml_strict import YamlDocument, load_yaml

MANIFEST_SUFFIXES = (".yaml", ".yml")
PARALLEL_FROM = 2000  # manifest files; below, one process is quicker than starting others
IGNORED_NAMES = ("README", "readme", "CODEOWNERS", "OWNERS")

M = TypeVar("M", bound=Manifest)
R = TypeVar("R")


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
    files, diagnostics = list_manifests(root)
    loaded: list[Loaded] = []
    unloaded: list[str] = []
    for (_, relative), (built, found) in zip(files, map_files(load_file, root, files), strict=True):
        diagnostics.extend(found)
        if built is not None:
            loaded.append(built)
        else:
            unloaded.append(relative)
    return LoadResult(Tree(root, tuple(loaded), frozenset(unloaded)), diagnostics, len(files))


def list_manifests(root: Path) -> tuple[list[tuple[Path, str]], list[Diagnostic]]:
    """The manifest files under ``root`` (each path with its name relative to ``root``), and
    warnings for the files there that are not manifests."""
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
        for path, inside in _files(folder):
            relative = f"{folder.name}/{inside}"
            if not inside.endswith(MANIFEST_SUFFIXES):
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
    return manifests, diagnostics


Job = Callable[[Path, str, Path], R]


def map_files(job: Job[R], root: Path, files: Sequence[tuple[Path, str]]) -> list[R]:
    """``job(path, relative, root)`` of each file, in order: shared with worker processes when
    the tree is large, the machine has cores to spare and this process runs no other thread (a
    fork copies a lock another thread may hold, and the runtime's fork hooks would start its
    threads again in each worker); each file is independent. Else here.

    The files go in chunks to a pool of one worker fewer than the processes chosen, and this
    process does its share of them, the last ones, itself: what it does need not be pickled.
    (It takes no chunk back from the pool: on Python 3.11 a future cancelled before a worker
    dies can leave the pool hung, CPython gh-107219.) What a job returns in a worker comes
    back pickled, so it should be small: findings and facts, not models."""
    workers = _workers(len(files)) if threading.active_count() == 1 else 1  # fork: no threads
    if workers <= 1:
        return [job(path, relative, root) for path, relative in files]
    size = -(-len(files) // (workers * 8))  # many chunks: none waits long on the last
    chunks = [(job, root, files[i : i + size]) for i in range(0, len(files), size)]
    shared = len(chunks) - len(chunks) // workers  # the pool's; the rest are this process's
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers - 1, mp_context=context) as pool:
        futures = [pool.submit(_run_chunk, chunk) for chunk in chunks[:shared]]
        mine = [outcome for chunk in chunks[shared:] for outcome in _run_chunk(chunk)]
        return [outcome for future in futures for outcome in future.result()] + mine


def _run_chunk(chunk: tuple[Job[R], Path, Sequence[tuple[Path, str]]]) -> list[R]:
    job, root, files = chunk
    return [job(path, relative, root) for path, relative in files]


def _workers(files: int) -> int:
    """Processes for loading ``files`` files: one below ``PARALLEL_FROM`` files, without fork
    (not Linux), or when ``RECONCILER_WORKERS`` says so; else one per usable core, up to 8."""
    if files < PARALLEL_FROM or not sys.platform.startswith("linux"):
        return 1
    chosen = os.environ.get("RECONCILER_WORKERS", "")
    if chosen.isdigit():
        return max(1, int(chosen))
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _files(folder: Path) -> Iterator[tuple[Path, str]]:
    """The files under ``folder``, at any depth, in the order of their paths, as
    ``sorted(folder.rglob("*"))`` has them (symbolic links to folders are not followed);
    without hidden files and the READMEs and owners files a folder may hold. Each with its
    path relative to ``folder`` (``/``-separated)."""
    found: list[tuple[str, ...]] = []
    _scan(str(folder), (), found)
    for parts in sorted(found):
        name = parts[-1]
        if not name.startswith(".") and _stem(name) not in IGNORED_NAMES:
            yield folder.joinpath(*parts), "/".join(parts)


def _stem(name: str) -> str:
    """``Path(name).stem``: the name without its last suffix."""
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def _scan(directory: str, parts: tuple[str, ...], found: list[tuple[str, ...]]) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError:  # not a folder (or gone, or unreadable): nothing in it
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            _scan(entry.path, (*parts, entry.name), found)
        elif entry.is_file():
            found.append((*parts, entry.name))


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
    from reconciler import schema  # noqa: PLC0415 - jsonschema: only for a file with errors

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
