"""Replenishment dates at the source (issue 17, item 6): `next_replenishment_date` and
`replenishment_skus` from a person's orders and refunds, as the drain computes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.canonical import Item
from bridge.identity.records import StateView
from bridge.identity.replenishment import MAX_ORDER_LINES, MAX_ORDERS, order_lines, traits
from bridge.ids import iso_z
from bridge.products.record import MetafieldKeys
from tests.products import order_body, product_webhook, refund_body, replenishing
from tests.unit.test_products import Drain

NOW = datetime(2026, 3, 10, tzinfo=UTC)
SHAMPOO, CONDITIONER, MUG, SERUM = 11, 12, 13, 14


def catalog(drain: Drain) -> None:
    drain.run(
        ("products/update", product_webhook(SHAMPOO, metafields=replenishing("30"))),
        ("products/update", product_webhook(CONDITIONER, metafields=replenishing("45"))),
        ("products/update", product_webhook(MUG, metafields=replenishing("30", "false"))),
    )


def person_traits(calls: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for call in calls:
        if call["type"] == "identify":
            out.update(call["traits"])
    return out


def test_the_earliest_cover_date_over_items_and_quantities() -> None:
    drain = Drain()
    catalog(drain)
    lines = [(SHAMPOO, "SH-1", 2), (CONDITIONER, "CO-1", 1), (MUG, "MUG-1", 1), (SERUM, "SE", 1)]
    calls = drain.run(("orders/create", order_body(1, created="2026-03-01T10:00:00Z", lines=lines)))
    got = person_traits(calls)
    # shampoo: 2 x 30 days -> May 1; conditioner: 45 days -> Apr 15; the mug is not
    # replenishable; the serum is not cached (no metadata): neither counts.
    assert got["next_replenishment_date"] == "2026-04-15T10:00:00.000Z"
    assert got["replenishment_skus"] == ["CO-1"]


def current(drain: Drain) -> dict[str, Any]:
    """The person's traits as the bridge last sent them."""
    rec = drain.record("person:cust:5001") or {}
    return {k: v for k, (_, v) in (rec.get("f") or {}).items()}


def test_a_later_purchase_of_the_same_sku_moves_its_date() -> None:
    drain = Drain()
    catalog(drain)
    drain.run(
        (
            "orders/create",
            order_body(1, created="2026-03-01T10:00:00Z", lines=[(SHAMPOO, "SH-1", 1)]),
        )
    )
    calls = drain.run(
        (
            "orders/create",
            order_body(
                2,
                created="2026-03-09T08:00:00Z",
                lines=[(SHAMPOO, "SH-1", 1), (CONDITIONER, "CO-1", 1)],
            ),
        ),
        now=NOW,
    )
    got = current(drain)
    assert person_traits(calls)["next_replenishment_date"] == got["next_replenishment_date"]
    # SH-1 is covered until Apr 8 (the later order), CO-1 until Apr 23.
    assert got["next_replenishment_date"] == "2026-04-08T08:00:00.000Z"
    assert got["replenishment_skus"] == ["SH-1"]


def test_skus_due_the_same_day_are_named_together() -> None:
    drain = Drain()
    drain.run(
        ("products/update", product_webhook(SHAMPOO, metafields=replenishing("30"))),
        ("products/update", product_webhook(CONDITIONER, metafields=replenishing("15"))),
    )
    drain.run(
        (
            "orders/create",
            order_body(1, created="2026-03-01T10:00:00Z", lines=[(SHAMPOO, "SH-1", 1)]),
        ),
        (
            "orders/create",
            order_body(2, created="2026-03-16T09:00:00Z", lines=[(CONDITIONER, "CO-1", 1)]),
        ),
    )
    got = current(drain)
    assert got["next_replenishment_date"] == "2026-03-31T09:00:00.000Z"
    assert got["replenishment_skus"] == ["CO-1", "SH-1"]


