"""Compliance topics on real parts (the app, Redis, the drain and delivery in-process): after a
customers/redact nothing anywhere in Redis or the dry-run file names the customer."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib
from flask.testing import FlaskClient

from bridge.compliance import requests as compliance
from bridge.compliance.requests import ComplianceRequest, Needles, needles_for
from bridge.config.settings import Settings
from bridge.delivery.deadletters import dlq_key
from bridge.delivery.deliver import deliver
from bridge.identity import email_key
from bridge.services import Services
from bridge.store.facade import SHOPS_KEY, Keys, now_ms
from bridge.store.wire import Envelope
from bridge.web.app import create_app
from bridge.worker.drain import drain
from bridge.worker.processor import ProcessConfig, process
from bridge.worker.sweep import sweep
from tests.conftest import ROOT, SHOP, fixture_json, wait_until, webhook_headers

URL = "/webhooks/shopify"
OTHER_SHOP = "other-shop.myshopify.com"

CUSTOMER_ID = 7301234567890
EMAIL = "Jane.Doe@Example.com"
PHONE_RAW = "(613) 555-0142"
PHONE_E164 = "+16135550142"
# Every form of the customer that must be gone after a redact.
FORMS = ("7301234567890", "jane.doe@example.com", "(613) 555-0142", "+16135550142", "6135550142")


def personalise(body: dict[str, Any], cid: int, email: str, phone: str) -> dict[str, Any]:
    """The fixture, about this customer (contact fields, customer object, addresses)."""
    out = copy.deepcopy(body)
    for field in ("email", "contact_email"):
        if field in out:
            out[field] = email
    if "phone" in out:
        out["phone"] = phone
    person = {
        "id": cid,
        "email": email,
        "phone": phone,
        "admin_graphql_api_id": f"gid://shopify/Customer/{cid}",
    }
    if "first_name" in out:  # a customers/* payload is the customer itself
        out.update(person)
        holders = [out]
    else:
        customer = out.get("customer") if isinstance(out.get("customer"), dict) else {}
        out["customer"] = {**customer, **person}
        holders = [out, out["customer"]]
    for holder in holders:
        for addr in ("default_address", "billing_address", "shipping_address"):
            if isinstance(holder.get(addr), dict):
                holder[addr]["phone"] = phone
                holder[addr]["country_code"] = "CA"
    return out


def jane(name: str) -> bytes:
    return orjson.dumps(personalise(fixture_json(name), CUSTOMER_ID, EMAIL, PHONE_RAW))


def bystander(name: str) -> bytes:
    return orjson.dumps(
        personalise(fixture_json(name), 7309999999999, "sam@example.org", "(613) 555-0199")
    )


def redact_body(cid: int = CUSTOMER_ID, email: str = EMAIL, phone: str = PHONE_RAW) -> bytes:
    body = fixture_json("customers-redact")
    body["shop_domain"] = SHOP
    body["customer"] = {"id": cid, "email": email, "phone": phone}
    body["orders_to_redact"] = [820982911946154508]
    return orjson.dumps(body)


@pytest.fixture
def dry_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "pipelines_dry_run": True,
            "dry_run_file": str(tmp_path / "dry-run.jsonl"),
            "drain_batch_size": 1,
            "skip_test_orders": False,
            "identity_hash_key": settings.identity_hash_key.__class__("test-hash-key"),
        }
    )


@pytest.fixture
def rt(dry_settings: Settings) -> Iterator[Services]:
    runtime = Services.build(dry_settings)
    yield runtime
    runtime.redis.close()


@pytest.fixture
def client(dry_settings: Settings) -> FlaskClient:
    app = create_app(dry_settings)
    app.config["TESTING"] = True
    return app.test_client()


def post(client: FlaskClient, topic: str, body: bytes, shop: str = SHOP, **kw: Any) -> int:
    resp = client.post(URL, data=body, headers=webhook_headers(body, topic, shop=shop, **kw))
    return resp.status_code


def everything(client: redis_lib.Redis) -> bytes:
    """Every key name and every stored byte in the whole Redis, lower-cased."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key).decode()
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "list":
            out.extend(client.lrange(key, 0, -1))
        elif kind == "hash":
            for f, v in client.hgetall(key).items():
                out += [f, v]
        elif kind == "set":
            out.extend(client.smembers(key))
        elif kind == "zset":
            out.extend(client.zrange(key, 0, -1))
        else:
            raise AssertionError(f"unexpected key type {kind} at {key!r}")
    return b"\n".join(out).lower()


def traces(data: bytes) -> list[str]:
    found = [f for f in FORMS if f.encode() in data]
    if email_key(EMAIL).split(":")[1].encode() in data:
        found.append("email hash")
    return found


