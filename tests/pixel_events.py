"""Standard Web Pixels events as the pixel API delivers them (shared docs web-pixels.md section
3: envelope id, name, clientId, timestamp, seq, type, context, data), and collector bodies."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.conftest import SHOP


def variant(product: int = 7001, variant_id: int = 9001, price: float = 24.5) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/ProductVariant/{variant_id}",
        "title": "Large",
        "untranslatedTitle": "Large",
        "sku": f"SKU-{variant_id}",
        "image": {"src": "https://cdn.example/p.png"},
        "price": {"amount": price, "currencyCode": "USD"},
        "product": {
            "id": f"gid://shopify/Product/{product}",
            "title": "Trail Shoe",
            "untranslatedTitle": "Trail Shoe",
            "type": "Shoes",
            "vendor": "Acme",
            "url": f"/products/trail-shoe-{product}",
        },
    }


def context(path: str = "/products/trail-shoe") -> dict[str, Any]:
    return {
        "document": {
            "location": {
                "href": f"https://{SHOP}{path}",
                "origin": f"https://{SHOP}",
                "host": SHOP,
                "pathname": path,
                "search": "",
                "hash": "",
            },
            "referrer": "https://www.google.com/",
            "title": "Trail Shoe",
            "characterSet": "UTF-8",
        },
        "navigator": {
            "userAgent": "Mozilla/5.0",
            "language": "en-US",
            "languages": ["en-US"],
            "cookieEnabled": True,
        },
        "window": {"innerHeight": 800, "innerWidth": 1200},
    }


def data_for(name: str, **kw: Any) -> dict[str, Any] | None:
    if name == "product_viewed":
        return {"productVariant": variant(**kw)}
    if name == "collection_viewed":
        return {
            "collection": {
                "id": "gid://shopify/Collection/5",
                "title": "Shoes",
                "productVariants": [variant(7000 + i, 9000 + i) for i in range(3)],
            }
        }
    if name == "search_submitted":
        return {
            "searchResult": {
                "query": "shoe",
                "productVariants": [variant(7000 + i, 9000 + i) for i in range(3)],
            }
        }
    if name == "product_added_to_cart":
        return {
            "cartLine": {
                "cost": {"totalAmount": {"amount": 49.0, "currencyCode": "USD"}},
                "merchandise": variant(**kw),
                "quantity": 2,
            }
        }
    if name == "cart_viewed":
        return {
            "cart": {
                "id": "gid://shopify/Cart/c1-token?key=abc",
                "cost": {"totalAmount": {"amount": 49.0, "currencyCode": "USD"}},
                "lines": [{"quantity": 2, "merchandise": variant(**kw)}],
                "totalQuantity": 2,
            }
        }
    # checkout_started, checkout_completed
    return {
        "checkout": {
            "token": kw.get("token", "co-token-1"),
            "email": "victim@example.com",
            "currencyCode": "USD",
            "totalPrice": {"amount": 49.0, "currencyCode": "USD"},
            "lineItems": [{"id": "1", "quantity": 2, "title": "Trail Shoe", "variant": variant()}],
            "order": {
                "id": "gid://shopify/Order/1",
                "customer": {"id": "gid://shopify/Customer/42", "isFirstOrder": True},
            },
        }
    }


def event(
    name: str = "product_viewed",
    *,
    client_id: str = "client-aaa",
    event_id: str | None = None,
    timestamp: str | None = None,
    data: Any = "default",
    **kw: Any,
) -> dict[str, Any]:
    return {
        "id": event_id or f"sh-{uuid.uuid4()}",
        "name": name,
        "clientId": client_id,
        "timestamp": timestamp or datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "seq": 1,
        "type": "standard",
        "context": context(),
        "data": data_for(name, **kw) if data == "default" else data,
    }


def body(ev: dict[str, Any], *, shop: str = SHOP, cart_token: str | None = None) -> dict[str, Any]:
    return {"shop": shop, "cart_token": cart_token, "event": ev}


def raw(ev: dict[str, Any], **kw: Any) -> bytes:
    return json.dumps(body(ev, **kw)).encode()


def nested(depth: int, leaf: Any) -> dict[str, Any]:
    """Event data nesting `depth` objects deep (itself included), `leaf` at the bottom."""
    value: Any = leaf
    for _ in range(depth - 1):
        value = {"a": value}
    return {"a": value}


def deep_raw(depth: int, leaf: bytes) -> bytes:
    """A collector body whose event data nests `depth` objects deep, written as bytes (a
    json.dumps of it would itself recurse that deep)."""
    shallow = raw(event(data={"a": "DEEP"}))
    return shallow.replace(b'"DEEP"', b'{"a":' * (depth - 1) + leaf + b"}" * (depth - 1))
