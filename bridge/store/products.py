"""What the product sync keeps outside shop state: the refresh's watermark and the pass under
way (products/sync.py).

The product cache itself is shop state, written only by the drain; these are the sweep's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import redis

from bridge.store.keys import Keys

# The watermark outlives any refresh interval; a lost one only restarts the refresh from now.
WATERMARK_TTL_S = 30 * 86_400
# A pass left this long is dropped: the next refresh starts a pass from the watermark.
PASS_TTL_S = 7 * 86_400
MAX_CURSOR_CHARS = 1000


@dataclass(frozen=True)
class RefreshPass:
    """A refresh pass under way: its search (`updated_at` after `since`), the cursor its next
    page starts after, and the newest `updatedAt` read so far (the watermark once it ends)."""

    since: str
    after: str
    newest: str


class ProductSync:
    """The refresh state of one shop: the watermark (an ISO time, the newest `updatedAt` of the
    last finished pass) and the pass under way, if any."""

    def __init__(self, client: redis.Redis[bytes], shop: str) -> None:
        self.redis = client
        keys = Keys(shop)
        self.key = keys.product_sync
        self.pass_key = keys.product_sync_pass

    def watermark(self) -> str | None:
        raw = self.redis.get(self.key)
        return raw.decode() if raw else None

    def set_watermark(self, value: str) -> None:
        self.redis.set(self.key, value, ex=WATERMARK_TTL_S)

    def saved_pass(self) -> RefreshPass | None:
        """The pass under way; None when there is none or it is unreadable."""
        raw = self.redis.get(self.pass_key)
        try:
            rec = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(rec, dict):
            return None
        fields = (rec.get("since"), rec.get("after"), rec.get("newest"))
        if not all(isinstance(f, str) and f for f in fields[:2]) or not isinstance(fields[2], str):
            return None
        return RefreshPass(since=rec["since"], after=rec["after"], newest=rec["newest"])

    def save_pass(self, state: RefreshPass) -> None:
        if len(state.after) > MAX_CURSOR_CHARS:
            self.drop_pass()  # not a cursor worth keeping: the pass starts again
            return
        rec = {"since": state.since, "after": state.after, "newest": state.newest}
        self.redis.set(self.pass_key, orjson.dumps(rec), ex=PASS_TTL_S)

    def drop_pass(self) -> None:
        self.redis.delete(self.pass_key)