def load_customer_everywhere(client: FlaskClient, rt: Services, shop: str = SHOP) -> None:
    """The customer in state, delivered calls (dry-run file), the outbox, parked webhooks and
    the inbound queue; a bystander beside them."""
    for topic, name in (
        ("customers/create", "customers-create"),
        ("checkouts/create", "checkouts-create"),
        ("orders/create", "orders-create"),
        ("orders/paid", "orders-paid"),
    ):
        assert post(client, topic, jane(name), shop=shop) == 200
        assert post(client, topic, bystander(name), shop=shop) == 200
    drain(rt, shop)
    deliver(rt, shop)
    # Queued but not yet delivered.
    later = orjson.loads(jane("orders-paid"))
    later["id"] = 820982911946154599
    assert post(client, "orders/paid", orjson.dumps(later), shop=shop) == 200
    bad = personalise(fixture_json("customers-create"), CUSTOMER_ID, EMAIL, PHONE_RAW)
    bad["default_address"] = "not an address"  # signed but wrong types: parked with its body
    assert post(client, "customers/update", orjson.dumps(bad), shop=shop) == 200
    drain(rt, shop)


def test_customer_redact_leaves_no_trace_in_redis_or_the_dry_run_file(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis, dry_settings: Settings
) -> None:
    load_customer_everywhere(client, rt)
    dry_run = Path(dry_settings.dry_run_file)
    before = everything(redis)
    assert set(traces(before)) >= {"7301234567890", "jane.doe@example.com", "email hash"}
    assert traces(dry_run.read_bytes().lower())
    assert redis.hlen(dlq_key(SHOP)) >= 1 and redis.llen(Keys(SHOP).outbox) >= 1

    assert post(client, "customers/redact", redact_body()) == 200
    # Arrives after the redact request, before the drain runs it: erased from the queue too.
    assert post(client, "customers/update", jane("customers-create")) == 200
    drain(rt, SHOP)
    deliver(rt, SHOP)

    after = everything(redis)
    assert traces(after) == []
    assert traces(dry_run.read_bytes().lower()) == []
    # The bystander is untouched, and the request itself is done.
    assert b"7309999999999" in after and b"sam@example.org" in dry_run.read_bytes()
    assert redis.llen(Keys(SHOP).compliance) == 0
    assert redis.hget(Keys(SHOP).stats, "compliance:customers/redact:done") == b"1"


def test_forwarded_redaction_sends_only_user_deleted(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis, dry_settings: Settings
) -> None:
    rt.settings = dry_settings.model_copy(update={"forward_redactions": True})
    load_customer_everywhere(client, rt)
    assert post(client, "customers/redact", redact_body()) == 200
    drain(rt, SHOP)
    [entry] = redis.lrange(Keys(SHOP).outbox, 0, -1)
    assert b'"event":"User Deleted"' in entry
    assert traces(everything(redis)) == ["7301234567890"]  # only the User Deleted call
    deliver(rt, SHOP)
    lines = [orjson.loads(x) for x in Path(dry_settings.dry_run_file).read_bytes().splitlines()]
    naming = [c for c in lines if str(CUSTOMER_ID) in orjson.dumps(c).decode()]
    assert [(c["event"], c["userId"]) for c in naming] == [("User Deleted", str(CUSTOMER_ID))]
    assert traces(everything(redis)) == []


