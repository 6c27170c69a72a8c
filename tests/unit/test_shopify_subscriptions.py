"""Shopify's subscription topics -> subscription and billing facts.

Bodies are written from shared/docs/subscriptions.md section 2: the contract sample of the
2026-07 webhook reference (revision_id a string there, a number in Shopify's reference app), the
billing-attempt fields of the reference app's types and fixtures, and the billing-cycle fields.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bridge.canonical import (
    BILLING_CHALLENGED,
    BILLING_FAILURE,
    BILLING_SKIPPED,
    BILLING_SUCCESS,
    BILLING_UNSKIPPED,
    BillingFact,
    Item,
    MapContext,
    Mapped,
    PersonRef,
    SubscriptionFact,
)
from bridge.jsonio import parse_body
from bridge.sources import MappingError
from bridge.sources.shopify import ShopifySource
from bridge.sources.shopify import subscriptions as subs
from tests.rules import map_context

SHOP = "shop.example"
TRIGGERED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CTX = map_context(SHOP, triggered_at=TRIGGERED)
NO_TRIGGER = map_context(SHOP)
source = ShopifySource()


def contract_body(**changes: Any) -> dict[str, Any]:
    """The documented contract sample (REF-2026-07's shape, illustrative values)."""
    body: dict[str, Any] = {
        "admin_graphql_api_id": "gid://shopify/SubscriptionContract/1",
        "id": 1,
        "billing_policy": {
            "interval": "week",
            "interval_count": 1,
            "min_cycles": None,
            "max_cycles": None,
        },
        "currency_code": "USD",
        "customer_id": 1,
        "admin_graphql_api_customer_id": "gid://shopify/Customer/1",
        "delivery_policy": {"interval": "week", "interval_count": 1},
        "status": "active",
        "admin_graphql_api_origin_order_id": "gid://shopify/Order/1",
        "origin_order_id": 1,
        "revision_id": "7232252373",
    }
    body.update(changes)
    return body


def attempt_body(**changes: Any) -> dict[str, Any]:
    """A failed attempt with the reference app's fields (its dunning fixture's shape)."""
    body: dict[str, Any] = {
        "id": 1003,
        "admin_graphql_api_id": "gid://shopify/SubscriptionBillingAttempt/1003",
        "idempotency_key": "4c8b3c5e-2a8f-4d7e-9a5b-1f0c2d3e4a5b",
        "order_id": None,
        "admin_graphql_api_order_id": None,
        "subscription_contract_id": 42,
        "admin_graphql_api_subscription_contract_id": "gid://shopify/SubscriptionContract/42",
        "ready": True,
        "error_message": "Insufficient inventory",
        "error_code": "INSUFFICIENT_INVENTORY",
    }
    body.update(changes)
    return body


def cycle_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subscription_contract_id": "42",
        "cycle_start_at": "2026-03-08T00:00:00-05:00",
        "cycle_end_at": "2026-03-15T00:00:00-05:00",
        "cycle_index": 3,
        "contract_edit": None,
        "billing_attempt_expected_date": "2026-03-08T00:00:00-05:00",
        "skipped": True,
        "edited": False,
    }
    body.update(changes)
    return body


def run(topic: str, body: dict[str, Any], ctx: MapContext = CTX) -> Mapped:
    return source.map(topic, body, ctx)


CUSTOMER = PersonRef(customer_id="1")
SAMPLE_FACT = SubscriptionFact(
    provider="shopify",
    subscription_id="1",
    person=CUSTOMER,
    version=TRIGGERED,
    revision=7232252373,
    status="active",
    created=True,
    interval="week",
    interval_count=1,
    currency="USD",
    origin_order_id="1",
)


# --- contracts ------------------------------------------------------------------------------


def test_the_documented_contract_sample_on_create() -> None:
    m = run("subscription_contracts/create", contract_body())
    assert m == Mapped(
        source="shopify",
        topic="subscription_contracts/create",
        subscription=SAMPLE_FACT,
        person=CUSTOMER,
    )
    # No events from mapping: the decide step derives them from facts and state.
    assert m.events == () and m.identifies == () and m.billing is None


