from __future__ import annotations

from bridge.delivery.deliver import deliver
from bridge.services import runtime


def deliver_shop(shop: str) -> None:
    """Send one shop's outbox to Pipelines in /v1/batch requests."""
    deliver(runtime(), shop)
