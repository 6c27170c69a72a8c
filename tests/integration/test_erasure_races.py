"""An erasure wins over a delivery in flight (issue 12, item 3), on real parts: a private Redis,
a real `bridge worker` process, the Pipelines stand-in behind a loopback proxy that holds its
answers until the test lets them go (a Pipelines answering as slowly as the test needs).

After a `customers/redact` completes, Pipelines never receives the person's calls again and
nothing in Redis names them: not the outbox, the in-flight window, the retry bookkeeping (whose
names are keyed hashes, never a plain SHA-1 of an email) or the dead letters.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from pydantic import SecretStr

from bridge.compliance.erasure import ErasureBlocked, run_pending
from bridge.compliance.requests import ComplianceRequest
from bridge.config.settings import Settings
from bridge.delivery.deadletters import (
    DeadLetters,
    ErasureRunning,
    call_letter,
    dlq_index_key,
    dlq_key,
    stage,
)
from bridge.delivery.deliver import deliver
from bridge.delivery.outbox import OutboxEntry
from bridge.identity import configure_email_hash, person_hash
from bridge.services import Services
from bridge.store.facade import Keys, Store, now_ms
from bridge.store.lease import Lease
from bridge.store.wire import Envelope
from bridge.web.app import create_app
from bridge.worker.drain import drain
from tests.conftest import SHOP, fixture_json, start_worker, wait_until, webhook_headers
from tests.integration.test_compliance import (
    CUSTOMER_ID,
    EMAIL,
    PHONE_RAW,
    everything,
    personalise,
    redact_body,
    traces,
)
from tests.pipelines_standin import PipelinesStandIn

K = Keys(SHOP)
HASH_KEY = "erasure-test-hash-key"
GUEST = EMAIL.lower()
OTHER = "sam@example.org"


class HeldAnswers:
    """A loopback proxy in front of the stand-in. Each request reaches the stand-in at once (so
    its calls count as received, as they would at a slow Pipelines); while `hold()` is on, the
    answer waits until `release(status)` lets every waiting one go, as the stand-in answered or
    with `status` instead."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._changed = threading.Condition()
        self._holding = False
        self._waiting = 0
        self._generation = 0  # bumped by each release: the requests it lets go
        self._status: dict[int, int | None] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = proxy._forward(self.path, dict(self.headers), body)
                status = proxy._wait(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        url = self.upstream.removesuffix("/v1") + path
        keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
        request = urllib.request.Request(url, data=body, headers=keep, method="POST")
        try:
            with urllib.request.urlopen(request) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _wait(self, status: int) -> int:
        with self._changed:
            if not self._holding:
                return status
            mine = self._generation
            self._waiting += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._generation > mine)
            self._waiting -= 1
            return self._status.get(mine) or status

    def hold(self) -> None:
        with self._changed:
            self._holding = True

    def release(self, status: int | None = None) -> None:
        """Let every waiting answer go (as `status` when given) and stop holding."""
        with self._changed:
            self._status[self._generation] = status
            self._generation += 1
            self._holding = False
            self._changed.notify_all()

    def wait_held(self, n: int = 1, timeout_s: float = 30.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._waiting >= n, timeout_s)

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def held(pipelines: PipelinesStandIn) -> Iterator[HeldAnswers]:
    proxy = HeldAnswers(pipelines.url)
    yield proxy
    proxy.close()


@pytest.fixture
def slow_settings(settings: Settings, held: HeldAnswers) -> Settings:
    return settings.model_copy(
        update={
            "pipelines_url": held.url,
            "identity_hash_key": SecretStr(HASH_KEY),
            "skip_test_orders": False,
            "retry_base_s": 0.05,
            "retry_cap_s": 0.2,
            # An answer is held as long as the test needs; the client must not give up first.
            "http_timeout_s": 120.0,
        }
    )


@pytest.fixture
def rt(slow_settings: Settings) -> Iterator[Services]:
    runtime = Services.build(slow_settings)
    yield runtime
    runtime.redis.close()
    configure_email_hash(b"")


def guest_checkout(email: str, phone: str, n: int) -> bytes:
    """A guest's checkout (checkout and cart of their own), with no customer record."""
    body = personalise(fixture_json("checkouts-create"), 7309999999999, email, phone)
    body.pop("customer", None)
    body["id"] += n
    body["token"] = f"{n:032x}"
    body["cart_token"] = f"cart-{n}"
    body.pop("abandoned_checkout_url", None)
    return orjson.dumps(body)


def names_guest(call: dict[str, Any]) -> bool:
    text = orjson.dumps(call).decode().lower()
    return GUEST in text or str(CUSTOMER_ID) in text


