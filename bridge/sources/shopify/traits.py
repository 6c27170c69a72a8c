"""Customer traits, emails and phone numbers as the bridge sends them. Pure.

Contract: nothing here raises; a value that cannot be normalised is left out, never guessed.
"""

from __future__ import annotations

from bridge.sources.shopify.models import Customer, CustomerTraits

# Countries whose 10-digit national numbers take the +1 country code (the NANP members
# Shopify merchants most often have; others are left out rather than guessed).
_NANP = frozenset({"US", "CA"})
# What people type between digits: spaces, dashes, dots, parentheses, slashes.
_SEPARATORS = frozenset(" -.()/\u00a0")
_DIGITS = frozenset("0123456789")


def normalise_email(raw: str | None) -> str | None:
    """Trimmed and lower-cased (Customer.io treats email case-insensitively), or None."""
    if raw is None:
        return None
    return raw.strip().lower() or None


def normalise_phone(raw: str | None, country: str | None) -> str | None:
    """E.164 (`+` and digits) for a phone Shopify stores, or None when it cannot be read.

    A number with a leading `+` keeps its digits; a 10-digit (or 1-prefixed 11-digit) number
    becomes `+1…` only when the country is US or CA. Letters (`555-555-SHIP`) give None.
    """
    if raw is None:
        return None
    text = raw.strip()
    international = text.startswith("+")
    body = text[1:] if international else text
    if not body or any(ch not in _DIGITS and ch not in _SEPARATORS for ch in body):
        return None
    digits = "".join(ch for ch in body if ch in _DIGITS)
    if international:
        return "+" + digits if 7 <= len(digits) <= 15 else None
    if (country or "").strip().upper() in _NANP:
        if len(digits) == 10:
            return "+1" + digits
        if len(digits) == 11 and digits.startswith("1"):
            return "+" + digits
    return None


def _consent(state: str | None) -> bool | None:
    return None if state is None else state.strip().lower() == "subscribed"


def customer_traits(
    customer: Customer | None,
    *,
    email: str | None = None,
    phone: str | None = None,
    country: str | None = None,
) -> CustomerTraits:
    """Typed traits of a customer; `email`/`phone` fill in what the customer object lacks.

    Marketing consent comes from the `*_marketing_consent` objects when present, else the
    legacy `accepts_marketing` flag. `country` (ISO alpha-2) is only used to read the phone.
    """
    c = customer or Customer()
    email_state = c.email_marketing_consent.state if c.email_marketing_consent else None
    sms_state = c.sms_marketing_consent.state if c.sms_marketing_consent else None
    accepts_marketing = _consent(email_state)
    return CustomerTraits(
        email=normalise_email(c.email) or normalise_email(email),
        phone=normalise_phone(c.phone, country) or normalise_phone(phone, country),
        first_name=c.first_name,
        last_name=c.last_name,
        accepts_marketing=c.accepts_marketing if accepts_marketing is None else accepts_marketing,
        accepts_sms=_consent(sms_state),
        created_at=c.created_at,
        tags=c.tags,
        state=c.state,
    )
