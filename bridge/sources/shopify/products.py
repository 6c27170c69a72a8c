"""Shopify `products/update`, `products/delete` and the internal `backfill/product` -> `Mapped`
carrying a `ProductFact` for the product cache (bridge/products/). Pure.

`products/update` is the REST-shaped product (shared/docs/shopify-admin-api.md section 7): `id`,
`product_type`, `vendor`, `updated_at`, ...; metafields appear only when the webhook
subscription names them (`metafieldNamespaces` / `metafields`), as a list of
`{namespace, key, value, type}`; a `category` object, when present, names its taxonomy
category. `products/delete` carries the product's `id` **[U: the doc has no sample; the REST
delete topics carry `{"id": ...}`]**. `backfill/product` is what products/sync.py queues from an
Admin API read, in the same shape, plus `_cartbridge_metafield_keys` (the keys it asked for) and
`_cartbridge_gone` (the API has no such product).

Raises pydantic's ValidationError for a wrongly typed body and MappingError without an id.
"""

from __future__ import annotations

from typing import Any

from bridge.canonical import MapContext, Mapped, ProductFact
from bridge.ids import gid_to_id
from bridge.sources import MappingError
from bridge.sources.shopify.models import Payload, ShopifyId, Text, Timestamp
from bridge.sources.shopify.parts import SOURCE

UPDATE_TOPIC = "products/update"
DELETE_TOPIC = "products/delete"
BACKFILL_PRODUCT_TOPIC = "backfill/product"
KEYS_FLAG = "_cartbridge_metafield_keys"
GONE_FLAG = "_cartbridge_gone"
# A payload's metafields read at most (a subscription may name a whole namespace).
MAX_METAFIELDS = 50


class _Category(Payload):
    name: Text = None


class _Product(Payload):
    id: ShopifyId = None
    admin_graphql_api_id: Text = None
    product_type: Text = None
    vendor: Text = None
    updated_at: Timestamp = None


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def _metafields(raw: Any) -> dict[str, tuple[str | None, str | None]]:
    out: dict[str, tuple[str | None, str | None]] = {}
    if not isinstance(raw, list):
        return out
    for entry in raw[:MAX_METAFIELDS]:
        if not isinstance(entry, dict):
            continue
        namespace, key = entry.get("namespace"), entry.get("key")
        if not isinstance(namespace, str) or not isinstance(key, str):
            continue
        kind = entry.get("type")
        out[f"{namespace}.{key}"] = (
            _scalar(entry.get("value")),
            kind if isinstance(kind, str) else None,
        )
    return out


def _category(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        return None
    return _Category.model_validate(raw).name


def map_product(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """A product body as the fact the cache keeps (a delete as a `gone` fact)."""
    product = _Product.model_validate(body)
    product_id = gid_to_id(product.id or product.admin_graphql_api_id)
    if not product_id:
        raise MappingError(f"{topic}: product has no id")
    gone = topic == DELETE_TOPIC or body.get(GONE_FLAG) is True
    asked = body.get(KEYS_FLAG)
    keys = (
        tuple(k for k in asked if isinstance(k, str))[:MAX_METAFIELDS]
        if isinstance(asked, list)
        else None
    )
    fact = ProductFact(
        product_id=product_id,
        # A delete carries no time of its own: its trigger time is after the product's last
        # update, so a stale `products/update` retried after it cannot bring the product back.
        # Without one (or from a lookup that found nothing) it applies whatever is cached.
        version=ctx.triggered_at
        if topic == DELETE_TOPIC
        else product.updated_at or ctx.triggered_at,
        gone=gone,
        product_type=None if gone else product.product_type,
        category=None if gone else _category(body.get("category")),
        vendor=None if gone else product.vendor,
        metafields={} if gone else _metafields(body.get("metafields")),
        metafield_keys=None if gone else keys,
    )
    return Mapped(source=SOURCE, topic=topic, product=fact)
