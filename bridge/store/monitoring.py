"""What the volume check (monitoring/monitor.py) and /metrics (web/metrics.py) read and write.

Volume buckets are hashes of bucket start (epoch s) -> count per key event, written by the
drain's commit (monitoring/volume.py `record`); alert state is a hash `{event}:{kind}` -> JSON.
The callers decide; this module only moves the values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import redis

from bridge.store.keys import CHECK_LAST_RUN_KEY, REJECTED_KEY, SHOPS_KEY, Keys
from bridge.store.ops import ALERT_HISTORY_SIZE


class VolumeReadings(NamedTuple):
    """One shop's raw volume history: per event (fine buckets, coarse buckets), in the order
    asked, and the shop's last-seen times (event -> epoch ms)."""

    buckets: list[tuple[dict[bytes, bytes], dict[bytes, bytes]]]
    last_seen: dict[bytes, bytes]


class ShopReadings(NamedTuple):
    """What /metrics shows of one shop, as Redis answered."""

    stats: dict[bytes, bytes]
    inbound: int
    inbound_work: int
    outbox: int
    outbox_work: int
    dead_letters: int
    paused: int
    last_seen: dict[bytes, bytes]
    alerts: dict[bytes, bytes]
    gauges: dict[bytes, bytes]


class MonitorStore:
    """Volume history, alert state and the metrics' reads over one Redis client. Raises redis
    errors."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.redis = client

    # --- the volume check ---------------------------------------------------------------------
    def volume(self, shop: str, events: Sequence[str]) -> VolumeReadings:
        """Every event's buckets and the shop's last-seen times, in one round trip."""
        k = Keys(shop)
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.hgetall(k.volume_fine(event))
            pipe.hgetall(k.volume_coarse(event))
        pipe.hgetall(k.last_seen)
        replies = pipe.execute()
        pairs = [(replies[2 * i], replies[2 * i + 1]) for i in range(len(events))]
        return VolumeReadings(pairs, replies[-1])

    def drop_buckets(
        self,
        shop: str,
        fine: Mapping[str, Sequence[str]],
        coarse: Mapping[str, Sequence[str]],
    ) -> None:
        """Delete the given bucket fields (event -> bucket starts), in one round trip; events
        in either mapping are written in the order of `fine`, each fine before coarse."""
        k = Keys(shop)
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for event in dict.fromkeys([*fine, *coarse]):
            if fine.get(event):
                pipe.hdel(k.volume_fine(event), *fine[event])
                n += 1
            if coarse.get(event):
                pipe.hdel(k.volume_coarse(event), *coarse[event])
                n += 1
        if n:
            pipe.execute()

    def alert_state(self, shop: str) -> dict[bytes, bytes]:
        """The shop's alert state: `{event}:{kind}` -> JSON (since, sent)."""
        return self.redis.hgetall(Keys(shop).alerts)

    def record_check(
        self,
        shop: str,
        gauges: Mapping[str, Mapping[str, float]],
        raised: Mapping[str, bytes],
        cleared: Sequence[str],
        ended: Sequence[bytes] = (),
    ) -> None:
        """Write one shop's check outcome in one round trip: each event's gauges (field ->
        value), the state of alerts sent (`{event}:{kind}` -> JSON) and of alerts cleared,
        and the cleared alerts' periods (JSON) into the ops console's alert history."""
        k = Keys(shop)
        pipe = self.redis.pipeline(transaction=False)
        for mapping in gauges.values():
            pipe.hset(k.volume_gauges, mapping=dict(mapping))  # type: ignore[arg-type]
        for name, value in raised.items():
            pipe.hset(k.alerts, name, value)
        for name in cleared:
            pipe.hdel(k.alerts, name)
        if ended:
            pipe.lpush(k.alert_history, *ended)
            pipe.ltrim(k.alert_history, 0, ALERT_HISTORY_SIZE - 1)
        pipe.execute()

    def set_last_run(self, at_ms: int) -> None:
        """When the check last completed (epoch ms)."""
        self.redis.set(CHECK_LAST_RUN_KEY, at_ms)

    def last_run_ms(self) -> int | None:
        """When the check last completed (epoch ms), None before the first run."""
        raw = self.redis.get(CHECK_LAST_RUN_KEY)
        return None if raw is None else int(raw)

    # --- /metrics ---------------------------------------------------------------------------
    def totals(self) -> tuple[set[str], dict[bytes, bytes]]:
        """The shops seen and the counters of rejections naming unknown shops."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(SHOPS_KEY)
        pipe.hgetall(REJECTED_KEY)
        seen_raw, rejected_raw = pipe.execute()
        return {s.decode() for s in seen_raw}, rejected_raw

    def shops(self, shops: Sequence[str]) -> list[ShopReadings]:
        """What /metrics shows of each of `shops`, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for shop in shops:
            k = Keys(shop)
            pipe.hgetall(k.stats)
            pipe.llen(k.inbound)
            pipe.llen(k.inbound_work)
            pipe.llen(k.outbox)
            pipe.llen(k.outbox_work)
            pipe.hlen(k.dlq)
            pipe.exists(k.paused)
            pipe.hgetall(k.last_seen)
            pipe.hgetall(k.alerts)
            pipe.hgetall(k.volume_gauges)
        replies = pipe.execute()
        return [ShopReadings(*replies[10 * j : 10 * j + 10]) for j in range(len(shops))]
