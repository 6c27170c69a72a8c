from __future__ import annotations

from bridge.drain import drain
from bridge.runtime import runtime


def drain_shop(shop: str) -> None:
    """Map and resolve queued webhooks of one shop into outbox calls."""
    drain(runtime(), shop)