def test_shop_redact_erases_the_shop_and_nothing_else(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    load_customer_everywhere(client, rt, shop=SHOP)
    assert post(client, "orders/paid", jane("orders-paid"), shop=OTHER_SHOP) == 200
    drain(rt, OTHER_SHOP)
    body = orjson.dumps({"shop_id": 954889, "shop_domain": SHOP})
    assert post(client, "shop/redact", body) == 200
    drain(rt, SHOP)
    assert list(redis.scan_iter(match=f"cb:{{{SHOP}}}:*")) == []
    assert redis.smembers(SHOPS_KEY) == {OTHER_SHOP.encode()}
    assert redis.exists(Keys(OTHER_SHOP).outbox)


def redact_while_another_worker_flushes(
    client: FlaskClient, rt: Services, other: Services, redis: redis_lib.Redis, *, stop: bool
) -> None:
    """shop/redact, drained here while `other` (another worker) writes its counters just after
    the erasure; with `stop`, this worker is then told to stop."""

    def late_flush() -> None:
        assert wait_until(lambda: not redis.sismember(SHOPS_KEY, SHOP), 30)
        other.store.flush_counters(force=True)
        if stop:
            rt.stopping.set()

    flusher = threading.Thread(target=late_flush)
    flusher.start()
    body = orjson.dumps({"shop_id": 954889, "shop_domain": SHOP})
    assert post(client, "shop/redact", body) == 200
    drain(rt, SHOP)
    flusher.join(30)
    assert rt.stopping.is_set() == stop


@pytest.mark.parametrize(
    "counted",
    [
        # Another worker counted the shop in the second before the redact...
        ([((Keys(SHOP).stats, "calls:delivered"), 1)], {}),
        # ...or drained it: the volume check's last-seen times go with its counters.
        ([], {(Keys(SHOP).last_seen, "orders/create"): 1_700_000_000_000}),
    ],
    ids=["counters", "last-seen"],
)
@pytest.mark.parametrize("stop", [False, True], ids=["running", "stopping"])
def test_shop_redact_removes_what_another_worker_writes_just_after(
    client: FlaskClient,
    rt: Services,
    settings: Settings,
    redis: redis_lib.Redis,
    counted: tuple[list[tuple[tuple[str, str], int]], dict[tuple[str, str], int]],
    stop: bool,
) -> None:
    # With `stop`, the worker is told to stop once they landed: the request is gone with the
    # shop's keys, so no later run would remove them.
    load_customer_everywhere(client, rt, shop=SHOP)
    other = Services.build(settings)
    counts, latest = counted
    other.store.tally.add(counts, None, latest)
    redact_while_another_worker_flushes(client, rt, other, redis, stop=stop)
    assert list(redis.scan_iter(match=f"cb:{{{SHOP}}}:*")) == []


def test_the_sweep_removes_counters_a_late_worker_writes_after_a_shop_redact(
    client: FlaskClient, rt: Services, settings: Settings, redis: redis_lib.Redis
) -> None:
    load_customer_everywhere(client, rt, shop=SHOP)
    body = orjson.dumps({"shop_id": 954889, "shop_domain": SHOP})
    assert post(client, "shop/redact", body) == 200
    drain(rt, SHOP)
    assert list(redis.scan_iter(match=f"cb:{{{SHOP}}}:*")) == []
    # A worker busy walking many shops writes what it counted for the shop later still.
    late = Services.build(settings)
    late.store.tally.add([((Keys(SHOP).stats, "calls:delivered"), 1)])
    late.store.flush_counters(force=True)
    sweep(rt)
    assert list(redis.scan_iter(match=f"cb:{{{SHOP}}}:*")) == []
    # A shop installed again keeps its counters; one erased long ago is forgotten.
    late.store.tally.add([((Keys(SHOP).stats, "calls:delivered"), 1)])
    late.store.flush_counters(force=True)
    redis.sadd(SHOPS_KEY, SHOP)
    sweep(rt)
    assert redis.hget(Keys(SHOP).stats, "calls:delivered") == b"1"
    assert rt.store.shop_data.recently_erased(now_ms() + 1) == []


@pytest.mark.parametrize("named", [OTHER_SHOP, None])
def test_shop_redact_naming_another_shop_is_parked_and_erases_nothing(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis, named: str | None
) -> None:
    load_customer_everywhere(client, rt, shop=SHOP)
    before = sorted(redis.scan_iter(match=f"cb:{{{SHOP}}}:st:*"))
    assert before
    body = orjson.dumps({"shop_id": 954889, "shop_domain": named})
    assert post(client, "shop/redact", body) == 200  # signed for SHOP, so accepted...
    drain(rt, SHOP)
    # ...but not run: the shop's records stand, the request waits in the dead letters.
    assert sorted(redis.scan_iter(match=f"cb:{{{SHOP}}}:st:*")) == before
    letters = [orjson.loads(v) for v in redis.hvals(dlq_key(SHOP))]
    [letter] = [x for x in letters if x["topic"] == "shop/redact"]
    assert letter["kind"] == "webhook"
    assert "shop_domain" in letter["reason"]
    assert redis.hget(Keys(SHOP).stats, "webhooks:shop/redact:parked") == b"1"


def test_data_request_export_is_retrievable_with_the_cli(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis, dry_settings: Settings
) -> None:
    load_customer_everywhere(client, rt)
    body = fixture_json("customers-data-request")
    body["customer"] = {"id": CUSTOMER_ID, "email": EMAIL, "phone": PHONE_RAW}
    assert post(client, "customers/data_request", orjson.dumps(body)) == 200
    drain(rt, SHOP)

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        env = {"REDIS_URL": dry_settings.redis_url, "PYTHONPATH": str(ROOT), "PATH": ""}
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", "gdpr", "export", *args],
            env=env,
            capture_output=True,
            check=False,
        )

    done = cli("--shop", SHOP, "--customer", str(CUSTOMER_ID))
    assert done.returncode == 0, done.stderr
    [export] = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert export["customer"]["id"] == str(CUSTOMER_ID)
    assert export["data_request_id"] == "9999"
    keys = {r["key"] for r in export["records"]}
    assert Keys(SHOP).outbox in keys and dlq_key(SHOP) in keys
    assert any(":st:" in k for k in keys)
    dumped = orjson.dumps(export["records"]).decode().lower()
    assert "jane.doe@example.com" in dumped and "sam@example.org" not in dumped
    assert cli("--customer", "1").returncode == 1
    # A later redact erases the export as well.
    assert post(client, "customers/redact", redact_body()) == 200
    drain(rt, SHOP)
    assert traces(everything(redis)) == []
    assert cli("--shop", SHOP).returncode == 1


