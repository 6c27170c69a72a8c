"""A headless Chromium for page tests: Debian's `chromium` driven by Playwright for Python.

The browser is the distribution's binary (`CHROMIUM`, else /usr/bin/chromium), handed to
Playwright as `executable_path`; Playwright's own browser download is never used (it cannot
run at install time here). Screenshots go to `tests/screenshots/` (git-ignored) unless a test
names another place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

SCREENSHOTS = Path(__file__).parent / "screenshots"


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise RuntimeError(
            "page tests need Debian's chromium: apt-get install chromium (or set CHROMIUM)"
        )
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            launched.close()
