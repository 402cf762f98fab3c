"""Nothing that looks like a credential may sit in a manifest: git keeps it forever."""

from __future__ import annotations

import re
from collections.abc import Iterator

from reconciler.diagnostics import Diagnostic, FieldPath, Position
from reconciler.yaml_strict import YamlDocument

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
# Field names that hold a credential (singular: max_tokens is a count, not a token).
SECRET_KEY = re.compile(
    r"(?i)(?:^|_)(?:password|passwd|secret|api_?key|access_?key|private_?key|token|credential)$"
)
PLACEHOLDER = re.compile(r"^(?:\$\{[^}]*\}|<[^>]*>|\*+|x+|changeme|redacted)$", re.IGNORECASE)
# A reference to a secret kept elsewhere, which is what manifests should hold.
REFERENCE = re.compile(
    r"^(?:arn:aws[a-z-]*:(?:secretsmanager|ssm|kms):|(?:ssm|secretsmanager|vault|env):|\$\{)"
)

# What a file must contain to hold a secret: a piece of text every pattern needs, or a word
# every secret field's name has. Finding none of them in an ASCII file's text (``in`` on a
# string is fast) is enough to know it holds no secret, and is the end of the scan for most
# files. The pieces hold no space: YAML may fold a line break into one, never split a piece.
LITERALS = (
    *("AKIA", "ASIA", "ABIA", "ACCA"),
    "PRIVATE",  # not "PRIVATE KEY": YAML folds a line break between the words into a space
    *("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "xox",
    "sk-",
    *("rk_live_", "sk_live_"),
    "AIza",
    "eyJ",
    "://",
)
KEY_WORDS = (
    *("password", "passwd", "secret", "apikey", "api_key", "accesskey", "access_key"),
    *("privatekey", "private_key", "token", "credential"),
)

ADVICE = "secrets do not belong in manifests: keep it in a secret store and reference it by name"


def find_secrets(path: str, document: YamlDocument) -> Iterator[Diagnostic]:
    """Every value, and every comment, of a parsed file that looks like a credential. Runs on
    every file that parses, valid or not, so a secret is reported in the same run as a typo."""
    text = document.text
    # An escape in a double-quoted string can spell what the text does not show: then the
    # values as parsed are looked at too.
    values = None
    if "\\" in text:
        values = "\n".join(f"{key}\n{value}" for _, key, value in _strings(document.data, ()))
    if not _suspect(text) and (values is None or not _suspect(values)):
        return
    for field, key, text in _strings(document.data, ()):
        what = _looks_like(key, text)
        if what is not None:
            position = document.position_of(field)
            yield Diagnostic(path, position, field, f"looks like {what}; {ADVICE}", "secret")
    for number, line in enumerate(document.text.splitlines(), start=1):
        comment = _comment_start(line)
        if comment is None:
            continue
        found = ANY_PATTERN.search(line, comment)
        if found is not None and found.lastgroup is not None:
            what = PATTERNS[int(found.lastgroup[1:])][0]
            position = Position(number, found.start() + 1)
            yield Diagnostic(path, position, (), f"looks like {what}; {ADVICE}", "secret")


def _suspect(text: str) -> bool:
    if not text.isascii():
        return True  # case-insensitive matching maps some letters (long s) to ASCII: look closely
    if any(literal in text for literal in LITERALS):
        return True
    lowered = text.lower()
    return any(word in lowered for word in KEY_WORDS)


def _comment_start(line: str) -> int | None:
    """Where a YAML comment starts on the line: a '#' at its start or after a space, outside
    quotes (near enough for finding secrets)."""
    quote = None
    for index, char in enumerate(line):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return index
    return None


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
        and not REFERENCE.match(text)
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
