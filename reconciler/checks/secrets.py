"""Nothing that looks like a credential may sit in a manifest: git keeps it forever."""

from __future__ import annotations

import re
from collections.abc import Iterator

from reconciler.config import RepoConfig
from reconciler.diagnostics import Diagnostic, FieldPath
from reconciler.loader import Tree

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    (
        "a GitHub token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    ),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("an API secret key", re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}")),
    ("a Stripe key", re.compile(r"\b[rs]k_live_[0-9A-Za-z]{20,}")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    (
        "a JSON web token",
        re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ),
    ("a URL with a password", re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s:@]+@")),
)
# All patterns in one expression, so each string is searched once.
ANY_PATTERN = re.compile("|".join(f"(?P<p{i}>{p.pattern})" for i, (_, p) in enumerate(PATTERNS)))
SECRET_KEY = re.compile(
    r"(?i)(?:password|passwd|secret|api_?key|access_?key|private_?key|token|credential)s?$"
)
PLACEHOLDER = re.compile(r"^(?:\$\{[^}]*\}|<[^>]*>|\*+|x+|changeme|redacted)$", re.IGNORECASE)

ADVICE = "secrets do not belong in manifests: keep it in a secret store and reference it by name"


def check_secrets(tree: Tree, config: RepoConfig) -> Iterator[Diagnostic]:
    for loaded in tree.manifests:
        source = loaded.source
        for path, key, text in _strings(source.document.data, ()):
            what = _looks_like(key, text)
            if what is not None:
                yield source.diagnostic(path, f"looks like {what}; {ADVICE}", "secret")


def _looks_like(key: str | None, text: str) -> str | None:
    found = ANY_PATTERN.search(text)
    if found is not None and found.lastgroup is not None:
        return PATTERNS[int(found.lastgroup[1:])][0]
    if (
        key is not None
        and SECRET_KEY.search(key)
        and len(text) >= 8
        and " " not in text
        and not PLACEHOLDER.match(text)
    ):
        return f"a secret (field '{key}')"
    return None


def _strings(value: object, path: FieldPath) -> Iterator[tuple[FieldPath, str | None, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                yield (*path, key), key, item
            else:
                yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield (*path, index), None, item
            else:
                yield from _strings(item, (*path, index))
