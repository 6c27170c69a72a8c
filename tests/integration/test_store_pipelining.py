"""Deferred replies (RawPipeline.send) and the drain's pipelined batches, on a real Redis."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis as redis_lib

from bridge.config.settings import Settings
from bridge.services import Services
from bridge.store.facade import Commit, Keys, RawPipeline, Settlement, Store, flush_every_store
from bridge.store.ops import WEBHOOK_LOG_SIZE
from bridge.store.wire import Envelope
from bridge.worker.drain import drain
from tests.conftest import SHOP, RedisServer, fixture_json, free_port

K = Keys(SHOP)


def envelope(i: int) -> bytes:
    body = fixture_json("carts-create")
    body["id"] = body["token"] = f"cart-{i}"
    return Envelope(SHOP, "carts/create", f"w-{i}", orjson.dumps(body)).encode()


def test_replies_are_read_in_send_order_whoever_asks_first(redis: redis_lib.Redis) -> None:
    raw = RawPipeline(redis)
    first = raw.send(("SET", "a", "1"), ("INCR", "n"))
    second = raw.send(("GET", "a"), ("INCR", "n"))
    assert raw.pipeline(("INCR", "n")) == [3]  # reads the two owed replies first
    assert second.result() == [b"1", 2]
    assert first.result() == [b"OK", 1]
    failed = raw.send(("INCR", "a"), ("LPUSH", "a", "x"))  # a string: the LPUSH is refused
    incr, refused = failed.result()
    assert incr == 2 and isinstance(refused, redis_lib.ResponseError)


def test_replies_owed_on_a_dropped_connection_raise_instead_of_going_astray(
    redis: redis_lib.Redis,
) -> None:
    raw = RawPipeline(redis)
    owed = raw.send(("SET", "a", "1"))
    raw._drop()  # as after a read error: the socket is closed
    with pytest.raises(redis_lib.ConnectionError):
        owed.result()
    assert raw.pipeline(("GET", "a")) == [b"1"]  # a fresh connection for what comes next


def test_a_commit_removes_only_its_batch_from_the_work_list(redis: redis_lib.Redis) -> None:
    store = Store(redis)
    redis.rpush(K.inbound, *[envelope(i) for i in range(5)])
    first = store.take_inbound(SHOP, 2)
    upcoming = store.send_take(SHOP, 2)
    store.commit_drain(SHOP, Commit(), taken=len(first))
    second = upcoming.result()
    # What a crash here would leave: the next batch, whole, in the work list.
    assert redis.lrange(K.inbound_work, 0, -1) == second
    assert [first, second] == [[envelope(0), envelope(1)], [envelope(2), envelope(3)]]
    # The next drain resumes it and takes more behind it.
    assert store.take_inbound(SHOP, 2) == [envelope(2), envelope(3), envelope(4)]


def test_pipelined_drain_processes_every_webhook_once_in_order(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    rt = Services.build(settings.model_copy(update={"drain_batch_size": 3}))
    redis.rpush(K.inbound, *[envelope(i) for i in range(10)])
    drain(rt, SHOP)
    assert redis.llen(K.inbound) == 0 and redis.llen(K.inbound_work) == 0
    stats = {k.decode(): int(v) for k, v in redis.hgetall(K.stats).items()}
    assert stats["webhooks:carts/create:processed"] == 10
    carts = [
        orjson.loads(raw.partition(b"\n")[2])["properties"]["cart_id"]
        for raw in redis.lrange(K.outbox, 0, -1)
    ]
    assert list(dict.fromkeys(carts)) == [f"cart-{i}" for i in range(10)]


def test_a_connection_redis_closed_is_replaced_before_the_next_write() -> None:
    # After a Redis restart the old socket still takes a write; the reply never comes. The
    # first command after the restart must not fail for that (a 503, a failed drain).
    server = RedisServer(appendonly=True)
    server.start()
    try:
        raw = RawPipeline(redis_lib.Redis.from_url(server.url))
        assert raw.pipeline(("SET", "a", "1")) == [b"OK"]
        server.stop()
        server.start()
        assert raw.pipeline(("GET", "a")) == [b"1"]
        store = Store(redis_lib.Redis.from_url(server.url))
        store.take_inbound(SHOP, 1)
        server.stop()
        server.start()
        assert store.take_inbound(SHOP, 1) == []
    finally:
        server.stop()


def test_counters_of_many_batches_are_written_together_once_committed(
    redis: redis_lib.Redis,
) -> None:
    # Counters ride in no commit: they are summed in the process (store/tally.py) and written
    # in one pipeline, once a second or when a drain ends, so a light load's one-webhook
    # batches do not each pay an HINCRBY per counter.
    store = Store(redis)
    store.tally.interval_s = 3600.0
    for i in range(3):
        redis.rpush(K.inbound, envelope(i))
        store.take_inbound(SHOP, 1)
        commit = Commit()
        commit.count("webhooks:carts/create:processed")
        commit.hash_incr[(K.prefix + "vol5m:x", "0")] = 2
        commit.hash_set[(K.last_seen, "added_to_cart")] = [20, 30, 10][i]  # the latest wins
        store.send_commit(SHOP, commit).result()
        store.flush_counters()  # not due yet: nothing written
    assert redis.hgetall(K.stats) == {} and not redis.exists(K.last_seen)
    before = redis.info("commandstats").get("cmdstat_hincrby", {}).get("calls", 0)
    store.flush_counters(force=True)
    assert redis.hget(K.stats, "webhooks:carts/create:processed") == b"3"
    assert redis.hget(K.prefix + "vol5m:x", "0") == b"6"
    assert redis.hget(K.last_seen, "added_to_cart") == b"30"
    assert redis.info("commandstats")["cmdstat_hincrby"]["calls"] - before == 2


def test_a_commit_that_failed_counts_nothing_and_a_failed_flush_keeps_its_counts(
    redis: redis_lib.Redis,
) -> None:
    store = Store(redis)
    redis.set(K.inbound_work, "not a list")  # the commit's DEL/LTRIM of the work list fails
    commit = Commit()
    commit.count("webhooks:carts/create:processed")
    with pytest.raises(redis_lib.ResponseError):
        store.send_commit(SHOP, commit, taken=1).result()
    assert len(store.tally) == 0  # the batch is tried again, and counted then
    redis.delete(K.inbound_work)
    store.commit_drain(SHOP, commit)
    assert redis.hget(K.stats, "webhooks:carts/create:processed") == b"1"
    # A count Redis refuses (a key of another type) is dropped, the others written; a flush
    # that cannot reach Redis keeps its counts for the next.
    redis.set(K.prefix + "vol5m:y", "a string")
    store.tally.add([((K.stats, "x"), 4), ((K.prefix + "vol5m:y", "0"), 1)])
    store.flush_counters(force=True)
    assert redis.hget(K.stats, "x") == b"4" and len(store.tally) == 0
    away = Store(redis_lib.Redis(port=free_port(), socket_connect_timeout=1))
    away.tally.add([((K.stats, "x"), 1)])
    with pytest.raises(redis_lib.ConnectionError):
        away.flush_counters(force=True)
    assert away.tally.take() == ({(K.stats, "x"): 1}, {}, {}, {})


def test_a_ledger_is_trimmed_only_once_a_batch_took_it_past_its_length(
    redis: redis_lib.Redis,
) -> None:
    # Drain commits and delivery settles push to people's ledgers without an LTRIM each; the
    # flush after trims those a push took past their length (OPS_LEDGER_CALLS).
    store = Store(redis)
    ledger = K.ledger("p1")
    assert store.acquire(K.deliver_lease, "me", 60_000)

    def pushed(entries: list[bytes], via_settle: bool) -> None:
        if via_settle:
            s: Settlement[Any] = Settlement(ledger=[("p1", e) for e in entries], ledger_keep=3)
            store.settle_outbox(SHOP, "me", s)
        else:
            commit = Commit(ledger_keep=3)
            commit.ledger = [("p1", e) for e in entries]
            store.send_commit(SHOP, commit).result()
        store.flush_counters(force=True)

    def trims() -> int:
        return int(redis.info("commandstats").get("cmdstat_ltrim", {}).get("calls", 0))

    before = trims()
    pushed([b"a", b"b"], via_settle=False)
    pushed([b"c"], via_settle=True)
    assert redis.lrange(ledger, 0, -1) == [b"c", b"b", b"a"] and trims() == before
    pushed([b"d", b"e"], via_settle=False)
    assert redis.lrange(ledger, 0, -1) == [b"e", b"d", b"c"] and trims() == before + 1
    pushed([b"f"], via_settle=True)
    assert redis.lrange(ledger, 0, -1) == [b"f", b"e", b"d"] and trims() == before + 2
    assert redis.ttl(ledger) > 0


def test_the_webhook_log_is_trimmed_only_once_a_commit_took_it_past_its_size(
    redis: redis_lib.Redis,
) -> None:
    # Each drain commit pushes the batch's webhooks to the shop's webhook log without an LTRIM;
    # the flush after trims it once a push took it past WEBHOOK_LOG_SIZE.
    store = Store(redis)

    def committed(n: int, start: int) -> None:
        commit = Commit()
        commit.webhook_log = [b"%d" % i for i in range(start, start + n)]
        store.send_commit(SHOP, commit).result()
        store.flush_counters(force=True)

    def trims() -> int:
        return int(redis.info("commandstats").get("cmdstat_ltrim", {}).get("calls", 0))

    before = trims()
    committed(WEBHOOK_LOG_SIZE - 1, 0)
    committed(1, WEBHOOK_LOG_SIZE - 1)
    assert redis.llen(K.webhook_log) == WEBHOOK_LOG_SIZE and trims() == before
    committed(3, WEBHOOK_LOG_SIZE)
    assert redis.llen(K.webhook_log) == WEBHOOK_LOG_SIZE and trims() == before + 1
    assert redis.lindex(K.webhook_log, 0) == b"%d" % (WEBHOOK_LOG_SIZE + 2)  # newest first
    assert redis.lindex(K.webhook_log, -1) == b"3"  # the oldest three went


def test_every_store_of_the_process_writes_its_counters_at_exit(redis: redis_lib.Redis) -> None:
    # What atexit runs (and the tests between one Redis flush and the next): a web process's
    # last accepted counts, which its writer thread would have written a second later.
    store = Store(redis)
    store.tally.interval_s = 3600.0
    store.tally.add([((K.stats, "webhooks:carts/create:accepted"), 2)])
    flush_every_store()
    assert redis.hget(K.stats, "webhooks:carts/create:accepted") == b"2"


def test_load_state_reads_each_record_once_on_the_pipelined_connection(
    redis: redis_lib.Redis,
) -> None:
    store = Store(redis)
    redis.set(K.state("a"), b"1")
    redis.rpush(K.state("list"), b"x")  # not a string: MGET answers nil, as it always did
    names = [K.state("a"), K.state("missing"), K.state("a"), K.state("list")]
    assert store.load_state(names) == {
        K.state("a"): b"1",
        K.state("missing"): None,
        K.state("list"): None,
    }
    assert store.load_state([]) == {}


def test_load_state_after_an_unconfirmed_commit_reads_what_it_wrote(
    redis: redis_lib.Redis,
) -> None:
    # The drain loads a batch's state once the last commit is confirmed; a load that comes
    # first on the thread's connection still reads after the commit (replies in order) and
    # leaves the commit's own reply to its `result`.
    store = Store(redis)
    commit = Commit()
    commit.state_set = {K.state("r"): (b"written", 60)}
    pending = store.send_commit(SHOP, commit)
    assert store.load_state([K.state("r")]) == {K.state("r"): b"written"}
    pending.result()
