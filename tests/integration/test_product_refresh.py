"""The product refresh's cursor and the Admin API's size limits (review of issue 17): a refresh
pass saves its cursor and goes on from it, a cursor Shopify refuses is dropped and the pass read
again from its start, and nothing asks for more than 250 nodes or ids. Real Redis, the Admin
stand-in over loopback (which refuses what Shopify refuses); no worker process needed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bridge.backfill.admin import AdminClient, AdminError
from bridge.config.settings import Settings
from bridge.products import sync
from bridge.products.record import MetafieldKeys
from bridge.services import Services
from bridge.store.keys import Keys
from bridge.store.products import ProductSync
from bridge.worker.sweep import sync_products
from tests.conftest import SHOP
from tests.shopify_admin_standin import (
    INVALID_CURSOR,
    TOKEN,
    AdminStandIn,
    Plan,
    cursor_position,
    gql_product,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
MARK = "2026-01-01T00:00:00.000Z"


def soaps(n: int) -> list[dict[str, Any]]:
    """n products updated after MARK, each at its own time (so the UPDATED_AT order is fixed)."""
    return [
        gql_product(
            1000 + i,
            product_type="Soap",
            updated=f"2026-02-{i // 1440 % 28 + 1:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z",
        )
        for i in range(n)
    ]


@pytest.fixture
def standin() -> Iterator[AdminStandIn]:
    with AdminStandIn(catalog=soaps(300), plan=Plan(1000.0, 2000.0)) as admin:
        yield admin


@pytest.fixture
def services(settings: Settings, standin: AdminStandIn) -> Iterator[Services]:
    runtime = Services.build(
        settings.model_copy(
            update={
                "shopify_shop": SHOP,
                "shopify_admin_token": SecretStr(TOKEN),
                "shopify_admin_url": standin.url,
            }
        )
    )
    yield runtime
    runtime.store.close()


@pytest.fixture
def client(standin: AdminStandIn) -> Iterator[AdminClient]:
    admin = AdminClient(shop=SHOP, token=TOKEN, url=standin.url)
    yield admin
    admin.close()


def run(client: AdminClient, services: Services, **kw: Any) -> sync.SyncReport:
    state = ProductSync(services.store.redis, SHOP)
    return sync.refresh(client, services.store, state, SHOP, MetafieldKeys(), NOW, **kw)


def pages(standin: AdminStandIn) -> list[int | None]:
    return [cursor_position(v["after"]) for v in standin.requests_of("Products")]


# --- item 1: the refresh's cursor -----------------------------------------------------------


def test_an_interrupted_refresh_goes_on_from_its_saved_cursor(
    standin: AdminStandIn, client: AdminClient, services: Services
) -> None:
    state = ProductSync(services.store.redis, SHOP)
    state.set_watermark(MARK)
    first = run(client, services, max_pages=1)
    assert (first.refreshed, first.resumed) == (100, False)
    saved = state.saved_pass()
    assert saved is not None and cursor_position(saved.after) == 100
    assert state.watermark() == MARK  # the pass is not over: the watermark waits for its end
    second = run(client, services, max_pages=1)
    assert (second.refreshed, second.resumed) == (100, True)
    third = run(client, services, max_pages=5)
    assert third.refreshed == 100
    # Each run asked from where the last one stopped: 300 products read once each.
    assert pages(standin) == [None, 100, 200]
    assert state.saved_pass() is None
    assert state.watermark() == "2026-02-01T04:59:00Z"
    assert services.store.inbound_length(SHOP) == 300
    # The same search all along (the pass's own, not one moved by what it read).
    assert len({v["query"] for v in standin.requests_of("Products")}) == 1


def test_a_refused_cursor_is_dropped_and_the_pass_starts_again(
    standin: AdminStandIn, client: AdminClient, services: Services
) -> None:
    state = ProductSync(services.store.redis, SHOP)
    state.set_watermark(MARK)
    run(client, services, max_pages=1)
    assert state.saved_pass() is not None
    standin.invalidate_cursors()  # bulk edits: Shopify no longer pages from the saved cursor
    again = run(client, services, max_pages=1)
    assert again.restarted and again.refreshed == 100
    assert pages(standin) == [None, 100, None]
    assert standin.answers[-2:] == ["refused", "ok"]
    stats = services.store.redis.hget(Keys(SHOP).stats, "products:refresh:cursor_refused")
    assert stats == b"1"
    # The pass goes on from the new cursor and ends: every later run succeeds.
    for _ in range(3):
        run(client, services, max_pages=1)
    assert state.saved_pass() is None
    assert state.watermark() == "2026-02-01T04:59:00Z"
    # refused at 100, read again from the start, then on from the new cursors to the end; the
    # last run starts the next pass from the new watermark.
    assert pages(standin) == [None, 100, None, 100, 200, None]


def test_a_garbled_saved_cursor_never_fails_every_run(
    standin: AdminStandIn, client: AdminClient, services: Services
) -> None:
    state = ProductSync(services.store.redis, SHOP)
    state.set_watermark(MARK)
    run(client, services, max_pages=1)
    saved = state.saved_pass()
    assert saved is not None
    state.save_pass(sync.RefreshPass(since=saved.since, after="not-a-cursor", newest=saved.newest))
    report = run(client, services, max_pages=5)
    assert report.restarted and report.refreshed == 300
    assert state.saved_pass() is None


def test_the_refresh_yields_between_pages_and_goes_on_next_time(
    standin: AdminStandIn, client: AdminClient, services: Services
) -> None:
    state = ProductSync(services.store.redis, SHOP)
    state.set_watermark(MARK)
    report = run(client, services, should_yield=lambda: True)
    assert report.yielded and report.pages == 1  # one page always: a busy shop still advances
    assert state.saved_pass() is not None
    rest = run(client, services, should_yield=lambda: False)
    assert rest.resumed and rest.refreshed == 200
    assert pages(standin) == [None, 100, 200]


def test_the_sweep_goes_on_with_a_pass_under_way_before_the_next_refresh_is_due(
    standin: AdminStandIn, services: Services
) -> None:
    standin.catalog.update({p["id"]: p for p in soaps(700)})
    state = ProductSync(services.store.redis, SHOP)
    state.set_watermark(MARK)
    sync_products(services, SHOP, now=NOW)  # 5 pages of 100: the pass is not over
    assert len(standin.requests_of("Products")) == 5
    assert state.saved_pass() is not None
    # PRODUCT_REFRESH_EVERY_S (an hour) has not passed, but the pass under way goes on.
    sync_products(services, SHOP, now=NOW)
    assert len(standin.requests_of("Products")) == 7
    assert state.saved_pass() is None
    assert services.store.inbound_length(SHOP) == 700
    sync_products(services, SHOP, now=NOW)  # nothing under way, not due: nothing asked
    assert len(standin.requests_of("Products")) == 7


# --- item 5: the Admin API's size limits, in the stand-in and the client --------------------


def _ask(standin: AdminStandIn, query: str, variables: dict[str, Any] | None = None) -> Any:
    resp = httpx.post(
        standin.url,
        json={"query": query, "variables": variables or {}},
        headers={"X-Shopify-Access-Token": TOKEN},
    )
    return resp.json()


def test_the_stand_in_refuses_pages_and_id_lists_over_250(standin: AdminStandIn) -> None:
    """Hand-written queries (not the bridge's), cheap enough to be under the cost maximum."""
    ids = [f"gid://shopify/Product/{1000 + i}" for i in range(251)]
    nodes = "query N($ids: [ID!]!) { nodes(ids: $ids) { id } }"
    over_ids = _ask(standin, nodes, {"ids": ids})
    at_ids = _ask(standin, nodes, {"ids": ids[:250]})
    over_first = _ask(standin, "{ products(first: 251) { nodes { id } } }")
    over_last = _ask(standin, "{ products(last: 300) { nodes { id } } }")
    at_first = _ask(standin, "{ products(first: 250) { nodes { id } } }")
    nested = _ask(
        standin, "{ orders(first: 1) { nodes { lineItems(first: 260) { nodes { id } } } } }"
    )
    [err] = over_ids["errors"]
    assert (
        err["message"] == "The input array size of 251 is greater than the maximum allowed of 250."
    )
    assert err["extensions"]["code"] == "MAX_INPUT_SIZE_EXCEEDED" and err["path"] == [
        "nodes",
        "ids",
    ]
    assert "data" not in over_ids and over_ids["extensions"]["cost"]["actualQueryCost"] is None
    assert len(at_ids["data"]["nodes"]) == 250
    for refused in (over_first, over_last, nested):
        assert "data" not in refused and refused["errors"][0]["locations"]
        assert "250" in refused["errors"][0]["message"]
    assert len(at_first["data"]["products"]["nodes"]) == 250
    # The cursor refusal, as Shopify words it.
    bad = _ask(standin, '{ products(first: 1, after: "garbage") { nodes { id } } }')
    assert bad["errors"][0]["message"] == INVALID_CURSOR and "data" not in bad


def test_the_client_never_asks_for_more_than_250(
    standin: AdminStandIn, client: AdminClient, services: Services
) -> None:
    standin.catalog.update({p["id"]: p for p in soaps(600)})
    wanted = [str(1000 + i) for i in range(600)]
    bodies = sync.fetch_products(client, wanted, MetafieldKeys())
    assert len(bodies) == 600 and not any(b.get("_cartbridge_gone") for b in bodies)
    asked = [len(v["ids"]) for v in standin.requests_of("ProductNodes")]
    assert asked == [250, 250, 100]
    types = client.product_types(wanted)
    assert len(types) == 600
    # Whatever the budget, the page and id counts stop at Shopify's limits.
    assert sync.fit_ids(1e9, 10_000) == 250 and sync.fit_products(1e9, 10_000) == 250
    assert "refused" not in standin.answers
    # A query over the limits is refused by the client itself: it never reaches Shopify.
    before = len(standin.requests)
    with pytest.raises(AdminError, match="limits"):
        client.query("{ products(first: 251) { nodes { id } } }")
    with pytest.raises(AdminError, match="limits"):
        client.query(
            "query N($ids: [ID!]!) { nodes(ids: $ids) { id } }",
            {"ids": [f"gid://shopify/Product/{i}" for i in range(251)]},
        )
    assert len(standin.requests) == before


def test_the_refresh_stops_rather_than_sleep_on_the_bucket(services: Services) -> None:
    """A bucket of 1 000 points that all but never refills: two pages of 403 fit, a third would
    wait minutes. The run stops before it (cursor saved) instead of holding the worker."""
    slept: list[float] = []
    # With a category and both metafields each product costs all 4 points it asked for.
    full = [
        {
            **p,
            "category": {
                "id": "gid://shopify/TaxonomyCategory/hb",
                "name": "Soap",
                "fullName": "Soap",
            },
            "metafields": [
                {"namespace": "custom", "key": "replenishable", "value": "true", "type": "boolean"},
                {"namespace": "custom", "key": "days_to_replenish", "value": "30", "type": "x"},
            ],
        }
        for p in soaps(300)
    ]
    with AdminStandIn(catalog=full, plan=Plan(1000.0, 0.5)) as standin:
        client = AdminClient(shop=SHOP, token=TOKEN, url=standin.url, sleep=slept.append)
        state = ProductSync(services.store.redis, SHOP)
        state.set_watermark(MARK)
        report = run(client, services)
        client.close()
        assert pages(standin) == [None, 100]
    assert report.yielded and report.refreshed == 200
    assert slept == [] and client.stats.waited_s == 0
    saved = state.saved_pass()
    assert saved is not None and cursor_position(saved.after) == 200


def test_the_sweep_yields_to_waiting_jobs_after_one_page(
    standin: AdminStandIn, services: Services
) -> None:
    """Jobs wait in the queue (two drains no worker has taken): the sweep's refresh reads one
    page and leaves the worker to them, its cursor saved for the next sweep."""
    for shop in ("a.myshopify.com", "b.myshopify.com"):
        services.queue.enqueue_call("jobs.drain.drain_shop", args=(shop,))
    state = ProductSync(services.store.redis, SHOP)
    state.set_watermark(MARK)
    sync_products(services, SHOP, now=NOW)
    assert pages(standin) == [None]
    saved = state.saved_pass()
    assert saved is not None and cursor_position(saved.after) == 100
