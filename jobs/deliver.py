from __future__ import annotations

from bridge.delivery import deliver
from bridge.runtime import runtime


def deliver_shop(shop: str) -> None:
    """Send one shop's outbox to Pipelines in /v1/batch requests."""
    deliver(runtime(), shop)
