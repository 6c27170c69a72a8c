"""Recharge mapping over bodies written from the 2021-11 reference (tests/fixtures/recharge).
Expected values are written from reading the JSON."""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.canonical import (
    BillingFact,
    Item,
    MapContext,
    Mapped,
    PersonRef,
    SubscriptionFact,
    TraitUpdate,
)
from bridge.jsonio import parse_body
from bridge.sources import MappingError, Sources
from bridge.sources.recharge import RechargeSource
from bridge.sources.recharge.topics import TOPICS, infer_topic
from bridge.sources.shopify import ShopifySource
from tests.conftest import paths
from tests.rules import map_context

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "recharge"
CTX = map_context("shop.example")
SIGNED_AT = datetime(2027, 2, 1, 12, 0, tzinfo=UTC)
CTX_SIGNED = map_context("shop.example", triggered_at=SIGNED_AT)

source = RechargeSource()

JANE = PersonRef(
    subscriber="recharge:64962985",
    customer_id="6543210987654",
    email="jane.doe@example.com",
    phone="+14155550134",
)
BEANS = Item(
    product_id="7654321098765",
    variant_id="43210987654321",
    sku="COF-MORN-1KG",
    name="Morning Roast Coffee Beans",
    price=Decimal("24.00"),
    quantity=2,
)


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def run(topic: str, body: dict[str, Any], ctx: MapContext = CTX) -> Mapped:
    return source.map(topic, body, ctx)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --- topics ---------------------------------------------------------------------------------

HANDLED = [
    *(
        f"subscription/{a}"
        for a in (
            "created",
            "updated",
            "activated",
            "cancelled",
            "paused",
            "swapped",
            "deleted",
            "skipped",
            "unskipped",
        )
    ),
    "charge/paid",
    "charge/success",
    "charge/failed",
    *(f"customer/{a}" for a in ("created", "updated", "activated", "deactivated")),
]


def test_exactly_the_mapped_topics_are_handled() -> None:
    assert {t for t in TOPICS if source.handles(t)} == set(HANDLED)
    for topic in ("order/created", "charge/upcoming", "charge/refunded", "customer/deleted"):
        assert not source.handles(topic)
        assert run(topic, {}).skipped == "topic not mapped"


def test_the_router_sends_prefixed_topics_here_and_names_the_envelope_topic() -> None:
    router = Sources(ShopifySource(), recharge=source)
    assert router.handles("recharge/charge/failed")
    assert not router.handles("charge/failed")  # a Shopify topic of that name does not exist
    mapped = router.map("recharge/charge/failed", load("charge-failed"), CTX)
    assert mapped.topic == "recharge/charge/failed" and mapped.source == "recharge"


# --- subscriptions --------------------------------------------------------------------------


def test_subscription_created_with_its_included_customer() -> None:
    mapped = run("subscription/created", load("subscription-created"))
    assert mapped.subscription == SubscriptionFact(
        provider="recharge",
        subscription_id="27538470",
        person=JANE,
        version=at("2026-11-02T09:14:06+00:00"),
        status="active",
        created=True,
        created_at=at("2026-11-02T09:14:05+00:00"),
        next_charge_at=datetime(2026, 12, 2, tzinfo=UTC),
        interval="day",
        interval_count=30,
        price=Decimal("24.00"),
        currency="USD",
        items=(BEANS,),
    )
    assert mapped.person == JANE
    assert mapped.identifies == (
        TraitUpdate(
            person=JANE,
            traits={
                "email": "jane.doe@example.com",
                "phone": "+14155550134",
                "first_name": "Jane",
                "last_name": "Doe",
            },
            version=at("2026-11-02T09:14:02+00:00"),
            timestamp=at("2026-11-02T09:14:02+00:00"),
        ),
    )
    assert mapped.events == () and mapped.billing is None


