"""The tree loader: which files it reads, and that no file content can make it raise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.diagnostics import Severity
from reconciler.loader import load_file, load_tree
from tests.test_yaml_strict import YAML_ALPHABET


def test_subfolders_are_read_and_stray_files_warned_about(example_tree: Path) -> None:
    team = example_tree / "flags.d" / "team_vc"
    team.mkdir()
    (team / "vc_nested.yml").write_text(
        "kind: Flag\nflag_name: vc_nested\ndescription: d\nowner: o\nenabled: false\n"
    )
    (example_tree / "flags.d" / "README.md").write_text("# flags\n")
    (example_tree / "flags.d" / ".gitkeep").write_text("")
    (example_tree / "flags.d" / "vc_old.yaml.bak").write_text("junk")
    result = load_tree(example_tree)
    names = sorted(m.manifest.object_name for m in result.tree.manifests)
    assert "vc_nested" in names
    assert result.files == 6
    [warning] = result.diagnostics
    assert warning.severity is Severity.WARNING
    assert warning.path == "flags.d/vc_old.yaml.bak"
    assert warning.message == "not a manifest (expected a .yaml or .yml file); ignored"


def test_a_missing_folder_is_an_empty_kind(example_tree: Path) -> None:
    for path in (example_tree / "costs.d").iterdir():
        path.unlink()
    (example_tree / "costs.d").rmdir()
    result = load_tree(example_tree)
    assert result.diagnostics == []
    assert len(result.tree.manifests) == 4


manifest_like = st.fixed_dictionaries(
    {"kind": st.sampled_from(["Flag", "Experiment", "RolloutStrategy", "CostThreshold", "Flagg"])},
    optional={
        "flag_name": st.text(max_size=12),
        "enabled": st.booleans() | st.text(max_size=3),
        "variants": st.lists(st.dictionaries(st.text(max_size=5), st.integers()), max_size=3),
        "rollout_percentage": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
        "targeting": st.recursive(
            st.text(max_size=5) | st.integers(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["all", "any", "not", "attribute", "operator"]),
                    inner,
                    max_size=3,
                )
            ),
            max_leaves=8,
        ),
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(alphabet=YAML_ALPHABET, max_size=300).map(str.encode),
        manifest_like.map(lambda d: json.dumps(d).encode()),
    )
)
def test_no_file_content_makes_loading_raise(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "flags.d" / "vc_fuzz.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(raw)
    loaded, diagnostics = load_file(path, "flags.d/vc_fuzz.yaml")
    assert loaded is not None or diagnostics
    for diagnostic in diagnostics:
        assert diagnostic.position.line >= 1
        assert diagnostic.message


_FRAGMENTS = [
    "description: plain words\n",
    "description: 'AKIAIOSFODNN7EXAMPLE'\n",
    'description: "\\x41KIAIOSFODNN7EXAMPLE"\n',
    "value: ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8\n",
    "api_key: s3cr3tvalue99\n",
    "max_tokens: '1000'\n",
    "# a comment with sk-ant-abcdefghijklmnopqrstuvwx\n",
    "note: >-\n  folded text\n  AKIAIOSFODNN7EXAMPLE here\n",
    "url: https://user:pa55word@example.com/x\n",
    "token: ${SECRET_FROM_ENV}\n",
    'db_password: "hunter2hunter2"\n',
    '"\\x74oken": "abcdefgh12345678"\n',
    "slack: xoxb-1234567890-abcdefghij\n",
    "stripe: rk_live_abcdefghijklmnopqrstuvwx\n",
    "google: AIzaSyA1234567890abcdefghijklmnopqrstuv\n",
    "jwt: eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.abcdefghijkl\n",
    "pem: '-----BEGIN RSA PRIVATE KEY-----'\n",
    "name: vc_bedrock_live_g00001\n",
    "pem: -----BEGIN RSA PRIVATE\n  KEY-----\n",  # folded into one line by YAML
    'quoted: "-----BEGIN RSA PRIVATE\n  KEY-----"\n',
    "folded: >\n  -----BEGIN EC PRIVATE\n  KEY-----\n",
    "pa\u017f\u017fword: hunter2hunter2\n",  # long s: a case-insensitive 'password'
    "apı_key: abcdefgh12345678\n",  # dotless i
]


@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=5, unique=True))
def test_the_one_search_of_the_text_misses_no_secret(parts: list[str]) -> None:
    """Files the quick search of the text lets through hold nothing the full scan would find."""
    from reconciler import secrets
    from reconciler.yaml_strict import load_yaml

    document, _ = load_yaml(("kind: Flag\n" + "".join(parts)).encode())
    assert document is not None
    quick = list(secrets.find_secrets("f.yaml", document))
    original, secrets._suspect = secrets._suspect, lambda text: True
    try:
        full = list(secrets.find_secrets("f.yaml", document))
    finally:
        secrets._suspect = original
    assert quick == full


def test_a_tree_loaded_by_worker_processes_is_the_one_loaded_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large trees load in worker processes; the result is the same, in the same order, and
    a manifest's source still says where a problem is."""
    import shutil

    from reconciler import loader
    from tests.conftest import REPO_ROOT

    for folder in ("flags.d", "experiments.d", "rollouts.d", "costs.d"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    (tmp_path / "flags.d" / "vc_broken.yaml").write_text("kind: Flag\nflag_name: [\n")
    monkeypatch.setenv("RECONCILER_WORKERS", "1")
    here = load_tree(tmp_path)
    monkeypatch.setattr(loader, "PARALLEL_FROM", 1)
    monkeypatch.setenv("RECONCILER_WORKERS", "2")
    assert loader._workers(len(here.tree.manifests)) == 2
    pools: list[object] = []
    real_pool = loader.ProcessPoolExecutor

    def noted(*args: object, **kwargs: object) -> object:
        pools.append(args)
        return real_pool(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "ProcessPoolExecutor", noted)
    monkeypatch.setattr(loader.threading, "active_count", lambda: 1)  # the test's own threads
    there = load_tree(tmp_path)
    assert pools, "loaded by worker processes"
    assert [m.manifest for m in there.tree.manifests] == [m.manifest for m in here.tree.manifests]
    assert [m.source.path for m in there.tree.manifests] == [
        m.source.path for m in here.tree.manifests
    ]
    assert there.diagnostics == here.diagnostics
    assert there.diagnostics, "the broken file is reported"
    assert there.tree.unloaded == {"flags.d/vc_broken.yaml"}
    flag = there.tree.manifests[0].source
    assert flag._document is None, "the text is not kept"
    assert flag.at(("description",)).line > 1, "and is read again to say where"


def test_a_process_with_threads_loads_here_not_in_forked_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import threading

    from reconciler import loader
    from tests.conftest import REPO_ROOT

    shutil.copytree(REPO_ROOT / "flags.d", tmp_path / "flags.d")
    monkeypatch.setattr(loader, "PARALLEL_FROM", 1)
    monkeypatch.setenv("RECONCILER_WORKERS", "2")

    def refused(*args: object, **kwargs: object) -> object:
        raise AssertionError("forked while another thread runs")

    monkeypatch.setattr(loader, "ProcessPoolExecutor", refused)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        loaded = load_tree(tmp_path)
    finally:
        stop.set()
        thread.join()
    assert len(loaded.tree.manifests) == 2


DYING = """
import os, sys
from pathlib import Path
from reconciler.loader import map_files

parent = os.getpid()


def job(path, relative, root):
    if os.getpid() != parent and relative == "f/0":
        os._exit(9)  # a worker killed, as the out-of-memory killer would
    return relative


try:
    map_files(job, Path("."), [(Path("x"), f"f/{n}") for n in range(4000)])
except Exception as exc:
    print(type(exc).__name__)
    sys.exit(3)
print("no error")
"""


def test_a_worker_that_dies_ends_the_command_not_hangs_it() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "RECONCILER_WORKERS": "2"}
    for _ in range(3):  # the hang this guards against came one run in two
        done = subprocess.run(
            [sys.executable, "-c", DYING],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stdout.strip()) == (3, "BrokenProcessPool")