def test_revision_id_as_a_string_and_as_a_number_is_the_same_revision() -> None:
    as_text = run("subscription_contracts/update", contract_body(revision_id="7232252373"))
    as_number = run("subscription_contracts/update", contract_body(revision_id=7232252373))
    assert as_text.subscription is not None and as_number.subscription is not None
    assert as_text.subscription.revision == as_number.subscription.revision == 7232252373
    # The largest UnsignedInt64 survives exactly, as text and as a number.
    top = 2**64 - 1
    for value in (str(top), top):
        m = run("subscription_contracts/update", contract_body(revision_id=value))
        assert m.subscription is not None and m.subscription.revision == top


@pytest.mark.parametrize(
    "topic, created",
    [(t, t == "subscription_contracts/create") for t in subs.CONTRACT_TOPICS]
    + [("backfill/subscription_contract", False)],
)
def test_only_the_create_topic_says_created(topic: str, created: bool) -> None:
    m = run(topic, contract_body())
    assert m.subscription is not None and m.subscription.created is created


@pytest.mark.parametrize(
    "status, expected",
    [
        ("active", "active"),
        ("paused", "paused"),
        ("cancelled", "canceled"),
        ("expired", "expired"),
        ("failed", "failed"),
        ("CANCELLED", "canceled"),  # GraphQL's enum, as an Admin API read may carry it
        (" Paused ", "paused"),
        ("stale", None),  # not in the Admin enum nor the samples: the payload says nothing
        ("suspended", None),  # unknown
        ("", None),
        (None, None),
    ],
)
def test_contract_status_on_update(status: str | None, expected: str | None) -> None:
    m = run("subscription_contracts/update", contract_body(status=status))
    assert m.subscription is not None and m.subscription.status == expected


@pytest.mark.parametrize(
    "topic, implied",
    [
        ("subscription_contracts/activate", "active"),
        ("subscription_contracts/pause", "paused"),
        ("subscription_contracts/cancel", "canceled"),
        ("subscription_contracts/fail", "failed"),
        ("subscription_contracts/expire", "expired"),
    ],
)
def test_a_status_topic_names_the_status_its_body_does_not(topic: str, implied: str) -> None:
    for status in (None, "stale", "mystery"):
        m = run(topic, contract_body(status=status))
        assert m.subscription is not None and m.subscription.status == implied, status
    # A status the body does name wins: it is the contract's state when the webhook was made.
    m = run(topic, contract_body(status="paused"))
    assert m.subscription is not None and m.subscription.status == "paused"


def test_version_is_updated_at_when_the_body_has_it_else_the_trigger_time() -> None:
    m = run("subscription_contracts/update", contract_body(updated_at="2026-02-01T10:00:00-05:00"))
    assert m.subscription is not None
    assert m.subscription.version == datetime(2026, 2, 1, 15, 0, tzinfo=UTC)
    m = run("subscription_contracts/update", contract_body())
    assert m.subscription is not None and m.subscription.version == TRIGGERED
    with pytest.raises(MappingError, match="timestamp"):
        run("subscription_contracts/update", contract_body(), NO_TRIGGER)
    # A malformed updated_at is no time at all.
    with pytest.raises(MappingError, match="timestamp"):
        run("subscription_contracts/update", contract_body(updated_at="yesterday"), NO_TRIGGER)


def test_ids_from_their_gids_alone() -> None:
    body = contract_body(
        id=None,
        customer_id=None,
        origin_order_id=None,
        admin_graphql_api_id="gid://shopify/SubscriptionContract/77",
        admin_graphql_api_customer_id="gid://shopify/Customer/88",
        admin_graphql_api_origin_order_id="gid://shopify/Order/99",
    )
    del body["id"]
    fact = run("subscription_contracts/update", body).subscription
    assert fact is not None
    assert (fact.subscription_id, fact.person.customer_id, fact.origin_order_id) == (
        "77",
        "88",
        "99",
    )
    # A gid where the number was expected is read the same way.
    fact = run(
        "subscription_contracts/update", contract_body(id="gid://shopify/SubscriptionContract/5")
    ).subscription
    assert fact is not None and fact.subscription_id == "5"