@pytest.mark.parametrize("topic", sorted(compliance.COMPLIANCE_TOPICS))
def test_bad_hmac_on_compliance_topics_is_401(
    client: FlaskClient, redis: redis_lib.Redis, topic: str
) -> None:
    body = redact_body()
    assert post(client, topic, body, secret="wrong") == 401
    headers = webhook_headers(body, topic)
    del headers["X-Shopify-Hmac-Sha256"]
    assert client.post(URL, data=body, headers=headers).status_code == 401
    assert redis.llen(Keys(SHOP).inbound) == 0


def test_a_committed_request_survives_a_crash_before_it_ran(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    load_customer_everywhere(client, rt)
    assert post(client, "customers/redact", redact_body()) == 200
    # A drain that commits the batch and dies before running the request.
    raw = rt.store.take_inbound(SHOP, 10)
    commit = process(
        SHOP,
        raw,
        source=rt.source,
        config=ProcessConfig.defaults(api_version=""),
        load=rt.store.load_state,
        key_of=Keys(SHOP).state,
    )
    rt.store.commit_drain(SHOP, commit)
    assert redis.llen(Keys(SHOP).compliance) == 1
    drain(rt, SHOP)  # the next drain finds it first
    assert traces(everything(redis)) == []


def test_request_from_keeps_every_form_of_the_customer() -> None:
    env = Envelope(SHOP, "customers/redact", "w-1", redact_body(), received_ms=1)
    from bridge.sources.shopify import ShopifySource

    mapped = ShopifySource().map(
        "customers/redact", orjson.loads(env.body), ProcessConfig.defaults().map_context(SHOP)
    )
    req = compliance.request_from(env, mapped)
    assert req.customer_id == str(CUSTOMER_ID)
    assert req.email == "jane.doe@example.com"
    assert set(req.phones) == {PHONE_RAW, "6135550142"} | ({PHONE_E164} & set(req.phones))
    assert req.order_ids == ("820982911946154508",)
    assert ComplianceRequest.decode(req.encode()) == req


def test_ids_match_as_whole_tokens_only() -> None:
    n = needles_for(ComplianceRequest("customers/redact", SHOP, "w", customer_id="191167"))
    assert n.in_value(b'{"user_id":"191167"}')
    assert n.in_value(b'{"id":191167,"x":1}')
    assert n.in_value(b"gid://shopify/Customer/191167")
    assert not n.in_value(b'{"id":1911670}')
    assert not n.in_value(b'{"messageId":"01J7A191167B"}')
    assert not n.in_value(b'{"price":"1911.67"}')
    assert Needles.of((), ("A@B.co",)).in_value(b'{"email":"a@b.CO"}')


def test_an_erasure_keeps_compliance_webhooks_still_queued(
    rt: Services, redis: redis_lib.Redis
) -> None:
    # A data request and a redact for the same customer can wait in the inbound queue while an
    # earlier redact runs: erasing them would lose a request Shopify expects to be honoured.
    from bridge.compliance.erasure import erase_customer

    k = Keys(SHOP)
    body = orjson.dumps({"customer": {"id": CUSTOMER_ID, "email": EMAIL}})
    pending = [
        Envelope(SHOP, topic, f"w-{i}", body, received_ms=1).encode()
        for i, topic in enumerate(("customers/data_request", "customers/redact"))
    ]
    cart = Envelope(SHOP, "carts/update", "w-cart", body, received_ms=1).encode()
    redis.rpush(k.inbound, *pending, cart)
    needles = needles_for(
        ComplianceRequest("customers/redact", SHOP, "w-0", customer_id=str(CUSTOMER_ID))
    )
    erase_customer(rt.store, SHOP, needles)
    assert redis.lrange(k.inbound, 0, -1) == pending  # the cart is gone, the requests stay


def test_the_sweep_keeps_no_email_in_the_digests_memos(settings: Settings) -> None:
    """The sweep releases held identity work (which names emails) outside any batch: it empties
    the keyed digests' memos when it ends, as a batch does (bridge/keyed.py)."""
    from bridge import keyed
    from bridge.worker.sweep import sweep

    services = Services.build(settings)  # sets the hash key, which empties the memos
    keyed.email_digest("held.person@example.com")
    sweep(services)
    assert keyed.email_digest.cache_info().currsize == 0