def test_subscription_cancelled_without_a_customer_keeps_the_reason_not_the_comments() -> None:
    mapped = run("subscription/cancelled", load("subscription-cancelled"))
    fact = mapped.subscription
    assert fact is not None
    assert fact.person == PersonRef(subscriber="recharge:64962985")
    assert (fact.status, fact.created, fact.cancellation_reason) == (
        "canceled",
        False,
        "I have too much coffee",
    )
    assert fact.canceled_at == at("2027-01-15T17:40:12+00:00")
    assert fact.next_charge_at is None
    assert "555" not in fact.model_dump_json()  # the comments' phone number is not carried
    assert mapped.identifies == ()


@pytest.mark.parametrize(
    ("topic", "body_status", "status", "reason"),
    [
        # A paused subscription still says "active": on an update, that says nothing.
        ("subscription/updated", "active", None, None),
        ("subscription/updated", "ACTIVE", None, None),
        ("subscription/updated", "cancelled", "canceled", "gone"),
        ("subscription/updated", "expired", "expired", None),
        ("subscription/updated", "something_new", None, None),
        ("subscription/updated", None, None, None),
        ("subscription/swapped", "active", None, None),
        ("subscription/created", "active", "active", None),
        ("subscription/activated", "ACTIVE", "active", None),
        ("subscription/paused", "active", "paused", None),
        ("subscription/cancelled", "active", "canceled", "gone"),
        ("subscription/deleted", "active", "canceled", "deleted"),
        ("subscription/deleted", "cancelled", "canceled", "deleted"),
    ],
)
def test_status_from_the_topic_else_the_body(
    topic: str, body_status: str | None, status: str | None, reason: str | None
) -> None:
    body = load("subscription-cancelled")
    body["subscription"]["status"] = body_status
    body["subscription"]["cancellation_reason"] = "gone"
    fact = run(topic, body).subscription
    assert fact is not None
    assert (fact.status, fact.cancellation_reason) == (status, reason)


@pytest.mark.parametrize(
    ("topic", "fixture_name", "changes"),
    [
        # A failed charge re-posted to /paid must not end a dunning run, nor a paid one start it.
        ("charge/paid", "charge-failed", {}),
        ("charge/failed", "charge-paid", {}),
        ("charge/paid", "charge-paid", {"status": None}),
        ("subscription/activated", "subscription-cancelled", {}),
        ("subscription/cancelled", "subscription-created", {"cancelled_at": None}),
    ],
)
def test_a_body_that_contradicts_its_unsigned_topic_is_refused(
    topic: str, fixture_name: str, changes: dict[str, Any]
) -> None:
    body = load(fixture_name)
    next(iter(body.values())).update(changes)
    with pytest.raises(MappingError, match=f"recharge/{topic}: the"):
        run(topic, body)


def test_naive_timestamps_are_utc_and_the_version_falls_back() -> None:
    body = load("subscription-created")
    sub = body["subscription"]
    sub["updated_at"] = "2026-11-02T09:14:06"  # 2021-01 style, no offset
    fact = run("subscription/updated", body).subscription
    assert fact is not None and fact.version == datetime(2026, 11, 2, 9, 14, 6, tzinfo=UTC)
    sub["updated_at"] = None
    fact = run("subscription/updated", body, CTX_SIGNED).subscription
    assert fact is not None and fact.version == SIGNED_AT  # the signed delivery time
    fact = run("subscription/updated", body).subscription
    assert fact is not None and fact.version == at("2026-11-02T09:14:05+00:00")  # created_at
    sub["created_at"] = "not a time"
    with pytest.raises(MappingError, match="updated_at or created_at"):
        run("subscription/updated", body)


def test_2021_01_field_names_are_read() -> None:
    body = {
        "subscription": {
            "id": 1,
            "customer_id": 2,
            "shopify_product_id": 3,
            "shopify_variant_id": 4,
            "status": "ACTIVE",
            "updated_at": "2021-03-01T10:00:00",
        },
        "customer": {"id": 2, "shopify_customer_id": "5", "email": "A@B.example"},
    }
    fact = run("subscription/updated", body).subscription
    assert fact is not None
    assert fact.person == PersonRef(subscriber="recharge:2", customer_id="5", email="a@b.example")
    assert (fact.items[0].product_id, fact.items[0].variant_id) == ("3", "4")