def test_origin_order_is_null_for_a_contract_not_made_at_checkout() -> None:
    body = contract_body(origin_order_id=None, admin_graphql_api_origin_order_id=None)
    fact = run("subscription_contracts/create", body).subscription
    assert fact is not None and fact.origin_order_id is None


def test_a_contract_without_customer_names_nobody() -> None:
    body = contract_body(customer_id=None, admin_graphql_api_customer_id=None)
    m = run("subscription_contracts/update", body)
    assert m.person == PersonRef() and m.subscription is not None
    assert m.subscription.person == PersonRef()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"id": None, "admin_graphql_api_id": None},
        {"id": "", "admin_graphql_api_id": "gid://shopify/SubscriptionContract/"},
        {"id": "   ", "admin_graphql_api_id": "  "},
    ],
)
def test_a_contract_with_no_id_is_a_mapping_error_naming_fields(body: dict[str, Any]) -> None:
    with pytest.raises(MappingError) as err:
        run("subscription_contracts/cancel", {**contract_body(), **body} if body else {})
    assert "id" in str(err.value) and "admin_graphql_api_id" in str(err.value)


@pytest.mark.parametrize(
    "policy, interval, count",
    [
        ({"interval": "week", "interval_count": 1}, "week", 1),
        ({"interval": "MONTH", "interval_count": "3"}, "month", 3),
        ({"interval": "fortnight", "interval_count": 2}, None, 2),
        ({"interval": None, "interval_count": None}, None, None),
        (None, None, None),
        ([], None, None),  # an empty object serialised as a list, as Shopify does elsewhere
    ],
)
def test_interval_from_the_billing_policy(
    policy: Any, interval: str | None, count: int | None
) -> None:
    fact = run("subscription_contracts/update", contract_body(billing_policy=policy)).subscription
    assert fact is not None and (fact.interval, fact.interval_count) == (interval, count)


ADMIN_READ = contract_body(
    status="ACTIVE",
    revision_id="7232252999",
    created_at="2026-01-01T09:00:00Z",
    updated_at="2026-02-20T09:30:00Z",
    next_billing_date="2026-03-20T09:00:00Z",
    customer_email=" Ada@Example.COM ",
    lines=[
        {
            "product_id": "11",
            "variant_id": "110",
            "sku": "TEA-1",
            "title": "Tea",
            "quantity": 2,
            "price": "12.50",
        },
        {
            "product_id": "12",
            "variant_id": None,
            "sku": None,
            "title": "Mug",
            "quantity": 1,
            "price": "8.00",
        },
    ],
)


def test_an_admin_api_read_carries_times_email_and_lines() -> None:
    m = run("backfill/subscription_contract", ADMIN_READ, NO_TRIGGER)
    person = PersonRef(customer_id="1", email="ada@example.com")
    assert m == Mapped(
        source="shopify",
        topic="backfill/subscription_contract",
        subscription=SubscriptionFact(
            provider="shopify",
            subscription_id="1",
            person=person,
            version=datetime(2026, 2, 20, 9, 30, tzinfo=UTC),
            revision=7232252999,
            status="active",
            created=False,
            created_at=datetime(2026, 1, 1, 9, 0, tzinfo=UTC),
            next_charge_at=datetime(2026, 3, 20, 9, 0, tzinfo=UTC),
            interval="week",
            interval_count=1,
            price=Decimal("33.00"),
            currency="USD",
            items=(
                Item(
                    product_id="11",
                    variant_id="110",
                    sku="TEA-1",
                    name="Tea",
                    price=Decimal("12.50"),
                    quantity=2,
                ),
                Item(product_id="12", name="Mug", price=Decimal("8.00"), quantity=1),
            ),
            origin_order_id="1",
        ),
        person=person,
    )


def test_a_webhook_has_no_lines_and_so_no_price() -> None:
    fact = run("subscription_contracts/update", contract_body()).subscription
    assert fact is not None and fact.items == () and fact.price is None