def test_refunds_full_and_partial() -> None:
    drain = Drain()
    catalog(drain)
    order = order_body(
        1, created="2026-03-01T10:00:00Z", lines=[(SHAMPOO, "SH-1", 3), (CONDITIONER, "CO-1", 1)]
    )
    drain.run(("orders/create", order))
    first = current(drain)
    # shampoo: 3 x 30 days -> May 30; conditioner: 45 days -> Apr 15
    assert first["next_replenishment_date"] == "2026-04-15T10:00:00.000Z"
    assert first["replenishment_skus"] == ["CO-1"]
    # conditioner fully refunded: only shampoo is left, 3 x 30 days -> May 30
    drain.run(("refunds/create", refund_body(91, order, [(1, 1)])))
    full = current(drain)
    assert full["next_replenishment_date"] == "2026-05-30T10:00:00.000Z"
    assert full["replenishment_skus"] == ["SH-1"]
    # two of the three shampoos refunded: 1 x 30 days -> Mar 31
    drain.run(("refunds/create", refund_body(92, order, [(0, 2)])))
    partial = current(drain)
    assert partial["next_replenishment_date"] == "2026-03-31T10:00:00.000Z"
    assert partial["replenishment_skus"] == ["SH-1"]
    # the last one refunded too: nothing is replenishable any more, the traits are cleared
    calls = drain.run(("refunds/create", refund_body(93, order, [(0, 1)])))
    identify = next(c for c in calls if c["type"] == "identify")
    assert identify["traits"]["next_replenishment_date"] is None
    assert identify["traits"]["replenishment_skus"] is None
    # the same refund again changes nothing
    again = drain.run(("refunds/create", refund_body(93, order, [(0, 1)])))
    assert "next_replenishment_date" not in person_traits(again)


def test_dates_behind_now_give_way_to_dates_ahead_and_all_lapsed_keeps_the_latest() -> None:
    drain = Drain()
    catalog(drain)
    # Jan 1 + 30 days = Jan 31 (behind now, Mar 10); Feb 20 + 45 days = Apr 6 (ahead)
    drain.run(
        (
            "orders/create",
            order_body(1, created="2026-01-01T00:00:00Z", lines=[(SHAMPOO, "SH-1", 1)]),
        ),
        now=NOW,
    )
    calls = drain.run(
        (
            "orders/create",
            order_body(2, created="2026-02-20T00:00:00Z", lines=[(CONDITIONER, "CO-1", 1)]),
        ),
        now=NOW,
    )
    assert person_traits(calls)["next_replenishment_date"] == "2026-04-06T00:00:00.000Z"
    # a clock past both: the latest lapsed date (Apr 6) stays, telling the person is overdue
    later = Drain()
    catalog(later)
    later.run(
        (
            "orders/create",
            order_body(1, created="2026-01-01T00:00:00Z", lines=[(SHAMPOO, "SH-1", 1)]),
        )
    )
    calls = later.run(
        (
            "orders/create",
            order_body(2, created="2026-02-20T00:00:00Z", lines=[(CONDITIONER, "CO-1", 1)]),
        ),
        now=datetime(2026, 6, 1, tzinfo=UTC),
    )
    assert person_traits(calls)["next_replenishment_date"] == "2026-04-06T00:00:00.000Z"
    assert current(later)["replenishment_skus"] == ["CO-1"]


def test_a_cancelled_order_counts_for_nothing() -> None:
    drain = Drain()
    catalog(drain)
    order = order_body(1, created="2026-03-01T10:00:00Z", lines=[(SHAMPOO, "SH-1", 1)])
    assert person_traits(drain.run(("orders/create", order)))["next_replenishment_date"]
    cancelled = {
        **order,
        "cancelled_at": "2026-03-02T10:00:00Z",
        "updated_at": "2026-03-02T10:00:00Z",
    }
    calls = drain.run(("orders/cancelled", cancelled))
    identify = next(c for c in calls if c["type"] == "identify")
    assert identify["traits"]["next_replenishment_date"] is None


