"""Product metadata on every item (issue 17, item 5): metafield parsing, the cache's records,
and enrichment through `process`, generic over every fact that carries items. Pure: `process`
runs over an in-memory state, as the drain would over Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from bridge.canonical import (
    CanonicalEvent,
    CartSnapshot,
    Item,
    Mapped,
    PersonRef,
    ProductFact,
    SubscriptionFact,
)
from bridge.delivery.outbox import OutboxEntry
from bridge.identity.records import StateView
from bridge.products import cache
from bridge.products.enrich import enrich, product_ids, record_names
from bridge.products.record import MetafieldKeys, metadata, parse_bool, parse_days, to_record
from bridge.sources.shopify import ShopifySource
from bridge.store.facade import Keys
from bridge.store.wire import Envelope
from bridge.worker.processor import ProcessConfig, process
from tests.conftest import SHOP
from tests.products import order_body, product_webhook, refund_body, replenishing

K = Keys(SHOP)
NOW = datetime(2026, 3, 10, tzinfo=UTC)


# --- metafield values, as merchants write them ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "days"),
    [
        ("30", 30),
        (" 45 ", 45),
        ("+7", 7),
        ("30.0", 30),  # number_decimal
        (30, 30),
        ("3650", 3650),
        ("3651", None),  # beyond ten years
        ("abc", None),
        ("", None),
        ("-5", None),
        (-5, None),
        ("0", None),
        ("1e30", None),
        ("1E+30", None),
        (1e30, None),
        ("Infinity", None),
        ("NaN", None),
        ("30.5", None),
        ("9" * 400, None),
        (None, None),
        (True, None),
        ("\ud800", None),  # a lone surrogate
        ([30], None),
        ({"value": 30}, None),
    ],
)
def test_days_to_replenish_reads_only_whole_days_in_range(raw: Any, days: int | None) -> None:
    assert parse_days(raw) == days


@pytest.mark.parametrize(
    ("raw", "flag"),
    [
        ("true", True),
        ("TRUE ", True),
        ("1", True),
        ("yes", True),
        (True, True),
        ("false", False),
        ("0", False),
        ("no", False),
        (False, False),
        ("maybe", None),
        ("", None),
        (None, None),
        (1, None),
        ("\ud800", None),
        (["true"], None),
    ],
)
def test_replenishable_reads_a_boolean_or_nothing(raw: Any, flag: bool | None) -> None:
    assert parse_bool(raw) is flag


def test_a_hostile_record_reads_as_unset_metadata() -> None:
    keys = MetafieldKeys()
    rec: dict[str, Any] = {
        "v": "",
        "mf": {
            "custom.replenishable": ["yes please", "boolean"],
            "custom.days_to_replenish": ["1e30", "number_integer"],
        },
        "c": 5,
        "t": "  ",
        "vn": None,
    }
    meta = metadata(rec, keys)
    assert meta is not None
    assert (meta.replenishable, meta.days_to_replenish, meta.category, meta.vendor) == (
        None,
        None,
        None,
        None,
    )
    assert metadata({"v": "", "mf": "not a dict"}, keys) is not None
    assert metadata({"v": "", "gone": True}, keys) is None


def test_a_record_is_bounded_whatever_the_payload() -> None:
    fact = ProductFact(
        product_id="1",
        product_type="x" * 10_000,
        metafields={f"ns.k{i}": ("v" * 10_000, "t" * 1_000) for i in range(500)},
        metafield_keys=tuple(f"ns.k{i}" for i in range(500)),
    )
    rec = to_record(fact)
    assert len(orjson.dumps(rec)) < 10_000


# --- enrichment, generic over the canonical facts ---------------------------------------------


def _view(*records: tuple[str, dict[str, Any]]) -> StateView:
    view = StateView()
    for name, rec in records:
        view.put(name, rec)
    return view


SHAMPOO = (
    "product:11",
    {
        "v": "2026-01-01T00:00:00.000Z",
        "t": "Shampoo",
        "c": "Hair Care",
        "vn": "Acme",
        "mf": {
            "custom.replenishable": ["true", "boolean"],
            "custom.days_to_replenish": ["30", "number_integer"],
        },
        "mk": ["custom.replenishable", "custom.days_to_replenish"],
    },
)
MUG = ("product:12", {"v": "", "t": "Mugs", "vn": "Potter", "mf": {}})


def _item(pid: str, **kw: Any) -> Item:
    return Item(product_id=pid, variant_id=pid + "0", sku="SKU-" + pid, quantity=1, **kw)


def test_every_fact_holding_items_is_enriched_without_code_of_its_own() -> None:
    person = PersonRef(customer_id="7")
    at = NOW
    viewed = CanonicalEvent(  # an event this module has never heard of (the pixel's)
        name="product_viewed", timestamp=at, key="v", person=person, items=(_item("11"),)
    )
    sub = SubscriptionFact(
        provider="shopify",
        subscription_id="9",
        person=person,
        version=at,
        items=(_item("12"),),
    )
    cart = CartSnapshot(
        cart_token="c",
        updated_at=at,
        items=(_item("11"), _item("13")),
        value=Decimal(1),
        currency="USD",
    )
    mapped = Mapped(source="x", topic="x/y", events=(viewed,), subscription=sub, cart=cart)
    assert product_ids(mapped) == ["11", "13", "12"]  # in the order of Mapped's fields
    assert record_names(mapped) == ["product:11", "product:13", "product:12", cache.WANTED]
    view = _view(SHAMPOO, MUG)
    out = enrich(mapped, view, MetafieldKeys(), NOW)
    shampoo = out.events[0].items[0]
    assert (shampoo.category, shampoo.vendor, shampoo.replenishable, shampoo.days_to_replenish) == (
        "Hair Care",
        "Acme",
        True,
        30,
    )
    mug = out.subscription.items[0] if out.subscription else None
    assert mug is not None and (mug.category, mug.vendor, mug.replenishable) == (
        "Mugs",  # no taxonomy category: the product type
        "Potter",
        None,
    )
    assert out.cart is not None and out.cart.items[0] == shampoo
    unknown = out.cart.items[1]
    assert unknown == _item("13")  # not cached: goes out as it came
    assert cache.wanted(view) == {"13": "2026-03-10T00:00:00.000Z"}


def test_a_product_not_cached_is_wanted_once_and_a_gone_one_never() -> None:
    mapped = Mapped(
        source="x",
        topic="x/y",
        events=(
            CanonicalEvent(
                name="e",
                timestamp=NOW,
                key="k",
                person=PersonRef(),
                items=(_item("13"), _item("13"), _item("14"), Item(product_id="gid\ud800")),
            ),
        ),
    )
    view = _view(("product:14", {"v": "", "gone": True}))
    enrich(mapped, view, MetafieldKeys(), NOW)
    enrich(mapped, view, MetafieldKeys(), datetime(2026, 3, 11, tzinfo=UTC))
    assert cache.wanted(view) == {"13": "2026-03-10T00:00:00.000Z"}


def test_the_wanted_list_is_bounded() -> None:
    view = StateView()
    cache.want(view, [str(i) for i in range(cache.MAX_WANTED + 50)], NOW)
    assert len(cache.wanted(view)) == cache.MAX_WANTED
    cache.want(view, ["100000"], NOW)
    ids = cache.wanted(view)
    assert len(ids) == cache.MAX_WANTED and "100000" in ids  # the newest kept,
    assert "50" not in ids and "51" in ids  # the oldest forgotten first


def test_a_record_read_with_other_keys_is_used_and_wanted_again() -> None:
    keys = MetafieldKeys(replenishable="shop.refill", days_to_replenish="shop.refill_days")
    view = _view(SHAMPOO)
    mapped = Mapped(
        source="x",
        topic="x/y",
        events=(
            CanonicalEvent(
                name="e", timestamp=NOW, key="k", person=PersonRef(), items=(_item("11"),)
            ),
        ),
    )
    out = enrich(mapped, view, keys, NOW)
    item = out.events[0].items[0]
    assert item.category == "Hair Care" and item.replenishable is None
    assert "11" in cache.wanted(view)


# --- the cache's facts ----------------------------------------------------------------------


def _fact(**kw: Any) -> ProductFact:
    return ProductFact(product_id="11", **kw)


def test_an_older_fact_never_overwrites_a_newer_record() -> None:
    view = StateView()
    new = datetime(2026, 2, 1, tzinfo=UTC)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    assert cache.apply(view, _fact(version=new, product_type="New"))
    assert not cache.apply(view, _fact(version=old, product_type="Old"))
    assert (view.get("product:11") or {})["t"] == "New"
    # a delete has no time: it applies
    assert cache.apply(view, _fact(gone=True))
    assert (view.get("product:11") or {}).get("gone") is True


def test_a_webhook_without_metafields_keeps_the_cached_ones() -> None:
    view = StateView()
    t1, t2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    metafields = {"custom.replenishable": ("true", "boolean")}
    cache.apply(
        view,
        _fact(
            version=t1,
            category="Hair Care",
            metafields=metafields,
            metafield_keys=("custom.replenishable", "custom.days_to_replenish"),
        ),
    )
    cache.apply(view, _fact(version=t2, product_type="Shampoo"))
    rec = view.get("product:11") or {}
    assert rec["mf"] == {"custom.replenishable": ["true", "boolean"]}
    assert rec["c"] == "Hair Care" and rec["t"] == "Shampoo"


def test_a_fact_for_an_invalid_id_writes_nothing() -> None:
    view = StateView()
    assert not cache.apply(view, ProductFact(product_id="../../x"))
    assert view.writes() == ({}, set())


# --- through `process`, as the drain runs it --------------------------------------------------


class Drain:
    """`process` over an in-memory state, committing as the drain does."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.n = 0
        self.loads = 0

    def run(self, *webhooks: tuple[str, dict[str, Any]], now: datetime = NOW) -> list[Any]:
        batch = []
        for topic, body in webhooks:
            self.n += 1
            env = Envelope(SHOP, topic, f"w{self.n}", orjson.dumps(body), received_ms=1)
            batch.append(env.encode())

        def load(names: list[str]) -> dict[str, bytes | None]:
            self.loads += 1
            return {n: self.state.get(n) for n in names}

        commit = process(
            SHOP,
            batch,
            source=ShopifySource(),
            config=ProcessConfig.defaults(api_version="", order_completed_on="orders/create"),
            load=load,
            key_of=K.state,
            now=now,
        )
        assert not commit.letters, commit.letters
        for key, (value, _) in commit.state_set.items():
            self.state[key] = value
        for key in commit.state_del:
            self.state.pop(key, None)
        return [orjson.loads(OutboxEntry.decode(raw).call) for raw in commit.calls]

    def record(self, name: str) -> Any:
        raw = self.state.get(K.state(name))
        return orjson.loads(raw) if raw else None