def test_a_subscription_with_no_customer_is_found_through_its_own_link() -> None:
    body = load("subscription-cancelled")
    body["subscription"]["customer_id"] = None
    mapped = run("subscription/cancelled", body)
    assert mapped.person == PersonRef(subscription="recharge:27538470")


# --- skips ----------------------------------------------------------------------------------


def test_skipped_names_the_cycle_and_a_redelivery_gives_the_same_fact() -> None:
    body = load("subscription-skipped")
    mapped = run("subscription/skipped", body)
    person = PersonRef(
        subscriber="recharge:64962985", customer_id="6543210987654", email="jane.doe@example.com"
    )
    assert mapped.billing == BillingFact(
        provider="recharge",
        outcome="skipped",
        attempt_id="27538470:2027-01-01",
        cycle="2027-01-01",
        subscription_ids=("27538470",),
        at=at("2026-11-28T08:00:00+00:00"),
        person=person,
    )
    assert mapped.subscription is None and len(mapped.identifies) == 1
    assert run("subscription/skipped", copy.deepcopy(body)) == mapped
    later = copy.deepcopy(body)
    later["subscription"]["next_charge_scheduled_at"] = "2027-01-31"
    other = run("subscription/skipped", later).billing
    assert other is not None and other.attempt_id != "27538470:2027-01-01"
    unskipped = run("subscription/unskipped", body).billing
    assert unskipped is not None and unskipped.outcome == "unskipped"


def test_a_skip_without_a_next_charge_date_uses_its_time() -> None:
    body = load("subscription-skipped")
    body["subscription"]["next_charge_scheduled_at"] = None
    fact = run("subscription/skipped", body).billing
    assert fact is not None and fact.cycle == "2026-11-28T08:00:00.000Z"


# --- charges --------------------------------------------------------------------------------

CHARGE_PERSON = PersonRef(
    subscriber="recharge:64962985", customer_id="6543210987654", email="jane.doe@example.com"
)


@pytest.mark.parametrize("topic", ["charge/paid", "charge/success"])
def test_charge_paid(topic: str) -> None:
    mapped = run(topic, load("charge-paid"))
    assert mapped.billing == BillingFact(
        provider="recharge",
        outcome="success",
        attempt_id="386976017",
        cycle="386976017",
        subscription_ids=("27538470",),  # the one-time mug line bills no subscription
        at=at("2026-12-02T06:00:31+00:00"),
        person=CHARGE_PERSON,
        attempt_number=0,
        amount=Decimal("64.90"),
        currency="USD",
        order_id="5678901234567",
    )
    assert mapped.identifies == (
        TraitUpdate(
            person=CHARGE_PERSON,
            traits={"email": "jane.doe@example.com"},
            timestamp=at("2026-12-02T06:00:31+00:00"),
        ),
    )


def test_charge_failed_is_one_attempt_per_try() -> None:
    body = load("charge-failed")
    mapped = run("charge/failed", body)
    assert mapped.billing == BillingFact(
        provider="recharge",
        outcome="failure",
        attempt_id="386976017:2",
        cycle="386976017",
        subscription_ids=("27538470",),
        at=at("2026-12-03T06:00:41+00:00"),  # processed_at is null: updated_at
        person=CHARGE_PERSON,
        error_code="CUSTOMER_NEEDS_TO_UPDATE_CARD",
        error_message="Your card was declined.",
        attempt_number=2,
        amount=Decimal("52.90"),
        currency="USD",
        next_retry_at=at("2026-12-05T06:00:00+00:00"),
    )
    body["charge"]["charge_attempts"] = 3
    retry = run("charge/failed", body).billing
    assert retry is not None and (retry.attempt_id, retry.cycle) == ("386976017:3", "386976017")
    body["charge"]["charge_attempts"] = None
    unknown = run("charge/failed", body).billing
    assert unknown is not None and unknown.attempt_id == "386976017:0"


