"""Product metadata and replenishment dates on real parts (issue 17): gunicorn, Redis, a
`bridge worker` process, the Pipelines stand-in and the Shopify Admin stand-in (which costs
every query by Shopify's published rules and refuses one over 1 000 points). The sweep's
product step (`sync_products`) is called from the test: in the worker it runs once a minute."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bridge.backfill.admin import AdminClient
from bridge.cli.main import main
from bridge.config.settings import Settings
from bridge.products import sync
from bridge.products.record import MetafieldKeys
from bridge.services import Services
from bridge.store.facade import Keys
from bridge.store.products import ProductSync
from bridge.worker.sweep import sync_products
from tests.conftest import SHOP, start_worker, wait_until
from tests.integration.test_end_to_end import Web, web  # noqa: F401 (the fixture)
from tests.pipelines_standin import PipelinesStandIn
from tests.products import order_body, product_webhook, refund_body, replenishing
from tests.shopify_admin_standin import TOKEN, AdminStandIn, Plan, gql_order, gql_product

SHAMPOO, CONDITIONER = 11, 12
REPLENISH = {
    "custom.replenishable": ("true", "boolean"),
    "custom.days_to_replenish": ("30", "number_integer"),
}


@pytest.fixture
def admin() -> Iterator[AdminStandIn]:
    catalog = [
        gql_product(SHAMPOO, product_type="Shampoo", category="Hair Care", metafields=REPLENISH),
        gql_product(CONDITIONER, product_type="Conditioner", metafields={}),
    ]
    with AdminStandIn(catalog=catalog) as standin:
        yield standin


@pytest.fixture
def admin_settings(settings: Settings, admin: AdminStandIn) -> Settings:
    return settings.model_copy(
        update={
            "shopify_shop": SHOP,
            "shopify_admin_token": SecretStr(TOKEN),
            "shopify_admin_url": admin.url,
        }
    )


@pytest.fixture
def admin_worker(settings: Settings, admin: AdminStandIn) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(
        settings, SHOPIFY_SHOP=SHOP, SHOPIFY_ADMIN_TOKEN=TOKEN, SHOPIFY_ADMIN_URL=admin.url
    )
    yield proc
    proc.terminate()
    proc.wait(40)


@pytest.fixture
def services(admin_settings: Settings) -> Iterator[Services]:
    runtime = Services.build(admin_settings)
    yield runtime
    runtime.store.close()


def order_items(pipelines: PipelinesStandIn, order_id: int) -> list[dict[str, Any]]:
    for call in pipelines.calls:
        props = call.get("properties") or {}
        if call.get("event") == "order_completed" and props.get("order_id") == str(order_id):
            return list(props["items"])
    raise AssertionError(f"no order_completed for {order_id}: {pipelines.calls}")


def has_order(pipelines: PipelinesStandIn, order_id: int) -> bool:
    return any(
        (c.get("properties") or {}).get("order_id") == str(order_id)
        and c.get("event") == "order_completed"
        for c in pipelines.calls
    )


def latest_trait(pipelines: PipelinesStandIn, name: str) -> Any:
    found = [c["traits"][name] for c in pipelines.calls if name in (c.get("traits") or {})]
    return found[-1] if found else "absent"


def days_ago(n: int) -> str:
    return (datetime.now(UTC) - timedelta(days=n)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_an_uncached_product_goes_out_bare_is_looked_up_and_the_next_order_has_it(
    web: Web,  # noqa: F811
    admin_worker: subprocess.Popen[bytes],
    services: Services,
    admin: AdminStandIn,
    pipelines: PipelinesStandIn,
) -> None:
    first = order_body(1, created=days_ago(2), lines=[(SHAMPOO, "SH-1", 2)])
    assert web.post("orders/paid", json.dumps(first).encode())[0] == 200
    assert wait_until(lambda: has_order(pipelines, 1), 30), pipelines.calls
    [item] = order_items(pipelines, 1)
    assert "replenishable" not in item and "vendor" not in item  # never delayed
    assert latest_trait(pipelines, "next_replenishment_date") == "absent"
    assert admin.requests_of("ProductNodes") == []  # nothing asked in the event's path

    sync_products(services, SHOP)  # the sweep's step
    [asked] = admin.requests_of("ProductNodes")
    assert asked["ids"] == [f"gid://shopify/Product/{SHAMPOO}"]
    assert (asked["ns0"], asked["key0"]) == ("custom", "replenishable")
    wanted = Keys(SHOP).state("products:wanted")
    assert wait_until(lambda: not services.store.redis.exists(wanted), 20)
    # The product's arrival recomputed the waiting customer's date: 2 x 30 days.
    expected = (datetime.fromisoformat(first["created_at"]) + timedelta(days=60)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )
    assert wait_until(lambda: latest_trait(pipelines, "next_replenishment_date") == expected, 10)

    second = order_body(2, created=days_ago(1), lines=[(SHAMPOO, "SH-1", 1)])
    assert web.post("orders/paid", json.dumps(second).encode())[0] == 200
    assert wait_until(lambda: has_order(pipelines, 2), 30), pipelines.calls
    [item] = order_items(pipelines, 2)
    assert item["replenishable"] is True and item["days_to_replenish"] == 30
    assert item["category"] == "Hair Care" and item["vendor"] == "Acme"
    # 2 x 30 days from two days ago is later than 30 days from yesterday: the SKU is still
    # covered until the first order's date.
    assert wait_until(lambda: latest_trait(pipelines, "next_replenishment_date") == expected, 10)
    assert latest_trait(pipelines, "replenishment_skus") == ["SH-1"]
    # a refund of one of the two: the first order now covers 30 days, the second order wins
    refund = refund_body(77, first, [(0, 1)], created=days_ago(0))
    assert web.post("refunds/create", json.dumps(refund).encode())[0] == 200
    expected = (datetime.fromisoformat(second["created_at"]) + timedelta(days=30)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )
    assert wait_until(lambda: latest_trait(pipelines, "next_replenishment_date") == expected, 30), (
        pipelines.calls
    )
    assert max(admin.costs) <= 1000


def test_products_update_changes_the_next_event_and_products_delete_removes_it(
    web: Web,  # noqa: F811
    admin_worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
) -> None:
    update = product_webhook(
        CONDITIONER, product_type="Conditioner", vendor="Acme", metafields=replenishing("45")
    )
    assert web.post("products/update", json.dumps(update).encode())[0] == 200
    body = order_body(3, created=days_ago(1), lines=[(CONDITIONER, "CO-1", 1)])
    assert web.post("orders/paid", json.dumps(body).encode())[0] == 200
    assert wait_until(lambda: has_order(pipelines, 3), 30), pipelines.calls
    [item] = order_items(pipelines, 3)
    assert (item["category"], item["days_to_replenish"]) == ("Conditioner", 45)

    newer = product_webhook(
        CONDITIONER,
        product_type="Conditioner",
        vendor="New Vendor",
        updated="2026-02-02T00:00:00Z",
        category="Hair Conditioner",
        metafields=replenishing("60"),
    )
    assert web.post("products/update", json.dumps(newer).encode())[0] == 200
    body = order_body(4, created=days_ago(1), lines=[(CONDITIONER, "CO-1", 1)])
    assert web.post("orders/paid", json.dumps(body).encode())[0] == 200
    assert wait_until(lambda: has_order(pipelines, 4), 30), pipelines.calls
    [item] = order_items(pipelines, 4)
    assert (item["category"], item["vendor"], item["days_to_replenish"]) == (
        "Hair Conditioner",
        "New Vendor",
        60,
    )

    assert web.post("products/delete", json.dumps({"id": CONDITIONER}).encode())[0] == 200
    body = order_body(5, created=days_ago(1), lines=[(CONDITIONER, "CO-1", 1)])
    assert web.post("orders/paid", json.dumps(body).encode())[0] == 200
    assert wait_until(lambda: has_order(pipelines, 5), 30), pipelines.calls
    [item] = order_items(pipelines, 5)
    assert "vendor" not in item and "days_to_replenish" not in item
    assert item["category"] == "Payload Type"  # only what the payload itself says


def test_the_backfill_computes_next_replenishment_date(
    env: dict[str, str],
    admin: AdminStandIn,
    admin_worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
) -> None:
    created = days_ago(10)
    admin.orders = [
        gql_order(
            9001,
            customer_id=900,
            email="r@example.com",
            created=created,
            total="30.00",
            lines=[(SHAMPOO, "Shampoo", "10.00", 3), (CONDITIONER, "Conditioner", "5.00", 1)],
        )
    ]
    argv = ["backfill", "shopify", "--method", "paged", "--rate", "1000"]
    assert main(argv) == 0
    expected = (datetime.fromisoformat(created) + timedelta(days=90)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )
    assert wait_until(lambda: latest_trait(pipelines, "next_replenishment_date") == expected, 30), (
        pipelines.calls
    )
    assert latest_trait(pipelines, "replenishment_skus") == [f"SKU-{SHAMPOO}"]
    # The products were read ahead of the order, in one query, under the maximum.
    [asked] = admin.requests_of("ProductNodes")
    assert sorted(asked["ids"]) == [f"gid://shopify/Product/{p}" for p in (SHAMPOO, CONDITIONER)]
    assert max(admin.costs) <= 1000


def test_the_refresh_pages_under_the_maximum_and_the_stand_in_refuses_a_page_over_it(
    settings: Settings, services: Services
) -> None:
    catalog = [
        gql_product(100 + i, product_type="Soap", updated=f"2026-02-{i % 28 + 1:02d}T00:00:00Z")
        for i in range(300)
    ]
    with AdminStandIn(catalog=catalog, plan=Plan(1000.0, 2000.0)) as standin:
        client = AdminClient(shop=SHOP, token=TOKEN, url=standin.url)
        state = ProductSync(services.store.redis, SHOP)
        state.set_watermark("2026-01-01T00:00:00.000Z")
        now = datetime(2026, 3, 1, tzinfo=UTC)
        report = sync.refresh(client, services.store, state, SHOP, MetafieldKeys(), now)
        client.close()
        pages = standin.requests_of("Products")
        costs = list(standin.costs)
        # A page of 250 (the most Shopify pages) is over the maximum for these fields.
        resp = httpx.post(
            standin.url,
            json={
                "query": sync.PRODUCTS_QUERY,
                "variables": {**sync.metafield_vars(MetafieldKeys()), "first": 250},
            },
            headers={"X-Shopify-Access-Token": TOKEN},
        )
        over = resp.json()
    assert report.refreshed == 300
    assert [p["first"] for p in pages] == [100, 100, 100]
    # 2 + 100 x (1 + category 1 + two metafields 1 each) + pageInfo 1, as the stand-in counts
    assert costs == [403, 403, 403]
    assert state.watermark() == "2026-02-28T00:00:00Z"
    assert over["extensions"]["cost"]["requestedQueryCost"] == 1003
    assert over["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED" and "data" not in over
    assert sync.fit_products(1000.0, 250) == 249
    queued = services.store.inbound_length(SHOP)
    assert queued == 300


def _ask(standin: AdminStandIn, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(
        standin.url,
        json={"query": query, "variables": variables},
        headers={"X-Shopify-Access-Token": TOKEN},
    )
    return dict(resp.json())


def test_the_stand_in_answers_products_as_the_doc_describes() -> None:
    """Hand-written queries (not the bridge's), costs worked out here by the doc's rules."""
    catalog = [
        gql_product(1, product_type="Shampoo", category="Hair Care", metafields=REPLENISH),
        gql_product(2, product_type="Mug", updated="2026-03-01T00:00:00Z"),
    ]
    fields = (
        "id productType vendor category { name fullName } "
        'r: metafield(namespace: "custom", key: "replenishable") { value type } '
        'd: metafield(namespace: "custom", key: "days_to_replenish") { value type }'
    )
    with AdminStandIn(catalog=catalog) as standin:
        one = _ask(standin, f'{{ product(id: "gid://shopify/Product/1") {{ {fields} }} }}', {})
        ids = ["gid://shopify/Product/1", "gid://shopify/Product/99"]
        nodes = _ask(
            standin,
            f"query N($ids: [ID!]!) {{ nodes(ids: $ids) {{ ... on Product {{ {fields} }} }} }}",
            {"ids": ids},
        )
        # 300 ids x (the object 1 + category 1 + two metafields 1 each) = 1 200 points
        many = _ask(
            standin,
            f"query N($ids: [ID!]!) {{ nodes(ids: $ids) {{ ... on Product {{ {fields} }} }} }}",
            {"ids": [f"gid://shopify/Product/{i}" for i in range(300)]},
        )
        recent = _ask(
            standin,
            "{ products(first: 10, query: \"updated_at:>'2026-02-01T00:00:00Z'\", "
            "sortKey: UPDATED_AT) { pageInfo { hasNextPage } nodes { id } } }",
            {},
        )
    product = one["data"]["product"]
    assert product["category"] == {"name": "Hair Care", "fullName": "Health & Beauty > Hair Care"}
    assert product["r"] == {"value": "true", "type": "boolean"}
    assert product["d"] == {"value": "30", "type": "number_integer"}
    assert one["extensions"]["cost"]["requestedQueryCost"] == 1 + 1 + 1 + 1
    shampoo, unknown = nodes["data"]["nodes"]
    assert shampoo["productType"] == "Shampoo" and unknown is None
    assert nodes["extensions"]["cost"]["requestedQueryCost"] == 2 * 4
    assert many["extensions"]["cost"]["requestedQueryCost"] == 1200
    assert many["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED" and "data" not in many
    assert recent["data"]["products"]["nodes"] == [{"id": "gid://shopify/Product/2"}]
    assert recent["extensions"]["cost"]["requestedQueryCost"] == 2 + 10 * 1 + 1


def test_the_workers_own_sweep_reads_a_wanted_product(
    web: Web,  # noqa: F811
    admin_worker: subprocess.Popen[bytes],
    admin: AdminStandIn,
    pipelines: PipelinesStandIn,
) -> None:
    """No in-process call: the worker's sweep (its first run comes SWEEP_EVERY_S after start)
    reads the product the drain noted, and the waiting customer's date follows."""
    body = order_body(6, created=days_ago(3), lines=[(SHAMPOO, "SH-1", 1)])
    assert web.post("orders/paid", json.dumps(body).encode())[0] == 200
    assert wait_until(lambda: has_order(pipelines, 6), 30), pipelines.calls
    expected = (datetime.fromisoformat(body["created_at"]) + timedelta(days=30)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )
    assert wait_until(lambda: latest_trait(pipelines, "next_replenishment_date") == expected, 60), (
        admin.requests,
        pipelines.calls,
    )
    assert admin.requests_of("ProductNodes")
