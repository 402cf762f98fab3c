"""The strict YAML loader: values, positions, refusals, and robustness on any input."""

from __future__ import annotations

import string
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import yaml_strict
from reconciler.diagnostics import Position
from reconciler.yaml_strict import MAX_FILE_BYTES, YamlProblem, load_yaml


def problems(raw: bytes) -> list[tuple[int, int, str]]:
    _, found = load_yaml(raw)
    return [(p.position.line, p.position.column, p.message) for p in found]


@pytest.fixture(params=["libyaml", "pure-python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the C parser and with PyYAML's pure-Python one: they must agree."""
    if request.param == "pure-python":
        monkeypatch.setattr(yaml_strict, "_Loader", yaml.SafeLoader)
    elif not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml")
    return str(request.param)


def test_values_follow_yaml_1_2_core_schema(parser: str) -> None:
    raw = b"""\
text: hello
quoted_no: "NO"
number: 42
negative: -3
hex: 0x1F
real: 2.5
exponent: 1.0e+3
yes_bool: true
empty:
tilde: ~
when: 2025-01-09T10:00:00Z
block: |
  line one
  line two
nested: {list: [1, two, 3.0]}
"""
    document, found = load_yaml(raw)
    assert found == []
    assert document is not None
    assert document.data == {
        "text": "hello",
        "quoted_no": "NO",
        "number": 42,
        "negative": -3,
        "hex": 31,
        "real": 2.5,
        "exponent": 1000.0,
        "yes_bool": True,
        "empty": None,
        "tilde": None,
        "when": "2025-01-09T10:00:00Z",
        "block": "line one\nline two\n",
        "nested": {"list": [1, "two", 3.0]},
    }


def test_positions_of_values_and_keys(parser: str) -> None:
    raw = b"# comment\nkind: Flag\nouter:\n  inner:\n    - a\n    - b: 1\n"
    document, _ = load_yaml(raw)
    assert document is not None
    assert document.position_of(("kind",)) == Position(2, 7)
    assert document.position_of(("kind",), key=True) == Position(2, 1)
    assert document.position_of(("outer", "inner", 1, "b")) == Position(6, 10)
    assert document.position_of(("outer", "inner", 1, "b"), key=True) == Position(6, 7)
    # An absent field is reported at the nearest node that exists.
    assert document.position_of(("outer", "missing")) == Position(4, 3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            b"a: 1\nb: 2\na: 3\n",
            [
                (
                    3,
                    1,
                    "duplicate key 'a' (first defined at line 1); YAML keeps only one of them, "
                    "remove the other",
                )
            ],
            id="duplicate-key",
        ),
        pytest.param(
            b"country: NO\n",
            [
                (
                    1,
                    10,
                    "'NO' is ambiguous: YAML 1.1 reads it as false, YAML 1.2 as a string; "
                    'write false for the boolean or quote it ("NO") for the string',
                )
            ],
            id="norway",
        ),
        pytest.param(
            b"enabled: on\n",
            [
                (
                    1,
                    10,
                    "'on' is ambiguous: YAML 1.1 reads it as true, YAML 1.2 as a string; "
                    'write true for the boolean or quote it ("on") for the string',
                )
            ],
            id="on",
        ),
        pytest.param(
            b"cost: 1e3\n",
            [
                (
                    1,
                    7,
                    "'1e3' is ambiguous: YAML 1.1 reads it as a string, YAML 1.2 as the number "
                    "1000.0; write 1000.0 for the number or quote it for a string",
                )
            ],
            id="exponent-without-dot",
        ),
        pytest.param(
            b"mode: 0644\n",
            [
                (
                    1,
                    7,
                    "'0644' is ambiguous: YAML 1.1 reads it as the octal number 420, YAML 1.2 "
                    "as 644; drop the leading zero or quote it for a string",
                )
            ],
            id="octal",
        ),
        pytest.param(
            b"time: 1:30\n",
            [
                (
                    1,
                    7,
                    "'1:30' is ambiguous: YAML 1.1 reads it as a number, YAML 1.2 as a string; "
                    "write the number plainly (no '_' or ':') or quote it for a string",
                )
            ],
            id="sexagesimal",
        ),
        pytest.param(
            b"x: .nan\n",
            [(1, 4, "'.nan' is not a finite number; JSON and DynamoDB cannot store it")],
            id="nan",
        ),
        pytest.param(
            b"base: &b {a: 1}\nchild:\n  <<: *b\n",
            [
                (
                    3,
                    3,
                    "merge keys ('<<') are a YAML 1.1 extension that many tools ignore; "
                    "write the keys out",
                )
            ],
            id="merge-key",
        ),
        pytest.param(
            b"a: !!python/object:os.system ls\n",
            [
                (
                    1,
                    4,
                    "YAML tag 'tag:yaml.org,2002:python/object:os.system' is not supported; "
                    "remove it",
                )
            ],
            id="python-tag",
        ),
        pytest.param(
            b"1: one\n",
            [(1, 1, "mapping keys must be strings, found 1; quote the key")],
            id="integer-key",
        ),
    ],
)
def test_refusals_keep_parsing(
    parser: str, raw: bytes, expected: list[tuple[int, int, str]]
) -> None:
    assert problems(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"", (1, 1, "file is empty: it holds no YAML document"), id="empty"),
        pytest.param(
            b"# only a comment\n", (1, 1, "file is empty: it holds no YAML document"), id="comments"
        ),
        pytest.param(
            b"---\n...\n", (1, 1, "file is empty: it holds no YAML document"), id="null-document"
        ),
        pytest.param(
            b"a: 1\n---\nb: 2\n",
            (2, 1, "file holds more than one YAML document; put one manifest per file"),
            id="two-documents",
        ),
        pytest.param(
            b"a:\n\t- b\n",
            (2, 1, "tab character in indentation; YAML indentation must use spaces"),
            id="tab",
        ),
        pytest.param(
            b"a: 1\nb: \xe9t\xe9\n",
            (2, 4, "file is not valid UTF-8 (byte 0xe9); save it as UTF-8"),
            id="latin-1",
        ),
        pytest.param(
            b"a: *missing\n",
            (1, 4, "alias *missing refers to no complete anchor &missing before it"),
            id="undefined-alias",
        ),
        pytest.param(
            b"a: &x [1, *x]\n",
            (1, 11, "alias *x refers to no complete anchor &x before it"),
            id="recursive-alias",
        ),
        pytest.param(b"[" * 65 + b"]" * 65, (1, 65, "nested more than 64 levels deep"), id="deep"),
    ],
)
def test_fatal_problems(parser: str, raw: bytes, expected: tuple[int, int, str]) -> None:
    document, found = load_yaml(raw)
    assert document is None
    assert [(p.position.line, p.position.column, p.message) for p in found] == [expected]


