"""Backfill readers and pure parts: GraphQL->REST, bulk JSONL assembly, category names, throttle."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.backfill.admin import AdminClient, AdminError, Throttle, check_visibility, fit_page
from bridge.backfill.cost import requested_cost
from bridge.backfill.run import (
    MAX_ATTRIBUTE_NAME_BYTES,
    Progress,
    RateCap,
    assemble_bulk,
    category_trait_name,
    category_traits,
    file_batches,
    order_envelopes,
    read_file_orders,
)
from bridge.identity import decide
from bridge.identity.records import StateView
from bridge.sources.shopify import ShopifySource
from bridge.sources.shopify.graphql import rest_order
from bridge.worker.processor import ProcessConfig
from tests.rules import map_context
from tests.shopify_admin_standin import bulk_lines, gql_order

SHOP = "test-shop.myshopify.com"
CTX = map_context(SHOP, shop_currency="USD")


def eur_order() -> dict[str, Any]:
    # Shop currency USD; the customer paid 90.00 EUR, which is 100.00 USD in shop money.
    return gql_order(
        1001,
        customer_id=7,
        email="Ann@Example.com",
        created="2023-03-04T05:06:07Z",
        total="100.00",
        presentment=("90.00", "EUR"),
        lines=[(55, "Coffee Beans", "50.00", 2)],
        refunds=[(9001, "20.00", "2023-03-10T00:00:00Z")],
    )


def test_graphql_order_maps_like_a_webhook_in_shop_currency() -> None:
    order = rest_order(eur_order())
    mapped = ShopifySource().map("backfill/order", order, CTX)
    assert mapped.order is not None
    assert mapped.order.order_id == "1001"
    assert mapped.order.total == Decimal("100.00")
    assert mapped.order.currency == "USD"
    assert mapped.order.created_at == datetime(2023, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert mapped.events == ()  # identify only by default
    (update,) = mapped.identifies
    assert update.person.customer_id == "7"
    assert update.person.email == "ann@example.com"
    assert update.traits["accepts_marketing"] is True
    assert update.traits["last_name"] == "Customer7"
    assert order["line_items"][0]["product_type"] == "Coffee Beans"
    assert order["refunds"][0]["transactions"][0]["amount"] == "20.00"


def test_events_flag_sends_order_completed_with_original_time_and_live_message_id() -> None:
    order = rest_order(eur_order())
    (env, refund_env) = order_envelopes(SHOP, order, events=True, received_ms=1)
    assert env.webhook_id == "backfill:events:1001:2023-03-04T05:06:07Z"
    assert refund_env.webhook_id == "backfill:events:refund:9001"
    plain = order_envelopes(SHOP, order, events=False, received_ms=1)
    assert [e.webhook_id for e in plain] == [
        "backfill:1001:2023-03-04T05:06:07Z",
        "backfill:refund:9001",
    ]
    source = ShopifySource()
    view = StateView()
    policy = ProcessConfig.defaults().policy(SHOP)
    back = decide(source.map(env.topic, orjson.loads(env.body), CTX), view, policy)
    live = decide(source.map("orders/paid", order, CTX), StateView(), policy)
    back_track = next(o.call for o in back if o.call["type"] == "track")
    live_track = next(o.call for o in live if o.call["type"] == "track")
    assert back_track["properties"]["backfill"] is True
    assert back_track["timestamp"] == "2023-03-04T05:06:07.000Z"
    # The same business event as the live webhook: the same messageId, deduplicated downstream.
    assert back_track["messageId"] == live_track["messageId"]
    refund = decide(source.map(refund_env.topic, orjson.loads(refund_env.body), CTX), view, policy)
    # The refund also updates lifetime_value with an identify; the event is the track call.
    refund_call = next(o.call for o in refund if o.call["type"] == "track")
    assert refund_call["event"] == "order_refunded"
    assert refund_call["userId"] == "7"  # found through the order record the order wrote
    assert refund_call["properties"]["amount"] == 20.0


def test_refund_without_events_flag_keeps_the_fact_and_sends_nothing() -> None:
    order = rest_order(eur_order())
    (_, refund_env) = order_envelopes(SHOP, order, events=False, received_ms=1)
    mapped = ShopifySource().map(refund_env.topic, orjson.loads(refund_env.body), CTX)
    assert mapped.events == ()
    assert mapped.refund is not None and mapped.refund.amount == Decimal("20.00")


def test_bulk_assembly_equals_the_api_page_shape(tmp_path: Path) -> None:
    orders = [
        eur_order(),
        gql_order(
            1002,
            customer_id=8,
            email="b@example.com",
            created="2023-04-01T00:00:00Z",
            total="10.00",
            lines=[(56, "Tea", "5.00", 2), (57, "Mug", "0.00", 1)],
        ),
    ]
    lines = list(bulk_lines(orders))
    assert sum("__parentId" in line for line in lines) == 4  # 3 line items + 1 refund
    assembled = assemble_bulk(lines)
    assert [rest_order(o) for o in assembled] == [rest_order(o) for o in orders]

    path = tmp_path / "bulk.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert list(read_file_orders(path)) == [rest_order(o) for o in orders]


def test_rest_jsonl_reads_plain_and_wrapped_orders(tmp_path: Path) -> None:
    a = rest_order(eur_order())
    path = tmp_path / "rest.jsonl"
    path.write_text(json.dumps(a) + "\n\n" + json.dumps({"order": {**a, "id": 5}}) + "\n")
    got = list(read_file_orders(path))
    assert [o["id"] for o in got] == ["1001", 5]


def test_file_batches_resume_after_a_position(tmp_path: Path) -> None:
    path = tmp_path / "rest.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(1, 8)))
    batches = list(file_batches(path, start=0, size=3))
    assert [b.position for b in batches] == ["3", "6", "7"]
    resumed = list(file_batches(path, start=3, size=3))
    assert [o["id"] for b in resumed for o in b.orders] == [4, 5, 6, 7]


@given(st.text(max_size=400))
def test_category_names_are_valid_attribute_names(product_type: str) -> None:
    name = category_trait_name(product_type)
    if name is None:
        return
    assert name.startswith("last_order_date_")
    assert len(name.encode()) <= MAX_ATTRIBUTE_NAME_BYTES
    assert name.isascii() and not name.endswith("_")
    assert category_trait_name(product_type) == name


def test_category_traits_keep_the_newest_within_the_limit() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    latest = {
        "Coffee Beans": t0,
        "coffee-beans": t0 + timedelta(days=3),  # same slug: merged, newest wins
        "Tea": t0 + timedelta(days=1),
        "Mugs": t0 + timedelta(days=2),
        "¿?": t0 + timedelta(days=9),  # nothing left after slugging: no attribute
    }
    assert category_traits(latest, 2) == {
        "last_order_date_coffee_beans": "2024-01-04T00:00:00.000Z",
        "last_order_date_mugs": "2024-01-03T00:00:00.000Z",
    }
    assert category_trait_name("Ä" * 300) == "last_order_date_" + "a" * 134


def test_rate_cap_spaces_acquisitions() -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    cap = RateCap(5.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(11):
        cap.acquire()
    # The bucket starts with one token; the other ten wait 0.2 s each at 5/s.
    assert sum(waits) == pytest.approx(2.0)


def _cost(available: float, requested: float = 52.0) -> dict[str, Any]:
    return {
        "cost": {
            "requestedQueryCost": requested,
            "actualQueryCost": None,
            "throttleStatus": {
                "maximumAvailable": 1000.0,
                "currentlyAvailable": available,
                "restoreRate": 50.0,
            },
        }
    }


def test_throttled_answer_waits_for_the_bucket_then_retries() -> None:
    answers = [
        httpx.Response(
            200,
            json={
                "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                "extensions": _cost(2.0),
            },
        ),
        httpx.Response(200, json={"data": {"ok": 1}, "extensions": _cost(948.0)}),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    waits: list[float] = []
    client = AdminClient(
        shop=SHOP, token="t", transport=httpx.MockTransport(handler), sleep=waits.append
    )
    assert client.query("query X { ok }") == {"ok": 1}
    assert waits == [pytest.approx((52.0 - 2.0) / 50.0)]
    assert client.stats.throttled == 1
    assert seen[0].headers["X-Shopify-Access-Token"] == "t"
    assert str(seen[0].url) == f"https://{SHOP}/admin/api/2026-10/graphql.json"


def test_the_bucket_must_hold_the_requested_cost_before_a_query_is_sent() -> None:
    # The last answer cost little, but the next query asks for 2 + 40 x 1 = 42 points.
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"data": {}, "extensions": _cost(10.0, 42.0)}
        body["extensions"]["cost"]["actualQueryCost"] = 3.0
        return httpx.Response(200, json=body)

    waits: list[float] = []
    client = AdminClient(
        shop=SHOP,
        token="t",
        transport=httpx.MockTransport(handler),
        sleep=waits.append,
        clock=lambda: 100.0,
    )
    query = "query A { orders(first: 40) { nodes { id } } }"
    client.query(query)
    client.query(query)
    assert waits == [pytest.approx((42.0 - 10.0) / 50.0)]


def test_requested_cost_follows_the_published_rules() -> None:
    assert requested_cost("{ products(first:10){title variants(first:5){price}} }") == 82
    edges = "{ products(first:10){ pageInfo { hasNextPage } edges { node { title } } } }"
    assert requested_cost(edges) == 2 + 10 * 1 + 1
    assert requested_cost("query Q($n: Int!) { orders(first: $n) { nodes { id } } }", {"n": 7}) == 9
    assert requested_cost("mutation { bulkOperationCancel(id: 1) { userErrors { field } } }") == 10
    fragments = "{ nodes(ids: [1]) { ... on Product { id options { name } } ... on Order { id } } }"
    assert requested_cost(fragments) == 1 + 1


def test_page_sizes_fit_the_budget() -> None:
    sizes = fit_page(1000.0, 250)
    query = sizes.query()
    assert requested_cost(query, {"first": sizes.orders}) <= 1000
    assert requested_cost(query, {"first": sizes.orders + 1}) > 1000
    small = fit_page(100.0, 250)  # a tiny bucket: nested sizes shrink until one order fits
    assert small.orders >= 1 and small.lines < sizes.lines
    assert requested_cost(small.query(), {"first": small.orders}) <= 100


def test_other_errors_raise_without_payload() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"errors": [{"message": "secret@example.com bad"}]})

    client = AdminClient(shop=SHOP, token="t", transport=httpx.MockTransport(handler))
    with pytest.raises(AdminError) as exc:
        client.query("query A { a }")
    assert "example.com" not in str(exc.value)


def test_throttle_wait_is_zero_when_available() -> None:
    assert Throttle(1000, 500, 50).wait_for(100) == 0
    assert Throttle(1000, 0, 50).wait_for(5000) == pytest.approx(20.0)  # capped at the bucket


def test_missing_read_all_orders_is_reported() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        q = json.loads(request.content)["query"]
        if "currentAppInstallation" in q:
            scopes = [{"handle": "read_orders"}]
            return httpx.Response(
                200, json={"data": {"currentAppInstallation": {"accessScopes": scopes}}}
            )
        nodes = [{"id": "gid://shopify/Order/1", "createdAt": "2025-01-01T00:00:00Z"}]
        return httpx.Response(200, json={"data": {"orders": {"nodes": nodes}}})

    client = AdminClient(shop=SHOP, token="t", transport=httpx.MockTransport(handler))
    vis = check_visibility(client, datetime(2025, 1, 20, tzinfo=UTC))
    assert vis.scopes == frozenset({"read_orders"})
    assert len(vis.warnings) == 1 and "read_all_orders" in vis.warnings[0]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    tty, pipe = _Terminal(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(10, stream)
        bar.update(5, force=True)
        bar.close()
    assert "5/10 orders" in tty.getvalue() and "ETA" in tty.getvalue()
    assert "orders/s" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_the_backfill_decides_under_the_configured_rules() -> None:
    # It used to build its Policy from the shop and naming alone: ORDER_COMPLETED_ON and the
    # waits fell back to defaults while the live drain used the configuration.
    from bridge.backfill.run import Backfill, BackfillOptions

    rules = ProcessConfig.defaults(order_completed_on="orders/create", refund_order_wait_s=600)
    run = Backfill(
        BackfillOptions(shop=SHOP, config=rules, dry_run=True),
        source=ShopifySource(),
        store=None,
        queue=None,
        checkpoint=None,
    )
    assert run._policy == rules.policy(SHOP)
    assert run._ctx == rules.map_context(SHOP)
