"""What the product sync keeps outside shop state: the refresh's watermark (products/sync.py).

The product cache itself is shop state, written only by the drain; this is the sweep's own.
"""

from __future__ import annotations

import redis

from bridge.store.keys import Keys

# The watermark outlives any refresh interval; a lost one only restarts the refresh from now.
WATERMARK_TTL_S = 30 * 86_400


class ProductSync:
    """The refresh watermark of one shop (an ISO time, the newest `updatedAt` read)."""

    def __init__(self, client: redis.Redis[bytes], shop: str) -> None:
        self.redis = client
        self.key = Keys(shop).product_sync

    def watermark(self) -> str | None:
        raw = self.redis.get(self.key)
        return raw.decode() if raw else None

    def set_watermark(self, value: str) -> None:
        self.redis.set(self.key, value, ex=WATERMARK_TTL_S)