def test_metadata_arriving_after_the_order_recomputes_the_customers_waiting_for_it() -> None:
    drain = Drain()
    order = order_body(1, created="2026-03-01T10:00:00Z", lines=[(SHAMPOO, "SH-1", 1)])
    calls = drain.run(("orders/create", order))
    assert "next_replenishment_date" not in person_traits(calls)  # the product is not known
    assert drain.record("products:wanted")["who"] == {"11": ["5001"]}
    # the product arrives (a webhook, or the sweep's lookup): the waiting customer's date
    calls = drain.run(("products/update", product_webhook(SHAMPOO, metafields=replenishing("30"))))
    identify = next(c for c in calls if c["type"] == "identify")
    assert identify["userId"] == "5001"
    assert identify["traits"]["next_replenishment_date"] == "2026-03-31T10:00:00.000Z"
    assert drain.record("products:wanted") is None
    index = drain.record("orders:cust:5001")
    assert index["o"]["1"]["rl"] == [["11", "SH-1", 1, 30]]
    # nothing more to say on a repeat of the order
    assert "next_replenishment_date" not in person_traits(drain.run(("orders/paid", order)))


def test_a_guests_line_is_resolved_by_a_repeat_of_their_order() -> None:
    drain = Drain()
    order = order_body(
        1, customer_id=None, created="2026-03-01T10:00:00Z", lines=[(SHAMPOO, "SH-1", 1)]
    )
    drain.run(("orders/create", order))
    assert "who" not in (drain.record("products:wanted") or {})  # guests are not noted by email
    drain.run(("products/update", product_webhook(SHAMPOO, metafields=replenishing("30"))))
    repeat = person_traits(drain.run(("orders/paid", order)))  # orders/paid after orders/create
    assert repeat["next_replenishment_date"] == "2026-03-31T10:00:00.000Z"


def test_a_product_becoming_replenishable_later_does_not_rewrite_resolved_lines() -> None:
    drain = Drain()
    drain.run(("products/update", product_webhook(MUG)))  # cached, not replenishable
    drain.run(("orders/create", order_body(1, lines=[(MUG, "MUG-1", 1)])))
    assert drain.record("orders:cust:5001")["o"]["1"].get("rl") is None  # dropped as resolved


def test_order_lines_are_bounded_and_skip_custom_lines() -> None:
    items = [Item(product_id=str(i), sku=f"S{i}", quantity=1) for i in range(1, 100)]
    items.insert(0, Item(product_id=None, sku="CUSTOM", quantity=1))
    items.insert(0, Item(product_id="1", sku="HUGE", quantity=10**12))
    lines = order_lines(items)
    assert len(lines) == MAX_ORDER_LINES
    assert lines[0] == ["1", "HUGE", 10_000, None]


@pytest.mark.parametrize("qty", [10_000, 1])
def test_a_huge_quantity_is_a_date_not_an_overflow(qty: int) -> None:
    view = StateView()
    view.put(
        "product:1",
        {
            "v": "",
            "mf": {"custom.replenishable": ["true", ""], "custom.days_to_replenish": ["3650", ""]},
        },
    )
    view.put(
        "orders:p",
        {
            "o": {
                "9": {
                    "at": "2026-03-01T00:00:00.000Z",
                    "t": "1",
                    "c": "USD",
                    "rl": [["1", "S", qty, None]],
                }
            }
        },
    )
    got = traits(view, "orders:p", MetafieldKeys(), NOW)
    assert got["next_replenishment_date"] == "2036-02-27T00:00:00.000Z"


def test_malformed_index_entries_are_ignored() -> None:
    view = StateView()
    view.put(
        "orders:p",
        {
            "o": {
                "1": {"at": "not a time", "rl": [["1", "S", 1, 30]]},
                "2": {"at": "2026-03-01T00:00:00.000Z", "rl": [["x"], "junk", ["1", "S", 1, 30]]},
                "3": "junk",
            },
            "r": {"r": {"o": "2", "rl": [["S", "two"], "junk"]}},
        },
    )
    got = traits(view, "orders:p", MetafieldKeys(), NOW)
    assert got["next_replenishment_date"] == "2026-03-31T00:00:00.000Z"


