"""Property-based tests: mapping never fails with anything but MappingError, ids stay exact,
messageIds are deterministic, and segment naming splits carts into one call per line."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from bridge.canonical import (
    ADDED_TO_CART,
    CanonicalEvent,
    Item,
    MapContext,
    Mapped,
    PersonRef,
    TraitUpdate,
)
from bridge.delivery import render
from bridge.delivery.calls import validate_call
from bridge.ids import message_id_time
from bridge.sources import MappingError
from bridge.sources.shopify import ShopifySource, models, parts
from tests.rules import map_context

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "shopify"
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
SHOP = "shop.example"
source = ShopifySource()

TOPIC_FIXTURES = {
    "carts/create": "carts-create",
    "carts/update": "carts-update",
    "checkouts/create": "checkouts-create",
    "checkouts/update": "checkouts-update",
    "checkouts/delete": "checkouts-delete",
    "orders/create": "orders-create",
    "orders/paid": "orders-paid",
    "orders/fulfilled": "orders-paid",
    "orders/cancelled": "orders-paid",
    "refunds/create": "refunds-create",
    "customers/create": "customers-create",
    "customers/update": "customers-create",
    "customers/merge": "customers-merge",
    "customers/redact": "customers-redact",
    "customers/data_request": "customers-data-request",
    "shop/redact": "shop-redact",
}
TOPICS = sorted(TOPIC_FIXTURES)
# Topics sharing a mapper are one group; each property test draws its topic within the group,
# so every mapper gets the full example budget without paying for it once per topic.
GROUPS = {
    "carts": ["carts/create", "carts/update"],
    "checkouts": ["checkouts/create", "checkouts/update", "checkouts/delete"],
    "orders": ["orders/create", "orders/paid", "orders/fulfilled", "orders/cancelled"],
    "refunds": ["refunds/create"],
    "customers": ["customers/create", "customers/update"],
    "merge": ["customers/merge"],
    "compliance": ["customers/redact", "customers/data_request", "shop/redact"],
}


def load(name: str) -> dict[str, Any]:
    # Documented samples name their shop `{shop}.myshopify.com`: here it is the context's.
    text = (FIXTURES / f"{name}.json").read_text().replace("{shop}.myshopify.com", SHOP)
    return dict(json.loads(text))


def field_names() -> list[str]:
    """Every field name the payload models read, so random bodies hit real fields often."""
    names: set[str] = set()
    for obj in vars(models).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel):
            names.update(obj.model_fields)
    names.update({"shop_money", "presentment_money", "name", "value", "code"})
    return sorted(names)


# Strings that exercise the parsers: times (good, malformed, naive), money, gids, enums.
TRICKY = [
    "",
    " ",
    "2024-09-16T03:50:1500:00",
    "2022-01-01T00:00:00.000Z",
    "2024-09-16T03:50:15",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "12.50",
    "-0.00",
    "NaN",
    "sNaN",
    "Infinity",
    "1e999999999",
    "1E-999999999",
    "gid://shopify/Customer/1",
    "gid://shopify/Cart/c1-abc?key=1",
    "refund",
    "success",
    "subscribed",
    "completed",
    "true",
    "+1 (555) 010-0199",
    "9901109922",
    "US",
    "a, b,,c",
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
bodies = st.dictionaries(keys, json_values, max_size=8)
contexts = st.builds(
    map_context,
    st.just(SHOP),
    shop_currency=st.sampled_from(["USD", "EUR"]),
    skip_test_orders=st.booleans(),
    triggered_at=st.none() | st.datetimes(timezones=st.just(UTC)) | st.datetimes(),
    order_completed_on=st.sampled_from(["orders/paid", "orders/create"]),
)


def check_mapping(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped | None:
    """Map; MappingError is allowed, anything else fails the test. Outputs must render."""
    try:
        m = source.map(topic, body, ctx)
    except MappingError:
        return None
    assert isinstance(m, Mapped)
    for event in m.events:
        for naming in ("snake", "segment"):
            for call in render.track_call(
                event, user_id="u", anonymous_id=None, shop=SHOP, naming=naming
            ):
                orjson.dumps(call)
    for update in m.identifies:
        orjson.dumps(render.identify_call(update, user_id="u", anonymous_id="a", shop=SHOP))
    return m


@pytest.mark.parametrize("group", sorted(GROUPS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), body=bodies, ctx=contexts)
def test_arbitrary_bodies_raise_only_mapping_error(
    group: str, data: st.DataObject, body: dict[str, Any], ctx: MapContext
) -> None:
    topic = data.draw(st.sampled_from(GROUPS[group]))
    check_mapping(topic, body, ctx)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path and list index path in a JSON document."""
    out: list[tuple[Any, ...]] = []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths(child, (*prefix, key)))
    return out


