"""Strict YAML: one document per file, a position for every node, no YAML 1.1 surprises.

PyYAML alone silently keeps the last of two duplicate keys, reads the country code ``NO`` as
``False``, ``1e3`` as a string and ``0777`` as 511, and expands aliases without bound. This module
builds values from PyYAML's event stream instead (iteratively, so no input can exhaust the Python
stack) and reports each of those cases as a problem with its line and column:

- a plain scalar that YAML 1.1 (PyYAML) and YAML 1.2 (editors, most other tools) read differently
  is refused, with the spelling that means what the author most likely meant;
- duplicate keys, non-string keys, merge keys (``<<``) and explicit tags are refused;
- the file must be UTF-8, at most ``MAX_FILE_BYTES`` long, hold exactly one document, nest at most
  ``MAX_DEPTH`` levels and expand (aliases included) to at most ``MAX_NODES`` values;
- timestamps stay strings: the schema decides what a date is.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
import yaml.events as ev
from yaml.resolver import Resolver

from reconciler.diagnostics import FieldPath, Position

INTERNED = 64  # characters: shorter scalars are interned
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_DIGITS = 4_300  # Python's own limit for reading an integer (and far past any store's)

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_INT_OCTAL_OR_HEX = re.compile(r"^(?:0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_LEGACY_OCTAL = re.compile(r"^[-+]?0[0-9]+$")

_TAG = "tag:yaml.org,2002:"
# Plain words that some YAML version reads as something other than a string.
_WORDS = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})
_RESOLVER = Resolver()


class YamlProblem(Exception):
    """A problem at one place of a YAML file."""

    def __init__(self, position: Position, field: FieldPath, message: str) -> None:
        super().__init__(message)
        self.position = position
        self.field = field
        self.message = message
        self.earlier: list[YamlProblem] = []  # problems found before reading stopped


class YamlDocument:
    """The data of one YAML document, and where each of its values and keys starts.

    Positions are needed only to report a problem, so they are found on first use, by reading
    the text once more while recording them.
    """

    def __init__(self, data: object, text: str) -> None:
        self.data = data
        self._text = text
        self._positions: tuple[dict[FieldPath, Position], dict[FieldPath, Position]] | None = None

    @property
    def text(self) -> str:
        """The file's text, as parsed."""
        return self._text

    @property
    def values(self) -> Mapping[FieldPath, Position]:
        return self._located()[0]

    @property
    def keys(self) -> Mapping[FieldPath, Position]:
        return self._located()[1]

    def _located(self) -> tuple[dict[FieldPath, Position], dict[FieldPath, Position]]:
        if self._positions is None:
            builder = _Builder(track=True)
            for event in _events(self._text):
                _consume(builder, event)
            self._positions = (builder.values, builder.keys)
        return self._positions

    def position_of(self, path: FieldPath, *, key: bool = False) -> Position:
        """Where ``path`` is; the nearest enclosing node when it is absent (a missing field)."""
        if key and path in self.keys:
            return self.keys[path]
        values = self.values
        for end in range(len(path), -1, -1):
            found = values.get(path[:end])
            if found is not None:
                return found
        return Position(1, 1)


@dataclass
class _Frame:
    path: FieldPath
    value: dict[str, object] | list[object]
    start: Any  # the parser's mark; a Position is made from it only when needed
    anchor: str | None
    size: int = 1
    pending_key: str | None = None
    has_key: bool = False


@dataclass
class _Builder:
    track: bool = False  # record every node's position (only when a position is asked for)
    problems: list[YamlProblem] = field(default_factory=list)
    values: dict[FieldPath, Position] = field(default_factory=dict)
    keys: dict[FieldPath, Position] = field(default_factory=dict)
    anchors: dict[str, tuple[object, int]] = field(default_factory=dict)
    stack: list[_Frame] = field(default_factory=list)
    root: object = None
    documents: int = 0
    total: int = 0

    def child_path(self) -> FieldPath:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.value, list):
            return (*top.path, len(top.value))
        if top.has_key:
            return (*top.path, top.pending_key or "")
        return top.path

    def add(self, value: object, start: Any, size: int, *, is_scalar: bool) -> None:
        self.total += size
        if self.total > MAX_NODES:
            raise YamlProblem(
                _position(start),
                self.child_path(),
                f"the document expands to more than {MAX_NODES:,} values (aliases included); "
                "split it up or use fewer aliases",
            )
        if not self.stack:
            self.root = value
            if self.track:
                self.values[()] = _position(start)
            return
        top = self.stack[-1]
        top.size += size
        if isinstance(top.value, list):
            if self.track:
                self.values[(*top.path, len(top.value))] = _position(start)
            top.value.append(value)
        elif not top.has_key:
            self.add_key(top, value, start, is_scalar=is_scalar)
        else:
            key = top.pending_key
            top.has_key, top.pending_key = False, None
            if key is not None:
                if self.track:
                    self.values[(*top.path, key)] = _position(start)
                top.value[key] = value

    def add_key(self, top: _Frame, key: object, start: Any, *, is_scalar: bool) -> None:
        assert isinstance(top.value, dict)
        top.has_key = True
        if not is_scalar or not isinstance(key, str):
            shown = key if is_scalar else type(key).__name__
            self.problems.append(
                YamlProblem(
                    _position(start),
                    top.path,
                    f"mapping keys must be strings, found {shown!r}; quote the key",
                )
            )
            return
        if key in top.value:
            first = self.keys.get((*top.path, key), Position(0, 0))
            self.problems.append(
                YamlProblem(
                    _position(start),
                    (*top.path, key),
                    f"duplicate key '{key}' (first defined at line {first.line}); "
                    "YAML keeps only one of them, remove the other",
                )
            )
            return
        top.pending_key = key
        if self.track:
            self.keys[(*top.path, key)] = _position(start)


