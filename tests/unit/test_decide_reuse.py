"""Work an order's decision does once instead of once a line (issue 19 item 5): a product's
metadata once per record a batch, each item enriched once, ids checked once, counters counted
once a webhook. Each fast path must give exactly what the plain rule gives."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from bridge.canonical import CanonicalEvent, Item, Mapped, OrderFact, PersonRef
from bridge.identity import orders, replenishment
from bridge.identity.records import StateView
from bridge.identity.view import DecisionView
from bridge.products import cache, record
from bridge.products.enrich import enrich
from bridge.products.record import MetafieldKeys, metadata

NOW = datetime(2026, 3, 10, tzinfo=UTC)
KEYS = MetafieldKeys()


def _product(days: str, category: str = "Hair Care") -> dict[str, Any]:
    return {
        "v": "2026-01-01T00:00:00.000Z",
        "c": category,
        "vn": "Acme",
        "mf": {
            "custom.replenishable": ["true", "boolean"],
            "custom.days_to_replenish": [days, "number_integer"],
        },
    }


def _item(pid: str | None, **kw: Any) -> Item:
    return Item(product_id=pid, sku=f"SKU-{pid}", name="n", price=Decimal("9.50"), **kw)


def _order(*items: Item) -> Mapped:
    person = PersonRef(customer_id="7", email="a@example.com")
    event = CanonicalEvent(
        name="order_completed", timestamp=NOW, key="o1", person=person, items=items
    )
    fact = OrderFact(order_id="1", created_at=NOW, total=Decimal(10), currency="USD", items=items)
    return Mapped(source="x", topic="orders/paid", events=(event,), order=fact, person=person)


# --- a product's metadata, once per record a batch ------------------------------------------


def test_metadata_is_worked_out_once_per_record_and_again_for_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []

    def counted(rec: dict[str, Any], keys: MetafieldKeys) -> record.Metadata | None:
        calls.append(rec)
        return metadata(rec, keys)

    monkeypatch.setattr(cache, "metadata", counted)
    view = StateView()
    view.put("product:11", _product("30"))
    first = cache.cached_metadata(view, "11", KEYS)
    again = cache.cached_metadata(view, "11", KEYS)
    assert first == (view.get("product:11"), metadata(_product("30"), KEYS))
    assert again[1] is first[1] and len(calls) == 1  # the second read reuses the first's
    # Other keys, or the record put again (a product fact): worked out anew.
    other = MetafieldKeys(replenishable="shop.refill", days_to_replenish="shop.days")
    assert cache.cached_metadata(view, "11", other)[1] == metadata(_product("30"), other)
    view.put("product:11", _product("45"))
    assert cache.cached_metadata(view, "11", KEYS)[1] == metadata(_product("45"), KEYS)
    assert len(calls) == 3
    # A new view (the next batch, or the next decide round) keeps nothing of this one's.
    fresh = StateView()
    fresh.put("product:11", _product("45"))
    cache.cached_metadata(fresh, "11", KEYS)
    assert len(calls) == 4


def test_metadata_of_no_record_or_a_gone_product() -> None:
    view = StateView()
    view.put("product:12", {"v": "", "gone": True})
    assert cache.cached_metadata(view, "11", KEYS) == (None, None)
    assert cache.cached_metadata(view, "12", KEYS) == ({"v": "", "gone": True}, None)


def test_a_product_put_mid_batch_resolves_replenishment_lines_with_its_new_metadata() -> None:
    view = StateView()
    view.put("product:11", {"v": "", "mf": {}})  # cached, but not replenishable
    assert enrich(_order(_item("11", quantity=1)), view, KEYS, NOW).order is not None
    view.put("product:11", _product("30"))  # a product fact of the same batch
    lines = [["11", "SKU-11", 1, None]]
    assert replenishment._resolve(view, lines, KEYS) == [["11", "SKU-11", 1, 30]]


# --- enrichment: each item once, counted once a webhook -------------------------------------


def test_an_item_in_the_event_and_the_order_is_enriched_once_and_as_replace_would() -> None:
    shared = _item("11", quantity=2, category="old")
    view = StateView()
    view.put("product:11", _product("30"))
    out = enrich(_order(shared, _item("13", quantity=1)), view, KEYS, NOW)
    assert out.order is not None
    event_item, order_item = out.events[0].items[0], out.order.items[0]
    assert event_item is order_item  # one rebuilt item for the one Item both held
    meta = metadata(_product("30"), KEYS)
    assert meta is not None
    assert event_item == shared._replace(
        category=meta.category or shared.category,
        vendor=meta.vendor,
        replenishable=meta.replenishable,
        days_to_replenish=meta.days_to_replenish,
    )
    uncached = out.order.items[1]
    assert uncached is out.events[0].items[1] and uncached == _item("13", quantity=1)


@pytest.mark.parametrize(
    ("cached", "order"),
    [
        (("11",), ["products:cache:hit", "products:cache:miss"]),
        (("12",), ["products:cache:miss", "products:cache:hit"]),
        ((), ["products:cache:miss"]),
        (("11", "12", "13"), ["products:cache:hit"]),
    ],
)
def test_cache_hits_and_misses_are_counted_as_one_count_a_product_would(
    cached: tuple[str, ...], order: list[str]
) -> None:
    view = DecisionView({})
    for pid in cached:
        view.put("product:" + pid, _product("30"))
    enrich(_order(_item("11"), _item("12"), _item("13")), view, KEYS, NOW)
    expected = {"products:cache:hit": len(cached), "products:cache:miss": 3 - len(cached)}
    assert list(view.counters) == order  # first named first, as one count a product names them
    assert view.counters == {k: v for k, v in expected.items() if v}


def test_enrichment_notes_its_ids_as_wanted_as_want_does() -> None:
    noted, wanted = StateView(), StateView()
    for view in (noted, wanted):
        view.put(cache.WANTED, {"ids": {"12": "2026-01-01T00:00:00.000Z"}})
    ids = ["11", "12", "13"]
    assert cache.note_wanted(noted, ids, NOW) == cache.want(wanted, ids, NOW) == 2
    assert noted.get(cache.WANTED) == wanted.get(cache.WANTED)
    # `want` still checks what it is given; `note_wanted` is only given checked ids.
    assert cache.want(StateView(), ["", "x1", "1" * 21, "11", "11"], NOW) == 1


# --- replenishment lines and order traits ---------------------------------------------------


def _lines_as_before(items: list[Item]) -> list[list[Any]]:
    """`replenishment.order_lines` as it was written before its fast path."""
    out: list[list[Any]] = []
    for item in items:
        label = replenishment._label(item)
        if not cache.valid_id(item.product_id) or label is None or item.quantity <= 0:
            continue
        out.append([item.product_id, label, min(item.quantity, replenishment.MAX_QUANTITY), None])
        if len(out) == replenishment.MAX_ORDER_LINES:
            break
    return out


def test_order_lines_keep_the_plain_rule_on_odd_items() -> None:
    odd = [
        Item(product_id="11", quantity=1),
        Item(product_id="11", variant_id="v" * 300, quantity=3),
        Item(product_id="12", sku="", variant_id="", quantity=2),
        Item(product_id="13", sku="s" * 500, quantity=10**9),
        Item(product_id=None, sku="x", quantity=1),
        Item(product_id="", sku="x", quantity=1),
        Item(product_id="gid\ud800", sku="x", quantity=1),
        Item(product_id="1" * 21, sku="x", quantity=1),
        Item(product_id="١٢", sku="x", quantity=1),  # digits, but not ASCII ones
        Item(product_id="14", sku="x", quantity=0),
        Item(product_id="15", sku="x", quantity=-4),
    ]
    many = [Item(product_id=str(100 + i), quantity=1) for i in range(30)]
    for items in (odd, many, odd + many, []):
        assert replenishment.order_lines(items) == _lines_as_before(items)


def _index(entries: dict[str, tuple[str, str]], refunds: dict[str, tuple[str, str]]) -> StateView:
    view = StateView()
    view.put(
        orders.index_name("cust:7"),
        {
            "o": {oid: {"at": at, "t": total, "c": "USD"} for oid, (at, total) in entries.items()},
            "r": {rid: {"o": oid, "a": amount} for rid, (oid, amount) in refunds.items()},
        },
    )
    return view


@pytest.mark.parametrize(
    ("entries", "refunds", "ltv", "first", "last"),
    [
        ({"1": ("2026-01-01T00:00:00.000Z", "10.50")}, {}, 10.5, "1", "1"),
        ({"1": ("2026-01-01T00:00:00.000Z", "10.50")}, {"r": ("1", "0.50")}, 10.0, "1", "1"),
        ({"1": ("2026-01-01T00:00:00.000Z", "10.50")}, {"r": ("2", "5")}, 10.5, "1", "1"),
        ({"1": ("2026-01-01T00:00:00.000Z", "0")}, {}, 0.0, "1", "1"),
        (
            {"2": ("2026-01-02T00:00:00.000Z", "1"), "1": ("2026-01-01T00:00:00.000Z", "2")},
            {"r": ("2", "1")},
            2.0,
            "1",
            "2",
        ),
    ],
)
def test_order_traits_of_one_order_and_of_several(
    entries: dict[str, tuple[str, str]],
    refunds: dict[str, tuple[str, str]],
    ltv: float,
    first: str,
    last: str,
) -> None:
    traits = orders.order_traits(_index(entries, refunds), "cust:7")
    assert traits == {
        "orders_count": len(entries),
        "lifetime_value": ltv,
        "first_order_date": entries[first][0],
        "last_order_date": entries[last][0],
        "last_order_id": last,
    }


def test_an_order_entry_without_a_time_fails_as_before_with_one_order_or_two() -> None:
    for entries in ({"1": {"t": "1"}}, {"1": {"t": "1"}, "2": {"t": "2", "at": "x"}}):
        view = StateView()
        view.put(orders.index_name("cust:7"), {"o": entries})
        with pytest.raises(KeyError):
            orders.order_traits(view, "cust:7")


# --- the view -------------------------------------------------------------------------------


def test_a_view_tells_a_record_loaded_as_absent_from_one_never_loaded() -> None:
    view = DecisionView({"present": b'{"a": 1}', "absent": None})
    assert view.get("present") == {"a": 1}
    assert view.get("absent") is None
    assert view.get("unloaded") is None
    assert view.misses == {"unloaded"}