def unkeyed(*people: str) -> list[bytes]:
    """Plain SHA-1 forms of a person (what the retry bookkeeping used to be named by)."""
    return [hashlib.sha1(p.encode()).hexdigest()[:16].encode() for p in people]


def redact_envelope() -> Envelope:
    return Envelope(
        SHOP, "customers/redact", f"redact-{uuid.uuid4()}", redact_body(), received_ms=now_ms()
    )


def leftovers(r: redis_lib.Redis) -> list[str]:
    """Every trace of the guest in Redis: the test_compliance forms, the keyed person hash of
    the bookkeeping, and the plain SHA-1 names it used to have."""
    data = everything(r)
    found = traces(data)
    found += [f"sha1 {h.decode()}" for h in unkeyed(GUEST, str(CUSTOMER_ID)) if h in data]
    found += [
        f"person hash of {p}" for p in (GUEST, str(CUSTOMER_ID)) if person_hash(p).encode() in data
    ]
    return found


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
        worker.wait(40)


def quiet(r: redis_lib.Redis) -> bool:
    """Nothing left to deliver: no outbox, no window, nobody waiting for a retry."""
    return r.llen(K.outbox) + r.llen(K.outbox_work) + r.zcard(K.out_due) == 0


def test_a_redact_while_the_persons_call_is_in_flight_is_never_followed_by_their_calls(
    slow_settings: Settings,
    rt: Services,
    redis: redis_lib.Redis,
    pipelines: PipelinesStandIn,
    held: HeldAnswers,
) -> None:
    """The worker process delivers; this process runs the redact (another process). The guest's
    identify reaches Pipelines and its answer is held; the redact is processed meanwhile; then
    Pipelines answers 503, which would put the guest's calls on a retry hold list."""
    worker = start_worker(
        slow_settings,
        PIPELINES_URL=held.url,
        IDENTITY_HASH_KEY=HASH_KEY,
        RETRY_BASE_S="0.05",
        RETRY_CAP_S="0.2",
        HTTP_TIMEOUT_S="120",
        SKIP_TEST_ORDERS="false",
        # The redact is drained by this process: the worker's drain must not still be waiting
        # for the shop's next webhook (it would take the redact itself).
        DRAIN_LINGER_MS="0",
    )
    app = create_app(slow_settings)
    app.config["TESTING"] = True
    web: FlaskClient = app.test_client()

    def post(topic: str, body: bytes) -> None:
        resp = web.post("/webhooks/shopify", data=body, headers=webhook_headers(body, topic))
        assert resp.status_code == 200

    try:
        # A dead letter naming the guest: a signed webhook with a wrong type in it.
        bad = personalise(fixture_json("customers-create"), CUSTOMER_ID, EMAIL, PHONE_RAW)
        bad["default_address"] = "not an address"
        post("customers/update", orjson.dumps(bad))
        assert wait_until(lambda: redis.hlen(dlq_key(SHOP)) == 1, 30)

        held.hold()
        post("checkouts/create", guest_checkout(EMAIL, PHONE_RAW, 1))
        post("checkouts/create", guest_checkout(OTHER, "(613) 555-0199", 2))
        assert held.wait_held()  # the guest's identify is in flight: received, not answered
        assert wait_until(lambda: any(names_guest(c) for c in pipelines.calls), 30)

        # The redact, queued as the web would and drained here, by another process than the
        # worker that delivers.
        rt.store.accept(redact_envelope())
        eraser = threading.Thread(target=drain, args=(rt, SHOP))
        eraser.start()
        # Either the erase is done, or it waits for the delivery in flight to stand aside.
        assert wait_until(lambda: not eraser.is_alive() or redis.exists(K.erasing), 60)
        held.release(503)
        eraser.join(120)
        assert not eraser.is_alive()
        assert redis.hget(K.stats, "compliance:customers/redact:done") == b"1"
        erased_at = len(pipelines.calls)

        # The other shopper's calls go out after their retry; the shop comes to rest.
        def settled() -> bool:
            again = pipelines.calls_since(erased_at)
            theirs = [c for c in again if OTHER in orjson.dumps(c).decode()]
            return len(theirs) >= 2 and quiet(redis)

        assert wait_until(settled, 60), pipelines.stats()
        stop(worker)  # before reading all of Redis: RQ's own keys come and go
        after = pipelines.calls_since(erased_at)
        assert [c for c in after if names_guest(c)] == []
        assert leftovers(redis) == []
        assert redis.hlen(dlq_key(SHOP)) == 0 and redis.zcard(dlq_index_key(SHOP)) == 0
    finally:
        held.release()
        stop(worker)


