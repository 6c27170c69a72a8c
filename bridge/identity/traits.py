"""Identify calls per person: versioned traits (an older payload never overwrites newer ones),
anonymous-id merges once, and live cart traits that can be cleared. Pure over a StateView.

Record `person:<person>` -> `{"f": {trait: [version ISO-8601, value]}, "anons": [...],
"cart": token of the live cart, "unjoined_at": ISO-8601}` (`<person>` as in graph.person_key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bridge.delivery import render
from bridge.delivery.calls import Call
from bridge.identity.graph import Policy, person_key
from bridge.identity.records import StateView
from bridge.ids import iso_z, message_id

MAX_ANONS = 20
# Values `render.to_json` gives back as they are.
_JSON_SCALARS = frozenset({str, int, float, bool})
LIVE_CART_TRAITS = ("cart_items", "cart_value", "cart_url", "checkout_url", "cart_updated_at")


def person_name(user_id: str) -> str:
    return "person:" + person_key(user_id)


@dataclass
class Pending:
    """What one webhook wants to tell Customer.io about one person."""

    user: str
    at: datetime
    anon: str | None = None
    # trait -> (value, version ISO or None for computed traits that always win)
    traits: dict[str, tuple[Any, str | None]] = field(default_factory=dict)
    force: bool = False  # send an identify even with nothing new (a merge's kept profile)


class Identities:
    """Collects trait changes per person during one webhook, then renders the identifies."""

    def __init__(self) -> None:
        self.pending: dict[str, Pending] = {}

    def _get(self, user: str, at: datetime, anon: str | None) -> Pending:
        p = self.pending.get(user)
        if p is None:
            p = self.pending[user] = Pending(user=user, at=at, anon=anon)
        if anon and not p.anon:
            p.anon = anon
        if at > p.at:
            p.at = at
        return p

    def versioned(
        self, user: str, traits: dict[str, Any], version: datetime, at: datetime, anon: str | None
    ) -> None:
        """Payload traits: each applies only if not older than what the person already has."""
        p = self._get(user, at, anon)
        v = iso_z(version)
        for name, value in render.to_json(traits).items():
            p.traits[name] = (value, v)

    def computed(self, user: str, traits: dict[str, Any], at: datetime, anon: str | None) -> None:
        """Traits the bridge computes from its own state (order index, live cart): always win."""
        p = self._get(user, at, anon)
        for name, value in traits.items():
            # Texts and numbers (most computed traits) are their own JSON: no call for them.
            if value is not None and type(value) not in _JSON_SCALARS:
                value = render.to_json(value)
            p.traits[name] = (value, None)

    def touch(self, user: str, at: datetime, anon: str | None, *, force: bool = False) -> None:
        p = self._get(user, at, anon)
        p.force = p.force or force

    def render(self, view: StateView, policy: Policy) -> list[tuple[str, Call]]:
        """(person, identify call) for each person with something new to say."""
        out = []
        for p in self.pending.values():
            call = _identify(view, policy, p)
            if call is not None:
                out.append((p.user, call))
        return out


def _identify(view: StateView, policy: Policy, p: Pending) -> Call | None:
    name = person_name(p.user)
    rec = view.get(name) or {}
    fields: dict[str, list[Any]] = dict(rec.get("f") or {})
    send: dict[str, Any] = {}
    at = iso_z(p.at)  # the version of every computed trait sent (once, not once a trait)
    for trait, (value, version) in p.traits.items():
        old = fields.get(trait)
        if version is None:
            if (old is None and value is None) or (old is not None and old[1] == value):
                continue
            fields[trait] = [at, value]
            send[trait] = value
            continue
        if old is not None and (old[0] or "") > version:
            continue  # an older payload: the person already has newer traits
        if old is not None and old[1] == value:
            fields[trait] = [version, value]
            continue
        fields[trait] = [version, value]
        send[trait] = value
    anons = list(rec.get("anons") or [])
    merge_anon = bool(p.anon) and p.anon not in anons
    if merge_anon and p.anon:
        anons = [*anons, p.anon][-MAX_ANONS:]
    if not send and not merge_anon and not p.force:
        if fields != (rec.get("f") or {}):
            view.put(name, {**rec, "f": fields})
        return None
    view.put(name, {**rec, "f": fields, "anons": anons})
    kept = {k: v for k, v in send.items() if v is not None}
    anon = p.anon if merge_anon else None
    call = render.identify_traits_call(
        kept, p.at, user_id=p.user, anonymous_id=anon, shop=policy.shop
    )
    cleared = sorted(k for k, v in send.items() if v is None)
    if cleared:
        # Cleared traits go out as JSON null; the messageId must tell a clear from a no-op.
        call["traits"].update(dict.fromkeys(cleared))
        parts = [render.SOURCE, policy.shop, "identify", p.user]
        parts += [render.traits_digest(call["traits"]), anon or ""]
        call["messageId"] = message_id(p.at, *parts)
    return call