def mutate(doc: Any, path: tuple[Any, ...], action: str, replacement: Any) -> None:
    """Delete, null or replace the value at `path`, if an earlier mutation left it there."""
    parent = doc
    for part in path[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    if (isinstance(parent, dict) and last in parent) or (
        isinstance(parent, list) and (isinstance(last, int) and last < len(parent))
    ):
        if action == "delete":
            del parent[last]
        elif action == "null":
            parent[last] = None
        else:
            parent[last] = replacement


@pytest.mark.parametrize("group", sorted(GROUPS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), ctx=contexts)
def test_damaged_fixtures_raise_only_mapping_error(
    group: str, data: st.DataObject, ctx: MapContext
) -> None:
    topic = data.draw(st.sampled_from(GROUPS[group]))
    doc = load(TOPIC_FIXTURES[topic])
    all_paths = paths(doc)
    chosen = data.draw(st.lists(st.sampled_from(all_paths), min_size=1, max_size=6))
    for path in chosen:
        action = data.draw(st.sampled_from(["delete", "null", "replace"]))
        mutate(doc, path, action, data.draw(json_values) if action == "replace" else None)
    check_mapping(topic, doc, ctx)


@pytest.mark.parametrize("topic", TOPICS)
@settings(max_examples=25, deadline=None)
@given(ctx=contexts)
def test_fixtures_map_or_skip_under_any_context(topic: str, ctx: MapContext) -> None:
    body = load(TOPIC_FIXTURES[topic])
    try:
        m = source.map(topic, body, ctx)
    except MappingError:
        pytest.fail("an intact fixture must map")
    assert m.topic == topic


# --- ids ------------------------------------------------------------------------------------

ids64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(order_id=ids64, customer_id=ids64, product_id=ids64, checkout_id=ids64)
def test_64_bit_order_ids_survive_exactly(
    order_id: int, customer_id: int, product_id: int, checkout_id: int
) -> None:
    body = load("orders-paid")
    body["id"] = order_id
    body["customer"]["id"] = customer_id
    body["line_items"][0]["product_id"] = product_id
    body["checkout_id"] = checkout_id
    body = json.loads(json.dumps(body))  # a real JSON round trip, as the worker does
    m = source.map("orders/paid", body, map_context(SHOP, skip_test_orders=False))
    assert m.order is not None and m.order.order_id == str(order_id)
    assert m.person is not None
    assert (m.person.customer_id, m.person.checkout_id) == (str(customer_id), str(checkout_id))
    event = m.events[0]
    assert event.key == f"order:{order_id}"
    assert event.items[0].product_id == str(product_id)
    [call] = render.track_call(event, user_id=str(customer_id), anonymous_id=None, shop=SHOP)
    wire = orjson.loads(orjson.dumps(call))
    assert wire["properties"]["order_id"] == str(order_id)
    assert wire["properties"]["checkout_id"] == str(checkout_id)
    assert wire["properties"]["items"][0]["product_id"] == str(product_id)
    assert wire["userId"] == str(customer_id)


@settings(max_examples=200, deadline=None)
@given(refund_id=ids64, order_id=ids64)
def test_64_bit_refund_ids_survive_exactly(refund_id: int, order_id: int) -> None:
    body = load("refunds-create")
    body["id"], body["order_id"] = refund_id, order_id
    m = source.map("refunds/create", json.loads(json.dumps(body)), map_context(SHOP))
    assert m.refund is not None
    assert (m.refund.refund_id, m.refund.order_id) == (str(refund_id), str(order_id))
    assert m.events[0].properties["order_id"] == str(order_id)


# --- messageIds -----------------------------------------------------------------------------

times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
business_keys = st.text(min_size=1, max_size=40)


def event_at(at: datetime, key: str, name: str = "order_completed") -> CanonicalEvent:
    return CanonicalEvent(name=name, timestamp=at, key=key, person=PersonRef())


@settings(max_examples=200, deadline=None)
@given(at=times, key=business_keys, other=business_keys, shop=st.text(min_size=1, max_size=20))
def test_message_ids_are_deterministic_and_keyed(
    at: datetime, key: str, other: str, shop: str
) -> None:
    first = render.track_call(event_at(at, key), user_id="u", anonymous_id=None, shop=shop)
    again = render.track_call(event_at(at, key), user_id="u", anonymous_id="a", shop=shop)
    mid = first[0]["messageId"]
    assert mid == again[0]["messageId"]  # who it is sent as does not change the event
    assert ULID.match(mid)
    # The time prefix is int(timestamp * 1000), a float product that can fall 1 ms short
    # (2107-01-01T00:00:00.466 encodes .465); kept as it is, since the id of an event already
    # sent must not change (a replay is deduplicated downstream by it).
    exact = at.replace(microsecond=at.microsecond // 1000 * 1000)
    assert timedelta(0) <= exact - message_id_time(mid) <= timedelta(milliseconds=1)
    assume(key != other)
    different = render.track_call(event_at(at, other), user_id="u", anonymous_id=None, shop=shop)
    assert different[0]["messageId"] != mid


@settings(max_examples=200, deadline=None)
@given(
    traits=st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(-1000, 1000)),
    at=times,
)
def test_identify_message_ids_are_deterministic(traits: dict[str, Any], at: datetime) -> None:
    update = TraitUpdate(person=PersonRef(customer_id="1"), traits=traits, timestamp=at)
    shuffled = TraitUpdate(
        person=PersonRef(customer_id="1"), traits=dict(reversed(list(traits.items()))), timestamp=at
    )
    a = render.identify_call(update, user_id="1", anonymous_id=None, shop=SHOP)
    b = render.identify_call(shuffled, user_id="1", anonymous_id=None, shop=SHOP)
    assert a["messageId"] == b["messageId"]
    changed = render.identify_call(
        TraitUpdate(person=update.person, traits={**traits, "\x00new": 1}, timestamp=at),
        user_id="1",
        anonymous_id=None,
        shop=SHOP,
    )
    assert changed["messageId"] != a["messageId"]


# --- segment naming -------------------------------------------------------------------------

items = st.builds(
    Item,
    product_id=st.none() | st.sampled_from(["p1", "p2"]),
    variant_id=st.none() | st.sampled_from(["v1", "v2", "v3"]),
    sku=st.none() | st.sampled_from(["s1", "s2"]),
    name=st.none() | st.text(max_size=10),
    price=st.none() | st.decimals(min_value=0, max_value=10**6, places=2),
    quantity=st.integers(min_value=0, max_value=99),
    # From the product cache, read as 1..3650 days (products/record.py parse_days).
    days_to_replenish=st.none() | st.integers(min_value=1, max_value=3650),
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(items, max_size=8), at=times)
def test_segment_naming_renders_one_product_added_per_line(lines: list[Item], at: datetime) -> None:
    event = CanonicalEvent(
        name=ADDED_TO_CART,
        timestamp=at,
        key="cart:t1",
        person=PersonRef(cart_token="t1"),
        properties={"cart_id": "t1", "currency": "USD"},
        items=tuple(lines),
    )
    calls = render.track_call(event, user_id=None, anonymous_id="anon", shop=SHOP, naming="segment")
    assert len(calls) == len(lines)
    assert len({c["messageId"] for c in calls}) == len(lines)
    for call, line in zip(calls, lines, strict=True):
        assert call["event"] == "Product Added"
        props = call["properties"]
        assert props["cart_id"] == "t1" and "products" not in props and "items" not in props
        assert props["quantity"] == line.quantity
        assert props.get("variant_id") == line.variant_id
        if line.price is not None:
            assert props["price"] == float(line.price) and isinstance(props["price"], float)
        validate_call(call)
    snake = render.track_call(event, user_id=None, anonymous_id="anon", shop=SHOP)
    assert len(snake) == 1 and len(snake[0]["properties"]["items"]) == len(lines)


def test_field_names_cover_nested_payload_fields() -> None:
    # Guard for the strategies above: they should know the fields the mapping reads.
    names = field_names()
    for expected in ("line_items", "total_price_set", "transactions", "email_marketing_consent"):
        assert expected in names
    assert names == sorted(set(names))


# Values a line field may hold: the common exact types and the odd ones the validators handle.
LINE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**41), 10**41),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["", "  ", "19.99", " 7 ", "0", "abc", "1e400"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(
        st.sampled_from(["shop_money", "amount", "currency_code"]),
        st.one_of(st.none(), st.text(max_size=4), st.sampled_from(["1.50", "x"])),
        max_size=2,
    ),
    st.fixed_dictionaries(
        {"shop_money": st.fixed_dictionaries({"amount": st.sampled_from(["2.5", 3, "bad", None])})}
    ),
)
LINE_READERS = {
    "id": models._to_id,
    "product_id": models._to_id,
    "variant_id": models._to_id,
    "sku": models._to_text,
    "title": models._to_text,
    "name": models._to_text,
    "vendor": models._to_text,
    "product_type": models._to_text,
    "quantity": models._to_count,
    "price": models._to_money,
    "price_set": models._to_shop_money,
    "line_price": models._to_money,
    "line_price_set": models._to_shop_money,
}