def test_a_deliverer_whose_lease_ran_out_mid_request_sends_nothing_more(
    slow_settings: Settings,
    rt: Services,
    redis: redis_lib.Redis,
    pipelines: PipelinesStandIn,
    held: HeldAnswers,
) -> None:
    """The deliverer's renewals stopped reaching Redis while its request waited for an answer:
    its lease ran out, an erasure took the shop's delivery and completed. When the answer comes,
    the deliverer must neither send the person's next call (their alias, due in a later phase)
    nor write its window back."""
    guest_calls = [
        {"type": "identify", "messageId": "G0001", "userId": GUEST, "traits": {"email": GUEST}},
        {"type": "alias", "messageId": "G0002", "previousId": "anon-g", "userId": GUEST},
    ]
    other = {"type": "track", "messageId": "S0001", "event": "e", "userId": OTHER}
    entries = [
        OutboxEntry(orjson.dumps(guest_calls[0]), 1, GUEST).encode(),
        OutboxEntry(orjson.dumps(guest_calls[1]), 1, GUEST, (), "alias").encode(),
        OutboxEntry(orjson.dumps(other), 1, OTHER).encode(),
    ]
    redis.rpush(K.outbox, *entries)
    redis.sadd("cb:shops", SHOP)

    deliverer_rt = Services.build(slow_settings)
    held.hold()
    deliverer = threading.Thread(target=deliver, args=(deliverer_rt, SHOP))
    deliverer.start()
    try:
        assert held.wait_held()
        assert {c["messageId"] for c in pipelines.calls} == {"G0001", "S0001"}
        redis.delete(K.deliver_lease)  # its time ran out: nobody renewed it

        rt.store.accept(redact_envelope())
        drain(rt, SHOP)
        assert redis.hget(K.stats, "compliance:customers/redact:done") == b"1"
        erased_at = len(pipelines.calls)
        held.release()
        deliverer.join(60)
        assert not deliverer.is_alive()

        assert [c["messageId"] for c in pipelines.calls_since(erased_at)] == []
        assert leftovers(redis) == []
    finally:
        held.release()
        deliverer.join(60)
        deliverer_rt.redis.close()


def test_retry_bookkeeping_names_people_by_a_keyed_hash_and_a_redact_erases_it(
    rt: Services, redis: redis_lib.Redis, pipelines: PipelinesStandIn
) -> None:
    call = {"type": "identify", "messageId": "G0001", "userId": GUEST, "traits": {"email": GUEST}}
    redis.rpush(K.outbox, OutboxEntry(orjson.dumps(call), 1, GUEST).encode())
    redis.sadd("cb:shops", SHOP)
    pipelines.script(503)
    deliver(rt, SHOP)
    assert pipelines.calls == [] and redis.zcard(K.out_due) == 1  # the guest waits for a retry

    data = everything(redis)
    for plain in unkeyed(GUEST):
        assert plain not in data  # no unkeyed SHA-1 of the email, under any name or value
    [name] = [m.decode() for m in redis.zrange(K.out_due, 0, -1)]
    assert set(redis.hkeys(K.out_meta)) == {name.encode()}
    assert redis.exists(K.out_held + name)
    assert name == person_hash(GUEST)
    # Keyed: the same person gets another name under another key.
    try:
        configure_email_hash(b"another key")
        assert person_hash(GUEST) != name
    finally:
        configure_email_hash(rt.settings.email_hash_key)

    rt.store.accept(redact_envelope())
    drain(rt, SHOP)
    assert redis.zcard(K.out_due) == 0 and redis.hlen(K.out_meta) == 0
    assert list(redis.scan_iter(match=K.out_held + "*")) == []
    assert leftovers(redis) == []


def legacy_entry(call: dict[str, Any], person: str) -> bytes:
    """An outbox entry as queued before headers carried the person's keyed hash."""
    return orjson.dumps({"r": 1, "p": person}) + b"\n" + orjson.dumps(call)


def test_entries_queued_before_the_keyed_hash_keep_their_order_and_are_erased(
    rt: Services, redis: redis_lib.Redis, pipelines: PipelinesStandIn
) -> None:
    def track(n: int, person: str) -> dict[str, Any]:
        return {"type": "track", "messageId": f"L{n:04d}", "event": "e", "userId": person}

    redis.rpush(K.outbox, legacy_entry(track(1, GUEST), GUEST))
    redis.sadd("cb:shops", SHOP)
    pipelines.script(503)
    deliver(rt, SHOP)
    [name] = redis.zrange(K.out_due, 0, -1)
    assert name in unkeyed(GUEST)  # the name the take script gives such an entry
    # The guest's next old entry waits behind the first (the take script and delivery agree
    # on its name); another shopper's does not.
    redis.rpush(
        K.outbox, legacy_entry(track(2, GUEST), GUEST), legacy_entry(track(3, OTHER), OTHER)
    )
    redis.zadd(K.out_due, {name: 2**50})  # not due yet
    deliver(rt, SHOP)
    assert [c["messageId"] for c in pipelines.calls] == ["L0003"]
    assert redis.llen(K.out_held + name.decode()) == 2

    rt.store.accept(redact_envelope())
    drain(rt, SHOP)
    assert redis.zcard(K.out_due) == 0 and redis.hlen(K.out_meta) == 0
    assert leftovers(redis) == []


