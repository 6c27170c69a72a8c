"""The stateful step through the real processor over an in-memory shop: joins, once-only rules,
suppression, holds with an injected clock, the order index and versioned traits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson

from bridge.canonical import OrderFact, RefundFact
from bridge.identity import DecisionView, expire_held, expire_refunds, orders
from bridge.worker.processor import ProcessConfig
from tests.journeys import (
    CART,
    CHECKOUT,
    CUSTOMER_ID,
    EMAIL,
    NOW,
    MemoryShop,
    cart,
    checkout,
    names,
    order,
    refund,
    tracks,
)


def test_added_to_cart_only_for_real_additions_with_the_added_quantity() -> None:
    shop = MemoryShop()
    first = shop.feed("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    assert names(first) == ["added_to_cart"]
    assert first[0]["properties"]["items"][0]["quantity"] == 1
    more = shop.feed("carts/update", cart(CART, {11: 3, 22: 1}, "2024-11-06T01:05:00.000Z"))
    assert names(more) == ["added_to_cart", "added_to_cart"]
    assert sorted(
        (c["properties"]["items"][0]["variant_id"], c["properties"]["items"][0]["quantity"])
        for c in more
    ) == [("11", 2), ("22", 1)]
    assert shop.feed("carts/update", cart(CART, {11: 2}, "2024-11-06T01:06:00.000Z")) == []
    # An update older than the stored state is ignored, and so is a redelivery.
    assert shop.feed("carts/update", cart(CART, {11: 9}, "2024-11-06T01:02:00.000Z")) == []
    assert shop.feed("carts/update", cart(CART, {11: 2}, "2024-11-06T01:06:00.000Z")) == []
    assert shop.counters["events:added_to_cart:stale"] == 2
    assert all(c["anonymousId"] and "userId" not in c for c in first + more)


def test_same_addition_gets_the_same_message_id_whichever_snapshot_shows_it() -> None:
    a, b = MemoryShop(), MemoryShop()
    a.feed("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    a.feed("carts/update", cart(CART, {11: 1, 22: 1}, "2024-11-06T01:05:00.000Z"))
    b.feed("carts/update", cart(CART, {11: 1, 22: 1}, "2024-11-06T01:05:00.000Z"))
    b.feed("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    ids = lambda s: sorted(c["messageId"] for c in s.deliver())  # noqa: E731
    assert ids(a) == ids(b)


def test_checkout_without_contact_is_held_until_an_update_brings_one() -> None:
    shop = MemoryShop()
    shop.feed("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    assert (
        shop.feed("checkouts/create", checkout(email=False, updated_at="2024-11-06T02:22:02Z"))
        == []
    )
    assert shop.counters["events:checkout_started:held"] == 1
    assert shop.record("held:checkouts") == {"e": {CHECKOUT: "2024-11-06T12:00:00.000Z"}}
    calls = shop.feed("checkouts/update", checkout(email=True, updated_at="2024-11-06T02:30:00Z"))
    assert names(calls) == ["identify", "checkout_started"]
    identify, started = calls
    assert identify["userId"] == started["userId"] == CUSTOMER_ID
    assert identify["traits"]["email"] == EMAIL
    assert identify["anonymousId"] == started["anonymousId"]  # merges the cart's activity
    assert identify["traits"]["cart_items"][0]["variant_id"] == "41327142600817"
    assert started["timestamp"] == "2024-11-06T02:22:00.000Z"  # the checkout's created_at
    assert shop.record("held:checkouts") is None
    # Once per checkout (the identify refreshes the live cart's `cart_updated_at`).
    again = shop.feed("checkouts/update", checkout(email=True, updated_at="2024-11-06T02:40:00Z"))
    assert names(again) == ["identify"]
    assert set(again[0]["traits"]) == {"cart_updated_at"}


def test_held_checkout_is_dropped_and_counted_after_the_wait() -> None:
    shop = MemoryShop()
    shop.feed("checkouts/create", checkout(email=False, updated_at="2024-11-06T02:22:02Z"))
    loaded = {k: v for k, v in shop.state.items()}
    view = DecisionView(loaded, key_of=shop.keys.state)
    assert expire_held(view, NOW + timedelta(hours=23), 24 * 3600) == 0
    assert expire_held(view, NOW + timedelta(hours=24), 24 * 3600) == 1
    assert view.counters == {"events:checkout_started:dropped_no_contact": 1}
    sets, dels = view.writes()
    for key, (value, _) in sets.items():
        shop.state[key] = value
    for key in dels:
        shop.state.pop(key, None)
    before = len(shop.outbox)
    commit = shop.feed_batch(
        [("checkouts/update", checkout(email=True, updated_at="2024-11-07T13:00:00Z"))]
    )
    late = [orjson.loads(e.call) for e in shop.outbox[before:]]
    assert "checkout_started" not in names(late)
    assert shop.counters["events:checkout_started:late_contact_dropped"] == 1
    # The person's ledger (the ops console's) says why their checkout_started never went.
    noted = [orjson.loads(entry) for _, entry in commit.ledger]
    assert [(e["e"], e["o"]) for e in noted if e["o"] != "queued"] == [
        ("checkout_started", "suppressed")
    ], noted
    assert any("waited too long for a contact" in e.get("r", "") for e in noted), noted


def test_order_suppresses_queued_and_later_cart_and_checkout_triggers() -> None:
    shop = MemoryShop()
    shop.feed("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    shop.feed("checkouts/update", checkout(email=True, updated_at="2024-11-06T02:30:00Z"))
    shop.feed("orders/create", order())
    # Queued before the order, dropped at delivery by their guards.
    assert "added_to_cart" not in names(shop.deliver())
    assert shop.delivery_counters == {
        "events:added_to_cart:suppressed": 1,
        "events:checkout_started:suppressed": 1,
    }
    assert shop.feed("carts/update", cart(CART, {11: 2}, "2024-11-06T03:00:00.000Z")) == []
    assert shop.counters["events:added_to_cart:suppressed"] == 1


def test_order_before_cart_and_checkout_sends_no_trigger() -> None:
    shop = MemoryShop()
    assert names(shop.feed("orders/paid", order())) == ["identify", "order_completed"]
    assert shop.feed("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z")) == []
    late = shop.feed("checkouts/update", checkout(email=True, updated_at="2024-11-06T02:30:00Z"))
    assert "checkout_started" not in names(late)
    assert shop.counters["events:checkout_started:suppressed"] == 1


def test_order_completed_once_and_carries_the_joins() -> None:
    shop = MemoryShop()
    first = shop.feed("orders/paid", order())
    assert shop.feed("orders/paid", order()) == []
    assert shop.feed("orders/create", order()) == []
    [done] = tracks(first)
    assert done["properties"]["cart_id"] == CART
    assert done["properties"]["checkout_id"] == "35550298931313"
    assert shop.counters["events:order_completed:duplicate"] == 1


def test_order_completed_on_create_for_delayed_payment_stores() -> None:
    shop = MemoryShop(ProcessConfig.defaults(api_version="", order_completed_on="orders/create"))
    assert names(tracks(shop.feed("orders/create", order()))) == ["order_completed"]
    assert tracks(shop.feed("orders/paid", order())) == []


def test_refund_before_order_waits_then_goes_to_the_order_person() -> None:
    shop = MemoryShop()
    assert shop.feed("refunds/create", refund()) == []
    assert shop.counters["events:order_refunded:held"] == 1
    calls = shop.feed("orders/paid", order())
    assert names(calls) == ["identify", "order_completed", "order_refunded"]
    assert calls[2]["userId"] == CUSTOMER_ID
    assert calls[0]["traits"]["lifetime_value"] == 515.0  # 600 - 85 refunded
    assert shop.record("held:refunds") is None
    assert shop.feed("refunds/create", refund()) == []


def test_refund_whose_order_never_comes_is_parked_with_its_reason() -> None:
    shop = MemoryShop()
    shop.feed("refunds/create", refund(order_id="999"))
    view = DecisionView(dict(shop.state), key_of=shop.keys.state)
    assert expire_refunds(view, NOW + timedelta(hours=5), 6 * 3600) == []
    [parked] = expire_refunds(view, NOW + timedelta(hours=6), 6 * 3600)
    assert b'"reason":"order not seen within 21600 s of its refund"' in parked
    assert b'"order_id":"999"' in parked
    assert view.counters == {"events:order_refunded:parked_unresolved": 1}


def test_guest_orders_count_once_when_the_customer_id_appears() -> None:
    shop = MemoryShop()
    guest = order(customer=None, email=EMAIL, contact_email=EMAIL)
    calls = shop.feed("orders/paid", guest)
    assert calls[0]["userId"] == EMAIL and calls[0]["traits"]["orders_count"] == 1
    second = order(customer=None, id=42, cart_token=None, checkout_token=None, checkout_id=None)
    shop.feed("orders/paid", second)
    customer = {"id": int(CUSTOMER_ID), "email": EMAIL, "updated_at": "2024-11-07T00:00:00Z"}
    [identify] = shop.feed("customers/update", customer)
    assert identify["userId"] == CUSTOMER_ID
    assert identify["traits"]["email"] == EMAIL
    assert identify["traits"]["orders_count"] == 2
    assert identify["traits"]["lifetime_value"] == 1200.0
    # The same order seen again under the customer is not counted twice.
    shop.feed("orders/fulfilled", order())
    traits = orders.order_traits(
        DecisionView(dict(shop.state), shop.keys.state), "cust:" + CUSTOMER_ID
    )
    assert traits["orders_count"] == 2


def test_order_index_is_idempotent_and_skips_test_orders() -> None:
    view = DecisionView()
    at = NOW
    fact = OrderFact(order_id="1", created_at=at, total=100, currency="USD")  # type: ignore[arg-type]
    assert orders.index_order(view, "cust:9", fact)
    assert not orders.index_order(view, "cust:9", fact)
    test = OrderFact(order_id="2", created_at=at, total=5, currency="USD", test=True)  # type: ignore[arg-type]
    assert not orders.index_order(view, "cust:9", test)
    r = RefundFact(order_id="1", refund_id="r", amount=30, created_at=at)  # type: ignore[arg-type]
    assert orders.index_refund(view, "cust:9", r) and not orders.index_refund(view, "cust:9", r)
    assert orders.order_traits(view, "cust:9") == {
        "orders_count": 1,
        "lifetime_value": 70.0,
        "first_order_date": "2024-11-06T12:00:00.000Z",
        "last_order_date": "2024-11-06T12:00:00.000Z",
        "last_order_id": "1",
    }


def test_an_older_payload_never_overwrites_newer_traits() -> None:
    shop = MemoryShop()
    new = {"id": 5, "email": "a@x.com", "first_name": "New", "updated_at": "2024-11-07T00:00:00Z"}
    old = {"id": 5, "email": "a@x.com", "first_name": "Old", "updated_at": "2024-11-01T00:00:00Z"}
    assert shop.feed("customers/update", new)[0]["traits"]["first_name"] == "New"
    assert shop.feed("customers/update", old) == []
    assert shop.feed("customers/update", new) == []  # nothing new: no identify


def test_completed_merge_sends_identify_then_alias_once_and_repoints() -> None:
    shop = MemoryShop()
    merge = {
        "admin_graphql_api_customer_kept_id": "gid://shopify/Customer/1",
        "admin_graphql_api_customer_deleted_id": "gid://shopify/Customer/2",
        "status": "completed",
        "errors": [],
    }
    calls = shop.feed("customers/merge", merge)
    assert [c["type"] for c in calls] == ["identify", "alias"]
    assert calls[1]["previousId"] == "2" and calls[1]["userId"] == "1"
    assert [e.kind for e in shop.outbox] == ["batch", "alias"]
    assert shop.feed("customers/merge", merge) == []
    later = shop.feed("orders/paid", order(customer={"id": 2, "email": "z@x.com"}, email="z@x.com"))
    assert {c["userId"] for c in later} == {"1"}


def test_failed_merge_changes_nothing() -> None:
    shop = MemoryShop()
    from tests.conftest import fixture_json

    assert shop.feed("customers/merge", fixture_json("customers-merge")) == []
    assert shop.state == {}
    assert shop.counters["merges:failed_ignored"] == 1


def test_backfill_order_indexes_without_an_event_unless_flagged() -> None:
    shop = MemoryShop()
    calls = shop.feed("backfill/order", order())
    assert names(calls) == ["identify"] and calls[0]["traits"]["orders_count"] == 1
    flagged = MemoryShop()
    [_, done] = flagged.feed("backfill/order", {**order(), "_cartbridge_events": True})
    assert done["event"] == "order_completed" and done["properties"]["backfill"] is True


def test_unjoined_order_suppresses_checkout_started_within_the_window() -> None:
    shop = MemoryShop()
    shop.feed("orders/paid", order(cart_token=None, checkout_token=None, checkout_id=None))
    body = checkout(email=True, updated_at="2024-11-06T02:58:00Z", token="other", cart_token="c2")
    body["created_at"] = "2024-11-06T03:10:00Z"  # 15 min after the order
    assert "checkout_started" not in names(shop.feed("checkouts/create", body))


def test_a_batch_needs_at_most_three_state_lookups() -> None:
    shop = MemoryShop()
    shop.feed_batch([("refunds/create", refund())])
    shop.feed_batch(
        [
            ("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z")),
            ("checkouts/update", checkout(email=True, updated_at="2024-11-06T02:30:00Z")),
            ("orders/paid", order()),
            ("refunds/create", refund(1002)),
        ]
    )
    assert max(shop.load_rounds) <= 3
    assert names(tracks(shop.deliver())).count("order_refunded") == 2


def renewal(**changes: Any) -> dict[str, Any]:
    """A renewal: billed by the subscription app, no cart or checkout, its lines under a plan."""
    body = order(cart_token=None, checkout_token=None, checkout_id=None, **changes)
    body["line_items"] = [{**line, "selling_plan_id": 6912345} for line in body["line_items"]]
    return body


def test_a_renewal_during_an_open_checkout_lets_its_reminder_go_out() -> None:
    shop = MemoryShop()
    calls = shop.feed("orders/paid", renewal())
    [done] = [c for c in calls if c.get("event") == "order_completed"]
    assert done["properties"]["subscription_renewal"] is True
    assert next(c for c in calls if c["type"] == "identify")["traits"]["orders_count"] == 1
    body = checkout(email=True, updated_at="2024-11-06T02:58:00Z", token="other", cart_token="c2")
    body["created_at"] = "2024-11-06T03:10:00Z"  # 15 min after the renewal
    assert "checkout_started" in names(shop.feed("checkouts/create", body))


def test_a_renewal_leaves_the_persons_live_cart_alone() -> None:
    shop = MemoryShop()
    shop.feed("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    joined = shop.feed("checkouts/update", checkout(email=True, updated_at="2024-11-06T02:30:00Z"))
    assert any("cart_items" in c.get("traits", {}) for c in joined)  # the live cart is theirs
    calls = shop.feed("orders/paid", renewal())
    assert all("cart_items" not in c.get("traits", {}) for c in calls)  # and stays theirs
    ordinary = MemoryShop()
    ordinary.feed("carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    ordinary.feed("checkouts/update", checkout(email=True, updated_at="2024-11-06T02:30:00Z"))
    cleared = ordinary.feed("orders/paid", order(cart_token=None, checkout_token=None))
    assert any(c.get("traits", {}).get("cart_items", 1) is None for c in cleared)


def test_the_first_order_of_a_subscription_is_a_checkout_conversion() -> None:
    body = order()  # from its checkout, with the cart and checkout tokens
    body["line_items"] = [{**line, "selling_plan_id": 6912345} for line in body["line_items"]]
    shop = MemoryShop()
    [done] = [c for c in shop.feed("orders/paid", body) if c.get("event") == "order_completed"]
    assert "subscription_renewal" not in done["properties"]


def test_an_unreadable_selling_plan_never_costs_the_order() -> None:
    body = renewal()
    body["line_items"] = [{**line, "selling_plan_id": {"odd": True}} for line in body["line_items"]]
    [done] = [
        c for c in MemoryShop().feed("orders/paid", body) if c.get("event") == "order_completed"
    ]
    assert "subscription_renewal" not in done["properties"]