def test_lines_are_bounded() -> None:
    line = {"product_id": 1, "variant_id": 2, "title": "T", "quantity": 1, "price": "1.00"}
    fact = run("backfill/subscription_contract", contract_body(lines=[line] * 1000)).subscription
    assert fact is not None and len(fact.items) == 100
    assert fact.price == Decimal("1000.00")  # the price is the whole contract's


# --- billing attempts -----------------------------------------------------------------------

CONTRACT_42 = PersonRef(subscription="shopify:42")


def test_a_billing_failure_with_the_reference_app_fields() -> None:
    m = run("subscription_billing_attempts/failure", attempt_body())
    assert m == Mapped(
        source="shopify",
        topic="subscription_billing_attempts/failure",
        billing=BillingFact(
            provider="shopify",
            outcome=BILLING_FAILURE,
            attempt_id="1003",
            subscription_ids=("42",),
            at=TRIGGERED,
            person=CONTRACT_42,
            error_code="INSUFFICIENT_INVENTORY",
            error_message="Insufficient inventory",
        ),
        person=CONTRACT_42,
    )
    # No customer id exists in these payloads: the subscription alone names the person.
    assert m.person is not None and m.person.customer_id is None and m.subscription is None


@pytest.mark.parametrize(
    "code, expected",
    [
        ("INSUFFICIENT_INVENTORY", "INSUFFICIENT_INVENTORY"),
        ("INVENTORY_ALLOCATIONS_NOT_FOUND", "INVENTORY_ALLOCATIONS_NOT_FOUND"),
        ("INSUFFICIENT_FUNDS", "INSUFFICIENT_FUNDS"),
        ("PAYMENT_METHOD_DECLINED", "PAYMENT_METHOD_DECLINED"),
        ("AUTHENTICATION_REQUIRED", "AUTHENTICATION_REQUIRED"),
        ("A_CODE_SHOPIFY_ADDS_IN_2027", "A_CODE_SHOPIFY_ADDS_IN_2027"),  # unknown: kept
        ("card_declined", "CARD_DECLINED"),
        ("", None),
        (None, None),
        ("X" * 500, "X" * 100),
    ],
)
def test_error_codes_known_and_unknown_are_failures(code: str | None, expected: str | None) -> None:
    billing = run("subscription_billing_attempts/failure", attempt_body(error_code=code)).billing
    assert billing is not None
    assert (billing.outcome, billing.error_code) == (BILLING_FAILURE, expected)


def test_a_long_error_message_is_cut() -> None:
    billing = run(
        "subscription_billing_attempts/failure", attempt_body(error_message="declined " * 500)
    ).billing
    assert billing is not None and billing.error_message is not None
    assert len(billing.error_message) == subs.MAX_ERROR_MESSAGE_CHARS


def test_a_billing_success_names_its_renewal_order() -> None:
    body = attempt_body(
        order_id=5001,
        admin_graphql_api_order_id="gid://shopify/Order/5001",
        error_code=None,
        error_message=None,
    )
    billing = run("subscription_billing_attempts/success", body).billing
    assert billing == BillingFact(
        provider="shopify",
        outcome=BILLING_SUCCESS,
        attempt_id="1003",
        subscription_ids=("42",),
        at=TRIGGERED,
        person=CONTRACT_42,
        order_id="5001",
    )


def test_a_challenged_attempt_is_not_a_failure() -> None:
    body = attempt_body(error_code="AUTHENTICATION_REQUIRED", error_message=None)
    billing = run("subscription_billing_attempts/challenged", body).billing
    assert billing is not None and billing.outcome == BILLING_CHALLENGED


def test_billing_attempt_ids_from_gids_alone() -> None:
    body = attempt_body(id=None, subscription_contract_id=None, order_id=None)
    body["admin_graphql_api_order_id"] = "gid://shopify/Order/6"
    billing = run("subscription_billing_attempts/failure", body).billing
    assert billing is not None
    assert (billing.attempt_id, billing.subscription_ids, billing.order_id) == (
        "1003",
        ("42",),
        "6",
    )
    # An attempt without any id falls back to the app's idempotency key.
    body = attempt_body(id=None, admin_graphql_api_id=None)
    billing = run("subscription_billing_attempts/failure", body).billing
    assert billing is not None and billing.attempt_id == body["idempotency_key"]


