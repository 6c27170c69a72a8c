from __future__ import annotations

from bridge.services import current
from bridge.worker.drain import drain


def drain_shop(shop: str) -> None:
    """Map and resolve queued webhooks of one shop into outbox calls."""
    drain(current(), shop)
