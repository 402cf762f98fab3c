"""``controller new-experiment``: write an experiment manifest, and link its flag, for review.

The git form of the original ``BedrockABTests.createModelComparisonTest(name, description, models,
weights)``. Everything here is pure except ``write``, the one function that writes files, and
``check``, which validates the result in a temporary copy of the tree (the real loader and every
check, as ``reconcile --validate`` runs them) before anything in the repository is touched.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

from reconciler.config import RepoConfig
from reconciler.errors import UserError
from reconciler.loader import Source, Tree
from reconciler.manifests import KINDS, Experiment, Flag
from reconciler.manifests.common import NAME_PATTERN, TIMESTAMP_PATTERN
from reconciler.validation import Validation, validate
from reconciler.yaml_strict import load_yaml

SCHEMA_LINE = "# yaml-language-server: $schema=../schemas/experiment.schema.json"
METRIC_TYPES = ("numeric", "binary", "count")
DIRECTIONS = ("increase", "decrease")
VARIANT_SYNTAX = "NAME=MODEL or NAME=MODEL:WEIGHT, e.g. claude=claude-3.5-sonnet:50"
GUARDRAIL_SYNTAX = "METRIC:DIRECTION:MAX_DEGRADATION[:TYPE], e.g. response_time_ms:decrease:20"
# Flag fields that come before `experiment` in a flag file (the README's order); the link is
# added after the last of them.
_FLAG_FIELDS_BEFORE_LINK = frozenset(
    [
        "kind",
        "flag_name",
        "description",
        "owner",
        "tags",
        "deletion_protection",
        "enabled",
        "type",
        "value",
        "fail_mode",
        "rollout_percentage",
        "rollout_strategy",
    ]
)
_SMALL_WORDS = frozenset(
    ["a", "an", "and", "for", "in", "of", "on", "or", "the", "to", "vs", "with"]
)
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 _.,;/()+'!?%&=@-]*")
_AMBIGUOUS_WORDS = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")


@dataclass(frozen=True)
class VariantSpec:
    """One ``--variant NAME=MODEL[:WEIGHT]``; no weight: a share of what the others leave."""

    name: str
    model: str
    weight: Decimal | None = None


@dataclass(frozen=True)
class Guardrail:
    """One ``--guardrail METRIC:DIRECTION:MAX_DEGRADATION[:TYPE]``."""

    metric_name: str
    direction: str
    max_degradation: Decimal
    metric_type: str = "numeric"


DEFAULT_GUARDRAILS = (
    Guardrail("response_time_ms", "decrease", Decimal(20)),
    Guardrail("cost_usd", "decrease", Decimal(25)),
)


@dataclass(frozen=True)
class Request:
    """What the command was asked for; ``None`` means the documented default."""

    experiment_id: str
    flag: str
    variants: tuple[VariantSpec, ...]
    name: str | None = None
    description: str | None = None
    hypothesis: str | None = None
    owner: str | None = None
    control: str | None = None
    metric: str = "response_quality"
    metric_type: str = "numeric"
    direction: str = "increase"
    target_improvement: Decimal | None = None
    guardrails: tuple[Guardrail, ...] = DEFAULT_GUARDRAILS
    confidence_level: float = 0.95
    minimum_duration_days: int = 7
    minimum_sample_size: int = 1000
    start_time: str | None = None
    end_time: str | None = None
    status: str = "draft"
    force: bool = False


@dataclass(frozen=True)
class FlagLink:
    """The flag file with ``experiment: ID`` added: the flag's side of the link."""

    path: str
    before: str
    after: str
    line: int


@dataclass(frozen=True)
class Scaffold:
    """The files to write: the new experiment, and the flag's link when it is missing."""

    path: str
    text: str
    status: str
    overwrite: bool
    flag_link: FlagLink | None

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path, self.flag_link.path) if self.flag_link else (self.path,)


def parse_name(text: str) -> str:
    """An identifier: the experiment id (also its file name), a flag, a variant, a metric."""
    if not re.fullmatch(NAME_PATTERN, text):
        raise ValueError(f"{text!r}: expected a letter, then letters, digits, '_' or '-'")
    return text


