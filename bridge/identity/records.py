"""An in-memory view of one batch's state records: loaded in one MGET, written in its commit.

The stateful step (identity, cart state, once-only rules) reads and writes JSON records through
this view only, so it stays a pure function of (mapped webhook, view) and is tested without Redis.
"""

from __future__ import annotations

from typing import Any

import orjson

DAY_S = 86_400
PERSON_LINK_TTL_S = 120 * DAY_S  # person links outlive the 90 days the identity issue asks for


class StateView:
    """Records by name (`cart:<token>`, `order:<id>`, ...); values are JSON objects."""

    def __init__(self, loaded: dict[str, bytes | None] | None = None, key_of: Any = None) -> None:
        self._key_of = key_of or (lambda name: name)
        # name -> key, worked out once per name: a batch of orders asks ~100 times an order.
        self._keys: dict[str, str] = {}
        self._values: dict[str, dict[str, Any] | None] = {}
        self._dirty: dict[str, int] = {}  # name -> ttl s
        self._deleted: set[str] = set()
        for key, raw in (loaded or {}).items():
            self._values[key] = orjson.loads(raw) if raw else None

    def key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = str(self._key_of(name))
        return key

    def has_loaded(self, name: str) -> bool:
        return self.key(name) in self._values

    def get(self, name: str) -> dict[str, Any] | None:
        return self._values.get(self.key(name))

    def put(self, name: str, value: dict[str, Any], ttl_s: int = PERSON_LINK_TTL_S) -> None:
        key = self.key(name)
        self._values[key] = value
        self._dirty[key] = ttl_s
        self._deleted.discard(key)

    def delete(self, name: str) -> None:
        key = self.key(name)
        self._values[key] = None
        self._dirty.pop(key, None)
        self._deleted.add(key)

    def writes(self) -> tuple[dict[str, tuple[bytes, int]], set[str]]:
        sets = {
            k: (orjson.dumps(self._values[k]), ttl)
            for k, ttl in self._dirty.items()
            if self._values.get(k) is not None
        }
        return sets, set(self._deleted)
