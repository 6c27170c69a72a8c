"""Fixtures shared by the integration tests of `bridge backfill` and `bridge reconcile`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bridge.config.settings import Settings
from tests.conftest import SHOP, service_env
from tests.shopify_admin_standin import TOKEN, AdminStandIn


@pytest.fixture
def env(
    settings: Settings, admin: AdminStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """The environment of an operator running the CLI against the stand-ins (each test module
    provides its own `admin` stand-in with the orders it needs). Bulk exports download into
    the test's own directory: stand-ins number their operations alike."""
    values = service_env(
        settings,
        SHOPIFY_SHOP=SHOP,
        SHOPIFY_ADMIN_TOKEN=TOKEN,
        SHOPIFY_ADMIN_URL=admin.url,
        LOG_LEVEL="ERROR",
        TMPDIR=str(tmp_path),
    )
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values