@pytest.mark.parametrize("topic", [*subs.BILLING_ATTEMPT_TOPICS, *subs.BILLING_CYCLE_TOPICS])
def test_a_billing_payload_without_its_contract_is_a_mapping_error(topic: str) -> None:
    maker = attempt_body if "attempts" in topic else cycle_body
    body = maker(subscription_contract_id=None, admin_graphql_api_subscription_contract_id=None)
    with pytest.raises(MappingError, match="subscription_contract_id"):
        run(topic, body)


def test_a_billing_attempt_without_any_id_is_a_mapping_error() -> None:
    body = attempt_body(id=None, admin_graphql_api_id=None, idempotency_key=None)
    with pytest.raises(MappingError, match="has no id"):
        run("subscription_billing_attempts/failure", body)


def test_a_billing_attempt_is_timed_by_its_trigger_else_its_own_times() -> None:
    with pytest.raises(MappingError, match="timestamp"):
        run("subscription_billing_attempts/failure", attempt_body(), NO_TRIGGER)
    body = attempt_body(completed_at="2026-03-02T08:00:00Z", created_at="2026-03-02T07:59:00Z")
    billing = run("subscription_billing_attempts/failure", body, NO_TRIGGER).billing
    assert billing is not None and billing.at == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    billing = run("subscription_billing_attempts/failure", body).billing
    assert billing is not None and billing.at == TRIGGERED


def test_a_billing_attempt_naming_its_cycle_carries_it() -> None:
    billing = run("subscription_billing_attempts/failure", attempt_body(cycle_index=4)).billing
    assert billing is not None and billing.cycle == "4"


# --- billing cycles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic, outcome",
    [
        ("subscription_billing_cycles/skip", BILLING_SKIPPED),
        ("subscription_billing_cycles/unskip", BILLING_UNSKIPPED),
    ],
)
def test_skipped_and_unskipped_cycles(topic: str, outcome: str) -> None:
    m = run(topic, cycle_body())
    assert m == Mapped(
        source="shopify",
        topic=topic,
        billing=BillingFact(
            provider="shopify",
            outcome=outcome,
            attempt_id="cycle:3",
            subscription_ids=("42",),
            at=TRIGGERED,
            person=CONTRACT_42,
            cycle="3",
        ),
        person=CONTRACT_42,
    )


def test_a_cycle_without_trigger_time_is_timed_at_its_start() -> None:
    billing = run("subscription_billing_cycles/skip", cycle_body(), NO_TRIGGER).billing
    assert billing is not None and billing.at == datetime(2026, 3, 8, 5, 0, tzinfo=UTC)
    with pytest.raises(MappingError, match="timestamp"):
        run("subscription_billing_cycles/skip", cycle_body(cycle_start_at=None), NO_TRIGGER)


def test_a_cycle_without_its_index_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match="cycle_index"):
        run("subscription_billing_cycles/skip", cycle_body(cycle_index=None))
    cycle = run(
        "subscription_billing_cycles/skip",
        cycle_body(subscription_contract_id="gid://shopify/SubscriptionContract/42"),
    ).billing
    assert cycle is not None and cycle.subscription_ids == ("42",)


# --- hostile bodies -------------------------------------------------------------------------


def nulled(body: dict[str, Any]) -> dict[str, Any]:
    return {key: None for key in body}


@pytest.mark.parametrize(
    "topic, body",
    [
        ("subscription_contracts/update", nulled(contract_body())),
        ("subscription_billing_attempts/failure", nulled(attempt_body())),
        ("subscription_billing_cycles/skip", nulled(cycle_body())),
    ],
)
def test_every_field_null_is_a_mapping_error(topic: str, body: dict[str, Any]) -> None:
    with pytest.raises(MappingError):
        run(topic, body)