def load_yaml(raw: bytes) -> tuple[YamlDocument | None, list[YamlProblem]]:
    """Parse one manifest file. Returns the document (None when unusable) and every problem."""
    if len(raw) > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // (1024 * 1024)
        return None, [
            YamlProblem(
                Position(1, 1),
                (),
                f"file is {len(raw):,} bytes; a manifest may be at most {MAX_FILE_BYTES:,} "
                f"bytes ({limit} MiB)",
            )
        ]
    try:
        text = _decode(raw)
    except YamlProblem as problem:
        return None, [problem]
    data = _plain_build(text)
    if data is not _CAREFUL:
        if data is None:
            return None, [
                YamlProblem(Position(1, 1), (), "file is empty: it holds no YAML document")
            ]
        return YamlDocument(data, text), []
    builder = _build(text, track=False)
    if isinstance(builder, YamlProblem) or builder.problems:
        # Report with every position known (a duplicate key names its first line).
        builder = _build(text, track=True)
    if isinstance(builder, YamlProblem):
        return None, [*builder.earlier, builder]
    if builder.documents == 0 or builder.root is None:
        return None, [YamlProblem(Position(1, 1), (), "file is empty: it holds no YAML document")]
    document = YamlDocument(builder.root, text)
    return document, builder.problems


_CAREFUL = object()  # what the quick reading returns for a file it leaves to the careful one
_INT_PLAIN = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")  # an integer to YAML 1.1 and 1.2 alike
_FLOAT_PLAIN = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)\.[0-9]+$")  # a float to both alike
_QUIET = (ev.StreamStartEvent, ev.DocumentEndEvent)


def _plain_build(text: str) -> object:
    """The values of an ordinary file, read in one quick pass over the parser's events; or
    ``_CAREFUL`` when the file holds anything ``_build`` must look at or report (an anchor, an
    alias, a tag, a duplicate or non-string key, an ambiguous scalar, more than one document,
    too deep or too large, a syntax error). Where both read a file, they give the same values.
    """
    loader = _Loader(text)
    get = loader.get_event
    scalar, mapping, sequence = ev.ScalarEvent, ev.MappingStartEvent, ev.SequenceStartEvent
    ends = (ev.MappingEndEvent, ev.SequenceEndEvent)
    intern, words, no_key = sys.intern, _WORDS, _CAREFUL
    containers: list[Any] = []  # the open mappings and sequences, innermost last
    keys: list[Any] = []  # for each open mapping, its pending key (``no_key``: none yet)
    root: object = None
    nodes = documents = 0
    try:
        while True:
            event = get()  # type: ignore[no-untyped-call]
            kind = type(event)
            if kind is scalar:
                if event.anchor is not None or event.tag is not None:
                    return _CAREFUL
                value: Any = event.value
                if len(value) <= INTERNED:
                    value = intern(value)
                if not event.style and not (value[:1].isalpha() and value.lower() not in words):
                    value = _plain_scalar(value)
                    if value is _CAREFUL:
                        return _CAREFUL
                nodes += 1
            elif kind is mapping or kind is sequence:
                if event.anchor is not None or event.tag is not None:
                    return _CAREFUL
                if len(containers) >= MAX_DEPTH:
                    return _CAREFUL
                nodes += 1
                containers.append({} if kind is mapping else [])
                keys.append(no_key)
                continue
            elif kind in ends:
                value = containers.pop()
                keys.pop()
            elif kind is ev.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    return _CAREFUL
                continue
            elif kind is ev.StreamEndEvent:
                break
            elif kind in _QUIET:
                continue
            else:  # an alias
                return _CAREFUL
            if nodes > MAX_NODES:
                return _CAREFUL
            if not containers:
                root = value
                continue
            top = containers[-1]
            if type(top) is list:
                top.append(value)
                continue
            key = keys[-1]
            if key is not no_key:
                top[key] = value
                keys[-1] = no_key
            elif type(value) is not str or value in top:
                return _CAREFUL  # a key that is not a string, or a duplicate
            else:
                keys[-1] = value
    except yaml.YAMLError:
        return _CAREFUL
    finally:
        loader.dispose()
    return root


