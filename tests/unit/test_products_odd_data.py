"""Odd data down the products path (review of issue 17): product webhooks and Admin reads with
nulls, missing parts and hostile metafields, orders and refunds with odd quantities and times.
Nothing raises: each either goes through (what cannot be read is left out) or is dead-lettered
with a specific reason, and the person's replenishment traits stay well-formed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.delivery.outbox import OutboxEntry
from bridge.products.record import MetafieldKeys
from bridge.products.sync import product_body
from bridge.sources.shopify import ShopifySource
from bridge.store.facade import Keys
from bridge.store.wire import Envelope
from bridge.worker.processor import ProcessConfig, process
from tests.conftest import SHOP
from tests.products import order_body, product_webhook, refund_body, replenishing
from tests.unit.test_products import Drain

K = Keys(SHOP)
NOW = datetime(2026, 3, 10, tzinfo=UTC)


def feed(drain: Drain, topic: str, body: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """One webhook through `process` (raw JSON, as Shopify may write numbers no int64 holds);
    its calls and the reasons of its dead letters."""
    drain.n += 1
    env = Envelope(SHOP, topic, f"odd{drain.n}", json.dumps(body).encode(), received_ms=1)
    commit = process(
        SHOP,
        [env.encode()],
        source=ShopifySource(),
        config=ProcessConfig.defaults(api_version="", order_completed_on="orders/create"),
        load=lambda names: {n: drain.state.get(n) for n in names},
        key_of=K.state,
        now=NOW,
    )
    for key, (value, _) in commit.state_set.items():
        drain.state[key] = value
    for key in commit.state_del:
        drain.state.pop(key, None)
    return [json.loads(c) for c in _calls(commit)], [
        str(letter.reason) for letter in commit.letters
    ]


def _calls(commit: Any) -> list[bytes]:
    return [OutboxEntry.decode(raw).call for raw in commit.calls]


def items_of(calls: list[Any]) -> list[dict[str, Any]]:
    return [
        item
        for c in calls
        if c["type"] == "track" and c["event"] == "order_completed"
        for item in c["properties"]["items"]
    ]


def traits_of(drain: Drain) -> dict[str, Any]:
    rec = drain.record("person:cust:5001") or {}
    return {k: v for k, (_, v) in (rec.get("f") or {}).items()}


def test_a_product_with_nulls_and_no_variants_is_cached_and_enriches() -> None:
    drain = Drain()
    body = product_webhook(11, metafields=replenishing("30"))
    body.update(product_type=None, vendor=None, category=None)
    del body["variants"]
    assert feed(drain, "products/update", body) == ([], [])
    calls, letters = feed(drain, "orders/create", order_body(1, lines=[(11, "SH-1", 1)]))
    [item] = items_of(calls)
    assert not letters
    assert item["category"] == "Payload Type"  # the cache has none: the payload's own
    assert "vendor" not in item and item["days_to_replenish"] == 30
    bare = {"id": 12, "product_type": None, "variants": None, "metafields": None, "category": None}
    assert feed(drain, "products/update", bare) == ([], [])


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "1e309",
        "NaN",
        "Infinity",
        "-5",
        "0",
        "30.5",
        "99999999999999999999999",
        "1" * 10_000,
        10**40,
        3.5,
        True,
        None,
        {"a": 1},
        ["30"],
    ],
)
def test_a_metafield_that_is_not_a_number_leaves_the_days_out(value: Any) -> None:
    drain = Drain()
    metafields = {
        "custom.replenishable": (value, "boolean"),
        "custom.days_to_replenish": (value, "number_integer"),
    }
    assert feed(drain, "products/update", product_webhook(11, metafields=metafields)) == ([], [])
    calls, letters = feed(drain, "orders/create", order_body(1, lines=[(11, "SH-1", 1)]))
    [item] = items_of(calls)
    assert not letters and "days_to_replenish" not in item
    assert traits_of(drain).get("next_replenishment_date") is None


def test_a_huge_days_to_replenish_is_capped_at_ten_years() -> None:
    drain = Drain()
    feed(drain, "products/update", product_webhook(11, metafields=replenishing("3650")))
    feed(drain, "products/update", product_webhook(12, metafields=replenishing("3651")))
    lines = [(11, "TEN", 10_000), (12, "OVER", 1)]
    calls, letters = feed(drain, "orders/create", order_body(1, lines=lines))
    assert not letters
    by_sku = {i["sku"]: i for i in items_of(calls)}
    assert by_sku["TEN"]["days_to_replenish"] == 3650 and "days_to_replenish" not in by_sku["OVER"]
    assert traits_of(drain)["next_replenishment_date"] == "2036-02-27T10:00:00.000Z"
    assert traits_of(drain)["replenishment_skus"] == ["TEN"]


def test_an_order_dated_at_the_end_of_time_gives_no_date_and_no_error() -> None:
    drain = Drain()
    feed(drain, "products/update", product_webhook(11, metafields=replenishing("3650")))
    body = order_body(1, created="9999-12-31T00:00:00Z", lines=[(11, "SH-1", 5)])
    calls, letters = feed(drain, "orders/create", body)
    assert not letters and items_of(calls)
    assert traits_of(drain).get("next_replenishment_date") is None


@pytest.mark.parametrize("quantity", [-5, -1, 0, "-2", None, 10**9])
def test_refunds_with_odd_quantities_never_raise(quantity: Any) -> None:
    drain = Drain()
    feed(drain, "products/update", product_webhook(11, metafields=replenishing("30")))
    order = order_body(1, created="2026-03-01T10:00:00Z", lines=[(11, "SH-1", 2)])
    feed(drain, "orders/create", order)
    refund = refund_body(5, order, [(0, 1)])
    refund["refund_line_items"][0]["quantity"] = quantity
    _, letters = feed(drain, "refunds/create", refund)
    date = traits_of(drain)["next_replenishment_date"]
    if letters:
        # A quantity the refund model refuses: the refund is dead-lettered, named by field.
        assert letters == [letters[0]] and "refund_line_items.0.quantity" in letters[0]
        assert date == "2026-04-30T10:00:00.000Z"
    else:
        assert date == "2026-04-30T10:00:00.000Z"  # nothing refunded counts


def test_odd_admin_reads_are_read_or_dead_lettered_never_raised() -> None:
    drain = Drain()
    nodes: list[dict[str, Any]] = [
        {
            "id": "gid://shopify/Product/31",
            "updatedAt": None,
            "productType": None,
            "vendor": None,
            "category": None,
            "m0": None,
            "m1": "junk",
        },
        {"id": "gid://shopify/Product/32", "m1": {"value": "1e400", "type": "number_decimal"}},
        {
            "id": "gid://shopify/Product/33",
            "vendor": [],
            "category": "x",
            "m0": {"value": 5, "type": None},
            "m1": {"value": ["30"], "type": 7},
        },
        {"id": 34},
        {"id": "gid://shopify/Product/"},
    ]
    bodies = [product_body(n, MetafieldKeys()) for n in nodes]
    assert [b is None for b in bodies] == [False, False, False, True, True]
    outcomes = [feed(drain, "backfill/product", b) for b in bodies if b is not None]
    assert outcomes[0] == ([], []) and outcomes[1] == ([], [])
    assert outcomes[2][1] == ["backfill/product: vendor: value_error"]