@pytest.mark.parametrize(
    "change",
    [
        {"id": 10**50},  # beyond any id
        {"revision_id": 2**64},  # beyond UnsignedInt64
        {"revision_id": "1" * 30},
        {"revision_id": -1},
        {"revision_id": 7232252373.0},  # a float has lost a 64-bit revision's digits
        {"revision_id": "7e9"},
        {"revision_id": True},
        {"id": True},
        {"customer_id": 1.5},
        {"billing_policy": "weekly"},
        {"billing_policy": {"interval_count": 10**12}},
        {"lines": {"not": "a list"}},
        {"lines": [{"quantity": -1}]},
        {"lines": [{"price": "1e999999"}]},
    ],
)
def test_hostile_contract_values_are_mapping_errors_naming_the_field(
    change: dict[str, Any],
) -> None:
    with pytest.raises(MappingError) as err:
        run("subscription_contracts/update", contract_body(**change))
    assert next(iter(change)) in str(err.value)


def test_huge_but_valid_ids_stay_exact() -> None:
    big = 2**63 + 12345
    body = contract_body(id=big, customer_id=big + 1, origin_order_id=big + 2)
    body = json.loads(json.dumps(body))
    fact = run("subscription_contracts/update", body).subscription
    assert fact is not None
    assert (fact.subscription_id, fact.person.customer_id, fact.origin_order_id) == (
        str(big),
        str(big + 1),
        str(big + 2),
    )
    billing = run(
        "subscription_billing_attempts/failure",
        attempt_body(id=big, subscription_contract_id=big + 1),
    ).billing
    assert billing is not None
    assert (billing.attempt_id, billing.subscription_ids) == (str(big), (str(big + 1),))


def test_lone_surrogates_never_crash_and_the_result_encodes() -> None:
    # As the worker reads a body: parse_body turns lone surrogates into U+FFFD.
    raw = (
        b'{"id": 1, "customer_id": 2, "status": "\\ud800", "currency_code": "\\udfff",'
        b' "customer_email": "a\\ud800@b.c", "billing_policy": {"interval": "\\ud83d"},'
        b' "lines": [{"title": "\\ud800 Tea", "quantity": 1, "price": "1.00"}]}'
    )
    m = run("backfill/subscription_contract", parse_body(raw))
    assert m.subscription is not None and m.subscription.status is None
    orjson.dumps(m.model_dump(mode="json"))
    raw = (
        b'{"id": 3, "subscription_contract_id": 4, "error_code": "\\ud800",'
        b' "error_message": "no \\udc00 money"}'
    )
    m = run("subscription_billing_attempts/failure", parse_body(raw))
    assert m.billing is not None
    orjson.dumps(m.model_dump(mode="json"))


def test_a_body_that_is_not_an_object_is_a_mapping_error() -> None:
    for topic in ("subscription_contracts/update", "subscription_billing_attempts/success"):
        with pytest.raises(MappingError, match="not a JSON object"):
            source.map(topic, [contract_body()], CTX)  # type: ignore[arg-type]


# --- any body at all --------------------------------------------------------------------------


def field_names() -> list[str]:
    names: set[str] = set()
    for obj in vars(subs).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel):
            names.update(obj.model_fields)
    return sorted(names)


TRICKY = [
    "",
    "gid://shopify/SubscriptionContract/1",
    "gid://shopify/SubscriptionContract/",
    "7232252373",
    "2026-03-01T12:00:00Z",
    "2026-03-01T12:00:00",
    "active",
    "CANCELLED",
    "stale",
    "week",
    "12.50",
    "NaN",
]
keys = st.sampled_from(field_names()) | st.text(max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(TRICKY)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
    max_leaves=8,
)
contexts = st.builds(
    map_context,
    st.just(SHOP),
    triggered_at=st.none() | st.datetimes(timezones=st.just(UTC)) | st.datetimes(),
)
TOPICS = sorted(subs.MAPPERS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.sampled_from(TOPICS),
    body=st.dictionaries(keys, json_values, max_size=10),
    ctx=contexts,
)
def test_arbitrary_bodies_raise_only_mapping_error(
    topic: str, body: dict[str, Any], ctx: MapContext
) -> None:
    try:
        m = source.map(topic, body, ctx)
    except MappingError:
        return
    assert m.subscription is not None or m.billing is not None
    assert m.events == ()
    orjson.dumps(m.model_dump(mode="json"))  # what the decide step stores of a held fact