def parse_variant(text: str) -> VariantSpec:
    """``claude=claude-3.5-sonnet:50``; the weight is what follows the last ':' if a number."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"{text!r}: expected {VARIANT_SYNTAX}")
    parse_name(name)
    model, weight = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and _NUMBER.fullmatch(tail):
        model, weight = head, Decimal(tail)
        if not 0 < weight <= 100:
            raise ValueError(
                f"{text!r}: a weight is more than 0 and at most 100; if ':{tail}' is part of "
                f"the model id, add the weight after it: {name}={rest}:WEIGHT"
            )
    if not model or any(c.isspace() for c in model):
        raise ValueError(
            f"{text!r}: the model id is empty or has spaces; expected {VARIANT_SYNTAX}"
        )
    return VariantSpec(name, model, weight)


def parse_guardrail(text: str) -> Guardrail:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"{text!r}: expected {GUARDRAIL_SYNTAX}")
    metric, direction, limit = parts[:3]
    metric_type = parts[3] if len(parts) == 4 else "numeric"
    if not re.fullmatch(NAME_PATTERN, metric):
        raise ValueError(f"{text!r}: metric {metric!r} is not a name like response_time_ms")
    if direction not in DIRECTIONS:
        raise ValueError(f"{text!r}: direction {direction!r} is not increase or decrease")
    try:
        max_degradation = parse_percentage(limit)
    except ValueError as exc:
        raise ValueError(f"{text!r}: max degradation {exc}") from None
    if metric_type not in METRIC_TYPES:
        raise ValueError(f"{text!r}: type {metric_type!r} is not one of {', '.join(METRIC_TYPES)}")
    return Guardrail(metric, direction, max_degradation, metric_type)


def parse_percentage(text: str) -> Decimal:
    """A relative change in percent, above 0: ``10`` or ``2.5``."""
    if not _NUMBER.fullmatch(text) or Decimal(text) == 0:
        raise ValueError(f"{text!r} is not a percentage above 0, e.g. 10")
    return Decimal(text)


def parse_timestamp(text: str) -> str:
    """An RFC 3339 time with a zone, kept as written (the manifests store the text)."""
    try:
        if not re.fullmatch(TIMESTAMP_PATTERN, text):
            raise ValueError
        datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an RFC 3339 time with a time zone, e.g. 2025-01-09T10:00:00Z"
        ) from None
    return text


def split_weights(weights: Sequence[Decimal | None]) -> list[Decimal]:
    """Fill in the missing weights: an even share of what the given ones leave of 100.

    Shares are whole numbers where the rest allows; the remainder goes to the first variants
    without a weight (three variants: 34, 33, 33).
    """
    given = sum((w for w in weights if w is not None), Decimal(0))
    missing = [i for i, w in enumerate(weights) if w is None]
    if not missing:
        if given != 100:
            raise ValueError(f"the weights sum to {given:f}; they must sum to 100")
        return [w for w in weights if w is not None]
    rest = Decimal(100) - given
    base = (rest / len(missing)).to_integral_value(ROUND_FLOOR)
    if base < 1:
        raise ValueError(
            f"the weights given sum to {given:f}, which leaves {max(rest, Decimal(0)):f} for "
            f"{len(missing)} variant(s) without a weight; lower them or give every weight"
        )
    leftover = rest - base * len(missing)
    extra = [Decimal(1)] * int(leftover) + [leftover - int(leftover)]
    filled = list(weights)
    for position, index in enumerate(missing):
        filled[index] = base + (extra[position] if position < len(extra) else Decimal(0))
    return [w for w in filled if w is not None]


def title_of(experiment_id: str) -> str:
    """``claude_vs_gemini`` -> ``Claude vs Gemini``."""
    words = [w for w in re.split(r"[_-]+", experiment_id) if w]
    return " ".join(
        w[:1].upper() + w[1:] if i == 0 or w not in _SMALL_WORDS else w for i, w in enumerate(words)
    )


def scaffold(request: Request, tree: Tree) -> Scaffold:
    """The experiment file (and the flag link) ``request`` asks for, checked against ``tree``."""
    names = [v.name for v in request.variants]
    if len(names) < 2:
        raise UserError("--variant: give at least two variants, e.g. --variant a=M1 --variant b=M2")
    for index, name in enumerate(names):
        if name in names[:index]:
            raise UserError(f"--variant: variant name '{name}' is given twice")
    try:
        weights = split_weights([v.weight for v in request.variants])
    except ValueError as exc:
        raise UserError(f"--variant: {exc}") from None
    control = request.control or names[0]
    if control not in names:
        raise UserError(f"--control: '{control}' is not a variant ({', '.join(names)})")
    metrics = [g.metric_name for g in request.guardrails]
    for index, metric in enumerate(metrics):
        if metric in metrics[:index] or metric == request.metric:
            raise UserError(f"--guardrail: metric '{metric}' is already a metric of the experiment")
    if request.start_time and request.end_time:
        start, end = (datetime.fromisoformat(t) for t in (request.start_time, request.end_time))
        if end <= start:
            raise UserError(f"--end-time: {request.end_time} is not after {request.start_time}")
    path = f"{Experiment.folder}/{request.experiment_id}.yaml"
    if not request.force and _exists(tree, path):
        raise UserError(f"{path} already exists; pass --force to overwrite it")
    flag, flag_source = _find_flag(tree, request.flag)
    _check_flag_free(tree, flag, flag_source, request.experiment_id, path)
    document = _document(request, flag, control, weights)
    text = render_yaml(document)
    parsed, problems = load_yaml(text.encode())
    if parsed is None or problems or parsed.data != document:
        raise RuntimeError(f"bug: the YAML written for {path} does not read back as built")
    link = None if flag.experiment == request.experiment_id else link_flag(flag_source, request)
    return Scaffold(path, text, request.status, request.force, link)


def _exists(tree: Tree, path: str) -> bool:
    return path in tree.unloaded or any(m.source.path == path for m in tree.manifests)


def _find_flag(tree: Tree, name: str) -> tuple[Flag, Source]:
    flags = {flag.flag_name: (flag, source) for flag, source in tree.of(Flag)}
    if name in flags:
        return flags[name]
    if name in tree.unloaded_names(Flag.folder):
        raise UserError(f"--flag: flag '{name}' has errors; fix them first (reconcile --validate)")
    if not flags and not (tree.root / Flag.folder).is_dir():
        raise UserError(f"--flag: no {Flag.folder}/ in {tree.root}; run from the repository root")
    close = difflib.get_close_matches(name, list(flags), n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "create it first"
    raise UserError(f"--flag: no flag '{name}' in {Flag.folder}/; {hint}")


def _check_flag_free(tree: Tree, flag: Flag, source: Source, experiment_id: str, path: str) -> None:
    """One experiment per flag: refuse a flag that another experiment already runs on."""
    for experiment, other in tree.of(Experiment):
        if experiment.feature_flag == flag.flag_name and other.path != path:
            raise UserError(
                f"--flag: flag '{flag.flag_name}' already has experiment "
                f"'{experiment.experiment_id}' ({other.path}, status {experiment.status}); "
                "choose another flag, or conclude and remove that experiment first"
            )
    if flag.experiment not in (None, experiment_id):
        line = source.at(("experiment",)).line
        raise UserError(
            f"--flag: flag '{flag.flag_name}' already links experiment '{flag.experiment}' "
            f"({source.path}:{line}); remove that link first"
        )


def _document(
    request: Request, flag: Flag, control: str, weights: Sequence[Decimal]
) -> dict[str, object]:
    """The manifest, in the field order of experiments.d/claude_vs_gemini.yaml."""
    models = [v.model for v in request.variants]
    listed = ", ".join(models[:-1]) + " and " + models[-1]
    primary: dict[str, object] = {
        "metric_name": request.metric,
        "metric_type": request.metric_type,
        "primary": True,
        "direction": request.direction,
    }
    if request.target_improvement is not None:
        primary["target_improvement"] = _number(request.target_improvement)
    document: dict[str, object] = {
        "kind": "Experiment",
        "experiment_id": request.experiment_id,
        "name": request.name or title_of(request.experiment_id),
        "description": request.description or f"Compare {listed} by {request.metric}.",
        "hypothesis": request.hypothesis,
        "owner": request.owner or flag.owner,
        "feature_flag": flag.flag_name,
        "status": request.status,
        "control": control,
        "variants": [
            {"name": v.name, "config": {"model": v.model}, "weight": _number(w)}
            for v, w in zip(request.variants, weights, strict=True)
        ],
        "success_metrics": [primary],
        "guardrail_metrics": [
            {
                "metric_name": g.metric_name,
                "metric_type": g.metric_type,
                "direction": g.direction,
                "max_degradation": _number(g.max_degradation),
            }
            for g in request.guardrails
        ],
        "confidence_level": request.confidence_level,
        "minimum_duration_days": request.minimum_duration_days,
        "minimum_sample_size": request.minimum_sample_size,
        "start_time": request.start_time,
        "end_time": request.end_time,
    }
    return {k: v for k, v in document.items() if v not in (None, "", [])}


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def render_yaml(document: Mapping[str, object]) -> str:
    """The manifest's text: the schema line, then block style, two-space indents."""
    return "\n".join([SCHEMA_LINE, *_block(document, 0)]) + "\n"


