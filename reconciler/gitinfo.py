"""What git says about the tree: the commit a plan is made from."""

from __future__ import annotations

import subprocess
from pathlib import Path

MANIFEST_PATHS = ("flags.d", "experiments.d", "rollouts.d", "costs.d", "reconciler.toml")


def head_commit(root: Path) -> str | None:
    """The commit checked out at ``root``, or None outside a git work tree."""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def has_uncommitted_manifests(root: Path) -> bool:
    """True when the manifest folders differ from the commit (a plan of work in progress)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", *MANIFEST_PATHS],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())
