"""What a backfill keeps in Redis: its checkpoint, and the product types it looked up.

backfill/run.py decides what to keep; these classes only read and write it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import redis

from bridge.store.keys import Keys


class ProductTypeCache:
    """Product id -> product type, cached in a Redis hash (`cb:{shop}:product_types`, 30 days)."""

    TTL_S = 30 * 86_400

    def __init__(
        self,
        client: redis.Redis[bytes],
        shop: str,
        fetch: Callable[[list[str]], dict[str, str]] | None,
    ) -> None:
        self.redis = client
        self.key = Keys(shop).product_types
        self.fetch = fetch
        self.lookups = 0

    def types(self, product_ids: Iterable[str]) -> dict[str, str]:
        """Known types for the ids; misses are fetched (when a fetcher exists) and cached."""
        ids = list(dict.fromkeys(product_ids))
        if not ids:
            return {}
        values = self.redis.hmget(self.key, ids)
        found = {pid: v.decode() for pid, v in zip(ids, values, strict=True) if v}
        missing = [pid for pid in ids if pid not in found]
        if missing and self.fetch is not None:
            self.lookups += 1
            fetched = self.fetch(missing)
            # An empty string remembers "no type", so a typeless product is not asked again.
            remember = {pid: fetched.get(pid, "") for pid in missing}
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self.key, mapping=remember)  # type: ignore[arg-type]
            pipe.expire(self.key, self.TTL_S)
            pipe.execute()
            found.update({k: v for k, v in fetched.items() if v})
        return {k: v for k, v in found.items() if v}


class Checkpoint:
    """Where a backfill job got to, in Redis: a resumed run starts after the last finished batch.

    Also keeps the per-customer category dates seen so far, so a resumed run loses none.
    """

    def __init__(self, client: redis.Redis[bytes], shop: str, job: str) -> None:
        self.redis = client
        keys = Keys(shop)
        self.key = keys.backfill(job)
        self.cat_key = keys.backfill_categories(job)
        self.people_key = keys.backfill_people(job)

    def load(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key).items()}

    def save(
        self,
        position: str,
        counts: dict[str, int],
        categories: dict[str, str],
        people: list[str] | None = None,
    ) -> None:
        pipe = self.redis.pipeline(transaction=True)
        fields = {"position": position, **{k: str(v) for k, v in counts.items()}}
        pipe.hset(self.key, mapping=fields)  # type: ignore[arg-type]
        if categories:
            pipe.hset(self.cat_key, mapping=categories)  # type: ignore[arg-type]
        if people:
            pipe.pfadd(self.people_key, *people)
        pipe.execute()

    def people(self) -> int:
        """Distinct customers seen by this job so far (HyperLogLog: exact for small counts,
        within about 1% for large ones)."""
        return int(self.redis.pfcount(self.people_key))

    def note(self, **fields: str) -> None:
        """Remember more about the job (the bulk operation's id, a reset position)."""
        self.redis.hset(self.key, mapping=fields)  # type: ignore[arg-type]

    def categories(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.cat_key).items()}

    def clear(self) -> None:
        self.redis.delete(self.key, self.cat_key, self.people_key)
