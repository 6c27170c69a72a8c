"""The Admin API client against a stand-in that enforces Shopify's cost rules: the old query is
refused, pages fit the 1 000-point maximum and the bucket, and every order comes back whole."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib

from bridge.backfill.admin import DEFAULT_API_VERSION, AdminClient, BulkUrlExpired, version_warning
from bridge.backfill.reconcile import reconcile
from bridge.cli import main as cli
from bridge.config.settings import Settings
from bridge.sources.shopify.graphql import rest_order
from bridge.store.facade import Store
from tests.shopify_admin_standin import TOKEN, AdminStandIn, Plan, gql_order

SHOP = "test-shop.myshopify.com"
_MONEY = "shopMoney { amount currencyCode } presentmentMoney { amount currencyCode }"

# The orders query the bridge sent before issue 13, word for word.
OLD_ORDERS_QUERY = f"""
query Orders($first: Int!, $after: String, $query: String, $sortKey: OrderSortKeys) {{
  orders(first: $first, after: $after, query: $query, sortKey: $sortKey) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{
  id legacyResourceId name email phone test
  createdAt processedAt updatedAt cancelledAt closedAt cancelReason
  currencyCode presentmentCurrencyCode displayFinancialStatus
  totalPriceSet {{ {_MONEY} }}
  subtotalPriceSet {{ {_MONEY} }}
  totalTaxSet {{ {_MONEY} }}
  totalDiscountsSet {{ {_MONEY} }}
  totalShippingPriceSet {{ {_MONEY} }}
  discountCodes
  customAttributes {{ key value }}
  shippingAddress {{ countryCodeV2 }}
  billingAddress {{ countryCodeV2 }}
  customer {{
    id email phone firstName lastName state tags createdAt updatedAt
    emailMarketingConsent {{ marketingState }}
    smsMarketingConsent {{ marketingState }}
    defaultAddress {{ countryCodeV2 }}
  }}
  lineItems(first: 100) {{
    nodes {{
      id name title quantity sku vendor
      variant {{ id }}
      product {{ id productType }}
      originalUnitPriceSet {{ {_MONEY} }}
      originalTotalSet {{ {_MONEY} }}
    }}
  }}
  refunds(first: 50) {{
    id createdAt
    totalRefundedSet {{ {_MONEY} }}
  }}
    }}
  }}
}}
"""


def post(standin: AdminStandIn, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(
        standin.url,
        json={"query": query, "variables": variables},
        headers={"X-Shopify-Access-Token": TOKEN},
    )
    body: dict[str, Any] = resp.json()
    return body


def orders_with_lines(n: int, lines: int) -> list[dict[str, Any]]:
    return [
        gql_order(
            7000 + i,
            customer_id=100 + i,
            email=f"p{i}@example.com",
            created=f"2024-02-{i % 28 + 1:02d}T00:00:00Z",
            total="10.00",
            lines=[(300 + j, "Tea", "1.00", 1) for j in range(lines)],
        )
        for i in range(n)
    ]


def test_the_old_orders_query_is_refused_for_any_page_of_two_or_more() -> None:
    with AdminStandIn(orders_with_lines(3, 1)) as standin:
        for first in (2, 20, 50):
            body = post(standin, OLD_ORDERS_QUERY, {"first": first})
            assert "data" not in body
            assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"
            assert body["extensions"]["cost"]["requestedQueryCost"] > 1000
        assert standin.answers == ["max_cost"] * 3


def test_the_bucket_is_charged_up_front_and_throttles_when_it_cannot_pay() -> None:
    query = "query Q($n: Int!) { orders(first: $n) { nodes { id } } }"
    # A bucket of 1000 that all but never refills: what it holds is what the answers left.
    with AdminStandIn(orders_with_lines(2, 1), plan=Plan(1000.0, 0.001)) as standin:
        first = post(standin, query, {"n": 250})
        assert first["extensions"]["cost"]["requestedQueryCost"] == 252
        # Charged 252 up front, the unused 248 nodes refunded: 2 + 2 x 1 = 4 spent.
        assert first["extensions"]["cost"]["actualQueryCost"] == 4
        assert first["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 996
        # 2 + 249 x 4 = 998: within the 1 000 maximum (and a page within 250), not the bucket
        heavy = (
            "query Q($n: Int!) { orders(first: $n) { nodes { id customer { id } "
            "totalPriceSet { shopMoney { amount } } } } }"
        )
        big = post(standin, heavy, {"n": 249})
        assert big["extensions"]["cost"]["requestedQueryCost"] == 998
        assert big["errors"][0]["extensions"]["code"] == "THROTTLED" and "data" not in big


def test_pages_stay_under_the_maximum_and_wait_for_the_bucket() -> None:
    orders = orders_with_lines(12, 2)
    # One order with more lines than any page holds, and a refund with many lines.
    orders.append(
        gql_order(
            7999,
            customer_id=999,
            email="big@example.com",
            created="2024-03-01T00:00:00Z",
            total="300.00",
            lines=[(400 + j, "Tea", "1.00", 1) for j in range(37)],
            refunds=[(8801, "12.00", "2024-03-02T00:00:00Z")],
            refund_lines={8801: [(j, 1) for j in range(12)]},
        )
    )
    # A small bucket that refills quickly: each page must wait for it rather than be throttled.
    with AdminStandIn(orders, plan=Plan(1000.0, 2000.0)) as standin:
        client = AdminClient(shop=SHOP, token=TOKEN, url=standin.url)
        got = [rest_order(n) for page in client.order_pages() for n in page.nodes]
        client.close()
    assert [o["id"] for o in got] == [str(7000 + i) for i in range(12)] + ["7999"]
    big = got[-1]
    assert len(big["line_items"]) == 37  # completed with follow-up queries, not truncated
    (refund,) = big["refunds"]
    assert len(refund["refund_line_items"]) == 12
    assert max(standin.costs) <= 1000
    assert "throttled" not in standin.answers and "max_cost" not in standin.answers
    assert client.stats.follow_ups >= 2
    assert client.stats.waited_s > 0  # it did wait for the bucket between pages


def test_a_query_shopify_finds_too_dear_is_halved_and_asked_again() -> None:
    with AdminStandIn(orders_with_lines(9, 1)) as standin:
        standin.script("max_cost", op="Orders")
        client = AdminClient(shop=SHOP, token=TOKEN, url=standin.url)
        ids = [n["legacyResourceId"] for page in client.order_pages() for n in page.nodes]
        client.close()
    assert ids == [str(7000 + i) for i in range(9)]
    firsts = [r["first"] for r in standin.order_requests()]
    assert firsts[1] == firsts[0] // 2
    assert client.stats.cost_halvings == 1


def test_an_old_version_is_served_by_the_oldest_supported_one_and_that_is_seen(
    settings: Settings, redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with AdminStandIn(orders_with_lines(1, 1)) as standin:
        client = AdminClient(
            shop=SHOP, token=TOKEN, api_version="2025-07", url=standin.url_for("2025-07")
        )
        with caplog.at_level(logging.INFO, logger="bridge.backfill.admin"):
            report = reconcile(
                client, Store(redis), None, shop=SHOP, window=timedelta(days=9999), dry_run=True
            )
        client.close()
    assert report.listed == 1
    assert client.answered_version == "2025-10"  # fell forward, as Shopify does
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == ["shopify answered with another api version"]
    assert Store(redis).stats(SHOP)["admin_api_version:2025-10:mismatch"] == 1


def test_a_version_past_the_support_window_is_warned_about(
    settings: Settings,
    redis: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SHOPIFY_API_VERSION", "2024-07")
    cli.main(["check"])
    assert "SHOPIFY_API_VERSION 2024-07 is" in capsys.readouterr().err
    # Supported for twelve months from its release; warned about from the thirteenth.
    assert version_warning("2025-10", date(2026, 10, 31)) is None
    assert "13 months old" in str(version_warning("2025-10", date(2026, 11, 1)))
    assert version_warning("unstable", date(2026, 11, 1)) is None
    assert version_warning(DEFAULT_API_VERSION, date(2026, 12, 1)) is None


def test_a_result_url_past_its_expiry_is_reported_as_expired(tmp_path: Path) -> None:
    with AdminStandIn(orders_with_lines(3, 2)) as standin:
        client = AdminClient(shop=SHOP, token=TOKEN, url=standin.url, sleep=lambda s: None)
        status = client.wait_bulk(client.start_bulk(None))
        assert status.url is not None and status.root_count == 3
        with (tmp_path / "ok.jsonl").open("wb") as fh:
            assert client.download(status.url, fh) == status.file_size
        for op in standin.bulk.values():
            op.expired = True  # the signed URL ran out while the operation still says COMPLETED
        with (tmp_path / "late.jsonl").open("wb") as fh, pytest.raises(BulkUrlExpired):
            client.download(status.url, fh)
        client.close()
