"""Headless Chromium for the dashboard's tests and screenshots: Debian's ``chromium`` driven by
Playwright (``playwright`` from PyPI, no browser download), on loopback only.

    python -m tests.browser docs/screenshots    # the README's screenshots, from the examples

The screenshots are of the repository's example manifests applied to a fresh local store,
with a day of recorded spend and one shutdown, served by ``breakglass serve``'s application.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As the machine's notes say: no network of its own (this machine's is closed), a new profile.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def available() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@contextmanager
def page() -> Iterator[Any]:
    """A fresh browser page, closed after."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def screenshots(out: Path) -> list[Path]:
    """Each dashboard page of the example deployment, as PNG files in ``out``."""
    from reconciler import breakglass as core
    from reconciler.runtime.client import FlagClient
    from reconciler.runtime.sources import SQLiteSource
    from reconciler.server.app import ApiSettings, BearerToken, create_app
    from reconciler.server.local import serving
    from reconciler.state.local import LocalStore
    from tests.test_apply import apply, desired, plan

    token = "screenshot-token-0123456789"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "state.db"
        store = LocalStore(path)
        apply(store, plan(store, desired()))
        with FlagClient(SQLiteSource(path), background=False) as flags:
            for n in range(1_500):
                flags.record_request_cost("vc_analysis", 1500, 0.08, {"user_id": f"u-{n % 50}"})
            flags.flush()
        core.shutdown(
            store,
            ["ai_model_selection"],
            reason="answers in the wrong language, INC-4211",
            by="ana (dashboard)",
            expires_at=None,
            now=core.datetime.now(core.UTC),
        )
        settings = ApiSettings(lambda: LocalStore(path), BearerToken(lambda: token))
        written = []
        with serving(create_app(settings)) as port, page() as tab:
            base = f"http://127.0.0.1:{port}"
            tab.set_viewport_size({"width": 1100, "height": 900})
            tab.goto(f"{base}/dashboard")
            tab.fill("input[name=token]", token)
            with tab.expect_navigation():
                tab.click("button:has-text('Sign in')")
            for name, url in (("dashboard", "/dashboard"), ("audit", "/dashboard/audit")):
                tab.goto(base + url)
                target = out / f"{name}.png"
                tab.screenshot(path=str(target), full_page=True)
                written.append(target)
        store.close()
    return written


if __name__ == "__main__":
    for written in screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")):
        print(written)
