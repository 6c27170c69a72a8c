"""A delivery round's settle (`Store.settle_outbox`) is guarded by a WATCH on the delivery lease.
The lease keeper's renewal touches that key while the lease is still ours: the settle must go
through then (tried again), and give up with LeaseLost only when the token really changed."""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_lib

from bridge.store.facade import Keys, LeaseLost, Settlement, Store, connect
from tests.conftest import SHOP, RedisServer


class Touching:
    """The store's client, with a second client doing `touch` (a renewal, a takeover) between
    the settle's WATCH and its EXEC, the first `times` transactions."""

    def __init__(self, client: redis_lib.Redis, touch: Any, times: int) -> None:
        self._client = client
        self._touch = touch
        self.left = times

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._client.pipeline(transaction=transaction)
        if transaction:
            execute = pipe.execute

            def touched_then_execute(*args: Any, **kw: Any) -> Any:
                if self.left > 0:
                    self.left -= 1
                    self._touch()
                return execute(*args, **kw)

            pipe.execute = touched_then_execute  # type: ignore[method-assign]
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
def store(redis: redis_lib.Redis, redis_server: RedisServer) -> Store:
    return Store(connect(redis_server.url))


def _settlement() -> Settlement[Any]:
    return Settlement(remaining=[b"call-1", b"call-2"], counters={"delivered": 3})


def test_a_renewal_between_watch_and_exec_does_not_lose_the_settle(
    store: Store, redis: redis_lib.Redis
) -> None:
    k = Keys(SHOP)
    keeper = Store(connect(_url(redis)))
    assert store.acquire(k.deliver_lease, "ours", 10_000)
    store.redis = Touching(  # type: ignore[assignment]
        store.redis, lambda: keeper.renew(k.deliver_lease, "ours", 10_000), times=2
    )
    store.settle_outbox(SHOP, "ours", _settlement())
    assert redis.lrange(k.outbox_work, 0, -1) == [b"call-1", b"call-2"]
    assert store.stats(SHOP)["delivered"] == 3


def test_a_lease_taken_over_between_watch_and_exec_is_lost_and_nothing_written(
    store: Store, redis: redis_lib.Redis
) -> None:
    k = Keys(SHOP)
    assert store.acquire(k.deliver_lease, "ours", 10_000)
    redis.rpush(k.outbox_work, b"in-flight")
    store.redis = Touching(  # type: ignore[assignment]
        store.redis, lambda: redis.set(k.deliver_lease, "theirs", px=10_000), times=1
    )
    with pytest.raises(LeaseLost):
        store.settle_outbox(SHOP, "ours", _settlement())
    assert redis.lrange(k.outbox_work, 0, -1) == [b"in-flight"]
    assert "delivered" not in store.stats(SHOP)


def test_a_lease_touched_at_every_try_gives_up_with_lease_lost(
    store: Store, redis: redis_lib.Redis
) -> None:
    k = Keys(SHOP)
    assert store.acquire(k.deliver_lease, "ours", 10_000)
    store.redis = Touching(  # type: ignore[assignment]
        store.redis, lambda: redis.pexpire(k.deliver_lease, 10_000), times=100
    )
    with pytest.raises(LeaseLost):
        store.settle_outbox(SHOP, "ours", _settlement())
    assert not redis.exists(k.outbox_work)


def _url(client: redis_lib.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"