def test_the_index_forgets_long_lapsed_and_never_resolved_lines() -> None:
    view = StateView()
    view.put(
        "product:1",
        {
            "v": "",
            "mf": {"custom.replenishable": ["true", ""], "custom.days_to_replenish": ["30", ""]},
        },
    )
    view.put(
        "orders:p",
        {
            "o": {
                # lapsed more than a year before now: forgotten
                "old": {
                    "at": "2024-01-01T00:00:00.000Z",
                    "t": "1",
                    "c": "USD",
                    "rl": [["1", "A", 1, 30]],
                },
                # its product never cached, 40 days after the order: forgotten
                "lost": {
                    "at": "2026-01-29T00:00:00.000Z",
                    "t": "1",
                    "c": "USD",
                    "rl": [["2", "B", 1, None]],
                },
                # its product not cached yet, 5 days after: kept, waiting
                "new": {
                    "at": "2026-03-05T00:00:00.000Z",
                    "t": "1",
                    "c": "USD",
                    "rl": [["3", "C", 1, None]],
                },
                "live": {
                    "at": "2026-03-01T00:00:00.000Z",
                    "t": "1",
                    "c": "USD",
                    "rl": [["1", "A", 1, None]],
                },
            }
        },
    )
    got = traits(view, "orders:p", MetafieldKeys(), NOW)
    assert got == {
        "next_replenishment_date": "2026-03-31T00:00:00.000Z",
        "replenishment_skus": ["A"],
    }
    index = (view.get("orders:p") or {})["o"]
    assert "rl" not in index["old"] and "rl" not in index["lost"]
    assert index["new"]["rl"] == [["3", "C", 1, None]]
    assert index["live"]["rl"] == [["1", "A", 1, 30]]  # resolved, and kept resolved


def test_a_refund_held_for_its_order_counts_once_the_order_comes() -> None:
    drain = Drain()
    catalog(drain)
    order = order_body(1, created="2026-03-01T10:00:00Z", lines=[(SHAMPOO, "SH-1", 3)])
    drain.run(("refunds/create", refund_body(91, order, [(0, 2)])))  # before its order: held
    drain.run(("orders/create", order))
    # 3 bought, 2 refunded: 1 x 30 days
    assert current(drain)["next_replenishment_date"] == "2026-03-31T10:00:00.000Z"


# --- review of issue 17: SKUs within 24 hours, and the latest 50 orders only -----------------


def test_skus_within_24_hours_of_the_date_are_named_across_a_utc_midnight() -> None:
    drain = Drain()
    catalog(drain)  # shampoo 30 days, conditioner 45 days
    serum = product_webhook(SERUM, metafields=replenishing("30"))
    drain.run(("products/update", serum))
    drain.run(
        # shampoo: Apr 14 23:00; conditioner: Apr 15 10:00 (11 hours later, the next UTC day);
        # serum: Apr 15 23:30 (24.5 hours after the shampoo): not named.
        (
            "orders/create",
            order_body(1, created="2026-03-15T23:00:00Z", lines=[(SHAMPOO, "SH-1", 1)]),
        ),
        (
            "orders/create",
            order_body(2, created="2026-03-01T10:00:00Z", lines=[(CONDITIONER, "CO-1", 1)]),
        ),
        (
            "orders/create",
            order_body(3, created="2026-03-16T23:30:00Z", lines=[(SERUM, "SE-1", 1)]),
        ),
    )
    got = current(drain)
    assert got["next_replenishment_date"] == "2026-04-14T23:00:00.000Z"
    assert got["replenishment_skus"] == ["CO-1", "SH-1"]


