"""A cached product as a state record, and the metafields read from it. Pure.

Record `product:<product id>` (shop state, TTL `PRODUCT_CACHE_TTL_S`):
`{"v": updated_at ISO or "", "t": product type, "c": taxonomy category name, "vn": vendor,
  "mf": {"namespace.key": [value, type]}, "mk": [keys an Admin read asked for] | null}`,
or `{"v": ..., "gone": true}` for a product deleted or not found (so it is not asked again).

Metafield values are strings whose meaning depends on their type (shared/docs/shopify-admin-api.md
section 7), set by merchants: anything that does not read cleanly as what the store configured
is treated as unset, never as an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from bridge.canonical import ProductFact
from bridge.ids import iso_z

# A replenishment interval beyond ten years is a typo (or an attack), not a product.
MAX_DAYS_TO_REPLENISH = 3650
# What one record keeps of a payload's metafields (a webhook may carry a whole namespace).
MAX_METAFIELDS = 20
MAX_METAFIELD_CHARS = 64
MAX_TEXT_CHARS = 255
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_INTEGER = re.compile(r"\+?\d{1,12}")


def record_name(product_id: str) -> str:
    return "product:" + product_id


@dataclass(frozen=True)
class MetafieldKeys:
    """Which product metafields hold the store's replenishment data (`namespace.key` each)."""

    replenishable: str = "custom.replenishable"
    days_to_replenish: str = "custom.days_to_replenish"

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.replenishable, self.days_to_replenish)


def split_key(key: str) -> tuple[str, str]:
    """`custom.days_to_replenish` -> ("custom", "days_to_replenish"); ValueError when either
    part is missing (a setting checks it at start)."""
    namespace, _, name = key.partition(".")
    if not namespace or not name:
        raise ValueError(f"metafield {key!r} must be written namespace.key")
    return namespace, name


def parse_bool(value: Any) -> bool | None:
    """A metafield's value as a boolean: Shopify's `boolean` type writes "true"/"false";
    merchants using a text field write "yes", "1"... Anything else is unset (None)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def parse_days(value: Any) -> int | None:
    """A metafield's value as whole days, 1 to MAX_DAYS_TO_REPLENISH: `number_integer` writes
    "30", `number_decimal` "30.0". Negative, zero, fractional, huge, non-numeric: None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        days = value
    elif isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            days = int(text)
        else:
            try:
                number = Decimal(text[:40])
            except (InvalidOperation, ValueError):
                return None
            if not number.is_finite() or number != number.to_integral_value():
                return None
            if abs(number) > MAX_DAYS_TO_REPLENISH:
                return None
            days = int(number)
    else:
        return None
    return days if 1 <= days <= MAX_DAYS_TO_REPLENISH else None


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value[:MAX_TEXT_CHARS]


def to_record(fact: ProductFact) -> dict[str, Any]:
    """The state record of a product fact (bounded whatever the payload held)."""
    version = iso_z(fact.version) if fact.version else ""
    if fact.gone:
        return {"v": version, "gone": True}
    metafields = {
        str(k)[: MAX_METAFIELD_CHARS * 2]: [
            None if v is None else str(v)[:MAX_METAFIELD_CHARS],
            None if t is None else str(t)[:MAX_METAFIELD_CHARS],
        ]
        for k, (v, t) in list(fact.metafields.items())[:MAX_METAFIELDS]
    }
    rec: dict[str, Any] = {"v": version, "mf": metafields}
    for field, value in (("t", fact.product_type), ("c", fact.category), ("vn", fact.vendor)):
        text = _text(value)
        if text is not None:
            rec[field] = text
    if fact.metafield_keys is not None:
        rec["mk"] = list(fact.metafield_keys)[:MAX_METAFIELDS]
    return rec


def newer(old: dict[str, Any] | None, fact: ProductFact) -> bool:
    """True when the fact should replace the cached record: nothing cached, or the fact is not
    older (a webhook's `updated_at` against the record's). A fact without a time (a delete)
    always applies."""
    if not old or fact.version is None:
        return True
    return iso_z(fact.version) >= str(old.get("v") or "")


def merged(old: dict[str, Any] | None, fact: ProductFact) -> dict[str, Any]:
    """The record after this fact. A webhook (no `metafield_keys`) changes only the metafields
    it carries: its subscription may name none, another namespace, or one of the store's two
    keys, and what it leaves out says nothing about the others (an Admin read learned them).
    One that names no taxonomy category keeps the cached one. An Admin read names the keys it
    asked for, so its answer replaces the cached metafields whole."""
    rec = to_record(fact)
    if fact.gone or not old or old.get("gone"):
        return rec
    if fact.metafield_keys is None:
        raw = old.get("mf")
        cached: dict[str, Any] = raw if isinstance(raw, dict) else {}
        carried: dict[str, Any] = rec["mf"]
        # Cached keys keep their place (a carried value replaces theirs); keys new to the record
        # fill what room is left, so a webhook flooding another namespace never evicts what an
        # Admin read learned.
        mf = {k: carried.get(k, v) for k, v in list(cached.items())[:MAX_METAFIELDS]}
        for k, v in carried.items():
            if k not in mf and len(mf) < MAX_METAFIELDS:
                mf[k] = v
        rec["mf"] = mf
        if "mk" in old:
            rec["mk"] = old["mk"]
    if "c" not in rec and old.get("c") and fact.metafield_keys is None:
        rec["c"] = old["c"]
    return rec


@dataclass(frozen=True)
class Metadata:
    """What an item gets from its cached product."""

    category: str | None
    vendor: str | None
    replenishable: bool | None
    days_to_replenish: int | None
    # The record was read without one of the store's keys (the configuration changed since):
    # worth reading again.
    stale_keys: bool = False


def metadata(rec: dict[str, Any], keys: MetafieldKeys) -> Metadata | None:
    """An item's metadata from a cached record; None for a product that is gone."""
    if rec.get("gone"):
        return None
    raw = rec.get("mf")
    metafields: dict[str, Any] = raw if isinstance(raw, dict) else {}
    asked = rec.get("mk")
    stale = isinstance(asked, list) and not set(keys.keys) <= set(asked)

    def value(key: str) -> Any:
        entry = metafields.get(key)
        return entry[0] if isinstance(entry, list) and entry else None

    replenishable = parse_bool(value(keys.replenishable))
    days = parse_days(value(keys.days_to_replenish))
    return Metadata(
        category=_text(rec.get("c")) or _text(rec.get("t")),
        vendor=_text(rec.get("vn")),
        replenishable=replenishable,
        days_to_replenish=days,
        stale_keys=stale,
    )
