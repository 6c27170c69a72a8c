"""An in-memory view of one batch's state records: loaded in one MGET, written in its commit.

The stateful step (identity, cart state, once-only rules) reads and writes JSON records through
this view only, so it stays a pure function of (mapped webhook, view) and is tested without Redis.
"""

from __future__ import annotations

from typing import Any

import orjson

DAY_S = 86_400
PERSON_LINK_TTL_S = 120 * DAY_S  # person links outlive the 90 days the identity issue asks for


class _Keys(dict[str, str]):
    """name -> key, each worked out once, on its first lookup (`__missing__`): a batch of orders
    asks ~100 times an order, and a hit is then one dict lookup with no Python call."""

    def __init__(self, key_of: Any) -> None:
        super().__init__()
        self.key_of = key_of

    def __missing__(self, name: str) -> str:
        key = self[name] = str(self.key_of(name))
        return key


class StateView:
    """Records by name (`cart:<token>`, `order:<id>`, ...); values are JSON objects."""

    def __init__(
        self,
        loaded: dict[str, bytes | None] | None = None,
        key_of: Any = None,
        keys: dict[str, str] | None = None,
    ) -> None:
        self._key_of = key_of or (lambda name: name)
        self._keys = _Keys(self._key_of)
        if keys:
            # Names whose keys the caller worked out already (`key_of` of each), as the
            # processor does for the records it loads: not worked out a second time.
            self._keys.update(keys)
        self._values: dict[str, dict[str, Any] | None] = {}
        self._dirty: dict[str, int] = {}  # name -> ttl s
        self._deleted: set[str] = set()
        # Bumped by every write: what was read before is still what the view holds while it
        # is unchanged (decide.py reuses a person resolved at the same revision).
        self.revision = 0
        # What the pure steps work out from one record and keep for the batch, by (purpose,
        # record name), each with the record object it came from: a record put again is a new
        # object, so nothing is ever answered from a record the view no longer holds
        # (products/cache.py: a product's metadata, read for enrichment and replenishment).
        # Bounded by the records the batch names; gone with the view.
        self.derived: dict[tuple[str, str], tuple[Any, ...]] = {}
        for key, raw in (loaded or {}).items():
            self._values[key] = orjson.loads(raw) if raw else None

    def key(self, name: str) -> str:
        return self._keys[name]

    def has_loaded(self, name: str) -> bool:
        return self.key(name) in self._values

    def get(self, name: str) -> dict[str, Any] | None:
        return self._values.get(self._keys[name])

    def put(self, name: str, value: dict[str, Any], ttl_s: int = PERSON_LINK_TTL_S) -> None:
        key = self._keys[name]
        self._values[key] = value
        self._dirty[key] = ttl_s
        if self._deleted:  # (mostly empty: an order's decision puts ~13 records)
            self._deleted.discard(key)
        self.revision += 1

    def delete(self, name: str) -> None:
        key = self.key(name)
        self._values[key] = None
        self._dirty.pop(key, None)
        self._deleted.add(key)
        self.revision += 1

    def writes(self) -> tuple[dict[str, tuple[bytes, int]], set[str]]:
        sets = {
            k: (orjson.dumps(self._values[k]), ttl)
            for k, ttl in self._dirty.items()
            if self._values.get(k) is not None
        }
        return sets, set(self._deleted)
