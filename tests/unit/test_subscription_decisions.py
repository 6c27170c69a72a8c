"""The stateful step for subscriptions, through the real processor over an in-memory shop: the
events a subscription's changes send, the traits of the per-person index (precedence, twins),
stale snapshots, dunning runs, billing facts that wait for their contract, and renewals.

Facts go in as canonical facts (a source that reads a `Mapped` from the body), so these tests
pin the decisions whatever source reported them; the sources' own tests pin the mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from bridge.canonical import (
    BillingFact,
    Item,
    MapContext,
    Mapped,
    PersonRef,
    SubscriptionFact,
    TraitUpdate,
)
from bridge.identity import DecisionView
from bridge.identity.subscriptions import HELD_LINKS, expire_waits, record_lookup
from bridge.sources import Sources
from bridge.sources.shopify import ShopifySource
from bridge.worker.processor import ProcessConfig
from tests.conftest import ROOT
from tests.journeys import CUSTOMER_ID, NOW, ORDER_ID, MemoryShop, checkout, names, order, tracks

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


class FactSource:
    """Reads the canonical facts themselves from the body (a `Mapped` as JSON)."""

    name = "facts"

    def handles(self, topic: str) -> bool:
        return True

    def map(self, topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
        return Mapped.model_validate(body)


def shop(**rules: Any) -> MemoryShop:
    config = ProcessConfig.defaults(api_version="", **rules)
    return MemoryShop(config, source=Sources(ShopifySource(), facts=FactSource()))


def contract(
    status: str | None,
    rev: int,
    *,
    sub: str = "501",
    provider: str = "shopify",
    created: bool = False,
    minutes: int = 0,
    customer: str | None = CUSTOMER_ID,
    **fields: Any,
) -> dict[str, Any]:
    fact = SubscriptionFact(
        provider=provider,
        subscription_id=sub,
        person=PersonRef(customer_id=customer, **fields.pop("person", {})),
        version=T0 + timedelta(minutes=minutes),
        revision=rev,
        status=status,
        created=created,
        created_at=fields.pop("created_at", T0),
        interval="month",
        interval_count=1,
        price=Decimal("24.00"),
        currency="USD",
        items=(Item(product_id="9001", variant_id="9002", sku="COF-1", name="Beans", quantity=1),),
        **fields,
    )
    return Mapped(source=provider, topic="t", subscription=fact).model_dump(mode="json")


def attempt(
    outcome: str, attempt_id: str, *, sub: str = "501", minutes: int = 0, **fields: Any
) -> dict[str, Any]:
    provider = fields.pop("provider", "shopify")
    fact = BillingFact(
        provider=provider,
        outcome=outcome,
        attempt_id=attempt_id,
        subscription_ids=(sub,),
        at=T0 + timedelta(days=30, minutes=minutes),
        person=fields.pop("person", PersonRef()),
        **fields,
    )
    return Mapped(source=provider, topic="t", billing=fact).model_dump(mode="json")


def traits_of(calls: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for call in calls:
        if call["type"] == "identify":
            out.update(call["traits"])
    return out


def test_a_new_subscription_sends_created_with_its_product_and_sets_the_traits() -> None:
    s = shop()
    calls = s.feed(
        "facts/x", contract("active", 1, created=True, next_charge_at=T0 + timedelta(days=30))
    )
    assert names(calls) == ["identify", "subscription_created"]
    created = tracks(calls)[0]
    assert created["userId"] == CUSTOMER_ID
    props = created["properties"]
    assert props["subscription_id"] == "501" and props["provider"] == "shopify"
    assert (props["product_id"], props["variant_id"], props["sku"]) == ("9001", "9002", "COF-1")
    assert props["price"] == 24.0 and props["currency"] == "USD"
    assert (props["interval"], props["interval_count"]) == ("month", 1)
    assert created["timestamp"] == "2026-11-01T09:00:00.000Z"
    assert traits_of(calls) == {
        "subscription_status": "active",
        "active_subscriptions": 1,
        "next_charge_date": "2026-12-01T09:00:00.000Z",
        "subscription_started_at": "2026-11-01T09:00:00.000Z",
    }
    # A redelivery under another webhook id changes nothing and sends nothing.
    assert s.feed("facts/x", contract("active", 1, created=True)) == []


def test_a_dunning_run_sends_each_failure_then_the_recovery_and_status_follows() -> None:
    s = shop()
    s.feed("facts/x", contract("active", 1, created=True))
    first = s.feed(
        "facts/x",
        attempt(
            "failure",
            "a1",
            error_code="INSUFFICIENT_FUNDS",
            error_message="declined",
            next_retry_at=T0 + timedelta(days=33),
        ),
    )
    assert names(first) == ["identify", "payment_failed"]
    assert traits_of(first) == {"subscription_status": "dunning", "active_subscriptions": 0}
    failed = tracks(first)[0]["properties"]
    assert failed["error_code"] == "INSUFFICIENT_FUNDS" and failed["attempt_number"] == 1
    assert failed["next_retry_at"] == "2026-12-04T09:00:00.000Z"
    second = s.feed("facts/x", attempt("failure", "a2", minutes=60))
    assert names(second) == ["payment_failed"]
    assert tracks(second)[0]["properties"]["attempt_number"] == 2
    # The same attempt again (a redelivery with another webhook id) is not a third failure.
    assert s.feed("facts/x", attempt("failure", "a2", minutes=60)) == []
    assert s.counters["events:payment_failed:duplicate"] == 1
    recovered = s.feed("facts/x", attempt("success", "a3", minutes=120, order_id="7001"))
    assert names(recovered) == ["identify", "payment_recovered"]
    assert tracks(recovered)[0]["properties"]["failed_attempts"] == 2
    assert traits_of(recovered) == {"subscription_status": "active", "active_subscriptions": 1}
    # A failure older than the recovery arrives late: no save flow for a paid cycle.
    assert s.feed("facts/x", attempt("failure", "a0", minutes=30)) == []
    assert s.counters["events:payment_failed:stale"] == 1
    # A success with nothing failing sends no recovery.
    assert names(s.feed("facts/x", attempt("success", "a4", minutes=60 * 24 * 30))) == []


def test_a_cancel_that_arrives_before_the_create_keeps_the_subscription_canceled() -> None:
    s = shop()
    cancel = s.feed(
        "facts/x",
        contract(
            "canceled",
            3,
            minutes=10,
            canceled_at=T0 + timedelta(minutes=10),
            cancellation_reason="too much coffee",
        ),
    )
    assert names(cancel) == ["identify", "subscription_canceled"]
    props = tracks(cancel)[0]["properties"]
    assert props["cancellation_reason"] == "too much coffee" and props["status"] == "canceled"
    assert traits_of(cancel)["subscription_status"] == "canceled"
    assert traits_of(cancel)["subscription_canceled_at"] == "2026-11-01T09:10:00.000Z"
    create = s.feed("facts/x", contract("active", 1, created=True))
    # The creation happened and says so, at its own time; the state stays canceled.
    assert names(create) == ["subscription_created"]
    assert s.counters["subscriptions:snapshot:stale"] == 1
    assert s.record(f"subs:cust:{CUSTOMER_ID}")["s"]["shopify:501"]["st"] == "canceled"


def test_revision_orders_contract_snapshots_even_when_trigger_times_disagree() -> None:
    s = shop()
    s.feed("facts/x", contract("paused", 5, minutes=0))
    # Revision 4 carries a later trigger time (delivery skew): it is still the older state.
    assert s.feed("facts/x", contract("active", 4, minutes=30)) == []
    assert s.record("sub:shopify:501")["st"] == "paused"
    resumed = s.feed("facts/x", contract("active", 6, minutes=40))
    assert names(resumed) == ["identify", "subscription_resumed"]


def test_pause_and_resume_send_events_whose_ids_a_replay_repeats() -> None:
    def run() -> list[str]:
        s = shop()
        s.feed("facts/x", contract("active", 1, created=True))
        paused = s.feed("facts/x", contract("paused", 2, minutes=5))
        resumed = s.feed("facts/x", contract("active", 3, minutes=9))
        assert names(tracks(paused)) == ["subscription_paused"]
        assert names(tracks(resumed)) == ["subscription_resumed"]
        return [c["messageId"] for c in tracks(paused + resumed)]

    assert run() == run()


def test_status_precedence_across_a_persons_subscriptions() -> None:
    s = shop()
    s.feed("facts/x", contract("canceled", 1, sub="1", canceled_at=T0))
    s.feed("facts/x", contract("expired", 1, sub="2"))
    assert s.record(f"subs:cust:{CUSTOMER_ID}") is not None
    paused = s.feed("facts/x", contract("paused", 1, sub="3"))
    assert traits_of(paused)["subscription_status"] == "paused"
    failing = s.feed("facts/x", contract("failed", 1, sub="4"))
    assert "subscription_status" not in traits_of(failing)  # paused still outranks dunning
    active = s.feed(
        "facts/x", contract("active", 1, sub="5", next_charge_at=T0 + timedelta(days=9))
    )
    assert traits_of(active)["subscription_status"] == "active"
    assert traits_of(active)["active_subscriptions"] == 1
    assert traits_of(active)["next_charge_date"] == "2026-11-10T09:00:00.000Z"


def test_a_billing_attempt_for_an_unseen_contract_waits_and_is_released_by_it() -> None:
    s = shop()
    assert s.feed("facts/x", attempt("failure", "a1")) == []
    assert s.counters["subscriptions:billing:held"] == 1
    assert list(s.record(HELD_LINKS)["e"]) == ["sub:shopify:501"]
    calls = s.feed("facts/x", contract("active", 1, created=True))
    assert names(tracks(calls)) == ["subscription_created", "payment_failed"]
    assert all(c["userId"] == CUSTOMER_ID for c in calls)
    assert traits_of(calls)["subscription_status"] == "dunning"
    assert s.record(HELD_LINKS) is None and s.record("sub_wait:sub:shopify:501") is None
    assert s.counters["subscriptions:held:released"] == 1


def test_a_wait_is_looked_up_once_then_parked_with_the_lookups_outcome() -> None:
    s = shop()
    s.feed("facts/x", attempt("failure", "a1", sub="777"))

    def sweep(now: datetime) -> tuple[list[str], list[bytes], DecisionView]:
        view = DecisionView(dict(s.state), key_of=s.keys.state)
        due, parked = expire_waits(view, now, 600)
        sets, dels = view.writes()
        for key, (value, _ttl) in sets.items():
            s.state[key] = value
        for key in dels:
            s.state.pop(key, None)
        return due, parked, view

    assert sweep(NOW + timedelta(seconds=599))[:2] == ([], [])
    due, parked, view = sweep(NOW + timedelta(seconds=601))
    assert due == ["sub:shopify:777"] and parked == []
    view = DecisionView(dict(s.state), key_of=s.keys.state)
    record_lookup(view, "sub:shopify:777", "not found")
    for key, (value, _ttl) in view.writes()[0].items():
        s.state[key] = value
    assert sweep(NOW + timedelta(seconds=900))[:2] == ([], [])  # looked up: waits once more
    due, parked, _ = sweep(NOW + timedelta(seconds=1202))
    assert due == []
    [letter] = [orjson.loads(p) for p in parked]
    assert letter["reason"] == "sub shopify:777 not seen within 600 s; lookup: not found"
    assert letter["topic"] == "facts/x" and letter["mapped"]["billing"]["attempt_id"] == "a1"
    assert s.record(HELD_LINKS) is None


def test_a_recharge_subscription_waits_for_its_customer_then_joins_the_shopify_person() -> None:
    s = shop()
    rc = {"person": {"subscriber": "recharge:88"}}
    assert (
        s.feed(
            "facts/x",
            contract(
                "active", 0, provider="recharge", sub="3003", created=True, customer=None, **rc
            ),
        )
        == []
    )
    assert s.counters["subscriptions:subscription:held"] == 1
    # A charge names the Recharge customer with its Shopify id: the link, and the release.
    charge = attempt(
        "success",
        "c1",
        provider="recharge",
        sub="3003",
        cycle="c1",
        person=PersonRef(subscriber="recharge:88", customer_id=CUSTOMER_ID),
    )
    calls = s.feed("facts/x", charge)
    assert names(tracks(calls)) == ["subscription_created"]
    assert tracks(calls)[0]["userId"] == CUSTOMER_ID
    assert s.record("subscriber:recharge:88") == {"user": CUSTOMER_ID}


def test_the_same_subscription_from_both_sources_counts_once() -> None:
    s = shop()
    shopify = s.feed("facts/x", contract("active", 1, created=True, origin_order_id="4400"))
    assert names(tracks(shopify)) == ["subscription_created"]
    rc = {"person": {"subscriber": "recharge:88"}}
    twin = s.feed(
        "facts/x",
        contract(
            "active",
            0,
            provider="recharge",
            sub="3003",
            created=True,
            minutes=1,
            origin_order_id="4400",
            **rc,
        ),
    )
    assert tracks(twin) == []
    assert s.counters["events:subscription_created:duplicate"] == 1
    assert "active_subscriptions" not in traits_of(twin)  # still 1
    # The Recharge side cancels: the subscription (both views of it) is canceled once.
    cancel = s.feed(
        "facts/x",
        contract(
            "canceled",
            0,
            provider="recharge",
            sub="3003",
            minutes=5,
            origin_order_id="4400",
            canceled_at=T0 + timedelta(minutes=5),
            **rc,
        ),
    )
    assert names(tracks(cancel)) == ["subscription_canceled"]
    assert traits_of(cancel)["subscription_status"] == "canceled"
    assert traits_of(cancel)["active_subscriptions"] == 0
    # Shopify's mirror of the same cancel changes nothing more.
    assert (
        tracks(s.feed("facts/x", contract("canceled", 2, minutes=6, origin_order_id="4400"))) == []
    )


def test_a_skipped_cycle_is_sent_once() -> None:
    s = shop()
    s.feed("facts/x", contract("active", 1))
    skip = attempt("skipped", "cycle:3", cycle="3")
    assert names(tracks(s.feed("facts/x", skip))) == ["subscription_skipped"]
    assert tracks(s.feed("facts/x", skip)) == []
    assert s.counters["events:subscription_skipped:duplicate"] == 1


def test_an_order_a_billing_success_made_is_a_renewal_and_names_its_subscription() -> None:
    def after_order(billed: bool) -> tuple[dict[str, Any], list[str]]:
        s = shop()
        s.feed("facts/x", contract("active", 1))
        if billed:
            s.feed("facts/x", attempt("success", "a1", order_id=ORDER_ID))
        # No selling plan on its lines (a webhook version before 2026-10): only the billing
        # attempt's order id says it is a renewal.
        calls = s.feed("orders/paid", order(cart_token=None, checkout_token=None, checkout_id=None))
        [completed] = [c for c in tracks(calls) if c["event"] == "order_completed"]
        body = checkout(
            email=True, updated_at="2024-11-06T02:58:00Z", token="other", cart_token="c2"
        )
        body["created_at"] = "2024-11-06T03:10:00Z"  # 15 min after the order
        return completed["properties"], names(s.feed("checkouts/create", body))

    props, later = after_order(billed=True)
    assert props["subscription_renewal"] is True and props["subscription_id"] == "501"
    assert "checkout_started" in later  # a renewal converts no checkout
    props, later = after_order(billed=False)
    assert "subscription_renewal" not in props
    assert "checkout_started" not in later  # an ordinary unjoined order does


def test_segment_naming_titles_the_subscription_events() -> None:
    s = shop(naming="segment")
    calls = s.feed("facts/x", contract("active", 1, created=True))
    assert names(tracks(calls)) == ["Subscription Created"]
    assert tracks(calls)[0]["properties"]["products"][0]["sku"] == "COF-1"


def test_facts_released_by_a_customer_are_decided_on_complete_state() -> None:
    s = shop()
    rc = PersonRef(subscriber="recharge:88")
    s.feed(
        "facts/x",
        contract(
            "active",
            0,
            provider="recharge",
            sub="3003",
            created=True,
            customer=None,
            person={"subscriber": "recharge:88"},
        ),
    )
    s.feed(
        "facts/x",
        attempt("failure", "c9:1", provider="recharge", sub="3003", cycle="c9", person=rc),
    )
    # An earlier subscription of the same person, already known under the customer.
    s.feed("facts/x", contract("paused", 1, sub="42"))
    assert s.counters["subscriptions:subscription:held"] == 1
    assert s.counters["subscriptions:billing:held"] == 1
    customer = TraitUpdate(
        person=PersonRef(subscriber="recharge:88", customer_id=CUSTOMER_ID),
        traits={"first_name": "Ada"},
        timestamp=T0,
    )
    calls = s.feed(
        "facts/x",
        Mapped(source="recharge", topic="t", identifies=(customer,)).model_dump(mode="json"),
    )
    assert names(tracks(calls)) == ["subscription_created", "payment_failed"]
    # The index kept the paused subscription it was not handed in the first lookup.
    assert set(s.record(f"subs:cust:{CUSTOMER_ID}")["s"]) == {"shopify:42", "recharge:3003"}
    # Paused still outranks dunning: the status the person has is unchanged, nothing resent.
    assert "subscription_status" not in traits_of(calls)
    assert s.record(f"person:cust:{CUSTOMER_ID}")["f"]["subscription_status"][1] == "paused"


def test_a_failed_charge_without_subscription_lines_still_reaches_its_person() -> None:
    s = shop()
    fact = BillingFact(
        provider="recharge",
        outcome="failure",
        attempt_id="c5:1",
        subscription_ids=(),
        at=T0,
        person=PersonRef(subscriber="recharge:88", customer_id=CUSTOMER_ID),
        error_code="CUSTOMER_NEEDS_TO_UPDATE_CARD",
        attempt_number=1,
    )
    body = Mapped(source="recharge", topic="t", billing=fact).model_dump(mode="json")
    [failed] = tracks(s.feed("facts/x", body))
    assert failed["event"] == "payment_failed" and failed["userId"] == CUSTOMER_ID
    assert "subscription_id" not in failed["properties"]
    assert failed["properties"]["error_code"] == "CUSTOMER_NEEDS_TO_UPDATE_CARD"


def test_a_first_charge_links_a_recharge_subscription_to_its_shopify_twin() -> None:
    s = shop()
    s.feed("facts/x", contract("active", 1, created=True, origin_order_id="4400"))
    rc = PersonRef(subscriber="recharge:88", customer_id=CUSTOMER_ID)
    first = attempt(
        "success",
        "c1",
        provider="recharge",
        sub="3003",
        cycle="c1",
        person=rc,
        order_id="4400",
        first_order=True,
    )
    s.feed("facts/x", first)
    # Recharge's subscription body names no order: the charge taught its record the origin.
    twin = s.feed(
        "facts/x",
        contract(
            "active",
            0,
            provider="recharge",
            sub="3003",
            created=True,
            minutes=1,
            person={"subscriber": "recharge:88"},
        ),
    )
    assert tracks(twin) == []
    assert s.counters["events:subscription_created:duplicate"] == 1
    assert "active_subscriptions" not in traits_of(twin)  # still 1


def recharge_shop() -> MemoryShop:
    from bridge.sources.recharge import RechargeSource

    config = ProcessConfig.defaults(api_version="")
    return MemoryShop(config, source=Sources(ShopifySource(), recharge=RechargeSource()))


def recharge_body(name: str, **changes: Any) -> dict[str, Any]:
    body = dict(
        orjson.loads((ROOT / "tests" / "fixtures" / "recharge" / f"{name}.json").read_bytes())
    )
    next(iter(body.values())).update(changes)
    return body


def test_a_recharge_pause_survives_the_update_that_follows_it() -> None:
    s = recharge_shop()
    s.feed("recharge/subscription/created", recharge_body("subscription-created"))
    paused = s.feed(
        "recharge/subscription/paused",
        recharge_body("subscription-created", updated_at="2026-11-05T10:00:00"),
    )
    assert names(tracks(paused)) == ["subscription_paused"]
    # Recharge's update for the same change: its body still says "active".
    later = s.feed(
        "recharge/subscription/updated",
        recharge_body("subscription-created", updated_at="2026-11-05T10:00:00"),
    )
    assert tracks(later) == [] and "subscription_status" not in traits_of(later)
    assert s.record("sub:recharge:27538470")["st"] == "paused"


def test_a_renewal_order_before_its_billing_success_stops_suppressing_the_checkout() -> None:
    s = shop()
    s.feed("facts/x", contract("active", 1))
    s.feed("orders/paid", order(cart_token=None, checkout_token=None, checkout_id=None))
    s.feed("facts/x", attempt("success", "a1", order_id=ORDER_ID))
    assert s.counters["subscriptions:renewal:found_late"] == 1
    body = checkout(email=True, updated_at="2024-11-06T02:58:00Z", token="other", cart_token="c2")
    body["created_at"] = "2024-11-06T03:10:00Z"  # 15 min after the order
    assert "checkout_started" in names(s.feed("checkouts/create", body))


def test_a_charge_given_up_on_does_not_keep_the_subscription_in_dunning() -> None:
    s = shop()
    rc = PersonRef(subscriber="recharge:88", customer_id=CUSTOMER_ID)
    s.feed(
        "facts/x",
        contract(
            "active", 0, provider="recharge", sub="3003", person={"subscriber": "recharge:88"}
        ),
    )

    def charge(outcome: str, charge_id: str, days: int) -> dict[str, Any]:
        return attempt(
            outcome,
            f"{charge_id}:1" if outcome == "failure" else charge_id,
            provider="recharge",
            sub="3003",
            cycle=charge_id,
            person=rc,
            minutes=days * 24 * 60,
        )

    failed = s.feed("facts/x", charge("failure", "111", 0))
    assert traits_of(failed)["subscription_status"] == "dunning"
    # Next month's charge is paid; charge 111 never was (Recharge moved on).
    paid = s.feed("facts/x", charge("success", "222", 30))
    assert tracks(paid) == []  # not a recovery of 111: no payment_recovered
    assert traits_of(paid) == {"subscription_status": "active", "active_subscriptions": 1}
    assert s.record("sub:recharge:3003")["fails"] == {}


def test_a_second_cancel_does_not_repeat_the_first_cancels_reason() -> None:
    s = shop()
    s.feed("facts/x", contract("canceled", 1, cancellation_reason="too expensive"))
    s.feed("facts/x", contract("active", 2, minutes=5))
    again = s.feed("facts/x", contract("canceled", 3, minutes=9))
    [canceled] = tracks(again)
    assert "cancellation_reason" not in canceled["properties"]


def test_a_subscription_linked_by_email_follows_the_email_to_its_customer() -> None:
    s = shop()
    email_only = {"subscriber": "recharge:88", "email": "henry@wfls.com"}
    s.feed(
        "facts/x",
        contract("active", 0, provider="recharge", sub="3003", customer=None, person=email_only),
    )
    assert s.record("subscriber:recharge:88") == {"user": "henry@wfls.com"}
    # The same email then shows up with its Shopify customer id (a checkout).
    s.feed("checkouts/create", checkout(email=True, updated_at="2024-11-06T02:58:00Z"))
    cancel = s.feed(
        "facts/x",
        contract(
            "canceled",
            0,
            provider="recharge",
            sub="3003",
            customer=None,
            minutes=9,
            person={"subscriber": "recharge:88"},
        ),
    )
    [canceled] = tracks(cancel)
    assert canceled["userId"] == CUSTOMER_ID
    assert traits_of(cancel)["subscription_status"] == "canceled"
    assert s.record("subscriber:recharge:88") == {"user": CUSTOMER_ID}


def test_a_next_charge_date_in_the_past_is_no_next_charge() -> None:
    s = MemoryShop(
        ProcessConfig.defaults(api_version=""),
        now=T0 + timedelta(days=10),
        source=Sources(ShopifySource(), facts=FactSource()),
    )
    calls = s.feed("facts/x", contract("active", 1, next_charge_at=T0 + timedelta(days=9)))
    assert traits_of(calls)["subscription_status"] == "active"
    assert "next_charge_date" not in traits_of(calls)
    later = s.feed("facts/x", contract("active", 2, next_charge_at=T0 + timedelta(days=39)))
    assert traits_of(later) == {"next_charge_date": "2026-12-10T09:00:00.000Z"}
