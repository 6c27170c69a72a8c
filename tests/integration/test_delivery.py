"""Delivery on real parts: a private Redis, the loopback Pipelines stand-in, `deliver()` called in
this process (no worker), so each failure mode is scripted exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
import redis as redis_lib
from flask.testing import FlaskClient

from bridge.cli import main as cli
from bridge.config.settings import Settings
from bridge.delivery.deadletters import DeadLetters
from bridge.delivery.deliver import deliver
from bridge.delivery.outbox import OutboxEntry
from bridge.services import Services
from bridge.store.facade import Keys
from bridge.web.app import create_app
from bridge.worker.drain import drain
from tests.conftest import SHOP, wait_until, webhook_headers
from tests.journeys import CART, cart, order
from tests.pipelines_standin import PipelinesStandIn

K = Keys(SHOP)


def call(n: int, person: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": f"M{n:05d}",
        "event": "order_completed",
        "userId": person,
        "properties": {"n": n, **extra},
    }


def queue(r: redis_lib.Redis, calls: Sequence[dict[str, Any]], kind: str = "batch") -> None:
    entries = [
        OutboxEntry(orjson.dumps(c), 1, str(c.get("userId")), (), kind).encode() for c in calls
    ]
    r.rpush(K.outbox, *entries)
    r.sadd("cb:shops", SHOP)


@pytest.fixture
def rt(settings: Settings) -> Iterator[Services]:
    fast = settings.model_copy(
        update={"retry_base_s": 0.05, "retry_cap_s": 0.2, "pause_probe_s": 0.1}
    )
    runtime = Services.build(fast)
    yield runtime
    runtime.redis.close()


def sent_ids(p: PipelinesStandIn) -> list[str]:
    return [str(m) for m in p.message_ids()]


def deliver_until(rt: Services, done: Any, rounds: int = 60) -> bool:
    """Call deliver() (as the ticker's jobs would) until `done()` or `rounds` run out."""
    return wait_until(lambda: (deliver(rt, SHOP), done())[1], timeout_s=15, interval_s=0.05)


def test_a_backlog_goes_out_in_few_large_requests(
    rt: Services, pipelines: PipelinesStandIn
) -> None:
    queue(rt.redis, [call(i, f"p{i % 50}", pad="x" * 2000) for i in range(600)])
    deliver(rt, SHOP)
    assert len(pipelines.calls) == 600
    assert pipelines.requests <= 6  # ~1.2 MB of calls: three or four 500 KB requests
    assert max(pipelines.request_call_counts) > 100
    # Per person, the calls arrive in the order they were queued.
    for p in ("p0", "p7"):
        mine = [c["properties"]["n"] for c in pipelines.calls if c["userId"] == p]
        assert mine == sorted(mine)
    assert rt.redis.llen(K.outbox_work) == 0 and rt.store.stats(SHOP)["calls:delivered"] == 600


def test_a_window_says_what_the_outbox_has_left_and_is_what_its_work_list_holds(
    rt: Services,
) -> None:
    queue(rt.redis, [call(i, f"p{i}") for i in range(10)])
    held = OutboxEntry(orjson.dumps(call(99, "ann")), 1, "ann", (), "batch")
    rt.redis.zadd(K.out_due, {held.hold_name(): 0})  # ann's retry is due: her call goes first
    rt.redis.rpush(K.out_held + held.hold_name(), held.encode())
    # A window of 4: the due call and three new ones; 7 left, counted by the whole scan...
    window, left = rt.store.take_window(SHOP, 10**6, 4)
    assert [orjson.loads(OutboxEntry.decode(w).call)["messageId"] for w in window] == [
        "M00099",
        "M00000",
        "M00001",
        "M00002",
    ]
    assert window == rt.redis.lrange(K.outbox_work, 0, -1) and left == 7
    rt.redis.delete(K.outbox_work)
    # ...or by LLEN when the scan stopped short of the end.
    window, left = rt.store.take_window(SHOP, 10**6, 2, max_scan=3)
    assert len(window) == 2 and left == 5
    rt.redis.delete(K.outbox_work)
    window, left = rt.store.take_window(SHOP, 10**6, 10)
    assert len(window) == 5 and left == 0
    # A window left by a deliverer that did not finish is resumed as it is.
    assert rt.store.take_window(SHOP, 10**6, 1) == (window, 0)


def test_a_person_waiting_for_a_retry_holds_only_their_own_calls(
    rt: Services, pipelines: PipelinesStandIn
) -> None:
    queue(rt.redis, [call(1, "ann")])
    pipelines.script(503)
    deliver(rt, SHOP)
    assert pipelines.calls == [] and rt.redis.zcard(K.out_due) == 1
    # Ann's next call waits behind her first; Bob is not blocked.
    queue(rt.redis, [call(2, "ann"), call(3, "bob")])
    rt.redis.zadd(K.out_due, {rt.redis.zrange(K.out_due, 0, 0)[0]: 2**50})  # not due yet
    deliver(rt, SHOP)
    assert sent_ids(pipelines) == ["M00003"]
    rt.redis.zadd(K.out_due, {rt.redis.zrange(K.out_due, 0, 0)[0]: 0})  # due now
    deliver(rt, SHOP)
    assert sent_ids(pipelines) == ["M00003", "M00001", "M00002"]
    assert rt.redis.zcard(K.out_due) == 0 and rt.redis.hlen(K.out_meta) == 0


def test_a_bad_call_in_strict_mode_is_isolated_and_dead_lettered(
    rt: Services, pipelines: PipelinesStandIn
) -> None:
    calls = [call(i, f"p{i}") for i in range(20)]
    del calls[13]["event"]  # strict mode refuses the whole request for this one
    queue(rt.redis, calls)
    deliver(rt, SHOP)
    assert sorted(sent_ids(pipelines)) == [f"M{i:05d}" for i in range(20) if i != 13]
    letters = list(DeadLetters(rt.store).iter(SHOP))
    assert [(d.id, d.status, d.kind) for d in letters] == [("c-M00013", 400, "call")]
    assert "track needs event" in letters[0].response


def test_too_large_requests_are_split_and_an_oversize_call_is_dead_lettered(
    rt: Services,
) -> None:
    with PipelinesStandIn(write_keys={"test-write-key"}, max_request_bytes=3000) as small:
        runtime = Services.build(rt.settings.model_copy(update={"pipelines_url": small.url}))
        queue(runtime.redis, [call(i, f"p{i}", pad="y" * 400) for i in range(12)])
        queue(runtime.redis, [call(99, "big", pad="z" * 5000)])
        deliver(runtime, SHOP)
        assert len(small.calls) == 12
        assert [d.id for d in DeadLetters(runtime.store).iter(SHOP)] == ["c-M00099"]


def test_a_refused_key_pauses_the_shop_keeps_the_calls_and_resumes_on_a_probe(
    rt: Services, pipelines: PipelinesStandIn
) -> None:
    pipelines.configure(write_keys=["another-key"])
    queue(rt.redis, [call(i, "ann") for i in range(3)])
    deliver(rt, SHOP)
    assert rt.redis.get(K.paused) is not None
    assert rt.store.stats(SHOP)["delivery:paused"] == 1
    assert rt.redis.llen(K.outbox_work) == 3 and DeadLetters(rt.store).count(SHOP) == 0
    deliver(rt, SHOP)  # still refused: a second pause is not counted again
    assert rt.store.stats(SHOP)["delivery:paused"] == 1
    pipelines.configure(write_keys=["test-write-key"])
    assert deliver_until(rt, lambda: len(pipelines.calls) == 3)
    assert rt.redis.get(K.paused) is None and sent_ids(pipelines) == [
        "M00000",
        "M00001",
        "M00002",
    ]


def test_past_the_retry_horizon_calls_are_dead_lettered_and_replay_reuses_their_ids(
    rt: Services, pipelines: PipelinesStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Services.build(rt.settings.model_copy(update={"retry_horizon_s": 0}))
    queue(runtime.redis, [call(1, "ann"), call(2, "ann")])
    pipelines.configure(fault_rate=1.0)
    assert deliver_until(runtime, lambda: DeadLetters(runtime.store).count(SHOP) == 2)
    letter = DeadLetters(runtime.store).get(SHOP, "c-M00001")
    assert letter is not None and letter.reason == "retry horizon passed"
    assert letter.attempts >= 2 and letter.first_error_ms <= letter.last_error_ms
    assert runtime.redis.hlen(K.out_meta) == 0  # the retry state went with the calls
    pipelines.configure(fault_rate=0.0)
    pipelines.reset()
    monkeypatch.setenv("REDIS_URL", runtime.settings.redis_url)
    assert cli.main(["dlq", "replay", "--all"]) == 0
    assert deliver_until(runtime, lambda: len(pipelines.calls) == 2)
    assert sent_ids(pipelines) == ["M00001", "M00002"]
    assert DeadLetters(runtime.store).count(SHOP) == 0


def test_an_alias_goes_alone_after_the_persons_earlier_calls(
    rt: Services, pipelines: PipelinesStandIn
) -> None:
    queue(rt.redis, [call(1, "ann"), call(2, "bob")])
    alias = {"type": "alias", "messageId": "A0001", "previousId": "anon-1", "userId": "ann"}
    queue(rt.redis, [alias], kind="alias")
    queue(rt.redis, [call(3, "ann")])
    deliver(rt, SHOP)
    assert sent_ids(pipelines) == ["M00001", "M00002", "A0001", "M00003"]
    assert pipelines.request_call_counts == [2, 1, 1]


def test_a_crash_after_the_post_redelivers_the_window_with_the_same_ids(
    rt: Services, pipelines: PipelinesStandIn
) -> None:
    queue(rt.redis, [call(i, f"p{i}") for i in range(5)])

    class Dies:
        def __init__(self, real: Any) -> None:
            self.real = real

        def send_batch(self, calls: Sequence[bytes]) -> None:
            self.real.send_batch(calls)
            raise KeyboardInterrupt  # the process dies between the POST and the ack

    real = rt.sink
    rt.sink = Dies(real)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        deliver(rt, SHOP)
    assert rt.redis.llen(K.outbox_work) == 5  # the window is still in Redis
    rt.sink = real
    deliver(rt, SHOP)
    ids = sent_ids(pipelines)
    assert len(ids) == 10 and len(set(ids)) == 5  # redundant, never lost
    assert rt.redis.llen(K.outbox_work) == 0


def test_an_unmappable_webhook_is_dead_lettered_and_listed(
    rt: Services, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.store.wire import Envelope
    from bridge.worker.drain import drain

    env = Envelope(SHOP, "orders/paid", "wh-1", b'{"id": "not-an-order"}', received_ms=1)
    rt.redis.rpush(K.inbound, env.encode())
    rt.redis.sadd("cb:shops", SHOP)
    drain(rt, SHOP)
    assert rt.redis.llen(K.inbound) == 0 and rt.redis.llen(K.inbound_work) == 0
    monkeypatch.setenv("REDIS_URL", rt.settings.redis_url)
    assert cli.main(["dlq", "list"]) == 0
    listed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["id"], d["kind"], d["what"]) for d in listed] == [
        ("w-wh-1", "webhook", "orders/paid")
    ]
    assert cli.main(["dlq", "show", "w-wh-1"]) == 0
    assert orjson.loads(capsys.readouterr().out)["envelope"]["w"] == "wh-1"
    assert cli.main(["dlq", "purge"]) == 0
    assert DeadLetters(rt.store).count(SHOP) == 0


OTHER_CART = "another-shoppers-cart"


def post_webhook(client: FlaskClient, topic: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    resp = client.post("/webhooks/shopify", data=raw, headers=webhook_headers(raw, topic))
    assert resp.status_code == 200, resp.json


@pytest.mark.parametrize("tried_while_down", [True, False], ids=["held-for-retry", "never-tried"])
def test_a_cart_converted_while_pipelines_is_down_is_dropped_at_delivery(
    rt: Services, pipelines: PipelinesStandIn, tried_while_down: bool
) -> None:
    # Two shoppers add to their carts; Pipelines answers every request with a 503.
    client = create_app(rt.settings).test_client()
    pipelines.script(*[503] * 50)
    post_webhook(client, "carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    post_webhook(client, "carts/create", cart(OTHER_CART, {22: 1}, "2024-11-06T01:00:00.000Z"))
    drain(rt, SHOP)
    queued = [OutboxEntry.decode(e) for e in rt.redis.lrange(K.outbox, 0, -1)]
    added = {orjson.loads(e.call)["properties"]["cart_id"]: e for e in queued}
    assert set(added) == {CART, OTHER_CART} and all(e.guards for e in queued)
    if tried_while_down:
        deliver(rt, SHOP)
        assert pipelines.outcomes == {"503": 1} and pipelines.calls == []
        assert rt.store.depth(SHOP)["waiting_people"] == 2  # both held for a retry
    # The first shopper's order arrives before Pipelines is back: that cart has converted, so
    # its queued added_to_cart must not trigger an abandoned-cart message any more.
    post_webhook(client, "orders/create", order())
    drain(rt, SHOP)
    pipelines.reset()  # Pipelines is back

    def all_sent() -> bool:
        d = rt.store.depth(SHOP)
        return d["outbox"] == 0 and d["waiting_people"] == 0 and d["inbound"] == 0

    assert deliver_until(rt, all_sent)
    sent = [c for c in pipelines.calls if c.get("event") == "added_to_cart"]
    assert [c["messageId"] for c in sent] == [orjson.loads(added[OTHER_CART].call)["messageId"]]
    assert "identify" in [c["type"] for c in pipelines.calls]  # the order itself went out
    assert rt.store.stats(SHOP)["events:added_to_cart:suppressed"] == 1
    assert DeadLetters(rt.store).count(SHOP) == 0
