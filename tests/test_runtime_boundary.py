"""The runtime library stands alone: a service can depend on it without the control plane."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

CONTROL_PLANE = ("click", "jsonschema", "deepdiff", "pydantic", "yaml", "boto3", "scipy", "numpy")
PROBE = """
import json, sys
import reconciler.runtime.decision, reconciler.runtime.evaluate, reconciler.runtime.snapshot
outside = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {control_plane!r}
    or (name.startswith("reconciler.") and not name.startswith("reconciler.runtime"))
)
print(json.dumps(outside))
"""


def test_runtime_imports_nothing_of_the_control_plane() -> None:
    code = PROBE.format(control_plane=CONTROL_PLANE)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert json.loads(result.stdout) == []
