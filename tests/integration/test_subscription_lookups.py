"""A billing attempt whose contract never came: the sweep looks the contract up through the Admin
API once the attempt has waited SUBSCRIPTION_WAIT_S, queues it, and the drain releases the
attempt; without a contract to find (or a token to ask with) the attempt is parked with why.

Real parts: the Flask app writing to a private Redis, the drain and the sweep's housekeeping as
the worker runs them, the Admin API stand-in, the Pipelines stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from pydantic import SecretStr

from bridge.config.settings import Settings
from bridge.delivery.deliver import deliver
from bridge.services import Services
from bridge.store.facade import Keys, Store
from bridge.store.wire import Envelope
from bridge.web.app import create_app
from bridge.worker.drain import drain
from bridge.worker.sweep import MAX_LOOKUPS, housekeep
from tests.conftest import SHOP, wait_until, webhook_headers
from tests.pipelines_standin import PipelinesStandIn
from tests.shopify_admin_standin import CONTRACTS_SCOPE, TOKEN, AdminStandIn, gql_contract

K = Keys(SHOP)
WAIT_S = 600
SCOPES = {"read_orders", CONTRACTS_SCOPE}


@pytest.fixture
def admin() -> Iterator[AdminStandIn]:
    contract = gql_contract(
        42,
        customer_id=900,
        email="sub@example.com",
        created="2025-06-01T00:00:00Z",
        updated="2025-07-01T00:00:00Z",
        revision=3,
        lines=[(60, "Tea", "12.50", 1)],
    )
    with AdminStandIn(contracts=[contract], scopes=SCOPES) as standin:
        yield standin


def with_admin(settings: Settings, admin: AdminStandIn) -> Settings:
    return settings.model_copy(
        update={
            "shopify_shop": SHOP,
            "shopify_admin_token": SecretStr(TOKEN),
            "shopify_admin_url": admin.url,
            "subscription_wait_s": WAIT_S,
        }
    )


def failure(contract_id: int, attempt_id: int = 1003) -> dict[str, Any]:
    """A failed attempt with the reference app's fields (shared/docs/subscriptions.md §2)."""
    return {
        "id": attempt_id,
        "admin_graphql_api_id": f"gid://shopify/SubscriptionBillingAttempt/{attempt_id}",
        "idempotency_key": f"key-{attempt_id}",
        "order_id": None,
        "admin_graphql_api_order_id": None,
        "subscription_contract_id": contract_id,
        "admin_graphql_api_subscription_contract_id": (
            f"gid://shopify/SubscriptionContract/{contract_id}"
        ),
        "ready": True,
        "error_message": "Insufficient funds",
        "error_code": "INSUFFICIENT_FUNDS",
    }