def _read_by_validators(raw: dict[str, Any]) -> Any:
    try:
        return models.LineItem(**{f: read(raw.get(f)) for f, read in LINE_READERS.items()})
    except ValueError:
        return ValueError


@settings(max_examples=400, deadline=None)
@given(raw=st.dictionaries(st.sampled_from(sorted(LINE_READERS)), LINE_VALUES, max_size=13))
def test_a_line_read_inline_is_what_the_validators_give(raw: dict[str, Any]) -> None:
    # Lines are read with inline fast paths for speed: results and errors stay the validators'.
    try:
        got: Any = models._read_line(raw)
    except ValueError:
        got = ValueError
    expected = _read_by_validators(raw)
    assert got == expected
    if got is not ValueError:
        assert [type(x) for x in got] == [type(x) for x in expected]


def _outcome(read: Any, value: Any) -> Any:
    """What a reader gives for a value: its result, or its validation errors (path and type)."""
    try:
        return read(value)
    except ValidationError as exc:
        return [(e["loc"], e["type"]) for e in exc.errors(include_url=False)]
    except ValueError as exc:
        return (ValueError, str(exc))


MONEY_TEXTS = st.one_of(
    st.text(alphabet="0123456789.-+eE ,_xnaNIinf", max_size=12),
    st.sampled_from(["", " ", "0.00", "89.99", " 7 ", "1e14", "1e15", "-0", "NaN", "1" * 45]),
)