def test_an_sku_bought_long_ago_is_not_named_with_the_next_date() -> None:
    drain = Drain()
    catalog(drain)
    drain.run(
        # CO-1 bought Jan 20, 45 days -> Mar 6 (lapsed, 33 days before the date);
        # SH-1 bought Mar 9, 30 days -> Apr 8: only SH-1 is named.
        (
            "orders/create",
            order_body(1, created="2026-01-20T10:00:00Z", lines=[(CONDITIONER, "CO-1", 1)]),
        ),
        (
            "orders/create",
            order_body(2, created="2026-03-09T10:00:00Z", lines=[(SHAMPOO, "SH-1", 1)]),
        ),
    )
    got = current(drain)
    assert got["next_replenishment_date"] == "2026-04-08T10:00:00.000Z"
    assert got["replenishment_skus"] == ["SH-1"]


def _line_index(n: int, at: Any) -> dict[str, Any]:
    return {
        "o": {
            str(i): {"at": at(i), "t": "1", "c": "USD", "rl": [["1", f"S{i % 3}", 1, 30]]}
            for i in range(n)
        },
        "r": {f"r{i}": {"o": str(i), "a": "1", "rl": [[f"S{i % 3}", 1]]} for i in range(0, n, 7)},
    }


def _cached_product(view: StateView, days: str = "30") -> None:
    view.put(
        "product:1",
        {
            "v": "",
            "mf": {"custom.replenishable": ["true", ""], "custom.days_to_replenish": [days, ""]},
        },
    )


def test_only_the_latest_50_orders_count_and_the_rest_lose_their_lines() -> None:
    view = StateView()
    _cached_product(view)
    # 3 000 orders, one a minute from Feb 20: the stored lines shrink to the latest 50 orders'.
    start = datetime(2026, 2, 20, tzinfo=UTC)
    view.put("orders:p", _line_index(3000, lambda i: iso_z(start + timedelta(minutes=i))))
    traits(view, "orders:p", MetafieldKeys(), NOW)
    index = view.get("orders:p") or {}
    with_lines = sorted(int(k) for k, e in index["o"].items() if "rl" in e)
    assert with_lines == list(range(3000 - MAX_ORDERS, 3000))
    assert len(index["o"]) == 3000  # the order traits still see every order
    refunds_with_lines = sorted(int(e["o"]) for e in index["r"].values() if "rl" in e)
    assert all(o >= 3000 - MAX_ORDERS for o in refunds_with_lines) and refunds_with_lines


def test_an_order_beyond_the_latest_50_does_not_set_the_date() -> None:
    drain = Drain()
    catalog(drain)  # shampoo 30 days, conditioner 45 days
    # The oldest order: one conditioner, covered until Apr 15. Then 50 later orders of two
    # shampoos each, the last covered until May 1: only those 50 count, so the date is theirs.
    big = order_body(1, created="2026-03-01T00:00:00Z", lines=[(CONDITIONER, "CO-1", 1)])
    drain.run(("orders/create", big))
    for i in range(MAX_ORDERS):
        created = f"2026-03-02T{i // 60:02d}:{i % 60:02d}:00Z"
        body = order_body(100 + i, created=created, lines=[(SHAMPOO, "SH-1", 2)])
        drain.run(("orders/create", body))
    got = current(drain)
    assert got["replenishment_skus"] == ["SH-1"]
    assert got["next_replenishment_date"] == "2026-05-01T00:49:00.000Z"
    assert "rl" not in drain.record("orders:cust:5001")["o"]["1"]


def test_an_index_time_without_an_offset_is_read_as_utc() -> None:
    view = StateView()
    _cached_product(view)
    view.put(
        "orders:p",
        {
            "o": {
                "1": {"at": "2026-03-01T00:00:00", "t": "1", "c": "USD", "rl": [["1", "S", 1, 30]]}
            }
        },
    )
    got = traits(view, "orders:p", MetafieldKeys(), NOW)
    assert got["next_replenishment_date"] == "2026-03-31T00:00:00.000Z"
