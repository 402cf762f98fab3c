"""The Lambda artifact: one zip for both functions, built reproducibly.

The project's runtime dependencies and the ``server`` extra's (Starlette, uvicorn, Mangum) are
installed by pip for Lambda's platform (python3.11, manylinux2014_x86_64, binary wheels only,
no bytecode), at the versions installed where it is built (``pins``), then the ``reconciler``
package is copied in. Entries are sorted, every entry has
the same timestamp and a mode that depends only on whether the file is executable, and what pip
writes about the machine it ran on (console scripts with this machine's interpreter path, the
RECORD that hashes them, INSTALLER) is left out: the same resolved packages and the same code
give the same bytes, so the same content hash, which is the artifact's S3 key.
"""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from reconciler.errors import UserError

SOURCE_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = SOURCE_ROOT / "reconciler"
PLATFORM = "manylinux2014_x86_64"
PYTHON_VERSION = "3.11"
EXTRA = "server"
# Lambda refuses a function whose code unzipped is larger than this.
MAX_UNZIPPED = 262_144_000
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say
SCRIPTS_DIR = "bin"  # pip's console scripts, at the top of the target
LEFT_OUT_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


class ArtifactError(UserError):
    """The artifact cannot be built, or is not one Lambda takes."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    unzipped_bytes: int

    @property
    def key(self) -> str:
        """Its S3 key: the content hash."""
        return f"lambda/{self.sha256}.zip"


def requirements(pyproject: Path = SOURCE_ROOT / "pyproject.toml") -> list[str]:
    """The runtime dependencies and the server extra's, as pyproject.toml declares them."""
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ArtifactError(
            f"cannot read the dependencies from {pyproject} ({exc}): build the artifact from a "
            "source checkout of the repository, or pass --artifact"
        ) from None
    extra = project.get("optional-dependencies", {}).get(EXTRA, [])
    return [str(r) for r in [*project.get("dependencies", []), *extra]]


_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def pins(requires: Sequence[str]) -> list[str]:
    """``name==version`` for every distribution the requirements need, as installed here: the
    artifact holds the versions this environment runs (and was tested with), and building it
    again gives the same bytes, whatever PyPI has published since. Requirements that apply only
    with an extra are not followed; ones not installed here are left to pip."""
    pinned: dict[str, str] = {}
    todo = [_canonical(r) for r in requires]
    while todo:
        name = todo.pop()
        if not name or name in pinned:
            continue
        try:
            found = distribution(name)
        except PackageNotFoundError:
            continue
        pinned[name] = found.version
        for requirement in found.requires or ():
            if "extra ==" not in requirement.replace('"', "").replace("'", ""):
                todo.append(_canonical(requirement))
    return [f"{name}=={version}" for name, version in sorted(pinned.items())]


def _canonical(requirement: str) -> str:
    match = _NAME.match(requirement)
    return re.sub(r"[-_.]+", "-", match[1]).lower() if match else ""


def pip_command(
    target: Path, requires: Sequence[str], constraints: Path | None = None
) -> list[str]:
    pinned = ["--constraint", str(constraints)] if constraints is not None else []
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(target),
        "--platform",
        PLATFORM,
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--only-binary=:all:",
        "--no-compile",
        *pinned,
        *requires,
    ]


def _install(target: Path, requires: Sequence[str]) -> None:
    constraints = target.parent / "constraints.txt"
    constraints.write_text("".join(f"{pin}\n" for pin in pins(requires)))
    try:
        subprocess.run(pip_command(target, requires, constraints), check=True)
    except subprocess.CalledProcessError as exc:
        raise ArtifactError(
            f"pip could not install the dependencies for Lambda (exit {exc.returncode}); "
            "see its output above"
        ) from None


def _files(root: Path, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """(name in the zip, file) for every file under ``root`` that goes into the artifact."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_dir() or relative.parts[0] == SCRIPTS_DIR:
            continue
        if "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        if path.name in LEFT_OUT_FILES and path.parent.name.endswith(".dist-info"):
            continue
        yield prefix + relative.as_posix(), path


def write_zip(trees: Sequence[tuple[Path, str]], out: Path) -> Artifact:
    """Zip the files under each (directory, prefix in the zip), reproducibly."""
    entries = sorted(entry for root, prefix in trees for entry in _files(root, prefix))
    names = [name for name, _ in entries]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ArtifactError(f"the artifact would hold these twice: {', '.join(twice[:5])}")
    total = 0
    with zipfile.ZipFile(out, "w") as archive:
        for name, path in entries:
            data = path.read_bytes()
            total += len(data)
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix: the mode below is read
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            archive.writestr(info, data, compresslevel=9)
    if total > MAX_UNZIPPED:
        raise ArtifactError(
            f"the artifact is {total:,} bytes unzipped, more than Lambda's {MAX_UNZIPPED:,}"
        )
    return Artifact(out, file_sha256(out), total)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_artifact(out: Path) -> Artifact:
    """Install the dependencies for Lambda, add the package, zip it all to ``out``."""
    requires = requirements()
    with tempfile.TemporaryDirectory(prefix="reconciler-artifact-") as work:
        target = Path(work) / "site-packages"
        _install(target, requires)
        if (target / "reconciler").exists():
            raise ArtifactError("pip installed a reconciler package of its own; not mixing two")
        return write_zip([(target, ""), (PACKAGE, "reconciler/")], out)


def existing_artifact(path: Path) -> Artifact:
    """A zip built before (``--artifact``): its hash and size, checked to be a zip."""
    if not zipfile.is_zipfile(path):
        raise ArtifactError(f"{path} is not a zip file")
    with zipfile.ZipFile(path) as archive:
        total = sum(info.file_size for info in archive.infolist())
        if not any(name.startswith("reconciler/") for name in archive.namelist()):
            raise ArtifactError(f"{path} holds no reconciler package: not this project's artifact")
    if total > MAX_UNZIPPED:
        raise ArtifactError(f"{path} is {total:,} bytes unzipped, more than Lambda's limit")
    return Artifact(path, file_sha256(path), total)