@settings(max_examples=300, deadline=None)
@given(text=MONEY_TEXTS)
def test_an_amount_read_again_is_what_reading_it_gives(text: str) -> None:
    # Short amounts are kept once read: the kept Decimal (exponent and all) or the error is
    # the reader's, the first time and every time after.
    fresh = _outcome(models._read_money_text, text)
    for _ in range(2):
        got = _outcome(models._to_money, text)
        assert got == fresh
        assert str(got) == str(fresh)


MONEY_SIDES = st.one_of(
    st.none(),
    st.just([]),
    st.just("x"),
    st.dictionaries(
        st.sampled_from(["amount", "currency_code", "other"]),
        st.one_of(st.none(), MONEY_TEXTS, st.integers(), st.just(["USD"]), st.just("  ")),
        max_size=3,
    ),
)
MONEY_SET_BODIES = st.one_of(
    st.none(),
    st.just([]),
    st.just(""),
    st.integers(),
    st.dictionaries(st.sampled_from(["shop_money", "presentment_money", "x"]), MONEY_SIDES),
)
ADDRESS_BODIES = st.one_of(
    st.none(),
    st.just([]),
    st.integers(),
    st.dictionaries(
        st.sampled_from(["country_code", "city"]),
        st.one_of(st.none(), st.text(max_size=4), st.integers(), st.just("X" * 45)),
    ),
)
_PLAIN_MONEY_SET = TypeAdapter(models.Obj[models.MoneySet])
_KNOWN_MONEY_SET = TypeAdapter(models.MoneySetOf)
_PLAIN_ADDRESS = TypeAdapter(models.Obj[models.Address])
_KNOWN_ADDRESS = TypeAdapter(models.AddressOf)