def _block(mapping: Mapping[str, object], indent: int) -> Iterator[str]:
    pad = " " * indent
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            yield f"{pad}{key}:"
            yield from _block(value, indent + 2)
        elif isinstance(value, list) and value:
            yield f"{pad}{key}:"
            for item in value:
                if isinstance(item, Mapping) and item:
                    first, *rest = _block(item, indent + 4)
                    yield f"{pad}  - {first.lstrip()}"
                    yield from rest
                else:
                    yield f"{pad}  - {_scalar(item)}"
        else:
            yield f"{pad}{key}: {_scalar(value)}"


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")  # never an exponent, which YAML 1.1 misreads
    if isinstance(value, Mapping | list):
        return "{}" if isinstance(value, Mapping) else "[]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text == text.rstrip() and text.lower() not in _AMBIGUOUS_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def link_flag(source: Source, request: Request) -> FlagLink:
    """The flag file with ``experiment: ID`` after its last field that comes before it."""
    text = source.document.text
    top = sorted((p, path[0]) for path, p in source.document.keys.items() if len(path) == 1)
    if not top or any(position.column != 1 for position, _ in top):
        raise UserError(
            f"{source.path}: not a block-style mapping; add 'experiment: "
            f"{request.experiment_id}' to it by hand, or rewrite it in block style"
        )
    lines = text.splitlines(keepends=True)
    after = max(i for i, (_, key) in enumerate(top) if key in _FLAG_FIELDS_BEFORE_LINK)
    at = top[after + 1][0].line - 1 if after + 1 < len(top) else len(lines)
    while at > top[after][0].line and (lines[at - 1].startswith("#") or not lines[at - 1].strip()):
        at -= 1  # comments and blank lines right above the next field stay with it
    newline = "\r\n" if "\r\n" in text else "\n"
    if at == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += newline
    lines.insert(at, f"experiment: {_scalar(request.experiment_id)}{newline}")
    return FlagLink(source.path, text, "".join(lines), at + 1)