def dead_letter_for_the_guest(r: redis_lib.Redis) -> str:
    call = {"type": "identify", "messageId": "D0001", "userId": GUEST, "traits": {"email": GUEST}}
    letter = call_letter(SHOP, OutboxEntry(orjson.dumps(call), 1, GUEST).encode(), "refused")
    pipe = r.pipeline(transaction=True)
    stage(pipe, SHOP, [letter], now_ms())
    pipe.execute()
    return letter.id


def test_a_replay_of_letters_read_before_a_redact_brings_nothing_back(
    rt: Services, redis: redis_lib.Redis
) -> None:
    letters = DeadLetters(Store(redis))
    letter_id = dead_letter_for_the_guest(redis)
    stale = letters.get_many(SHOP, [letter_id])  # an operator's replay has read the letter
    assert [d.id for d in stale] == [letter_id]

    rt.store.accept(redact_envelope())
    drain(rt, SHOP)
    assert letters.ids(SHOP) == []  # the index does not keep the erased letter's id either

    assert letters.replay(SHOP, stale) == 0
    assert leftovers(redis) == []


def test_a_replay_waits_for_an_erasure_of_the_shop(rt: Services, redis: redis_lib.Redis) -> None:
    letters = DeadLetters(Store(redis))
    letter_id = dead_letter_for_the_guest(redis)
    with Lease(rt.store, K.erasing) as erasing:  # an erasure has begun, not yet reached the DLQ
        assert erasing.held
        with pytest.raises(ErasureRunning):
            letters.replay(SHOP, letters.get_many(SHOP, [letter_id]), wait_s=0)
        assert redis.llen(K.outbox) == 0 and letters.ids(SHOP) == [letter_id]
    assert letters.replay(SHOP, letters.get_many(SHOP, [letter_id])) == 1
    assert redis.llen(K.outbox) == 1


def test_a_compliance_request_left_pending_is_run_by_the_workers_ticker(
    slow_settings: Settings, rt: Services, redis: redis_lib.Redis, held: HeldAnswers
) -> None:
    """An erasure that could not take the delivery lease in time leaves its request committed
    and its drain gone; nothing is queued for the shop, yet the request must still run."""
    # The guest waits for a retry far off: nothing goes out, only the erasure can remove it.
    name = person_hash(GUEST)
    call = {"type": "identify", "messageId": "P0001", "userId": GUEST}
    redis.rpush(K.out_held + name, OutboxEntry(orjson.dumps(call), 1, GUEST).encode())
    redis.zadd(K.out_due, {name: 2**50})
    redis.hset(K.out_meta, name, orjson.dumps({"n": 1, "first": now_ms()}))
    request = ComplianceRequest(
        "customers/redact", SHOP, "w-pending", now_ms(), str(CUSTOMER_ID), GUEST
    )
    redis.rpush(K.compliance, request.encode())
    redis.sadd("cb:shops", SHOP)
    worker = start_worker(slow_settings, IDENTITY_HASH_KEY=HASH_KEY, PIPELINES_URL=held.url)
    try:
        assert wait_until(lambda: redis.llen(K.compliance) == 0, 30)
        assert redis.hget(K.stats, "compliance:customers/redact:done") == b"1"
        stop(worker)
        assert redis.zcard(K.out_due) == 0 and redis.hlen(K.out_meta) == 0
        assert leftovers(redis) == []
    finally:
        stop(worker)


def test_an_erasure_that_cannot_take_the_delivery_lease_erases_nothing_and_stays_pending(
    rt: Services, redis: redis_lib.Redis
) -> None:
    entry = OutboxEntry(orjson.dumps({"type": "identify", "userId": GUEST}), 1, GUEST).encode()
    redis.rpush(K.outbox_work, entry)  # a deliverer's window, held in its memory too
    request = ComplianceRequest("customers/redact", SHOP, "w-1", now_ms(), None, GUEST)
    redis.rpush(K.compliance, request.encode())
    with Lease(rt.store, K.deliver_lease) as deliverer:  # alive, and not letting go
        assert deliverer.held
        rt.stopping.set()  # the worker is asked to stop while the erasure waits
        with pytest.raises(ErasureBlocked):
            run_pending(rt, SHOP)
    assert redis.lrange(K.outbox_work, 0, -1) == [entry]
    assert redis.lrange(K.compliance, 0, -1) == [request.encode()]
    assert not redis.exists(K.erasing)  # the mark went with the erasure: delivery goes on