@settings(max_examples=300, deadline=None)
@given(body=MONEY_SET_BODIES)
def test_a_money_set_seen_before_is_what_validating_it_gives(body: Any) -> None:
    fresh = _outcome(_PLAIN_MONEY_SET.validate_python, body)
    for _ in range(2):  # the second time from what the first one kept
        assert _outcome(_KNOWN_MONEY_SET.validate_python, body) == fresh


@settings(max_examples=200, deadline=None)
@given(body=ADDRESS_BODIES)
def test_an_address_seen_before_is_what_validating_it_gives(body: Any) -> None:
    fresh = _outcome(_PLAIN_ADDRESS.validate_python, body)
    for _ in range(2):
        assert _outcome(_KNOWN_ADDRESS.validate_python, body) == fresh


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(MONEY_SET_BODIES, st.just({"shop_money": {"amount": "1", "currency_code": "U"}}))
)
def test_a_line_money_set_seen_before_is_what_reading_it_gives(body: Any) -> None:
    fresh = _outcome(models._to_shop_money, body)
    for _ in range(2):
        got = _outcome(models._money_set, body)
        assert got == fresh
        assert type(got) is type(fresh)


@settings(max_examples=200, deadline=None)
@given(
    raw=st.dictionaries(st.sampled_from(sorted(LINE_READERS)), LINE_VALUES, max_size=13),
    quantity=st.one_of(st.none(), st.integers(0, 5)),
)
def test_lines_and_items_built_as_tuples_are_their_named_tuples(
    raw: dict[str, Any], quantity: int | None
) -> None:
    # Lines and items are built with tuple.__new__ (no Python __new__): every field in its
    # place, and the defaults the named tuple gives the fields mapping leaves unset.
    try:
        line = models._read_line(raw)
    except ValueError:
        return
    assert line == models.LineItem(**line._asdict())
    got = parts.item(line, quantity=quantity)
    price = line.price_set.amount if line.price_set else None
    assert got == Item(
        product_id=line.product_id,
        variant_id=line.variant_id,
        sku=line.sku,
        name=line.title if line.title is not None else line.name,
        price=price if price is not None else line.price,
        quantity=(quantity if quantity is not None else line.quantity) or 0,
        brand=line.vendor,
        category=line.product_type,
    )
    assert len(got) == len(Item._fields)
