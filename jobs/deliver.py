from __future__ import annotations

from bridge.delivery.deliver import deliver
from bridge.services import current


def deliver_shop(shop: str) -> None:
    """Send one shop's outbox to Pipelines in /v1/batch requests."""
    deliver(current(), shop)
