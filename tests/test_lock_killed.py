"""A killed apply's lock frees itself: its heartbeat dies with it, the lease runs out, and the
next apply proceeds without --force-unlock.

The apply is the real ``reconcile --apply --yes`` in a child process, made slow by a pause
injected at the store edge after its first group (groups of 2 records), then killed with
SIGKILL: no ``finally``, no release. The lease is 4 s (``RECONCILER_LEASE_SECONDS``) so the
test runs in seconds; the default is 60 s, renewed every 15 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.apply import LEASE_SECONDS, Lease
from reconciler.cli.boundary import run
from reconciler.cli.reconcile import reconcile
from reconciler.state.local import LocalStore
from reconciler.state.records import Lock, RecordKind
from tests.conftest import REPO_ROOT

LEASE = 4.0

CHILD = textwrap.dedent(
    """
    import sys, time
    from reconciler.state.local import LocalStore

    written = LocalStore.apply_writes

    def slow(self, *args, **kwargs):
        written(self, *args, **kwargs)
        time.sleep(600)  # the first group landed; the apply hangs here until killed

    LocalStore.apply_writes = slow
    LocalStore.max_group_size = 2
    from reconciler.cli.boundary import run
    from reconciler.cli.reconcile import reconcile
    sys.exit(run(reconcile, sys.argv[1:]))
    """
)


def invoke(*args: str) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        code = run(reconcile, list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def records(store: LocalStore) -> int:
    return sum(len(store.read_records(kind)) for kind in RecordKind)


def wait_for_renewed_lease(store: LocalStore, child: subprocess.Popen[bytes], log: Path) -> Lock:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert child.poll() is None, log.read_text()
        lock = store.read_lock()
        if lock is not None and lock.renewed_at and records(store) == 2:
            return lock
        time.sleep(0.05)
    raise AssertionError("the child never held a renewed lease after its first group")


def test_the_default_lease_is_a_minute_renewed_every_15_seconds() -> None:
    assert LEASE_SECONDS == 60
    lease = Lease(None, "h", "r", seconds=LEASE_SECONDS, now=lambda: None)  # type: ignore[arg-type]
    assert lease.renew_every == 15


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_apply_frees_its_lock_within_its_lease(
    example_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_LEASE_SECONDS", str(LEASE))
    monkeypatch.delenv("RECONCILER_STORE", raising=False)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    root = str(example_tree)
    log = tmp_path / "child.log"
    with log.open("wb") as output:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, "--apply", root, "--yes", "--store", "local"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    store = LocalStore(example_tree / ".reconciler" / "state.db")
    try:
        held = wait_for_renewed_lease(store, child, log)
        assert f"pid {child.pid} " in held.holder
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        killed = time.monotonic()
        assert child.returncode == -signal.SIGKILL

        code, out, err = invoke("--apply", root, "--yes", "--store", "local")
        assert code == 1, "the dead apply's lease has not run out yet"
        assert f"another apply holds the lock: {held.holder} (apply plan " in err
        assert "last renewed at" in err
        assert "its lease runs out at" in err
        assert "if it died, the lease runs out by itself" in err

        while True:
            code, out, err = invoke("--apply", root, "--yes", "--store", "local")
            if code == 0 or time.monotonic() - killed > 3 * LEASE:
                break
            assert "another apply holds the lock" in err, err
            time.sleep(0.2)
        freed = time.monotonic() - killed
        assert code == 0, err
        assert freed <= LEASE + 1.5, f"took {freed:.1f} s after the kill"
        assert "Apply complete: 3 written" in out, out
        assert store.read_lock() is None
        assert store.read_audit("lock/reconcile") == [], "no --force-unlock was needed"
        assert len(store.read_audit(limit=100)) == 5, "each change audited once"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        store.close()