def check(root: Path, config: RepoConfig, plan: Scaffold) -> Validation:
    """Validate the tree as it would be: a temporary copy of its manifests with ``plan`` in it."""
    with tempfile.TemporaryDirectory(prefix="new-experiment-") as temporary:
        copy = Path(temporary)
        for kind in KINDS.values():
            if (root / kind.folder).is_dir():
                shutil.copytree(root / kind.folder, copy / kind.folder)
        write(copy, plan)
        result = validate(copy, config)
        for loaded in result.tree.manifests:  # read while the copy exists: later positions
            _ = loaded.source.document  # come from it, not from a folder gone by then
    return dataclasses.replace(result, tree=dataclasses.replace(result.tree, root=root))


def write(root: Path, plan: Scaffold) -> list[Path]:
    """The only code that writes: the experiment file first, then the flag's link."""
    target = root / plan.path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target.open("w" if plan.overwrite else "x", encoding="utf-8", newline="") as out:
            out.write(plan.text)
    except FileExistsError:
        raise UserError(f"{plan.path} already exists; pass --force to overwrite it") from None
    written = [target]
    if plan.flag_link is not None:
        flag_path = root / plan.flag_link.path
        raw = flag_path.read_bytes()
        if raw.decode("utf-8-sig") != plan.flag_link.before:
            raise UserError(f"{plan.flag_link.path} changed while this ran; run it again")
        bom = "\ufeff" if raw.startswith(b"\xef\xbb\xbf") else ""
        temporary = flag_path.with_name(f".{flag_path.name}.new")
        temporary.write_text(bom + plan.flag_link.after, encoding="utf-8", newline="")
        shutil.copymode(flag_path, temporary)
        os.replace(temporary, flag_path)
        written.append(flag_path)
    return written
