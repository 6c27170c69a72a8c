"""The StateView the stateful step runs over: it also notes what it could not find, and counts.

`misses` lets the processor load, in a further round trip, records that only become nameable
after a first lookup (refund -> order -> person -> order index). `counters` lets the pure step
report what it suppressed, held or dropped without touching Redis.
"""

from __future__ import annotations

from typing import Any

from bridge.identity.records import StateView

# What `get` finds under a key the view was never given (compared by identity, never returned).
_UNLOADED: dict[str, Any] = {}


class DecisionView(StateView):
    """A StateView that records reads of records it was never given, and counters."""

    def __init__(
        self,
        loaded: dict[str, bytes | None] | None = None,
        key_of: Any = None,
        keys: dict[str, str] | None = None,
    ) -> None:
        super().__init__(loaded, key_of, keys)
        self.misses: set[str] = set()
        self.counters: dict[str, int] = {}
        # Calls held back, per person (person, event, outcome, why): the ops console's
        # per-person ledger shows them (issue 18).
        self.notes: list[tuple[str, str, str, str]] = []

    def get(self, name: str) -> dict[str, Any] | None:
        # One lookup of the values, not a membership test and then a second lookup: an order's
        # decision reads ~40 records.
        key = self._keys[name]
        value = self._values.get(key, _UNLOADED)
        if value is _UNLOADED:
            self.misses.add(key)
            return None
        return value

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def note(view: StateView, person: str, event: str, outcome: str, why: str, n: int = 1) -> None:
    """Note that `n` calls of `event` for `person` were held back (`outcome`: "suppressed",
    "waiting"), and why, on views that can."""
    if isinstance(view, DecisionView) and person:
        view.notes.extend([(person, event, outcome, why)] * n)


def count(view: StateView, name: str, n: int = 1) -> None:
    """Count on views that can (a plain StateView, as the backfill may pass, just ignores it)."""
    if isinstance(view, DecisionView):
        view.count(name, n)
