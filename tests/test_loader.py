"""The tree loader: which files it reads, and that no file content can make it raise."""

from __future__ import annotations

import json
from pathlib import Path

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
