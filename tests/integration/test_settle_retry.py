"""A delivery round's settle (`Store.settle_outbox`) runs only while the delivery lease holds the
round's token (one script, `scripts.IF_HELD`). The lease keeper's renewal touches that key while
the lease is still ours: the settle must go through then, and give up with LeaseLost, writing
nothing, only when the token changed or the lease is gone."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis as redis_lib

from bridge.store import StoreError
from bridge.store.facade import Keys, LeaseLost, Settlement, Store, connect
from tests.conftest import SHOP, RedisServer


@pytest.fixture
def store(redis: redis_lib.Redis, redis_server: RedisServer) -> Store:
    return Store(connect(redis_server.url))


def _settlement() -> Settlement[Any]:
    return Settlement(
        remaining=[b"call-1", b"call-2"],
        held=[("person-1", [b"call-3"], 1_000, b"meta")],
        clear={"person-2"},
        counters={"delivered": 3},
    )


def test_renewals_all_along_never_lose_a_settle(store: Store, redis: redis_lib.Redis) -> None:
    """The WATCH this replaced was tripped by each renewal (and gave up after five)."""
    k = Keys(SHOP)
    keeper = Store(connect(_url(redis)))
    assert store.acquire(k.deliver_lease, "ours", 10_000)
    done = threading.Event()

    def renew() -> None:
        while not done.is_set():
            keeper.renew(k.deliver_lease, "ours", 10_000)

    renewer = threading.Thread(target=renew)
    renewer.start()
    try:
        for _ in range(200):
            store.settle_outbox(SHOP, "ours", _settlement())
    finally:
        done.set()
        renewer.join()
    assert redis.lrange(k.outbox_work, 0, -1) == [b"call-1", b"call-2"]
    assert redis.lrange(k.held("person-1"), 0, -1) == [b"call-3"] * 200
    assert redis.zscore(k.out_due, "person-1") == 1_000
    assert store.stats(SHOP)["delivered"] == 600


@pytest.mark.parametrize("holder", ["theirs", None])
def test_a_lease_taken_over_or_gone_is_lost_and_nothing_written(
    store: Store, redis: redis_lib.Redis, holder: str | None
) -> None:
    k = Keys(SHOP)
    redis.rpush(k.outbox_work, b"in-flight")
    redis.hset(k.out_meta, "person-2", b"retrying")
    if holder:
        redis.set(k.deliver_lease, holder, px=10_000)
    with pytest.raises(LeaseLost):
        store.settle_outbox(SHOP, "ours", _settlement())
    assert redis.lrange(k.outbox_work, 0, -1) == [b"in-flight"]
    assert redis.hget(k.out_meta, "person-2") == b"retrying"
    assert not redis.exists(k.held("person-1"), k.out_due)
    store.flush_counters(force=True)
    assert "delivered" not in store.stats(SHOP)


def test_a_refused_write_fails_the_settle_and_counts_nothing(
    store: Store, redis: redis_lib.Redis
) -> None:
    """As a MULTI's EXEC did: the other writes go through, the error is raised (the window is
    then tried again), and the round's counters are not counted."""
    k = Keys(SHOP)
    assert store.acquire(k.deliver_lease, "ours", 10_000)
    redis.set(k.held("person-1"), b"not a list")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.settle_outbox(SHOP, "ours", _settlement())
    assert redis.lrange(k.outbox_work, 0, -1) == [b"call-1", b"call-2"]
    assert redis.hget(k.out_meta, "person-1") == b"meta"
    store.flush_counters(force=True)
    assert "delivered" not in store.stats(SHOP)


def _url(client: redis_lib.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def test_a_round_clearing_thousands_of_people_settles(store: Store, redis: redis_lib.Redis) -> None:
    """The script unpacks each command's arguments, which Lua caps near 8 000: the retry states
    a round forgets go in commands of at most 1 000 people."""
    k = Keys(SHOP)
    people = [f"person-{i}" for i in range(9_000)]
    redis.hset(k.out_meta, mapping=dict.fromkeys([*people, "still-waiting"], b"retrying"))
    assert store.acquire(k.deliver_lease, "ours", 10_000)
    store.settle_outbox(SHOP, "ours", Settlement(clear=set(people)))
    assert redis.hkeys(k.out_meta) == [b"still-waiting"]
