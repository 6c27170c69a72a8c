"""Compliance requests as the bridge keeps them (pure): what a redact or data-request webhook asks,
the forms in which the customer may be stored (`Needles`), and the `User Deleted` call.

The erasure and export that carry a request out (Redis and files) are compliance/erasure.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge import keyed
from bridge.canonical import Mapped
from bridge.delivery.calls import USER_DELETED as USER_DELETED  # re-exported: compliance names it
from bridge.delivery.calls import validate_call
from bridge.delivery.outbox import OutboxEntry
from bridge.identity import email_key
from bridge.ids import iso_z, message_id
from bridge.jsonio import parse_body
from bridge.store import wire

CUSTOMERS_REDACT = "customers/redact"
CUSTOMERS_DATA_REQUEST = "customers/data_request"
SHOP_REDACT = "shop/redact"
COMPLIANCE_TOPICS = frozenset({CUSTOMERS_REDACT, CUSTOMERS_DATA_REQUEST, SHOP_REDACT})


@dataclass(frozen=True)
class ComplianceRequest:
    """One compliance webhook as the drain runs it: who is concerned, and what to do."""

    topic: str
    shop: str
    webhook_id: str
    received_ms: int = 0
    customer_id: str | None = None
    email: str | None = None  # lower-cased
    phones: tuple[str, ...] = ()  # every written form: E.164, raw, digits
    order_ids: tuple[str, ...] = ()
    data_request_id: str | None = None

    def encode(self) -> bytes:
        record = wire.ComplianceRecord(
            self.topic,
            self.shop,
            self.webhook_id,
            self.received_ms,
            self.customer_id,
            self.email,
            self.phones,
            self.order_ids,
            self.data_request_id,
        )
        return wire.encode_compliance_request(record)

    @classmethod
    def decode(cls, raw: bytes) -> ComplianceRequest:
        """Raises msgspec.DecodeError when `raw` is not a compliance request record."""
        d = wire.decode_compliance_request(raw)
        return cls(
            d.topic,
            d.shop,
            d.webhook_id,
            d.received_ms,
            d.customer_id,
            d.email,
            d.phones,
            d.order_ids,
            d.data_request_id,
        )


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


def request_from(env: wire.Envelope, mapped: Mapped) -> ComplianceRequest:
    """The request a mapped compliance webhook makes (pure). The body is read again for what
    mapping does not keep: the raw phone, the order ids and the data request id."""
    person = mapped.person
    body = parse_body(env.body)
    body = body if isinstance(body, dict) else {}
    customer = body.get("customer") if isinstance(body.get("customer"), dict) else {}
    phones: list[str] = []
    raw_phone = _scalar(customer.get("phone")) if customer else None
    for form in (person.phone if person else None, raw_phone):
        if form and form not in phones:
            phones.append(form)
    if raw_phone:
        digits = "".join(ch for ch in raw_phone if ch.isdigit())
        if len(digits) >= 7 and digits not in phones:
            phones.append(digits)
    orders = body.get("orders_to_redact") or body.get("orders_requested") or []
    order_ids = tuple(
        s for s in (_scalar(o) for o in (orders if isinstance(orders, list) else [])) if s
    )
    request = body.get("data_request")
    return ComplianceRequest(
        topic=env.topic,
        shop=env.shop,
        webhook_id=env.webhook_id,
        received_ms=env.received_ms,
        customer_id=person.customer_id if person else None,
        email=person.email if person else None,
        phones=tuple(phones),
        order_ids=order_ids,
        data_request_id=_scalar(request.get("id")) if isinstance(request, dict) else None,
    )


# A token must not continue a run of letters or digits (an id inside a ULID is not that id).
_WORD_START = rb"(?<![0-9A-Za-z])"
_WORD_END = rb"(?![0-9A-Za-z])"


@dataclass(frozen=True)
class Needles:
    """What names a customer in stored bytes: whole-token ids, and case-free substrings."""

    tokens: tuple[str, ...] = ()  # ids and digit-only phones: matched as whole tokens
    texts: tuple[str, ...] = ()  # email, email hash, phones: matched anywhere, case-free
    key_tokens: tuple[str, ...] = ()  # also matched in key names only (order ids)
    _value_re: re.Pattern[bytes] | None = field(default=None, compare=False)
    _key_re: re.Pattern[bytes] | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls, tokens: Iterable[str], texts: Iterable[str], key_tokens: Iterable[str] = ()
    ) -> Needles:
        toks = tuple(dict.fromkeys(t for t in tokens if t))
        txts = tuple(dict.fromkeys(t.lower() for t in texts if t))
        ktoks = tuple(dict.fromkeys(t for t in key_tokens if t))

        def pattern(tok: tuple[str, ...], txt: tuple[str, ...]) -> re.Pattern[bytes] | None:
            parts = [_WORD_START + re.escape(t.encode()) + _WORD_END for t in tok]
            parts += [re.escape(t.encode()) for t in txt]
            return re.compile(b"|".join(parts)) if parts else None

        return cls(toks, txts, ktoks, pattern(toks, txts), pattern(toks + ktoks, txts))

    def in_value(self, data: bytes) -> bool:
        return self._value_re is not None and self._value_re.search(data.lower()) is not None

    def in_key(self, key: bytes) -> bool:
        return self._key_re is not None and self._key_re.search(key.lower()) is not None


def needles_for(request: ComplianceRequest) -> Needles:
    """Every form in which the bridge may have stored this customer."""
    texts: list[str] = []
    tokens: list[str] = []
    # Delivery's retry bookkeeping names a person (the outbox header's: customer id or email) by
    # a keyed hash, or by the unkeyed one of entries queued before that (keyed.py).
    people = [p for p in (request.customer_id, request.email) if p]
    texts += [keyed.person_hash(p) for p in people]
    texts += [keyed.legacy_person_hash(p) for p in people]
    if request.customer_id:
        tokens.append(request.customer_id)
    if request.email:
        texts.append(request.email)
        texts.append(email_key(request.email).partition(":")[2])
    for phone in request.phones:
        (tokens if phone.isdigit() else texts).append(phone)
    return Needles.of(tokens, texts, key_tokens=request.order_ids)


def anonymous_ids(value: bytes) -> list[str]:
    """The anonymous ids a stored identity record names (a cart's or order's `anon`, a
    person's `anons`): the calls made while the customer was anonymous went under these, so
    their ops ledger (store/ops.py) is theirs too. Anything else (not JSON, odd shapes): none."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(doc, dict):
        return []
    anons = doc.get("anons")
    found = [doc.get("anon"), *(anons if isinstance(anons, list) else [])]
    return list(dict.fromkeys(a for a in found if isinstance(a, str) and a))


def user_deleted_entry(request: ComplianceRequest, now_ms: int) -> bytes | None:
    """The outbox entry for Customer.io's `User Deleted` semantic event, or None when the
    request names no person the bridge would have identified (pure: `now_ms` dates a request
    that carries no receive time)."""
    user_id = request.customer_id or request.email
    if not user_id:
        return None
    at = datetime.fromtimestamp((request.received_ms or now_ms) / 1000, tz=UTC)
    call = {
        "type": "track",
        "messageId": message_id(at, request.shop, USER_DELETED, user_id),
        "timestamp": iso_z(at),
        "userId": user_id,
        "event": USER_DELETED,
        "properties": {},
    }
    return OutboxEntry(
        validate_call(call), request.received_ms, user_id, event=USER_DELETED
    ).encode()
