"""The invariants the order path relies on to do its work once per webhook rather than once per
fact (issue 19 item 5): a person resolved again over an unchanged view is the same person and
costs no write, a ref named twice names nothing new, memoised digests follow the key."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from bridge import keyed
from bridge.canonical import OrderFact, PersonRef, TraitUpdate
from bridge.delivery import render
from bridge.identity import (
    DecisionView,
    anonymous_id,
    browse,
    keys_for,
    orders,
    replenishment,
    resolve,
)
from bridge.identity.decide import _Run
from bridge.identity.graph import Policy, email_key, person_key
from bridge.products import cache
from bridge.sources.shopify import ShopifySource
from bridge.store.facade import Keys
from bridge.worker.processor import ProcessConfig
from tests.journeys import CART, CHECKOUT, CUSTOMER_ID, EMAIL, NOW, MemoryShop, order

SHOP = "once.myshopify.com"
POLICY = ProcessConfig.defaults().policy(SHOP, NOW)

REFS = [
    PersonRef(),
    PersonRef(customer_id="11"),
    PersonRef(email="a@example.com"),
    PersonRef(customer_id="11", email="a@example.com"),
    PersonRef(customer_id="11", email="a@example.com", cart_token="c1", cart_token_raw="c1?k"),
    PersonRef(email="a@example.com", cart_token="c1", checkout_token="k1", order_id="o1"),
    PersonRef(cart_token="c1", checkout_id="99", order_id="o1"),
    PersonRef(hinted_customer_id="12", anonymous_id="anon-1", cart_token="c2"),
    PersonRef(subscriber="recharge:5", subscription="recharge:77"),
]


def _state(variant: int) -> dict[str, bytes | None]:
    """Stored records a ref may meet: none, links to other people, a merged customer."""
    if variant == 0:
        return {}
    records: dict[str, Any] = {
        "cart:c1": {"anon": "stored-anon", "user": "a@example.com"},
        "cart:c2": {"user": "13"},
        "checkout:k1": {"user": "14"},
        "order:o1": {"user": "b@example.com"},
        "cust:11": {"merged_into": "15"},
        email_key("a@example.com"): {"customer_id": "16"},
        email_key("b@example.com"): {"customer_id": "17"},
        "orders:" + person_key("a@example.com"): {"o": {"o9": {"at": "x", "t": "1", "c": "USD"}}},
        "subscriber:recharge:5": {"user": "18"},
    }
    if variant == 2:
        records.pop("cust:11")
        records.pop(email_key("a@example.com"))
    return {name: orjson.dumps(rec) for name, rec in records.items()}


@pytest.mark.parametrize("variant", [0, 1, 2])
@pytest.mark.parametrize("ref", REFS)
def test_resolving_again_over_an_unchanged_view_finds_the_same_person_and_writes_nothing(
    ref: PersonRef, variant: int
) -> None:
    view = DecisionView(_state(variant))
    first = resolve(ref, view, POLICY)
    revision, writes, misses = view.revision, view.writes(), set(view.misses)
    again = resolve(ref, view, POLICY)
    assert again == first
    assert view.revision == revision and view.writes() == writes
    assert view.misses == misses  # the second reads nothing the first did not


def test_a_run_resolves_a_ref_once_until_the_view_changes() -> None:
    view = DecisionView(_state(0))
    run = _Run(view, POLICY, None)
    ref = PersonRef(email="a@example.com", cart_token="c1")
    first = run.resolve(ref)
    assert first.user_id == "a@example.com"
    assert run.resolve(ref.model_copy()) is first  # an equal ref: the same person, no work
    # A write in between (here: the email meets its customer) is seen by the next resolve.
    view.put(email_key("a@example.com"), {"customer_id": "21"})
    assert run.resolve(ref).user_id == "21"
    assert run.resolve(PersonRef(email="b@example.com")).user_id == "b@example.com"


def test_the_view_revision_counts_writes_and_deletes() -> None:
    view = DecisionView({})
    assert view.revision == 0
    view.get("cart:x")
    assert view.revision == 0
    view.put("cart:x", {"anon": "a"})
    view.delete("cart:x")
    assert view.revision == 2


def test_an_order_resolves_its_person_once() -> None:
    shop = MemoryShop()
    calls: list[PersonRef | None] = []
    real = resolve

    def counting(ref: PersonRef | None, view: Any, policy: Policy) -> Any:
        calls.append(ref)
        return real(ref, view, policy)

    with pytest.MonkeyPatch.context() as mp:
        # (the package's `decide` is the function: the module is reached through sys.modules)
        mp.setattr(sys.modules["bridge.identity.decide"], "resolve", counting)
        out = shop.feed("orders/paid", order())
    assert [c["type"] for c in out] == ["identify", "track"]
    assert len(calls) == 1  # the identify's and the order's person are one ref, one resolve


def test_names_of_a_ref_named_twice_are_those_of_the_ref_named_once() -> None:
    one = PersonRef(customer_id=CUSTOMER_ID, email=EMAIL, cart_token=CART, checkout_token=CHECKOUT)
    other = PersonRef(email="other@example.com", cart_token="other-cart")
    mapped = ShopifySource().map("orders/paid", order(), ProcessConfig.defaults().map_context(SHOP))
    assert mapped.person is not None
    alone = mapped.model_copy(update={"events": (), "identifies": ()})
    assert keys_for(mapped) == keys_for(alone)
    # Distinct refs still each name their records, in the order they come.
    event = mapped.events[0].model_copy(update={"person": other})
    both = keys_for(mapped.model_copy(update={"events": (event,), "person": one}))
    assert "cart:other-cart" in both and "cart:" + CART in both
    assert both.index("cart:" + CART) < both.index("cart:other-cart")


def test_claimants_are_linked_once_whichever_refs_repeat_the_token() -> None:
    view = DecisionView({})
    ref = PersonRef(customer_id="31", cart_token="shared-cart")
    view.put("cart:shared-cart", {"user": "31"})
    view.put(browse.claim_names("shared-cart", None)[0], {"c": ["browser-1", "browser-2"]})
    linked = browse.link_claimants([ref, ref, ref.model_copy()], view, POLICY)
    assert [(call["anonymousId"], person) for call, person in linked] == [
        ("browser-1", "31"),
        ("browser-2", "31"),
    ]


def test_record_digests_follow_the_identity_key() -> None:
    keyed.configure(b"key-one")
    try:
        one = browse.claim_names("a-cart", "a-checkout")
        assert browse.claim_names("a-cart", "a-checkout") == one  # memoised: the same names
        keyed.configure(b"key-two")
        two = browse.claim_names("a-cart", "a-checkout")
        assert two != one and all(
            a.rpartition(":")[0] == b.rpartition(":")[0] for a, b in zip(one, two, strict=True)
        )
        keyed.configure(b"key-one")
        assert browse.claim_names("a-cart", "a-checkout") == one
    finally:
        keyed.configure(b"")


def test_order_traits_take_the_first_and_last_order_by_time_then_id() -> None:
    view = DecisionView({})
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for order_id, offset in (("5", 2), ("3", 0), ("9", 2), ("1", 1), ("4", 0)):
        fact = OrderFact(
            order_id=order_id, created_at=at + timedelta(days=offset), total=1, currency="USD"
        )
        orders.index_order(view, "cust:1", fact)
    traits = orders.order_traits(view, "cust:1")
    assert traits["first_order_date"] == "2026-01-01T00:00:00.000Z"
    assert traits["last_order_date"] == "2026-01-03T00:00:00.000Z"
    assert (traits["orders_count"], traits["last_order_id"]) == (5, "9")


def test_wanting_products_updates_the_list_as_a_copy_would() -> None:
    view = DecisionView(
        {cache.WANTED: orjson.dumps({"ids": {"1": "t0", "2": "t0"}, "who": {"1": ["c"]}})}
    )
    assert cache.want(view, ["2", "3", "x", "3"], NOW) == 1
    assert view.get(cache.WANTED) == {
        "ids": {"1": "t0", "2": "t0", "3": "2024-11-06T12:00:00.000Z"},
        "who": {"1": ["c"]},
    }
    cache.want(view, [str(i) for i in range(10, 10 + cache.MAX_WANTED)], NOW)
    rec = view.get(cache.WANTED)
    assert rec is not None and len(rec["ids"]) == cache.MAX_WANTED
    assert next(iter(rec["ids"])) == "10" and "who" not in rec  # 1, 2, 3 gone, "1"'s wait too


@pytest.mark.parametrize(
    ("shop", "token"),
    [("a.myshopify.com", "c1"), ("", ""), ("é.myshopify.com", "ü" * 300), ("s", "x\x1fy")],
)
def test_a_carts_anonymous_id_is_the_uuid5_of_shop_and_token(shop: str, token: str) -> None:
    expected = uuid.uuid5(uuid.UUID("8b1f4a44-5c1e-4d51-9d0b-6f4f3c2a7e10"), f"{shop}\x1f{token}")
    assert anonymous_id(shop, token) == str(expected)


def test_an_identify_of_traits_is_the_identify_of_their_update() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    traits = {"orders_count": 2, "lifetime_value": 10.5, "tags": ("a", "b"), "when": at}
    for anon in (None, "anon-1"):
        update = TraitUpdate(person=PersonRef(), traits=traits, timestamp=at)
        assert render.identify_traits_call(
            traits, at, user_id="7", anonymous_id=anon, shop=SHOP
        ) == render.identify_call(update, user_id="7", anonymous_id=anon, shop=SHOP)


def test_keys_handed_to_a_view_are_those_it_would_work_out() -> None:
    key_of = Keys(SHOP).state
    names = ["cart:c1", "person:cust:1"]
    seeded = DecisionView({}, key_of=key_of, keys={n: key_of(n) for n in names})
    plain = DecisionView({}, key_of=key_of)
    for name in [*names, "order:9"]:
        assert seeded.key(name) == plain.key(name) == key_of(name)
        seeded.put(name, {"n": name})
        plain.put(name, {"n": name})
    assert seeded.writes() == plain.writes()


def test_the_latest_orders_are_all_of_them_up_to_the_limit_and_the_newest_past_it() -> None:
    index = {str(i): {"at": f"2026-01-{1 + i % 28:02d}"} for i in range(replenishment.MAX_ORDERS)}
    assert replenishment._latest(index) == set(index)
    index["late"] = {"at": "2026-02-01"}
    index["early"] = {"at": "2025-01-01"}
    latest = replenishment._latest(index)
    assert len(latest) == replenishment.MAX_ORDERS and "late" in latest and "early" not in latest


def test_waiting_for_products_updates_the_list_as_a_copy_would() -> None:
    stored = {"ids": {"1": "t0", "2": "t0"}, "who": {"1": ["c1"]}, "x": 1}
    view = DecisionView({cache.WANTED: orjson.dumps(stored)})
    cache.wait_for(view, ["1", "2", "9"], "c2")  # "9" is not wanted: not noted
    assert view.get(cache.WANTED) == {**stored, "who": {"1": ["c1", "c2"], "2": ["c2"]}}
    revision = view.revision
    cache.wait_for(view, ["1", "2"], "c2")  # nothing new: nothing written
    assert view.revision == revision
    assert cache.take_waiting(view, "1") == ["c1", "c2"]
    assert view.get(cache.WANTED) == {**stored, "who": {"2": ["c2"]}}
