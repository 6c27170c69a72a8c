"""A shopper's journey as webhook bodies built from the recorded fixtures, and an in-memory shop
that runs `processor.process` over them (a dict-backed store applying each Commit) and delivers
its outbox through delivery's own guard check (`bridge.delivery.deliver._drop_guarded`)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import orjson

from bridge.delivery.deliver import Item, _drop_guarded
from bridge.delivery.outbox import OutboxEntry
from bridge.sources import Source
from bridge.sources.shopify import ShopifySource
from bridge.store.facade import Commit, Keys, Settlement
from bridge.store.wire import Envelope
from bridge.worker.processor import ProcessConfig, process

if TYPE_CHECKING:
    from bridge.services import Services
from tests.conftest import SHOP, fixture_json

CART = (
    "Z2NwLXVzLWVhc3QxOjAxSkJaTUVRSjgzNUJUN1BTNjEzRFdRUFFQ"  # joins checkouts-create/orders-create
)
CHECKOUT = "84ad78572dae52a8cbea7d55371afe89"
CHECKOUT_ID = "35550298931313"
ORDER_ID = "5778367414385"
CUSTOMER_ID = "7358220173425"
EMAIL = "henry@wfls.com"
CREATED = "2024-11-06T01:00:00.000Z"
NOW = datetime(2024, 11, 6, 12, 0, tzinfo=UTC)
TRIGGERED = "2024-11-06T03:00:00.000000Z"


def cart(token: str, lines: Mapping[int, int], updated_at: str) -> dict[str, Any]:
    """A carts/* body: {variant id: quantity} lines at one moment."""
    body = fixture_json("carts-create")
    template = body["line_items"][0]
    body["id"] = body["token"] = token
    body["created_at"] = CREATED
    body["updated_at"] = updated_at
    body["line_items"] = [
        {
            **template,
            "id": variant,
            "variant_id": variant,
            "product_id": variant + 1,
            "quantity": qty,
            "line_price": f"{qty * 10}.00",
            "price": "10.00",
            "line_price_set": None,
            "price_set": None,
        }
        for variant, qty in lines.items()
    ]
    return body


def checkout(
    *, email: bool, updated_at: str, token: str = CHECKOUT, cart_token: str = CART
) -> dict[str, Any]:
    """checkouts/* for the fixture checkout; with `email` it names the fixture customer."""
    body = fixture_json("checkouts-create")
    body["token"] = token
    body["cart_token"] = cart_token
    body["updated_at"] = updated_at
    if token != CHECKOUT:
        body["id"] = int(uuid.uuid5(uuid.NAMESPACE_OID, token).int % 10**12)
    if email:
        body["email"] = EMAIL
        body["customer"] = {"id": int(CUSTOMER_ID), "email": EMAIL, "updated_at": None}
    else:
        body["email"] = None
        body.pop("customer", None)
    return body


def order(**changes: Any) -> dict[str, Any]:
    body = fixture_json("orders-create")
    body.update(changes)
    return body


def refund(refund_id: int = 1001, order_id: str = ORDER_ID) -> dict[str, Any]:
    body = fixture_json("refunds-create")
    body["id"] = refund_id
    body["order_id"] = int(order_id)
    return body


class MemoryShop:
    """One shop's state, outbox and counters in dicts; `feed` runs the real processor."""

    def __init__(
        self, config: ProcessConfig | None = None, now: datetime = NOW, source: Source | None = None
    ) -> None:
        self.config = config or ProcessConfig.defaults(api_version="")
        self.source = source or ShopifySource()
        self.now = now
        self.keys = Keys(SHOP)
        self.state: dict[str, bytes] = {}
        self.outbox: list[OutboxEntry] = []
        self.delivered: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()
        # What delivery's guard check counted (`events:{name}:suppressed`), kept apart from the
        # processor's counters of the same names.
        self.delivery_counters: Counter[str] = Counter()
        self.parked: list[dict[str, Any]] = []
        self.load_rounds: list[int] = []

    def load(self, keys: list[str]) -> dict[str, bytes | None]:
        self.load_rounds[-1] += 1
        return {k: self.state.get(k) for k in keys}

    def apply(self, commit: Commit) -> None:
        for key, (value, _ttl) in commit.state_set.items():
            self.state[key] = value
        for key in commit.state_del:
            self.state.pop(key, None)
        self.outbox += [OutboxEntry.decode(c) for c in commit.calls]
        self.counters.update(commit.counters)
        self.parked += [orjson.loads(p) for p in (letter.encode() for letter in commit.letters)]

    def feed_batch(self, hooks: Iterable[tuple[str, dict[str, Any]]]) -> Commit:
        raw = [
            Envelope(
                shop=SHOP,
                topic=topic,
                webhook_id=str(uuid.uuid4()),
                body=json.dumps(body).encode(),
                triggered_at=TRIGGERED,
                received_ms=1,
            ).encode()
            for topic, body in hooks
        ]
        self.load_rounds.append(0)
        commit = process(
            SHOP,
            raw,
            source=self.source,
            config=self.config,
            load=self.load,
            key_of=self.keys.state,
            now=self.now,
        )
        self.apply(commit)
        return commit

    def feed(self, topic: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Process one webhook; returns the calls it queued."""
        before = len(self.outbox)
        self.feed_batch([(topic, body)])
        return [orjson.loads(e.call) for e in self.outbox[before:]]

    def record(self, name: str) -> dict[str, Any] | None:
        raw = self.state.get(self.keys.state(name))
        return None if raw is None else dict(orjson.loads(raw))

    def deliver(self) -> list[dict[str, Any]]:
        """Send the outbox as delivery does: its guard check drops a call whose guard record
        exists. The check reads the records in one round trip, answered here from the dict."""
        items = [Item(e.encode(), e, i, e.person) for i, e in enumerate(self.outbox)]
        store = SimpleNamespace(load_state=lambda keys: {k: self.state.get(k) for k in keys})
        rt = cast("Services", SimpleNamespace(store=store))
        settle = Settlement()
        sent = [orjson.loads(it.entry.call) for it in _drop_guarded(rt, SHOP, items, settle)]
        self.delivery_counters.update(settle.counters)
        self.outbox = []
        self.delivered += sent
        return sent


def tracks(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in calls if c["type"] == "track"]


def names(calls: Iterable[dict[str, Any]]) -> list[str]:
    return [c.get("event") or c["type"] for c in calls]