def _tracks(calls: list[Any], event: str) -> list[Any]:
    return [c for c in calls if c["type"] == "track" and c["event"] == event]


def test_an_order_before_its_product_is_cached_goes_out_bare_and_the_next_has_it() -> None:
    drain = Drain()
    first = drain.run(("orders/create", order_body(1, lines=[(11, "SH-1", 1)])))
    [item] = _tracks(first, "order_completed")[0]["properties"]["items"]
    assert "replenishable" not in item and "vendor" not in item
    assert item["category"] == "Payload Type"  # the payload's own product type
    assert drain.record(cache.WANTED)["ids"] == {"11": "2026-03-10T00:00:00.000Z"}
    assert drain.loads == 1  # the product records and the wanted list rode in the one load
    drain.run(("products/update", product_webhook(11, metafields=replenishing("30"))))
    assert drain.record(cache.WANTED) is None
    second = drain.run(("orders/create", order_body(2, lines=[(11, "SH-1", 1)])))
    [item] = _tracks(second, "order_completed")[0]["properties"]["items"]
    assert item["replenishable"] is True and item["days_to_replenish"] == 30
    assert item["vendor"] == "Acme" and item["category"] == "Shampoo"


def test_a_product_update_earlier_in_the_batch_counts_for_the_orders_after_it() -> None:
    drain = Drain()
    calls = drain.run(
        ("products/update", product_webhook(11, category="Shampoo & Conditioner")),
        ("orders/create", order_body(1, lines=[(11, "SH-1", 1)])),
    )
    [item] = _tracks(calls, "order_completed")[0]["properties"]["items"]
    assert item["category"] == "Shampoo & Conditioner"
    assert drain.loads == 1  # the product records rode in the batch's one load


