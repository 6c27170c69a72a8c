"""Processing rules for tests, built the way production builds them (ProcessConfig, from the
Settings defaults), so a test never restates a default."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bridge.canonical import MapContext
from bridge.worker.processor import ProcessConfig


def map_context(shop: str, *, triggered_at: datetime | None = None, **rules: Any) -> MapContext:
    """The MapContext of the default rules with `rules` changed (field names of ProcessConfig,
    which match MapContext's)."""
    return ProcessConfig.defaults(**rules).map_context(shop, triggered_at)
