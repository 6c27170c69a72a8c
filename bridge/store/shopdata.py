"""Every key of one shop, walked generically: what compliance/erasure.py erases and exports.

The erasure decides what names a customer; this module lists the shop's keys and values by type
and removes exactly the keys, list entries, fields and members it is given.

On a Redis Cluster (DATA_REDIS_URL) SCAN walks every master (redis-py's cluster client), so a
shop's keys are all found while its slot migrates, some on the source and some on the target;
keys are then read and removed one per command (pipelined), each following its own redirection,
since a command naming keys on both sides would be refused (TRYAGAIN) until the migration ends.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence

import redis

from bridge.store.cluster import is_cluster
from bridge.store.keys import ERASED_SHOPS_KEY, SHOPS_KEY, Keys

# Keys are listed a page of SCAN at a time, and written in chunks of this many.
PAGE = 1000
CHUNK = 500


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class ShopData:
    """A shop's records by key over one Redis client. Raises redis errors."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.redis = client
        self.cluster = is_cluster(client)

    def _mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not self.cluster:
            return list(self.redis.mget(keys))
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return list(pipe.execute())

    def _unlink(self, keys: Sequence[bytes]) -> int:
        if not self.cluster:
            return int(self.redis.unlink(*keys))
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        return sum(int(n) for n in pipe.execute())

    def keys(self, shop: str) -> Iterator[bytes]:
        """Every key of the shop (SCAN: a key written meanwhile may or may not be listed)."""
        yield from self.redis.scan_iter(match=_glob_escape(Keys(shop).prefix) + "*", count=PAGE)

    def records(self, shop: str) -> Iterator[tuple[bytes, str, bytes | None]]:
        """(key, type, value for strings) for every key of the shop, pipelined per SCAN page."""
        page: list[bytes] = []

        def flush() -> Iterator[tuple[bytes, str, bytes | None]]:
            pipe = self.redis.pipeline(transaction=False)
            for key in page:
                pipe.type(key)
            kinds = [k.decode() for k in pipe.execute()]
            strings = [key for key, kind in zip(page, kinds, strict=True) if kind == "string"]
            values = dict(zip(strings, self._mget(strings), strict=True)) if strings else {}
            for key, kind in zip(page, kinds, strict=True):
                yield key, kind, values.get(key)

        for key in self.keys(shop):
            page.append(key)
            if len(page) >= PAGE:
                yield from flush()
                page = []
        if page:
            yield from flush()

    def list_entries(self, key: bytes) -> list[bytes]:
        return list(self.redis.lrange(key, 0, -1))

    def remove_list_entry(self, key: bytes, entry: bytes) -> int:
        """Remove every occurrence of `entry` (atomic per entry); returns how many."""
        return int(self.redis.lrem(key, 0, entry))

    def hash_fields(self, key: bytes) -> dict[bytes, bytes]:
        return self.redis.hgetall(key)

    def remove_hash_fields(self, key: bytes, fields: Sequence[bytes]) -> int:
        return int(self.redis.hdel(key, *fields))

    def set_members(self, key: bytes) -> set[bytes]:
        return set(self.redis.smembers(key))

    def remove_set_members(self, key: bytes, members: Sequence[bytes]) -> int:
        return int(self.redis.srem(key, *members))

    def zset_members(self, key: bytes) -> list[bytes]:
        return list(self.redis.zrange(key, 0, -1))

    def remove_zset_members(self, key: bytes, members: Sequence[bytes]) -> int:
        return int(self.redis.zrem(key, *members))

    def unlink(self, keys: Sequence[bytes]) -> int:
        """Remove `keys`, in chunks; returns how many existed."""
        n = 0
        for i in range(0, len(keys), CHUNK):
            n += self._unlink(keys[i : i + CHUNK])
        return n

    def erase_shop(self, shop: str, keep: Collection[str] = ()) -> int:
        """Unlink every key of the shop but `keep` and forget the shop; returns the keys
        removed."""
        n = 0
        batch: list[bytes] = []
        kept = {key.encode() for key in keep}
        for key in self.keys(shop):
            if key in kept:
                continue
            batch.append(key)
            if len(batch) >= CHUNK:
                n += self._unlink(batch)
                batch = []
        if batch:
            n += self._unlink(batch)
        self.redis.srem(SHOPS_KEY, shop)
        return n

    def erase_counters(self, shop: str) -> int:
        """Unlink the shop's counters only (stats, volume and webhook-chart buckets, the
        volume check's last-seen times: what a worker's tally writes, store/tally.py); returns
        the keys removed."""
        k = Keys(shop)
        counters = tuple(
            (k.prefix + tail).encode()
            for tail in ("stats", "vol5m:", "vol1h:", "ops:wh", "lastseen")
        )
        found = [key for key in self.keys(shop) if key.startswith(counters)]
        return self._unlink(found) if found else 0

    def note_erased(self, shop: str, at_ms: int) -> None:
        """Remember that the shop was erased at `at_ms` (see `recently_erased`)."""
        self.redis.zadd(ERASED_SHOPS_KEY, {shop: at_ms})

    def recently_erased(self, since_ms: int) -> list[str]:
        """Shops erased since `since_ms`; those erased before are forgotten."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(ERASED_SHOPS_KEY, "-inf", f"({since_ms}")
        pipe.zrange(ERASED_SHOPS_KEY, 0, -1)
        return [shop.decode() for shop in pipe.execute()[1]]

    def save_export(self, shop: str, request_id: str, export: bytes, ttl_s: int) -> str:
        """Keep a customer export for `ttl_s` under the request's id; returns its key."""
        key = Keys(shop).export(request_id)
        self.redis.set(key, export, ex=ttl_s)
        return key

    def exports(self, shop: str) -> Iterator[bytes]:
        """The shop's recorded customer exports, by key (one that expires meanwhile is left
        out)."""
        pattern = Keys(shop).exports.replace("[", "\\[") + "*"
        for key in sorted(self.redis.scan_iter(match=pattern, count=PAGE)):
            raw = self.redis.get(key)
            if raw is not None:
                yield raw