def test_refund_and_cart_items_are_enriched_too() -> None:
    drain = Drain()
    drain.run(("products/update", product_webhook(11, vendor="Refill Co")))
    order = order_body(1, lines=[(11, "SH-1", 2)])
    drain.run(("orders/create", order))
    calls = drain.run(("refunds/create", refund_body(9, order, [(0, 1)])))
    [item] = _tracks(calls, "order_refunded")[0]["properties"]["items"]
    assert item["vendor"] == "Refill Co" and item["quantity"] == 1


def test_products_delete_removes_the_metadata() -> None:
    drain = Drain()
    drain.run(("products/update", product_webhook(11, metafields=replenishing("30"))))
    drain.run(("products/delete", {"id": 11}))
    assert drain.record("product:11") == {"v": "", "gone": True}
    calls = drain.run(("orders/create", order_body(1, lines=[(11, "SH-1", 1)])))
    [item] = _tracks(calls, "order_completed")[0]["properties"]["items"]
    assert "vendor" not in item and "replenishable" not in item
    assert drain.record(cache.WANTED) is None  # a deleted product is not asked for


# --- hostile product payloads -----------------------------------------------------------------

ODD: list[Any] = [
    "\ud800",
    2**80,
    -(2**70),
    1e308,
    "x" * 10_000,
    {},
    [],
    None,
    "",
    [{}] * 50,
    True,
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:2]):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _set(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = orjson.loads(orjson.dumps(body))
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


def test_no_hostile_product_payload_ever_blocks_an_order() -> None:
    base = product_webhook(11, metafields=replenishing("30"), category="Hair Care")
    for path in _paths(base):
        for odd in ODD:
            drain = Drain()
            body = _set(base, path, odd)
            batch = [Envelope(SHOP, "products/update", "p", _dumps(body), received_ms=1).encode()]
            commit = process(
                SHOP,
                batch,
                source=ShopifySource(),
                config=ProcessConfig.defaults(api_version=""),
                load=lambda names: dict.fromkeys(names),
                key_of=K.state,
                now=NOW,
            )
            for key, (value, _) in commit.state_set.items():
                assert len(value) < 20_000, (path, odd)
                drain.state[key] = value
            calls = drain.run(("orders/create", order_body(1, lines=[(11, "SH-1", 1)])))
            assert _tracks(calls, "order_completed"), (path, odd)


def _dumps(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer past 64 bits: as a JSON text, which Shopify could send
        import json

        return json.dumps(body).encode()


def test_lookups_and_refresh_pages_are_sized_under_the_maximum() -> None:
    from bridge.backfill.cost import requested_cost
    from bridge.products import sync

    assert requested_cost(sync.NODES_QUERY, {"ids": ["x"] * 250}) == 1000
    assert sync.fit_ids(1000.0, 5000) == 250
    assert sync.fit_ids(100.0, 5000) == 25
    assert sync.fit_ids(1.0, 5000) == 1
    assert requested_cost(sync.PRODUCTS_QUERY, {"first": 100}) == 403
    assert sync.fit_products(1000.0, 100) == 100
    assert sync.fit_products(1000.0, 250) == 249
    assert sync.fit_products(203.0, 250) == 50


def test_a_stale_update_retried_after_a_delete_does_not_bring_the_product_back() -> None:
    from tests.rules import map_context

    source = ShopifySource()
    trigger = datetime(2026, 3, 1, tzinfo=UTC)
    ctx = map_context(SHOP).model_copy(update={"triggered_at": trigger})
    view = StateView()
    update = source.map("products/update", product_webhook(11, updated="2026-02-01T00:00:00Z"), ctx)
    delete = source.map("products/delete", {"id": 11}, ctx)
    assert update.product is not None and delete.product is not None
    cache.apply(view, update.product)
    cache.apply(view, delete.product)
    cache.apply(view, update.product)  # Shopify's retry of the old update
    assert (view.get("product:11") or {}).get("gone") is True


@pytest.mark.parametrize("days", ["abc", "-5", "1e30", None, "0", "\ud800", "31.5"])
def test_an_admin_read_with_hostile_metafields_caches_a_product_without_days(days: Any) -> None:
    from bridge.products import sync
    from tests.rules import map_context

    node = {
        "id": "gid://shopify/Product/11",
        "updatedAt": "2026-02-01T00:00:00Z",
        "productType": "Shampoo",
        "vendor": "Acme",
        "category": "not an object",
        "m0": {"value": "true", "type": "boolean"},
        "m1": None if days is None else {"value": days, "type": "number_integer"},
    }
    body = sync.product_body(node, MetafieldKeys())
    assert body is not None
    mapped = ShopifySource().map("backfill/product", body, map_context(SHOP))
    assert mapped.product is not None
    view = StateView()
    cache.apply(view, mapped.product)
    meta = metadata(view.get("product:11") or {}, MetafieldKeys())
    assert meta is not None
    assert (meta.replenishable, meta.days_to_replenish, meta.category) == (True, None, "Shampoo")
    assert not meta.stale_keys


@pytest.mark.parametrize(
    "node", [{}, {"id": None}, {"id": 11}, {"id": ""}, {"id": "gid://shopify/Product/"}]
)
def test_an_admin_node_without_a_usable_id_is_skipped(node: dict[str, Any]) -> None:
    from bridge.products import sync

    assert sync.product_body(node, MetafieldKeys()) is None


# --- products/update changes only the metafields it carries (review of issue 17, item 2) ------


def _admin_read(product_id: int, days: str) -> dict[str, Any]:
    """The `backfill/product` body an Admin API read of the product queues (products/sync.py)."""
    from bridge.products.sync import product_body

    node = {
        "id": f"gid://shopify/Product/{product_id}",
        "updatedAt": "2026-01-01T00:00:00Z",
        "productType": "Shampoo",
        "vendor": "Acme",
        "category": None,
        "m0": {"value": "true", "type": "boolean"},
        "m1": {"value": days, "type": "number_integer"},
    }
    body = product_body(node, MetafieldKeys())
    assert body is not None
    return body


def _sample_update(product_id: int, updated: str) -> dict[str, Any]:
    """The recorded `products/update` sample (no metafields: its subscription named none)."""
    from importlib.resources import files

    body = orjson.loads((files("bridge") / "samples" / "products-update.json").read_bytes())
    body.update(id=product_id, admin_graphql_api_id=None, updated_at=updated)
    return dict(body)


@pytest.mark.parametrize(
    "webhook",
    [
        pytest.param(lambda: _sample_update(11, "2026-02-01T00:00:00Z"), id="no-metafields"),
        pytest.param(
            lambda: product_webhook(11, metafields={"reviews.rating": ("4.5", "rating")}),
            id="another-namespace",
        ),
        pytest.param(
            lambda: product_webhook(11, metafields={"custom.replenishable": ("true", "boolean")}),
            id="one-of-the-two-keys",
        ),
    ],
)
def test_products_update_keeps_the_metafields_it_does_not_carry(webhook: Any) -> None:
    drain = Drain()
    drain.run(("backfill/product", _admin_read(11, "30")))
    drain.run(("products/update", webhook()))
    calls = drain.run(("orders/create", order_body(1, lines=[(11, "SH-1", 1)])))
    [item] = _tracks(calls, "order_completed")[0]["properties"]["items"]
    assert (item["replenishable"], item["days_to_replenish"]) == (True, 30)
    assert item["vendor"] == "Acme"


def test_products_update_changes_the_metafields_it_carries() -> None:
    drain = Drain()
    drain.run(("backfill/product", _admin_read(11, "30")))
    days_only = {"custom.days_to_replenish": ("45", "number_integer")}
    drain.run(("products/update", product_webhook(11, metafields=days_only)))
    calls = drain.run(("orders/create", order_body(1, lines=[(11, "SH-1", 1)])))
    [item] = _tracks(calls, "order_completed")[0]["properties"]["items"]
    assert (item["replenishable"], item["days_to_replenish"]) == (True, 45)
    # A metafield the webhook carries as unset (null) is unset.
    unset = {"custom.replenishable": (None, "boolean")}
    drain.run(
        ("products/update", product_webhook(11, metafields=unset, updated="2026-02-02T00:00:00Z"))
    )
    calls = drain.run(("orders/create", order_body(2, lines=[(11, "SH-1", 1)])))
    [item] = _tracks(calls, "order_completed")[0]["properties"]["items"]
    assert "replenishable" not in item and item["days_to_replenish"] == 45


def test_a_webhook_flooding_another_namespace_never_evicts_the_stores_keys() -> None:
    view = StateView()
    t1, t2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    keys = ("custom.replenishable", "custom.days_to_replenish")
    learned = {"custom.replenishable": ("true", "boolean"), "custom.days_to_replenish": ("30", "x")}
    cache.apply(view, _fact(version=t1, metafields=learned, metafield_keys=keys))
    flood = {f"other.k{i}": ("v", "single_line_text_field") for i in range(40)}
    cache.apply(view, _fact(version=t2, metafields=flood))
    rec = view.get("product:11") or {}
    assert len(rec["mf"]) == 20
    assert rec["mf"]["custom.days_to_replenish"] == ["30", "x"]
    assert rec["mk"] == list(keys)