def test_a_failed_charge_with_only_one_time_lines_names_no_subscription() -> None:
    body = load("charge-failed")
    body["charge"]["line_items"][0]["purchase_item_type"] = "onetime"
    fact = run("charge/failed", body).billing
    assert fact is not None and fact.subscription_ids == () and fact.outcome == "failure"


def test_a_first_charge_and_a_long_error_message() -> None:
    body = load("charge-failed")
    body["charge"]["type"] = "CHECKOUT"
    body["charge"]["error"] = "x" * 5000
    fact = run("charge/failed", body).billing
    assert fact is not None and fact.first_order and len(fact.error_message or "") == 255


def test_a_success_carries_no_stale_error() -> None:
    body = load("charge-paid")
    body["charge"]["error"] = "Your card was declined."
    body["charge"]["error_type"] = "CARD_DECLINED"
    body["charge"]["retry_date"] = "2026-12-05T06:00:00+00:00"
    fact = run("charge/paid", body).billing
    assert fact is not None
    assert (fact.error_code, fact.error_message, fact.next_retry_at) == (None, None, None)


def test_a_charge_without_a_customer_email_identifies_nobody() -> None:
    body = load("charge-failed")
    body["charge"]["customer"]["email"] = None
    mapped = run("charge/failed", body)
    assert mapped.identifies == ()
    assert mapped.person == PersonRef(subscriber="recharge:64962985", customer_id="6543210987654")


# --- customers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic", ["customer/created", "customer/updated", "customer/activated", "customer/deactivated"]
)
def test_customer_topics_identify(topic: str) -> None:
    mapped = run(topic, load("customer-updated"))
    assert mapped.identifies == (
        TraitUpdate(
            person=JANE,
            traits={
                "email": "jane.doe@example.com",
                "phone": "+14155550134",
                "first_name": "Jane",
                "last_name": "Doe-Smith",
            },
            version=at("2026-12-03T06:00:45+00:00"),
            timestamp=at("2026-12-03T06:00:45+00:00"),
        ),
    )
    assert mapped.person == JANE and mapped.subscription is None and mapped.billing is None


# --- hostile data ---------------------------------------------------------------------------

WRAPPED = {
    "subscription/updated": "subscription-created",
    "subscription/skipped": "subscription-skipped",
    "charge/paid": "charge-paid",
    "charge/failed": "charge-failed",
    "customer/updated": "customer-updated",
}


@pytest.mark.parametrize("topic", sorted(WRAPPED))
def test_a_missing_or_wrong_wrapper_is_a_mapping_error(topic: str) -> None:
    body = load(WRAPPED[topic])
    inner = next(iter(body.values()))
    with pytest.raises(MappingError, match="has no"):
        run(topic, inner)  # the resource itself, unwrapped
    wrong = "charge" if not topic.startswith("charge") else "subscription"
    with pytest.raises(MappingError, match="has no"):
        run(topic, {wrong: inner})
    with pytest.raises(MappingError):
        run(topic, {topic.partition("/")[0]: "not an object"})


@pytest.mark.parametrize("topic", sorted(WRAPPED))
def test_a_resource_without_an_id_is_a_mapping_error(topic: str) -> None:
    body = load(WRAPPED[topic])
    next(iter(body.values()))["id"] = None
    with pytest.raises(MappingError, match="has no id"):
        run(topic, body)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (27538470, "27538470"),
        ("27538470", "27538470"),
        (" 27538470 ", "27538470"),
        (2**63 + 11, str(2**63 + 11)),
        (10**30 + 7, str(10**30 + 7)),
    ],
)
def test_ids_as_ints_strings_and_huge_ints_stay_exact(value: Any, expected: str) -> None:
    body = load("charge-paid")
    body["charge"]["id"] = value
    body["charge"]["line_items"][0]["purchase_item_id"] = value
    fact = run("charge/paid", body).billing
    assert fact is not None and fact.attempt_id == expected
    assert fact.subscription_ids == (expected,)


