"""The identity hash key and the keyed hashes that name people in Redis key names.

An email (or any id) in a key name would outlive what a redact removes by value, and an unkeyed
hash of it is reversed by hashing a list of known addresses; so names are HMACs under the
deployment's identity key (IDENTITY_HASH_KEY), set once per process by `configure`
(Services.build does it). A leaf module, importing nothing of the bridge: the identity graph,
the outbox and the store share the one key without an import cycle.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_PERSON = b"person\x1f"  # keeps person hashes apart from `email_digest` of the same text

_key: bytes = b""
# The person hash's MAC with its key and prefix already absorbed: copying it costs about half of
# building one, and it runs once for every call queued.
_person_mac = hmac.new(_key, _PERSON, hashlib.sha256)


def configure(key: bytes) -> None:
    """Set this process's identity hash key (before any batch is processed)."""
    global _key, _person_mac
    _key = key
    _person_mac = hmac.new(key, _PERSON, hashlib.sha256)
    forget()


def forget() -> None:
    """Drop the memoised digests: the drain calls this after each batch (worker/processor.py),
    so the emails, tokens and ids the memos hold as keys live no longer than the batch that
    named them, and an erased person's email is not kept by a long-lived worker."""
    email_digest.cache_clear()
    record_digest.cache_clear()


def forgetting(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, then `forget` (however it ends): for the processing of one batch."""

    @functools.wraps(fn)
    def run_then_forget(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            forget()

    return run_then_forget


# Memoised: deciding one order names its email's records about ten times (the email link, the
# person, its order and subscription indexes, each read and written), and the HMAC was 6 % of
# the order path (bench/pipeline.py --mix orders, profiled). Bounded, in process memory only,
# cleared with the key and after each batch (`forget`).
@functools.lru_cache(maxsize=4096)
def email_digest(email: str) -> str:
    """The keyed hash of a (trimmed, lower-cased) email: 32 hex digits."""
    return hmac.new(_key, email.strip().lower().encode(), hashlib.sha256).hexdigest()[:32]


def person_hash(person: str) -> str:
    """The name of one person in delivery's retry bookkeeping (hold lists, retry state): a keyed
    hash of the outbox header's person (customer id, email or anonymous id), 16 hex digits."""
    mac = _person_mac.copy()
    mac.update(person.encode())
    return mac.hexdigest()[:16]


# A browser-supplied id in a record's name: 48 bits, so that a shop's live records are unlikely
# to share one (and a shared one is caught: see identity/browse.py), keyed so that nobody can
# make up an id that names another's record.
RECORD_DIGEST_HEX = 12


# Memoised as `email_digest` is: deciding one order names its cart's and checkout's claim
# records about ten times (identity/browse.py: the records it loads, then the claimants it
# links), ~4 % of the order path. Bounded, and cleared with the key.
@functools.lru_cache(maxsize=4096)
def record_digest(kind: str, value: str) -> str:
    """The name of a state record keyed by an id anyone can make up (a pixel's clientId, a cart
    or checkout token it sends): a keyed hash, RECORD_DIGEST_HEX hex digits, whatever the id's
    length. `kind` keeps ids of different kinds apart."""
    mac = hmac.new(_key, kind.encode() + b"\x1f" + value.encode(), hashlib.sha256)
    return mac.hexdigest()[:RECORD_DIGEST_HEX]


def legacy_person_hash(person: str) -> str:
    """The unkeyed name entries queued before their header carried `person_hash` still get (the
    take script computes the same): kept only so that such entries keep their person's order,
    and known to the erasure so that it finds them."""
    return hashlib.sha1(person.encode()).hexdigest()[:16]  # noqa: S324 - a name, not security