def post(client: FlaskClient, topic: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    resp = client.post("/webhooks/shopify", data=raw, headers=webhook_headers(raw, topic))
    assert resp.status_code == 200, resp.json


def held(rt: Services, contract_id: int) -> dict[str, Any] | None:
    raw = rt.redis.get(K.state(f"sub_wait:sub:shopify:{contract_id}"))
    return None if raw is None else dict(json.loads(raw))


def parked(redis: redis_lib.Redis) -> list[dict[str, Any]]:
    return [json.loads(p) for p in redis.lrange(K.parked, 0, -1)]


def wait_one_failure(
    settings: Settings, contract_id: int = 42
) -> tuple[Services, FlaskClient, datetime]:
    rt = Services.build(settings)
    client = create_app(settings).test_client()
    post(client, "subscription_billing_attempts/failure", failure(contract_id))
    drain(rt, SHOP)
    assert held(rt, contract_id) is not None  # no contract yet: the attempt waits
    return rt, client, datetime.now(UTC)


def test_an_attempt_for_an_unseen_contract_is_fetched_and_released(
    settings: Settings,
    admin: AdminStandIn,
    redis: redis_lib.Redis,
    pipelines: PipelinesStandIn,
) -> None:
    rt, _, now = wait_one_failure(with_admin(settings, admin))
    housekeep(rt, SHOP, now=now + timedelta(seconds=WAIT_S - 60))
    assert admin.requests_of("SubscriptionContract") == []  # not due yet

    housekeep(rt, SHOP, now=now + timedelta(seconds=WAIT_S + 60))
    assert admin.requests_of("SubscriptionContract") == [
        {"id": "gid://shopify/SubscriptionContract/42"}
    ]
    [env] = [Envelope.decode(raw) for raw in redis.lrange(K.inbound, 0, -1)]
    # Queued as the update webhook that never came: what it says is news (a cancel would send
    # subscription_canceled), unlike the backfill's history.
    assert env.topic == "subscription_contracts/update"
    assert env.webhook_id == "lookup:subscription_contract:42:3"
    assert json.loads(env.body)["customer_id"] == "900"
    assert Store(redis).stats(SHOP)["subscriptions:lookup:found"] == 1

    drain(rt, SHOP)  # the contract names the customer: the attempt waits no more
    assert held(rt, 42) is None
    assert wait_until(lambda: (deliver(rt, SHOP), len(pipelines.calls) >= 2)[1], 15)
    failed = [c for c in pipelines.calls if c.get("event") == "payment_failed"]
    assert len(failed) == 1 and failed[0]["userId"] == "900"
    assert failed[0]["properties"]["error_code"] == "INSUFFICIENT_FUNDS"
    assert failed[0]["properties"]["subscription_id"] == "42"
    # A contract read back was not just created: no subscription_created for it.
    assert not [c for c in pipelines.calls if c.get("event") == "subscription_created"]
    # Nothing left to expire or park later.
    housekeep(rt, SHOP, now=now + timedelta(seconds=3 * WAIT_S))
    assert parked(redis) == []


@pytest.mark.parametrize(
    "contract_id, scopes, outcome, counter",
    [
        (77, SCOPES, "not found", "not_found"),
        (
            42,
            {"read_orders"},
            "Admin API error: access denied (needs read_own_subscription_contracts)",
            "error",
        ),
    ],
)
def test_an_attempt_whose_contract_cannot_be_found_is_parked_with_the_lookup_s_outcome(
    settings: Settings,
    admin: AdminStandIn,
    redis: redis_lib.Redis,
    contract_id: int,
    scopes: set[str],
    outcome: str,
    counter: str,
) -> None:
    admin.scopes = scopes
    rt, _, now = wait_one_failure(with_admin(settings, admin), contract_id)
    housekeep(rt, SHOP, now=now + timedelta(seconds=WAIT_S + 60))
    assert len(admin.requests_of("SubscriptionContract")) == 1
    assert redis.llen(K.inbound) == 0  # nothing found, nothing queued
    wait = held(rt, contract_id)
    assert wait is not None and wait["outcome"] == outcome
    assert Store(redis).stats(SHOP)[f"subscriptions:lookup:{counter}"] == 1

    housekeep(rt, SHOP, now=now + timedelta(seconds=2 * WAIT_S + 120))
    [letter] = parked(redis)
    assert letter["waiting_for"] == f"sub:shopify:{contract_id}"
    assert letter["reason"].endswith(f"; lookup: {outcome}")
    assert letter["topic"] == "subscription_billing_attempts/failure"
    assert held(rt, contract_id) is None
    assert len(admin.requests_of("SubscriptionContract")) == 1  # looked up once only


def test_without_an_admin_token_the_attempt_parks_saying_so(
    settings: Settings, admin: AdminStandIn, redis: redis_lib.Redis
) -> None:
    configured = with_admin(settings, admin).model_copy(
        update={"shopify_admin_token": SecretStr("")}
    )
    rt, _, now = wait_one_failure(configured)
    housekeep(rt, SHOP, now=now + timedelta(seconds=WAIT_S + 60))
    housekeep(rt, SHOP, now=now + timedelta(seconds=2 * WAIT_S + 120))
    [letter] = parked(redis)
    assert letter["reason"].endswith("; lookup: no Admin API token")
    assert admin.requests == []
    # A token for another shop is no token for this one.
    other = with_admin(settings, admin).model_copy(update={"shopify_shop": "other.myshopify.com"})
    rt, _, now = wait_one_failure(other, 43)
    housekeep(rt, SHOP, now=now + timedelta(seconds=WAIT_S + 60))
    wait = held(rt, 43)
    assert wait is not None and wait["outcome"] == "no Admin API token"
    assert admin.requests == []


def test_an_admin_api_that_fails_is_asked_once_per_sweep_and_the_reason_kept(
    settings: Settings, admin: AdminStandIn, redis: redis_lib.Redis
) -> None:
    configured = with_admin(settings, admin)
    rt = Services.build(configured)
    client = create_app(configured).test_client()
    for n, contract_id in enumerate((50, 51, 52)):
        post(client, "subscription_billing_attempts/failure", failure(contract_id, 2000 + n))
    drain(rt, SHOP)
    now = datetime.now(UTC)
    admin.script("error500", "error500", op="SubscriptionContract")
    housekeep(rt, SHOP, now=now + timedelta(seconds=WAIT_S + 60))
    # Two attempts at the first lookup, then the others are not asked: the API is down.
    assert len(admin.requests_of("SubscriptionContract")) == 2
    outcomes = {cid: (held(rt, cid) or {}).get("outcome") for cid in (50, 51, 52)}
    assert set(outcomes.values()) == {"Admin API error: gave up after 2 attempts: HTTP 500"}
    assert Store(redis).stats(SHOP)["subscriptions:lookup:error"] == 3


def test_lookups_per_sweep_are_bounded(
    settings: Settings, admin: AdminStandIn, redis: redis_lib.Redis
) -> None:
    configured = with_admin(settings, admin)
    rt = Services.build(configured)
    client = create_app(configured).test_client()
    ids = [100 + i for i in range(MAX_LOOKUPS + 2)]
    for contract_id in ids:
        post(client, "subscription_billing_attempts/failure", failure(contract_id, contract_id))
    drain(rt, SHOP)
    housekeep(rt, SHOP, now=datetime.now(UTC) + timedelta(seconds=WAIT_S + 60))
    assert len(admin.requests_of("SubscriptionContract")) == MAX_LOOKUPS
    skipped = [cid for cid in ids if "more than" in str((held(rt, cid) or {}).get("outcome"))]
    assert len(skipped) == 2
    assert Store(redis).stats(SHOP)["subscriptions:lookup:skipped"] == 2
