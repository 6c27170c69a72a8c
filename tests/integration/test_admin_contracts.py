"""Subscription contracts through the Admin API: the client against the stand-in (Shopify's cost
rules, paging, the scope and ownership rules), `bridge backfill shopify` and `bridge reconcile`
queuing them as webhook-shaped envelopes the contract mapping reads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis as redis_lib

from bridge.backfill.admin import AdminAccessDenied, AdminClient, contracts_query
from bridge.backfill.contracts import fetch_contract
from bridge.backfill.reconcile import reconcile
from bridge.cli.main import main
from bridge.sources.shopify import ShopifySource
from bridge.sources.shopify.graphql import webhook_contract
from bridge.store.facade import Keys, Store
from bridge.store.wire import Envelope
from tests.conftest import SHOP
from tests.rules import map_context
from tests.shopify_admin_standin import (
    CONTRACTS_SCOPE,
    OTHER_APP,
    TOKEN,
    AdminStandIn,
    Plan,
    gql_contract,
)

SCOPES = {"read_orders", "read_all_orders", CONTRACTS_SCOPE}


def many_contracts(n: int) -> list[dict[str, Any]]:
    return [
        gql_contract(
            5000 + i,
            customer_id=800 + i,
            email=f"s{i}@example.com",
            created="2025-06-01T00:00:00Z",
            updated=f"2025-07-{i % 28 + 1:02d}T00:00:00Z",
            revision=10 + i,
            lines=[(60, "Tea", "12.50", 1)],
        )
        for i in range(n)
    ]


def client_for(standin: AdminStandIn, **kw: Any) -> AdminClient:
    return AdminClient(shop=SHOP, token=TOKEN, url=standin.url, **kw)


def test_a_huge_store_pages_under_the_maximum_and_every_contract_comes_back_whole() -> None:
    contracts = many_contracts(300)  # more than one page can hold (250 nodes at most)
    contracts.append(
        gql_contract(
            5999,
            customer_id=None,  # a contract without customer (redacted, or deleted)
            email=None,
            created="2025-06-01T00:00:00Z",
            lines=[(70 + j, f"Item {j}", "1.00", 1) for j in range(23)],  # more than a page's
        )
    )
    # Another app's contract: `read_own_subscription_contracts` never shows it.
    contracts.append(
        gql_contract(
            6000,
            customer_id=1,
            email="x@example.com",
            created="2025-01-01T00:00:00Z",
            app=OTHER_APP,
        )
    )
    with AdminStandIn(contracts=contracts, scopes=SCOPES, plan=Plan(1000.0, 2000.0)) as standin:
        client = client_for(standin)
        nodes = [n for page in client.contract_pages() for n in page.nodes]
        client.close()
        pages = standin.requests_of("SubscriptionContracts")
    assert [n["id"].rsplit("/", 1)[1] for n in nodes] == [str(5000 + i) for i in range(300)] + [
        "5999"
    ]
    assert len(pages) >= 2 and pages[0]["after"] is None
    assert max(standin.costs) <= 1000
    assert "throttled" not in standin.answers and "max_cost" not in standin.answers
    assert client.stats.waited_s > 0  # it waited for the small bucket rather than be throttled
    assert client.stats.cost_halvings == 0  # each page was sized to fit before it was sent
    assert all(r["first"] == pages[0]["first"] for r in pages[:-1]) and pages[0]["first"] > 1
    big = webhook_contract(nodes[-1])
    assert len(big["lines"]) == 23  # completed with follow-up queries, not truncated
    assert standin.requests_of("ContractLines")
    # The customerless contract maps, naming nobody.
    mapped = ShopifySource().map("backfill/subscription_contract", big, map_context(SHOP))
    assert mapped.subscription is not None and mapped.person is not None
    assert mapped.person.customer_id is None and len(mapped.subscription.items) == 23


def test_the_stand_in_refuses_a_contract_page_over_the_maximum() -> None:
    with AdminStandIn(contracts=many_contracts(3), scopes=SCOPES) as standin:
        resp = httpx.post(
            standin.url,
            json={"query": contracts_query(10), "variables": {"first": 250}},
            headers={"X-Shopify-Access-Token": TOKEN},
        )
        body = resp.json()
    # 2 + 250 x 27 + 1 (pageInfo) by Shopify's published rules.
    assert body["extensions"]["cost"]["requestedQueryCost"] == 6753
    assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED" and "data" not in body


def test_a_query_shopify_finds_too_dear_is_halved_and_asked_again() -> None:
    with AdminStandIn(contracts=many_contracts(5), scopes=SCOPES) as standin:
        standin.script("max_cost", op="SubscriptionContracts")
        client = client_for(standin)
        ids = [n["id"] for page in client.contract_pages(page_size=4) for n in page.nodes]
        client.close()
        firsts = [r["first"] for r in standin.requests_of("SubscriptionContracts")]
    assert len(ids) == 5 and firsts[:2] == [4, 2]
    assert client.stats.cost_halvings == 1


def test_without_the_scope_contracts_are_refused() -> None:
    with AdminStandIn(contracts=many_contracts(1)) as standin:  # read_orders only
        client = client_for(standin)
        with pytest.raises(AdminAccessDenied):
            list(client.contract_pages())
        with pytest.raises(AdminAccessDenied):
            fetch_contract(client, "5000")
        client.close()


def test_fetch_contract_gives_the_webhook_shape_or_none() -> None:
    contract = gql_contract(
        5000,
        customer_id=800,
        email="Ada@Example.com",
        created="2025-06-01T00:00:00Z",
        updated="2025-07-01T12:00:00Z",
        status="PAUSED",
        revision=18446744073709551615,  # UnsignedInt64's largest, a string in GraphQL
        next_billing="2025-08-01T00:00:00Z",
        interval="WEEK",
        interval_count=2,
        origin_order_id=4000,
        lines=[(60, "Tea", "12.50", 2)],
        last_payment="FAILED",
    )
    other = gql_contract(
        6000, customer_id=1, email=None, created="2025-01-01T00:00:00Z", app=OTHER_APP
    )
    with AdminStandIn(contracts=[contract, other], scopes=SCOPES) as standin:
        client = client_for(standin)
        body = fetch_contract(client, "5000")
        assert fetch_contract(client, "5001") is None  # no such contract
        assert fetch_contract(client, "6000") is None  # another app's: null to this one
        client.close()
        [asked] = standin.requests_of("SubscriptionContract")[:1]
    assert asked == {"id": "gid://shopify/SubscriptionContract/5000"}
    assert body == {
        "admin_graphql_api_id": "gid://shopify/SubscriptionContract/5000",
        "id": "5000",
        "status": "paused",
        "revision_id": "18446744073709551615",
        "created_at": "2025-06-01T00:00:00Z",
        "updated_at": "2025-07-01T12:00:00Z",
        "next_billing_date": "2025-08-01T00:00:00Z",
        "currency_code": "USD",
        "customer_id": "800",
        "admin_graphql_api_customer_id": "gid://shopify/Customer/800",
        "customer_email": "Ada@Example.com",
        "billing_policy": {"interval": "week", "interval_count": 2},
        "origin_order_id": "4000",
        "admin_graphql_api_origin_order_id": "gid://shopify/Order/4000",
        "last_payment_status": "failed",
        "lines": [
            {
                "product_id": "60",
                "variant_id": "600",
                "sku": "SKU-60",
                "title": "Tea",
                "quantity": 2,
                "price": "12.50",
            }
        ],
    }
    fact = (
        ShopifySource().map("backfill/subscription_contract", body, map_context(SHOP)).subscription
    )
    assert fact is not None
    assert (fact.status, fact.revision, fact.interval, fact.interval_count) == (
        "paused",
        2**64 - 1,
        "week",
        2,
    )
    assert fact.person.email == "ada@example.com" and not fact.created


# --- bridge backfill and bridge reconcile ---------------------------------------------------


def queued(redis: redis_lib.Redis) -> list[Envelope]:
    return [Envelope.decode(raw) for raw in redis.lrange(Keys(SHOP).inbound, 0, -1)]


@pytest.fixture
def admin() -> Iterator[AdminStandIn]:
    with AdminStandIn(contracts=many_contracts(3), scopes=SCOPES) as standin:
        yield standin


def test_backfill_queues_every_contract_after_the_orders(
    env: dict[str, str],
    admin: AdminStandIn,
    redis: redis_lib.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["backfill", "shopify", "--method", "paged", "--rate", "1000"]
    assert main(argv) == 0
    assert "subscription contracts queued: 3" in capsys.readouterr().out
    envs = queued(redis)
    assert [e.topic for e in envs] == ["backfill/subscription_contract"] * 3
    assert [e.webhook_id for e in envs] == [
        f"backfill:subscription_contract:{5000 + i}:{10 + i}" for i in range(3)
    ]
    body = orjson.loads(envs[0].body)
    assert body["customer_id"] == "800" and body["lines"][0]["price"] == "12.50"
    # A rerun queues nothing the drain already processed: the same snapshot has the same id.
    redis.delete(Keys(SHOP).inbound)
    for e in envs[:2]:
        redis.set(Keys(SHOP).seen(e.webhook_id), 1)  # as the drain marks what it processed
    assert main(argv) == 0
    assert [e.webhook_id for e in queued(redis)] == [envs[2].webhook_id]

    capsys.readouterr()
    assert main([*argv, "--no-subscriptions", "--dry-run"]) == 0
    assert "subscription contracts" not in capsys.readouterr().out


def test_backfill_without_the_scope_says_so_and_still_succeeds(
    env: dict[str, str],
    admin: AdminStandIn,
    redis: redis_lib.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin.scopes = {"read_orders", "read_all_orders"}
    assert main(["backfill", "shopify", "--method", "paged"]) == 0
    out = capsys.readouterr().out
    assert f"subscription contracts: not read (the token lacks {CONTRACTS_SCOPE}" in out
    assert not admin.requests_of("SubscriptionContracts")  # the scopes said so: not asked
    assert queued(redis) == []


def recent(i: int, minutes: int) -> dict[str, Any]:
    at = (datetime.now(UTC) - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return gql_contract(
        7000 + i, customer_id=900 + i, email=None, created=at, updated=at, revision=i + 1
    )


def test_reconcile_queues_the_window_s_contracts_as_the_update_webhook(
    env: dict[str, str],
    admin: AdminStandIn,
    redis: redis_lib.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin.contracts = [recent(0, 30), recent(1, 50), recent(2, 60 * 5)]  # the last: too old
    assert main(["reconcile", "--since", "2h", "--grace", "0"]) == 0
    out = capsys.readouterr().out
    assert "subscription contracts: 2 updated, 2 never seen by the bridge, 2 queued" in out
    envs = queued(redis)
    assert [(e.topic, e.webhook_id) for e in envs] == [
        ("subscription_contracts/update", "reconcile:subscription_contract:7001:2"),
        ("subscription_contracts/update", "reconcile:subscription_contract:7000:1"),
    ]
    [asked] = admin.requests_of("SubscriptionContracts")
    assert asked["sortKey"] == "UPDATED_AT" and asked["query"].startswith("updated_at:>=")
    # The same window again, once drained: the same snapshots, nothing queued twice.
    for e in envs:
        redis.set(Keys(SHOP).seen(e.webhook_id), 1)
    assert main(["reconcile", "--since", "2h", "--grace", "0"]) == 0
    assert "2 updated, 2 never seen by the bridge, 0 queued" in capsys.readouterr().out


def test_reconcile_without_the_scope_still_reconciles_orders(
    settings: Any, redis: redis_lib.Redis
) -> None:
    with AdminStandIn(contracts=[recent(0, 30)]) as standin:  # read_orders only
        client = client_for(standin)
        report = reconcile(client, Store(redis), None, shop=SHOP, window=timedelta(hours=2))
        client.close()
    assert report.contracts is not None and report.contracts.denied
    assert "not read" in report.contracts.line()
    assert queued(redis) == []
