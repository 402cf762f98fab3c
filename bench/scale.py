"""Benchmark: the control plane on trees grown from the repository's manifests (``bench.grow``).

    python -m bench.scale [--sizes 1000,10000,30000] [--repeat 1]

For each size, the commands as a user runs them, each a process of its own on the local store:
``reconcile --validate``, ``--plan`` on an empty store, ``--apply --yes``, and ``--plan`` with
nothing to change; wall time and peak memory of each. The floor is merely loading the same
files with PyYAML's C loader (``yaml.load(..., Loader=yaml.CSafeLoader)``), also in a process of
its own, in the same run: the ratios to it are what the targets are about (this machine is
noisy; a ratio holds where seconds do not). Targets at 10,000 flags: validate at most 1.0x the
floor, a no-change plan at most 1.5x, peak memory at most 200 MiB, and the time per manifest
flat (within 20%) from 1,000 to 30,000 flags (less the command's own start, measured as
``reconcile --version``). Peak memory is that of the largest process (workers included, each
counted alone). The commands share large trees between their own process and a worker per
further core, the floor reads in one process: the ratios depend on the machine's cores (here
2), and on what else runs on them (another busy process slows two processes more than one).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.grow import grow

FLOOR = """
import sys, yaml
from pathlib import Path
for folder in ("flags.d", "experiments.d", "rollouts.d", "costs.d"):
    for path in sorted(Path(sys.argv[1], folder).glob("*.yaml")):
        yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_mib: float
    code: int


def run(command: list[str], env: dict[str, str], cwd: Path) -> Run:
    """One process: its wall time and its peak resident memory (from wait4)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=out)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode not in (0, 2):
            out.seek(0)
            sys.stderr.write(out.read().decode(errors="replace")[-2000:])
            raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return Run(seconds, usage.ru_maxrss / 1024, process.returncode)


def measure(size: int, repeat: int) -> tuple[int, dict[str, Run]]:
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "tree"
        files = sum(grow(root, size).values())
        env = {**os.environ, "RECONCILER_STATE_PATH": str(Path(work) / "state.db")}
        env.pop("RECONCILER_STORE", None)
        reconcile = [sys.executable, "-c", "from reconciler.cli.reconcile import main; main()"]
        steps = {
            "start": [*reconcile, "--version"],  # the command's own start: imports, no files
            "floor": [sys.executable, "-c", FLOOR, str(root)],
            "validate": [*reconcile, "--validate", str(root)],
            "plan (empty store)": [*reconcile, "--plan", str(root)],
            "apply": [*reconcile, "--apply", "--yes", str(root)],
            "plan (no change)": [*reconcile, "--plan", str(root)],
        }
        results: dict[str, Run] = {}
        for name, command in steps.items():
            if name in ("apply", "plan (empty store)"):
                results[name] = run(command, env, root)  # each changes what the next sees
                continue
            best = min((run(command, env, root) for _ in range(repeat)), key=lambda r: r.seconds)
            results[name] = best
        return files, results


def _cell(results: dict[str, Run], name: str) -> str:
    seconds, floor = results[name].seconds, results["floor"].seconds
    return f"{seconds:.1f} s ({seconds / floor:.1f}x, {results[name].peak_mib:.0f} MiB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,30000")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the read-only steps")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        "| flags | files | floor | validate | plan, empty store | apply | no-change plan "
        "| peak memory | validate per file |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    per_file: list[float] = []
    for size in sizes:
        files, results = measure(size, args.repeat)
        floor = results["floor"].seconds

        peak = max(r.peak_mib for name, r in results.items() if name not in ("floor", "start"))
        started = results["start"].seconds
        per_file.append((results["validate"].seconds - started) / files * 1e6)
        print(
            f"| {size:,} | {files:,} | {floor:.1f} s | {_cell(results, 'validate')} | "
            f"{_cell(results, 'plan (empty store)')} | {_cell(results, 'apply')} | "
            f"{_cell(results, 'plan (no change)')} | "
            f"{peak:.0f} MiB | {per_file[-1]:.0f} µs |",
            flush=True,
        )
    if len(per_file) > 1:
        spread = max(per_file) / min(per_file) - 1
        print(
            f"validate per file, less the command's start ({started:.2f} s): within "
            f"{spread:.0%} from the smallest tree to the largest (target: 20%)"
        )


if __name__ == "__main__":
    main()