def test_syntax_errors_name_the_place(parser: str) -> None:
    [(line, _column, message)] = problems(b"kind: Flag\nflag_name: [a, b\nowner: x\n")
    assert line == 3
    assert message.startswith("invalid YAML: ")


def test_size_limit() -> None:
    raw = b"a: '" + b"x" * MAX_FILE_BYTES + b"'\n"
    assert problems(raw) == [
        (1, 1, "file is 1,048,582 bytes; a manifest may be at most 1,048,576 bytes (1 MiB)")
    ]


def test_billion_laughs_is_refused_quickly() -> None:
    lines = [b'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        refs = b", ".join(b"*l%d" % (level - 1) for _ in range(9))
        lines.append(b"l%d: &l%d [%s]" % (level, level, refs))
    started = time.perf_counter()
    document, found = load_yaml(b"\n".join(lines) + b"\n")
    assert document is None
    assert found[-1].message.startswith("the document expands to more than 100,000 values")
    assert time.perf_counter() - started < 5


def test_aliases_within_the_bound_are_expanded() -> None:
    document, found = load_yaml(b"base: &b {model: claude}\ncopy: *b\n")
    assert found == []
    assert document is not None
    assert document.data == {"base": {"model": "claude"}, "copy": {"model": "claude"}}


def test_utf8_bom_is_accepted() -> None:
    document, found = load_yaml(b"\xef\xbb\xbfkind: Flag\n")
    assert found == []
    assert document is not None
    assert document.data == {"kind": "Flag"}


def _loads_or_reports(raw: bytes) -> None:
    document, found = load_yaml(raw)
    assert document is not None or found, "an unusable document must come with a problem"
    for problem in found:
        assert isinstance(problem, YamlProblem)
        assert problem.position.line >= 1
        assert problem.position.column >= 1
        assert problem.message


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    _loads_or_reports(raw)


YAML_ALPHABET = string.ascii_letters + string.digits + " :-[]{},&*!|>'\"#%@`?\n\t.~=<"


@settings(max_examples=600, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=YAML_ALPHABET, max_size=400))
def test_arbitrary_yaml_like_text_never_crashes(text: str) -> None:
    _loads_or_reports(text.encode())


printable = st.characters(exclude_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp"))
keys = st.text(printable, min_size=1, max_size=10)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    # 1e-05 is JSON but ambiguous YAML (a string to YAML 1.1): the loader rightly refuses it.
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: "e" not in repr(x))
    | st.text(printable, max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=2000)
@given(st.dictionaries(keys, json_values, min_size=1, max_size=6))
def test_json_documents_round_trip(data: dict[str, object]) -> None:
    """Any JSON document (JSON is YAML 1.2) loads back to the same value."""
    import json

    document, found = load_yaml(json.dumps(data, ensure_ascii=False).encode())
    assert found == []
    assert document is not None
    assert document.data == data


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"a: 1" + b"0" * 400 + b".0\n",
            "is not a finite number; JSON and DynamoDB cannot store it",
        ),
        (b"a: " + b"9" * 5000 + b"\n", "has more than 4300 digits: no store keeps such a number"),
        (b"a: -" + b"9" * 5000 + b"\n", "has more than 4300 digits: no store keeps such a number"),
    ],
)
def test_numbers_past_what_a_store_keeps_are_refused(raw: bytes, expected: str) -> None:
    """In a file otherwise plain (read in one pass) as in one read the careful way."""
    for text in (raw, raw + b"b: &x 1\nc: *x\n"):  # an alias: the careful reader
        _, problems = load_yaml(text)
        assert [p.message for p in problems if expected in p.message], problems
