"""Dead letters in Redis: a shop's records (`Keys.dlq`, id -> record) and their index
(`Keys.dlq_index`, id -> last error time in ms).

Records are opaque here: delivery/deadletters.py builds, reads and formats them. This module
stores, lists, moves back and removes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, cast

import redis

from bridge.store.keys import shop_keys

# How long a replay waits for an erasure of the shop to finish, and how often it looks.
REPLAY_WAIT_S = 120.0
REPLAY_POLL_S = 0.1

INBOUND = "inbound"
OUTBOX = "outbox"


class ErasureRunning(Exception):
    """A replay waited its time for an erasure of the shop to finish; nothing was moved."""


class DeadLetterRecord(Protocol):
    """A dead letter as the store files it (delivery/deadletters.py's `DeadLetter`)."""

    @property
    def id(self) -> str: ...

    @property
    def last_error_ms(self) -> int: ...

    def stamped(self, now: int) -> DeadLetterRecord:
        """The record with unset error times set to `now`."""
        ...

    def encode(self) -> bytes: ...


class Requeue(NamedTuple):
    """Where a replay puts one stored letter back: `queue` is OUTBOX (a call), INBOUND (a
    webhook, whose seen-marker `webhook_id` is removed too) or "" (nowhere: it is only dropped).
    """

    letter_id: str
    payload: bytes
    queue: str
    webhook_id: str = ""


class Staging(Protocol):
    """What `stage` writes through: a redis-py pipeline, or the store's command list."""

    def hset(self, key: str, name: str, value: bytes, /) -> Any: ...

    def zadd(self, key: str, mapping: Any, /) -> Any: ...


def stage(pipe: Staging, shop: str, letters: Iterable[DeadLetterRecord], now: int) -> int:
    """Queue the writes of `letters` on a MULTI pipeline (the caller executes it), their unset
    error times set to `now`; returns how many."""
    k = shop_keys(shop)
    n = 0
    for item in letters:
        letter = item.stamped(now)
        pipe.hset(k.dlq, letter.id, letter.encode())
        pipe.zadd(k.dlq_index, {letter.id: letter.last_error_ms})
        n += 1
    return n


class DeadLetterStore:
    """Stored dead letters over one Redis client, as raw records. Raises redis errors."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.redis = client

    def count(self, shop: str) -> int:
        return int(self.redis.hlen(shop_keys(shop).dlq))

    def ids(
        self, shop: str, since_ms: int | None = None, before_ms: int | None = None
    ) -> list[str]:
        lo = since_ms if since_ms is not None else "-inf"
        hi = f"({before_ms}" if before_ms is not None else "+inf"
        return [i.decode() for i in self.redis.zrangebyscore(shop_keys(shop).dlq_index, lo, hi)]

    def get_many(self, shop: str, ids: Sequence[str]) -> list[bytes]:
        """The records of `ids` still stored, in order (missing ones left out)."""
        out: list[bytes] = []
        for chunk in _chunks(list(ids), 500):
            out += [raw for raw in self.redis.hmget(shop_keys(shop).dlq, chunk) if raw]
        return out

    def get(self, shop: str, letter_id: str) -> bytes | None:
        return self.redis.hget(shop_keys(shop).dlq, letter_id)

    def newest(
        self, shops: Sequence[str], since_ms: int | None, n: int
    ) -> list[tuple[str, str, int]]:
        """The `n` newest index entries of all `shops` (last error at or after `since_ms`),
        newest first, as (shop, id, last error ms): ids only, in one round trip."""
        if not shops or n <= 0:
            return []
        lo = since_ms if since_ms is not None else "-inf"
        pipe = self.redis.pipeline(transaction=False)
        for shop in shops:
            pipe.zrevrangebyscore(shop_keys(shop).dlq_index, "+inf", lo, 0, n, withscores=True)
        found = [
            (shop, i.decode(), int(score))
            for shop, rows in zip(shops, pipe.execute(), strict=True)
            for i, score in rows
        ]
        found.sort(key=lambda row: row[2], reverse=True)
        return found[:n]

    def count_range(
        self, shops: Sequence[str], since_ms: int | None = None, before_ms: int | None = None
    ) -> int:
        """How many letters of `shops` had their last error at or after `since_ms` and before
        `before_ms` (None: no bound), from the index only, in one round trip."""
        if not shops:
            return 0
        lo = since_ms if since_ms is not None else "-inf"
        hi = f"({before_ms}" if before_ms is not None else "+inf"
        pipe = self.redis.pipeline(transaction=False)
        for shop in shops:
            pipe.zcount(shop_keys(shop).dlq_index, lo, hi)
        return sum(int(n) for n in pipe.execute())

    def count_stored(self, shop: str, ids: Sequence[str]) -> int:
        """How many of `ids` are stored, without reading their records."""
        k = shop_keys(shop)
        n = 0
        for chunk in _chunks(list(dict.fromkeys(ids)), 1000):
            pipe = self.redis.pipeline(transaction=False)
            for letter_id in chunk:
                pipe.hexists(k.dlq, letter_id)
            n += sum(1 for there in pipe.execute() if there)
        return n

    def get_each(self, wanted: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """The records of (shop, id) pairs, in order (None where gone), in one round trip."""
        if not wanted:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for shop, letter_id in wanted:
            pipe.hget(shop_keys(shop).dlq, letter_id)
        return list(pipe.execute())

    def replay(
        self,
        shop: str,
        ids: Sequence[str],
        requeue: Callable[[bytes], Requeue],
        wait_s: float = REPLAY_WAIT_S,
    ) -> int:
        """Put each letter of `ids` still stored back on its queue (`requeue` says which) and
        drop it, in one MULTI; returns how many were.

        The records are read under WATCH and their stored payloads moved, so a letter an erasure
        removed since the caller read it is not brought back; while an erasure of the shop
        runs, the replay waits (its erase may not have reached the letters yet, and a letter
        moved to a queue it already passed would escape it). Raises ErasureRunning past
        `wait_s`. The caller wakes the shop's jobs.
        """
        if not ids:
            return 0
        k = shop_keys(shop)
        wanted = list(dict.fromkeys(ids))
        give_up = time.monotonic() + wait_s
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.dlq, k.erasing)
                    if pipe.exists(k.erasing):
                        pipe.unwatch()
                        if time.monotonic() >= give_up:
                            raise ErasureRunning(shop)
                        time.sleep(REPLAY_POLL_S)
                        continue
                    # Immediate while watching (redis-py types it as the pipeline).
                    raws = cast("list[bytes | None]", pipe.hmget(k.dlq, wanted))
                    stored = [requeue(raw) for raw in raws if raw]
                    pipe.multi()
                    _stage_replay(pipe, shop, stored)
                    pipe.execute()
                    return len(stored)
                except redis.WatchError:
                    continue  # a letter was written or removed meanwhile: read them again

    def drop_orphans(self, shop: str) -> int:
        """Drop index entries whose record is gone (removed by an erasure, which finds records
        by what they hold); returns how many."""
        k = shop_keys(shop)
        ids = [i.decode() for i in self.redis.zrange(k.dlq_index, 0, -1)]
        gone: list[str] = []
        for chunk in _chunks(ids, 500):
            raws = self.redis.hmget(k.dlq, chunk)
            gone += [i for i, raw in zip(chunk, raws, strict=True) if raw is None]
        for chunk in _chunks(gone, 500):
            self.redis.zrem(k.dlq_index, *chunk)
        return len(gone)

    def purge(self, shop: str, ids: Sequence[str]) -> int:
        k = shop_keys(shop)
        n = 0
        for chunk in _chunks(list(ids), 1000):
            pipe = self.redis.pipeline(transaction=True)
            pipe.hdel(k.dlq, *chunk)
            pipe.zrem(k.dlq_index, *chunk)
            n += int(pipe.execute()[0])
        return n

    def expire(self, shop: str, now: int, retention_s: int) -> int:
        """Drop letters whose last error is older than the retention; returns how many."""
        return self.purge(shop, self.ids(shop, before_ms=now - retention_s * 1000))


def _stage_replay(pipe: Any, shop: str, letters: Sequence[Requeue]) -> None:
    k = shop_keys(shop)
    calls = [d.payload for d in letters if d.queue == OUTBOX]
    hooks = [d.payload for d in letters if d.queue == INBOUND]
    marks = [k.seen(d.webhook_id) for d in letters if d.queue == INBOUND]
    for chunk in _chunks(marks, 1000):
        pipe.delete(*chunk)
    for chunk in _chunks(calls, 1000):
        pipe.rpush(k.outbox, *chunk)
    for chunk in _chunks(hooks, 1000):
        pipe.rpush(k.inbound, *chunk)
    if letters:
        ids = [d.letter_id for d in letters]
        pipe.hdel(k.dlq, *ids)
        pipe.zrem(k.dlq_index, *ids)
        pipe.hincrby(k.stats, "dead_letters:replayed", len(letters))


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
