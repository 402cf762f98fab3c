"""What git says about the tree: the commit a plan is made from."""

from __future__ import annotations

import subprocess
from pathlib import Path

MANIFEST_PATHS = ("flags.d", "experiments.d", "rollouts.d", "costs.d", "reconciler.toml")


def _git(root: Path, *args: str) -> str | None:
    """git's output, or None outside a work tree or without git."""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def head_commit(root: Path) -> str | None:
    """The commit checked out at ``root``, or None outside a git work tree."""
    return _git(root, "rev-parse", "HEAD") or None


def has_uncommitted_manifests(root: Path) -> bool:
    """True when the manifest folders differ from the commit (a plan of work in progress)."""
    return bool(_git(root, "status", "--porcelain", "--", *MANIFEST_PATHS))