@pytest.mark.parametrize("value", [10**40, 1.5, True, [1], {"id": 1}])
def test_unreadable_ids_are_mapping_errors_naming_the_field(value: Any) -> None:
    body = load("subscription-created")
    body["subscription"]["id"] = value
    with pytest.raises(MappingError, match=r"^recharge/subscription/updated: id: "):
        run("subscription/updated", body)


def test_ids_parsed_from_raw_bytes_stay_exact_or_are_refused() -> None:
    raw = (FIXTURES / "charge-paid.json").read_bytes()
    biggest = str(2**64 - 1).encode()
    fact = run("charge/paid", parse_body(raw.replace(b"386976017", biggest))).billing
    assert fact is not None and fact.attempt_id == biggest.decode()
    # Past 64 bits the parser gives a float (digits lost): refused, never a wrong id.
    with pytest.raises(MappingError, match="id"):
        run("charge/paid", parse_body(raw.replace(b"386976017", b"9" * 30)))


def test_lone_surrogates_in_names_do_not_break_mapping() -> None:
    raw = (FIXTURES / "customer-updated.json").read_bytes()
    raw = raw.replace(b'"first_name": "Jane"', b'"first_name": "Ja\\ud800ne"')
    mapped = run("customer/updated", parse_body(raw))
    assert mapped.identifies[0].traits["first_name"] == "Ja\ufffdne"
    json.dumps(mapped.model_dump(mode="json"))
    # Given straight to the mapping (not through the parser), it is carried, never raised on.
    body = load("subscription-created")
    body["subscription"]["product_title"] = "Beans \udc00"
    body["customer"]["last_name"] = "\ud83d"
    mapped = run("subscription/updated", body)
    assert mapped.subscription is not None


def test_an_included_customer_naming_another_customer_is_refused() -> None:
    body = load("subscription-created")
    body["customer"]["id"] = 1
    with pytest.raises(MappingError, match=r"customer\.id"):
        run("subscription/updated", body)


def test_null_fields_everywhere_still_map_or_give_a_mapping_error() -> None:
    for topic, name in WRAPPED.items():
        body = load(name)
        for path in paths(body):
            broken = copy.deepcopy(body)
            target = broken
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = None
            with contextlib.suppress(MappingError):
                run(topic, broken, CTX_SIGNED)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(WRAPPED)), st.data())
def test_any_value_anywhere_maps_or_raises_only_mapping_error(
    topic: str, data: st.DataObject
) -> None:
    body = load(WRAPPED[topic])
    path = data.draw(st.sampled_from(list(paths(body))))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JSON)
    with contextlib.suppress(MappingError):
        run(topic, body, CTX)


# --- topics read from a body ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "topic"),
    [
        ({"subscription": {"id": 1}, "customer": {"id": 2}}, "subscription/updated"),
        ({"charge": {"status": "success"}}, "charge/paid"),
        ({"charge": {"status": "ERROR"}, "customer": {}}, "charge/failed"),
        ({"charge": {"status": "queued"}}, "charge/updated"),
        ({"charge": {"status": None}}, "charge/updated"),
        ({"customer": {"id": 2}}, "customer/updated"),
        ({"order": {"id": 3}, "customer": {"id": 2}}, "order/updated"),
        ({"subscription": "not an object", "customer": {"id": 2}}, "customer/updated"),
        ({"addresses": [], "metafields": []}, None),
        ({}, None),
    ],
)
def test_infer_topic(body: dict[str, Any], topic: str | None) -> None:
    assert infer_topic(body) == topic
