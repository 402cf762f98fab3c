"""Grow a copy of the repository's own manifests to about N flags, for scale runs.

Each flag is cloned as ``<flag>_gNNNNN``, and the experiments and rollout strategies that name
it are cloned with it (``<id>_gNNNNN``), every name inside a clone renamed consistently, so the
grown tree follows whatever the schemas hold today and stays valid. Cost thresholds are copied
as they are. ``python -m bench.grow ROOT N`` writes the tree under ROOT.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPENDENTS = {"experiments.d": "experiment_id", "rollouts.d": "strategy_name"}


def _documents(folder: Path) -> list[tuple[Path, dict[str, object]]]:
    found = []
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        if isinstance(data, dict):
            found.append((path, data))
    return found


def grow(root: Path, flags: int, source: Path = REPO_ROOT) -> dict[str, int]:
    """The tree under ``root`` (created): the repository's manifests, and each example flag
    cloned ``flags // examples`` times with its dependents (the tree of the scale issue: 10,000
    gives 20,005 files). Returns the number of files by folder."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in ("flags.d", "experiments.d", "rollouts.d", "costs.d"):
        shutil.copytree(source / folder, root / folder, dirs_exist_ok=True)
    shutil.copy(source / "reconciler.toml", root / "reconciler.toml")
    examples = _documents(source / "flags.d")
    dependents: dict[str, list[tuple[Path, str]]] = {}
    for folder, key in DEPENDENTS.items():
        for path, data in _documents(source / folder):
            dependents.setdefault(str(data.get("feature_flag")), []).append((path, str(data[key])))
    per_flag = max(1, flags // len(examples))
    for path, data in examples:
        flag = str(data["flag_name"])
        files = [(path, flag), *dependents.get(flag, [])]
        names = sorted((name for _, name in files), key=len, reverse=True)
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
        texts = {file: file.read_text() for file, _ in files}
        for i in range(per_flag):
            suffix = f"_g{i:05d}"
            for file, own in files:
                target = root / file.parent.name / f"{own}{suffix}{file.suffix}"
                target.write_text(pattern.sub(rf"\g<1>{suffix}", texts[file]))
    return {folder.name: len(list(folder.glob("*.yaml"))) for folder in sorted(root.glob("*.d"))}


def main() -> None:
    counts = grow(Path(sys.argv[1]), int(sys.argv[2]))
    print(", ".join(f"{n:,} in {folder}" for folder, n in counts.items()))


if __name__ == "__main__":
    main()
