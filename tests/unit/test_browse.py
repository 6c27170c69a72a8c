"""Storefront browse events (issue 17) on the pure path: collector bodies checked, pixel events
mapped to canonical events, the volume policy, and the identity rule (a browser joins a person
only through a signed webhook), through the real processor over an in-memory shop."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from bridge.canonical import Item, MapContext
from bridge.identity.browse import claim_names, client_name
from bridge.identity.browse_policy import (
    CAPPED,
    DUPLICATE,
    FORWARDED,
    OFF,
    SAMPLED_OUT,
    THROTTLED,
    BrowsePolicy,
    judge,
    sampled_in,
)
from bridge.ids import client_anonymous_id
from bridge.jsonio import parse_body
from bridge.sources import MappingError, Sources
from bridge.sources.pixel import PixelSource
from bridge.sources.pixel.body import BodyProblem, check_body
from bridge.sources.shopify import ShopifySource
from bridge.worker.processor import ProcessConfig
from tests import pixel_events as px
from tests.conftest import ROOT, SHOP
from tests.journeys import CART, CHECKOUT, CUSTOMER_ID, MemoryShop, names, order

RECEIVED = datetime(2024, 11, 6, 3, 0, tzinfo=UTC)  # journeys.TRIGGERED: the receipt time
AT = "2024-11-06T02:59:00.000Z"
ANON = client_anonymous_id(SHOP, "client-aaa")


def ctx() -> MapContext:
    return ProcessConfig.defaults(api_version="").map_context(SHOP, RECEIVED)


def mapped(name: str = "product_viewed", **kw: Any) -> Any:
    ev = px.event(name, timestamp=AT, event_id="e-1", **kw)
    return PixelSource().map(name, px.body(ev), ctx())


# --- the collector's body ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ([], 400, "body is not a JSON object"),
        ({"event": px.event()}, 400, "missing shop"),
        ({"shop": 5, "event": px.event()}, 400, "missing shop"),
        ({"shop": "bad shop{x}", "event": px.event()}, 400, "malformed shop"),
        ({"shop": SHOP, "cart_token": 5, "event": px.event()}, 400, "cart_token must be"),
        ({"shop": SHOP, "event": None}, 400, "missing event"),
        ({"shop": SHOP, "event": {**px.event(), "name": None}}, 400, "missing event name"),
        ({"shop": SHOP, "event": {**px.event(), "name": "page_viewed"}}, 422, "event not"),
        ({"shop": SHOP, "event": {**px.event(), "id": None}}, 400, "event id"),
        ({"shop": SHOP, "event": {**px.event(), "id": "x" * 200}}, 400, "event id"),
        ({"shop": SHOP, "event": {**px.event(), "clientId": ""}}, 400, "clientId"),
        ({"shop": SHOP, "event": {**px.event(), "clientId": "a b"}}, 400, "clientId"),
        ({"shop": SHOP, "event": {**px.event(), "timestamp": 17}}, 400, "timestamp"),
        ({"shop": SHOP, "event": {**px.event(), "data": []}}, 400, "event data"),
    ],
)
def test_a_malformed_body_gets_a_specific_answer(body: Any, status: int, message: str) -> None:
    with pytest.raises(BodyProblem) as caught:
        check_body(body)
    assert caught.value.status == status
    assert message in caught.value.message


def test_tokens_are_normalised_hints_and_odd_ones_are_dropped() -> None:
    ev = px.event("cart_viewed")
    assert check_body(px.body(ev)).cart_token == "c1-token"  # GID and ?key= stripped
    assert check_body(px.body(ev, cart_token="gid://shopify/Cart/T1?key=k")).cart_token == "T1"
    assert check_body(px.body(px.event(), cart_token="{evil}:x")).cart_token is None
    assert check_body(px.body(px.event("checkout_started"))).checkout_token == "co-token-1"


# --- mapping ------------------------------------------------------------------------------------
def test_product_viewed_is_an_anonymous_event_with_the_canonical_item() -> None:
    m = mapped()
    (event,) = m.events
    assert event.name == "product_viewed"
    assert event.person.model_dump(exclude_none=True) == {"anonymous_id": ANON}
    assert event.timestamp == datetime(2024, 11, 6, 2, 59, tzinfo=UTC)
    assert event.items == (
        Item(
            product_id="7001",
            variant_id="9001",
            sku="SKU-9001",
            name="Trail Shoe",
            price=Decimal("24.50"),
            quantity=1,
            brand="Acme",
            category="Shoes",
        ),
    )
    assert event.properties == {
        "currency": "USD",
        "product_url": "/products/trail-shoe-7001",
        "page_url": f"https://{SHOP}/products/trail-shoe",
        "pixel_event_id": "e-1",
    }
    assert m.browse is not None
    assert (m.browse.client, m.browse.product, m.browse.event_id) == (ANON, "7001", "e-1")


@pytest.mark.parametrize(
    ("name", "canonical", "items", "extra"),
    [
        ("collection_viewed", "collection_viewed", 3, {"collection_id": "5"}),
        ("search_submitted", "search_submitted", 3, {"query": "shoe"}),
        ("product_added_to_cart", "product_added_to_cart", 1, {"value": Decimal("49.00")}),
        ("cart_viewed", "cart_viewed", 1, {"value": Decimal("49.00")}),
        ("checkout_started", "storefront_checkout_started", 1, {"currency": "USD"}),
        ("checkout_completed", "storefront_checkout_completed", 1, {"currency": "USD"}),
    ],
)
def test_every_standard_event_maps(name: str, canonical: str, items: int, extra: Any) -> None:
    (event,) = mapped(name).events
    assert event.name == canonical
    assert len(event.items) == items
    assert extra.items() <= event.properties.items()
    assert event.person.model_dump(exclude_none=True) == {"anonymous_id": ANON}


def test_nothing_in_the_data_names_a_person() -> None:
    # checkout data carries an email, and an order's customer id: neither is read.
    for name in ("checkout_started", "checkout_completed"):
        m = mapped(name)
        text = m.model_dump_json()
        assert "victim@example.com" not in text and '"42"' not in text
        assert m.person is None and m.identifies == ()


def test_hostile_values_never_fail_the_mapping() -> None:
    surrogate = "\\ud800"  # the JSON escape of a lone surrogate
    raw = (
        '{"shop": "SHOP", "cart_token": null, "event": {"id": "e", "name": "product_viewed",'
        ' "clientId": "c", "timestamp": "not a time", "data": {"productVariant": {'
        '"id": 123456789012345678901234567890, "title": "LONE", "price": {"amount": 1e999},'
        ' "product": {"id": null, "title": "LONE", "vendor": ["x"], "type": {"a": 1}}}}}}'
    )
    raw = raw.replace("SHOP", SHOP).replace("LONE", surrogate)
    body = parse_body(raw.encode())
    (event,) = PixelSource().map("product_viewed", body, ctx()).events
    (item,) = event.items
    assert item.variant_id == "123456789012345678901234567890"
    assert item.price is None and item.brand is None and item.category is None
    assert item.name == "\ufffd"
    assert event.timestamp == RECEIVED  # an unreadable browser time: the receipt's
    empty = PixelSource().map("cart_viewed", px.body(px.event("cart_viewed", data=None)), ctx())
    assert empty.events[0].items == ()


def test_enormous_lists_are_cut_and_odd_times_are_the_receipts() -> None:
    many = {"searchResult": {"query": "q" * 5000, "productVariants": [px.variant()] * 20_000}}
    ev = px.event("search_submitted", data=many, timestamp="2099-01-01T00:00:00Z")
    (event,) = PixelSource().map("search_submitted", px.body(ev), ctx()).events
    assert len(event.items) == 10 and len(event.properties["query"]) == 200
    assert event.timestamp == RECEIVED
    old = px.event(timestamp="2024-11-01T00:00:00Z")
    assert PixelSource().map("product_viewed", px.body(old), ctx()).events[0].timestamp == RECEIVED


def test_a_body_for_another_shop_or_event_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        PixelSource().map("product_viewed", px.body(px.event(), shop="other.myshopify.com"), ctx())
    with pytest.raises(MappingError):
        PixelSource().map("cart_viewed", px.body(px.event()), ctx())
    assert not PixelSource().handles("page_viewed")


# --- the policy ---------------------------------------------------------------------------------
NOW = datetime(2024, 11, 6, 12, 0, tzinfo=UTC)


def verdict(rec: dict[str, Any], policy: BrowsePolicy, **kw: Any) -> tuple[str, Any]:
    args = {
        "pixel_event": "product_viewed",
        "event_id": "e1",
        "client": "c1",
        "product": "p1",
        "linked": False,
        "now": NOW,
        "policy": policy,
    }
    return judge(rec, **{**args, **kw})


def test_the_policy_checks_in_order() -> None:
    policy = BrowsePolicy(view_window_s=3600, client_hourly_cap=2)
    outcome, rec = verdict({}, policy)
    assert outcome == FORWARDED and rec is not None
    assert verdict(rec, policy)[0] == DUPLICATE
    assert verdict(rec, policy, event_id="e2")[0] == THROTTLED
    later = NOW + timedelta(seconds=3601)
    outcome, _rec2 = verdict(rec, policy, event_id="e2", now=later)
    assert outcome == FORWARDED  # the window passed
    assert verdict(rec, policy, event_id="e3", product="p2")[0] == FORWARDED
    # Two forwarded this hour: the cap.
    _, rec3 = verdict(rec, policy, event_id="e3", product="p2")
    assert verdict(rec3, policy, event_id="e4", product="p3")[0] == CAPPED
    assert verdict({}, policy, pixel_event="collection_viewed")[0] == OFF
    assert verdict({}, BrowsePolicy(sample_rate=0.0))[0] == SAMPLED_OUT
    assert verdict({}, BrowsePolicy(sample_rate=0.0), linked=True)[0] == FORWARDED


def test_sampling_over_100_000_browsers_keeps_the_configured_share() -> None:
    clients = [client_anonymous_id(SHOP, f"c{i}") for i in range(100_000)]
    for rate in (0.1, 0.3, 0.5):
        policy = BrowsePolicy(sample_rate=rate)
        forwarded = sum(verdict({}, policy, client=c)[0] == FORWARDED for c in clients)
        assert abs(forwarded / 100_000 - rate) <= 0.01 * rate, (rate, forwarded)
    # Deterministic: a browser is in or out for good, in any process.
    assert all(sampled_in(f"c{i}", 0.3) == sampled_in(f"c{i}", 0.3) for i in range(100))


def test_sampling_is_the_same_in_another_process() -> None:
    # "The same in every process": the web and each worker judge the same browser alike. A
    # per-process salted hash (Python's hash()) keeps the share but not the browsers; another
    # interpreter with another hash seed must put every browser on the same side.
    clients = [client_anonymous_id(SHOP, f"c{i}") for i in range(2000)]
    here = "".join("1" if sampled_in(c, 0.3) else "0" for c in clients)
    code = (
        "import sys\n"
        "from bridge.identity.browse_policy import sampled_in\n"
        "print(''.join('1' if sampled_in(c, 0.3) else '0' for c in sys.stdin.read().split()))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        there = subprocess.run(
            [sys.executable, "-c", code],
            input="\n".join(clients),
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
        assert there == here


def test_throttle_and_cap_over_100_000_events_keep_the_configured_share() -> None:
    # 1 000 browsers, each viewing one of 4 products every minute for 100 minutes, with one
    # view per (browser, product) per 30 minutes and no cap: each product is forwarded in
    # minutes 0..29 at its first view, then again 30 minutes after that forward.
    rng = random.Random(17)
    policy = BrowsePolicy(view_window_s=1800, client_hourly_cap=10_000)
    forwarded = 0
    expected = 0
    for client in range(1000):
        rec: dict[str, Any] = {}
        last: dict[str, datetime] = {}
        for minute in range(100):
            product = f"p{rng.randrange(4)}"
            now = NOW + timedelta(minutes=minute)
            outcome, new = verdict(
                rec,
                policy,
                client=f"c{client}",
                event_id=f"{client}-{minute}",
                product=product,
                now=now,
            )
            if product not in last or now - last[product] >= timedelta(seconds=1800):
                expected += 1
                last[product] = now
            if outcome == FORWARDED:
                forwarded += 1
                rec = new
    assert forwarded == expected
    # The hourly cap: 100 000 events of distinct products, 100 a browser an hour, cap 25.
    capped_policy = BrowsePolicy(client_hourly_cap=25)
    forwarded = 0
    for client in range(1000):
        rec = {}
        for i in range(100):
            now = NOW + timedelta(seconds=30 * i)
            outcome, new = verdict(
                rec, capped_policy, client=f"c{client}", event_id=str(i), product=str(i), now=now
            )
            if outcome == FORWARDED:
                forwarded += 1
                rec = new
    # 100 events over 50 minutes of one hour: 25 go out, a share of exactly 25 %.
    assert abs(forwarded / 100_000 - 0.25) <= 0.01 * 0.25


# --- the identity rule, through the processor ---------------------------------------------------
def cart_claim(token: str) -> str:
    (name,) = claim_names(token, None)
    return name


def shop(**policy: Any) -> MemoryShop:
    config = ProcessConfig.defaults(api_version="", browse=BrowsePolicy(**policy))
    return MemoryShop(config=config, source=Sources(ShopifySource(), pixel=PixelSource()), now=NOW)


def browse(s: MemoryShop, name: str = "product_viewed", **kw: Any) -> list[dict[str, Any]]:
    cart_token = kw.pop("cart_token", None)
    ev = px.event(name, timestamp=kw.pop("timestamp", AT), **kw)
    return s.feed(f"pixel/{name}", px.body(ev, cart_token=cart_token))


def test_an_anonymous_browser_sends_anonymous_events_only() -> None:
    s = shop()
    calls = browse(s)
    assert names(calls) == ["product_viewed"]
    assert calls[0]["anonymousId"] == ANON and "userId" not in calls[0]
    assert calls[0]["properties"]["items"][0]["product_id"] == "7001"
    assert browse(s, "collection_viewed") == []  # off by default
    assert s.counters["browse:product_viewed:forwarded"] == 1
    assert s.counters["browse:collection_viewed:off"] == 1


def test_a_pixel_naming_someone_elses_customer_changes_nothing_about_them() -> None:
    s = shop(forwarded=frozenset({"checkout_completed", "checkout_started"}))
    s.feed("orders/create", order())  # the real customer, known through a signed webhook
    before = {k: v for k, v in s.state.items()}
    forged = px.data_for("checkout_completed", token="forged-token")
    forged["checkout"]["email"] = "henry@wfls.com"
    forged["checkout"]["order"]["customer"]["id"] = f"gid://shopify/Customer/{CUSTOMER_ID}"
    calls = browse(s, "checkout_completed", data=forged, client_id="attacker")
    assert names(calls) == ["storefront_checkout_completed"]
    assert all("userId" not in c for c in calls)
    changed = {k for k in s.state if before.get(k) != s.state[k]}
    attacker = client_anonymous_id(SHOP, "attacker")
    assert changed == {
        s.keys.state(client_name(attacker)),
        s.keys.state(claim_names(None, "forged-token")[0]),
    }


def test_a_pixel_claiming_a_cart_links_only_when_a_signed_order_confirms_it() -> None:
    s = shop()
    calls = browse(s, cart_token=CART)
    assert names(calls) == ["product_viewed"] and "userId" not in calls[0]
    assert s.record(cart_claim(CART))["c"] == [ANON]  # type: ignore[index]
    linked = s.feed("orders/create", order())
    links = [c for c in linked if c["type"] == "identify" and c.get("anonymousId") == ANON]
    assert len(links) == 1 and links[0]["userId"] == CUSTOMER_ID
    assert links[0]["traits"] == {"last_browsed_at": AT}
    assert s.record(cart_claim(CART)) is None
    # From now on the browser's events name the person, and last_browsed_at is hourly.
    later = browse(s, product=7002, variant_id=9002)
    assert names(later) == ["product_viewed"]
    assert later[0]["userId"] == CUSTOMER_ID and later[0]["anonymousId"] == ANON
    s.now = NOW + timedelta(minutes=61)
    again = browse(s, product=7003, variant_id=9003, timestamp="2024-11-06T02:59:30Z")
    assert names(again) == ["identify", "product_viewed"]
    assert again[0]["traits"] == {"last_browsed_at": "2024-11-06T02:59:30.000Z"}
    s.now = NOW + timedelta(minutes=70)
    assert names(browse(s, product=7004, variant_id=9004)) == ["product_viewed"]


def test_last_browsed_at_never_moves_back_for_a_late_event() -> None:
    s = shop()
    browse(s, cart_token=CART)
    s.feed("orders/create", order())  # linked: last_browsed_at = AT (02:59)
    s.now = NOW + timedelta(minutes=61)
    # An older visit arriving late, an hour on: sent as an event, never as the trait.
    late = browse(s, product=7002, variant_id=9002, timestamp="2024-11-06T01:00:00Z")
    assert names(late) == ["product_viewed"]
    # ... and it did not use up the hour: the next newer visit is sent at once.
    newer = browse(s, product=7003, variant_id=9003, timestamp="2024-11-06T03:01:00Z")
    assert names(newer) == ["identify", "product_viewed"]
    assert newer[0]["traits"] == {"last_browsed_at": "2024-11-06T03:01:00.000Z"}
    # A late event after that, past the hour again: still nothing older goes out.
    s.now = NOW + timedelta(minutes=125)
    assert names(browse(s, product=7004, variant_id=9004, timestamp=AT)) == ["product_viewed"]
    # Another browser of the same person, linked (through the confirmed cart) with an older
    # visit: the link carries no last_browsed_at (it would move the person's back).
    s.now = NOW + timedelta(minutes=130)
    other = client_anonymous_id(SHOP, "other-browser")
    calls = browse(s, client_id="other-browser", cart_token=CART, timestamp="2024-11-06T02:00:00Z")
    links = [c for c in calls if c["type"] == "identify" and c.get("anonymousId") == other]
    assert len(links) == 1 and "last_browsed_at" not in links[0].get("traits", {})
    assert all(
        c.get("traits", {}).get("last_browsed_at", "9") > "2024-11-06T03:01"
        for c in calls
        if c["type"] == "identify"
    )


def test_a_pixel_after_the_signed_webhook_links_at_once_and_once_only() -> None:
    s = shop()
    s.feed("orders/create", order())
    calls = browse(s, "checkout_completed", data=px.data_for("checkout_completed", token=CHECKOUT))
    # The checkout's token was confirmed by the order: linked (the event itself is off).
    assert names(calls) == ["identify"]
    assert calls[0]["userId"] == CUSTOMER_ID and calls[0]["anonymousId"] == ANON
    assert calls[0]["traits"] == {"last_browsed_at": AT}
    assert names(browse(s, cart_token=CART)) == ["product_viewed"]  # no second link
    assert s.counters["browse_links:pixel:linked"] == 1


def test_a_guest_cart_claim_waits_and_an_unconfirmed_token_links_nobody() -> None:
    s = shop()
    browse(s, cart_token="guest-cart")
    # A signed order naming another cart links nothing for this browser.
    calls = s.feed("orders/create", order())
    assert all(c.get("anonymousId") != ANON for c in calls)
    assert s.record(cart_claim("guest-cart"))["c"] == [ANON]  # type: ignore[index]
    assert s.record(client_name(ANON)).get("user") is None  # type: ignore[union-attr]


def test_a_record_under_a_colliding_digest_is_not_this_browsers() -> None:
    s = shop()
    # Another browser's record, linked to a person, under this browser's name (12 hex digits
    # collide by chance): this browser's events must not take that person's id.
    other = client_anonymous_id(SHOP, "someone-else")
    s.state[s.keys.state(client_name(ANON))] = orjson.dumps({"a": other, "user": CUSTOMER_ID})
    calls = browse(s)
    assert names(calls) == ["product_viewed"] and "userId" not in calls[0]
    assert s.record(client_name(ANON))["a"] == ANON  # type: ignore[index]


def test_a_claim_is_renewed_by_later_events_at_most_every_15_minutes() -> None:
    s = shop()
    browse(s, cart_token=CART)
    first = s.record(cart_claim(CART))
    s.now = NOW + timedelta(minutes=10)
    browse(s, cart_token=CART, product=7002, variant_id=9002)
    assert s.record(cart_claim(CART)) == first  # not written again
    s.now = NOW + timedelta(minutes=50)
    browse(s, cart_token=CART, product=7003, variant_id=9003)
    renewed = s.record(cart_claim(CART))
    assert renewed is not None and renewed["c"] == [ANON] and renewed["t"] > first["t"]  # type: ignore[index]


def test_claims_are_capped_per_token() -> None:
    s = shop()
    for i in range(10):
        browse(s, client_id=f"forger-{i}", cart_token=CART)
    assert len(s.record(cart_claim(CART))["c"]) == 4  # type: ignore[index]


def test_a_linked_browser_is_never_sampled_out() -> None:
    s = shop(sample_rate=0.0)
    assert browse(s, cart_token=CART) == []
    assert s.counters["browse:product_viewed:sampled_out"] == 1
    s.feed("orders/create", order())
    calls = browse(s, product=7009, variant_id=9009)
    # Sampled-out visits were not recorded (no write for a dropped event): this one is the
    # first last_browsed_at the person gets.
    assert names(calls) == ["identify", "product_viewed"]
    assert calls[0]["traits"] == {"last_browsed_at": AT}
    assert calls[1]["userId"] == CUSTOMER_ID


def test_duplicates_and_repeat_views_are_counted_not_sent() -> None:
    s = shop()
    ev = px.event(timestamp=AT, event_id="same")
    assert names(s.feed("pixel/product_viewed", px.body(ev))) == ["product_viewed"]
    assert s.feed("pixel/product_viewed", px.body(ev)) == []
    assert browse(s) == []  # the same product again, within the window
    assert s.counters["browse:product_viewed:duplicate"] == 1
    assert s.counters["browse:product_viewed:throttled"] == 1
    # No seen-marker per browse event (the client record deduplicates).
    assert s.feed_batch([("pixel/product_viewed", px.body(px.event()))]).seen == []


def test_segment_naming_names_browse_events_apart_from_webhook_events() -> None:
    config = ProcessConfig.defaults(
        api_version="",
        naming="segment",
        browse=BrowsePolicy(forwarded=frozenset({"product_viewed", "product_added_to_cart"})),
    )
    s = MemoryShop(config=config, source=Sources(ShopifySource(), pixel=PixelSource()), now=NOW)
    (viewed,) = browse(s)
    (added,) = browse(s, "product_added_to_cart")
    assert viewed["event"] == "Product Viewed"
    assert viewed["properties"]["products"][0]["product_id"] == "7001"
    assert added["event"] == "Storefront Product Added"  # the webhook's is "Product Added"


def test_per_store_browse_settings_over_the_environments(tmp_path: Any) -> None:
    from bridge.config.settings import ConfigError, Settings, load_settings
    from bridge.config.stores import load_stores

    path = tmp_path / "stores.toml"
    path.write_text(
        '[stores."a.myshopify.com"]\nwebhook_secret = "s"\npipelines_write_key = "k"\n'
        'pixel_events = ["product_viewed", "search_submitted"]\npixel_sample_rate = 0.25\n'
        "pixel_client_hourly_cap = 0\n"
        '[stores."b.myshopify.com"]\nwebhook_secret = "s"\npipelines_write_key = "k"\n'
    )
    settings = Settings(
        bridge_stores_file=str(path), pixel_view_window_s=600, pixel_events="product_viewed"
    )
    registry = load_stores(settings)
    a = ProcessConfig.for_shop(settings, registry.get("a.myshopify.com")).browse
    b = ProcessConfig.for_shop(settings, registry.get("b.myshopify.com")).browse
    assert a == BrowsePolicy(
        forwarded=frozenset({"product_viewed", "search_submitted"}),
        view_window_s=600,
        sample_rate=0.25,
        client_hourly_cap=0,
    )
    assert b == BrowsePolicy(forwarded=frozenset({"product_viewed"}), view_window_s=600)
    assert registry.takes_pixels("A.myshopify.com") and not registry.takes_pixels("c.example")
    with pytest.raises(ConfigError, match="PIXEL_EVENTS"):
        load_settings(pixel_events="product_viewed,page_viewed")
    path.write_text('[stores."a.myshopify.com"]\nwebhook_secret = "s"\npixel_events = ["x"]\n')
    with pytest.raises(ConfigError, match="pixel_events"):
        load_stores(Settings(bridge_stores_file=str(path), pipelines_dry_run=True))


def test_browse_events_stay_out_of_the_webhook_log_and_its_charts() -> None:
    """The ops console's webhook log and webhook counts are about webhooks: a busy storefront's
    browse events must not push the shop's webhooks out of its 500-entry log."""
    s = shop()
    ev = px.event("product_viewed", timestamp=AT)
    cart = {"id": "c1", "token": "c1", "line_items": []}
    commit = s.feed_batch([("pixel/product_viewed", px.body(ev)), ("carts/create", cart)])
    logged = [orjson.loads(e)["topic"] for e in commit.webhook_log]
    assert logged == ["carts/create"]
    assert len(commit.webhooks_at) == 1