def _plain_scalar(text: str) -> object:
    """A plain scalar that is not an identifier-like word: its value, or ``_CAREFUL`` when
    YAML 1.1 and 1.2 read it differently."""
    if text in {"true", "false"}:
        return text == "true"
    if _INT_PLAIN.match(text):
        return int(text) if len(text) <= MAX_DIGITS else _CAREFUL
    if _FLOAT_PLAIN.match(text):
        number = float(text)
        return number if math.isfinite(number) else _CAREFUL  # the careful reader says why
    if _ambiguity(text) is not None:
        return _CAREFUL
    return _core_value(text)


def _build(text: str, *, track: bool) -> _Builder | YamlProblem:
    """The values of ``text``, or the problem that stopped reading it (with those before it)."""
    builder = _Builder(track=track)
    try:
        for event in _events(text):
            _consume(builder, event)
    except YamlProblem as problem:
        problem.earlier = builder.problems
        return problem
    return builder


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise YamlProblem(
            Position(line, column),
            (),
            f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save it as UTF-8",
        ) from None


def _position(mark: Any) -> Position:
    return Position(mark.line + 1, mark.column + 1)  # marks count from 0


def _events(text: str) -> Iterator[ev.Event]:
    try:
        yield from yaml.parse(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = _position(mark) if mark is not None else Position(1, 1)
        raise YamlProblem(position, (), _syntax_message(text, exc, position)) from None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        raise YamlProblem(
            Position(line, column),
            (),
            f"character U+{_code_point(exc.character):04X} is not allowed in YAML; remove it",
        ) from None
    except yaml.YAMLError as exc:  # any other parser complaint still names a place
        raise YamlProblem(Position(1, 1), (), f"invalid YAML: {exc}") from None


def _code_point(character: object) -> int:
    """PyYAML names the character as a string or, from libyaml, as its code point."""
    return ord(character) if isinstance(character, str) and character else int(str(character or 0))


def _syntax_message(text: str, exc: yaml.MarkedYAMLError, position: Position) -> str:
    lines = text.splitlines()
    line = lines[position.line - 1] if 0 < position.line <= len(lines) else ""
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    if "\t" in indent:
        return "tab character in indentation; YAML indentation must use spaces"
    problem = (exc.problem or "invalid YAML").strip()
    if exc.context and exc.context_mark is not None:
        context = f"{exc.context} at line {exc.context_mark.line + 1}"
        return f"invalid YAML: {problem} ({context})"
    return f"invalid YAML: {problem}"


def _consume(b: _Builder, event: ev.Event) -> None:
    if isinstance(event, ev.ScalarEvent):  # the most frequent event first
        start = event.start_mark
        value = _scalar(b, event, start)
        if event.anchor is not None:
            b.anchors[event.anchor] = (value, 1)
        b.add(value, start, 1, is_scalar=True)
    elif isinstance(event, ev.DocumentStartEvent):
        b.documents += 1
        if b.documents > 1:
            raise YamlProblem(
                _position(event.start_mark),
                (),
                "file holds more than one YAML document; put one manifest per file",
            )
    elif isinstance(event, ev.MappingStartEvent | ev.SequenceStartEvent):
        start = event.start_mark
        if len(b.stack) >= MAX_DEPTH:
            raise YamlProblem(
                _position(start), b.child_path(), f"nested more than {MAX_DEPTH} levels deep"
            )
        _refuse_tag(b, event.tag, start, mapping=isinstance(event, ev.MappingStartEvent))
        container: dict[str, object] | list[object]
        container = {} if isinstance(event, ev.MappingStartEvent) else []
        b.stack.append(_Frame(b.child_path(), container, start, event.anchor))
    elif isinstance(event, ev.MappingEndEvent | ev.SequenceEndEvent):
        frame = b.stack.pop()
        _remember_anchor(b, frame.anchor, frame.value, frame.size)
        b.total -= frame.size - 1  # children were counted as they were added
        b.add(frame.value, frame.start, frame.size, is_scalar=False)
    elif isinstance(event, ev.AliasEvent):
        start = event.start_mark
        if event.anchor not in b.anchors:
            raise YamlProblem(
                _position(start),
                b.child_path(),
                f"alias *{event.anchor} refers to no complete anchor &{event.anchor} before it",
            )
        value, size = b.anchors[event.anchor]
        b.add(value, start, size, is_scalar=not isinstance(value, dict | list))


def _remember_anchor(b: _Builder, anchor: str | None, value: object, size: int) -> None:
    if anchor is not None:
        b.anchors[anchor] = (value, size)


def _refuse_tag(b: _Builder, tag: str | None, start: Any, *, mapping: bool) -> None:
    allowed = {None, "!", _TAG + ("map" if mapping else "seq")}
    if tag not in allowed:
        b.problems.append(
            YamlProblem(
                _position(start), b.child_path(), f"YAML tag {tag!r} is not supported; remove it"
            )
        )


def _scalar(b: _Builder, event: ev.ScalarEvent, start: Any) -> object:
    text = event.value
    if len(text) <= INTERNED:
        text = sys.intern(text)  # names and values repeat across files: one copy each
    if event.tag not in (None, "!", _TAG + "str"):
        b.problems.append(
            YamlProblem(
                _position(start),
                b.child_path(),
                f"YAML tag {event.tag!r} is not supported; remove it",
            )
        )
        return text
    if event.style or event.tag is not None:
        return text  # quoted, block or explicitly tagged: always a string
    if text[:1].isalpha() and text.lower() not in _WORDS:
        return text  # an identifier-like word: a string to YAML 1.1 and 1.2 alike
    problem = _ambiguity(text)
    if problem is not None:
        where = b.child_path()
        top = b.stack[-1] if b.stack else None
        if top is not None and isinstance(top.value, dict) and not top.has_key:
            where = (*where, text)  # the scalar is a key: the problem is that field
        b.problems.append(YamlProblem(_position(start), where, problem))
        return text
    return _core_value(text)


def _core_value(text: str) -> object:
    """A plain scalar as YAML 1.2's core schema reads it."""
    if _NULL.match(text):
        return None
    if _BOOL.match(text):
        return text.lower() == "true"
    if _INT.match(text) and len(text) <= MAX_DIGITS:
        return int(text)
    if _INT_OCTAL_OR_HEX.match(text) and len(text) <= MAX_DIGITS:
        return int(text, 0)
    if _FLOAT.match(text):
        return float(text)
    return text


def _unambiguous(number: float) -> str:
    """A spelling of ``number`` that YAML 1.1 and 1.2 both read as that number."""
    text = repr(number)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        sign = "" if exponent[0] in "+-" else "+"
        text = f"{mantissa}.0e{sign}{exponent}"
    return text


def _ambiguity(text: str) -> str | None:
    """Why YAML 1.1 and 1.2 disagree on this plain scalar, or None when they agree."""
    tag: str = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    legacy = tag.removeprefix(_TAG)
    core = _core_value(text)
    shown = f"'{text}'"
    if legacy == "merge":
        return (
            "merge keys ('<<') are a YAML 1.1 extension that many tools ignore; write the keys out"
        )
    if _INT.match(text) and len(text) > MAX_DIGITS:
        return f"'{text[:12]}...' has more than {MAX_DIGITS} digits: no store keeps such a number"
    if _SPECIAL_FLOAT.match(text) or (isinstance(core, float) and not math.isfinite(core)):
        return f"{shown} is not a finite number; JSON and DynamoDB cannot store it"
    if legacy == "bool" and not isinstance(core, bool):
        meaning = "true" if text.lower() in ("yes", "on", "y") else "false"
        return (
            f"{shown} is ambiguous: YAML 1.1 reads it as {meaning}, YAML 1.2 as a string; "
            f'write {meaning} for the boolean or quote it ("{text}") for the string'
        )
    if legacy == "int" and _LEGACY_OCTAL.match(text):
        return (
            f"{shown} is ambiguous: YAML 1.1 reads it as the octal number {int(text, 8)}, "
            f"YAML 1.2 as {int(text)}; drop the leading zero or quote it for a string"
        )
    if legacy in ("int", "float") and not isinstance(core, int | float):
        return (
            f"{shown} is ambiguous: YAML 1.1 reads it as a number, YAML 1.2 as a string; "
            "write the number plainly (no '_' or ':') or quote it for a string"
        )
    if legacy == "str" and isinstance(core, int | float) and not isinstance(core, bool):
        return (
            f"{shown} is ambiguous: YAML 1.1 reads it as a string, YAML 1.2 as the number "
            f"{core!r}; write {_unambiguous(core)} for the number or quote it for a string"
        )
    return None
