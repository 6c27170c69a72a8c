"""Counters kept in the process and written to Redis in one pipeline at most once a second.

A drain commit and a delivery settle used to carry their counters (`cb:{shop}:stats` and the
volume buckets) as HINCRBYs in their own MULTI: ~14 commands per webhook at light traffic, when
every webhook is a batch of its own, and a third of all commands per journey under a burst
(BENCHMARKS.md, Redis cost). Summed here across batches, the same fields are written once per
flush instead of once per batch.

What this gives up: the counters of the last second of a worker killed outright (SIGKILL, the
machine gone) are lost; a clean stop, each drain's and delivery's end, and any Redis error
keep them (a failed flush puts its counts back for the next). Calls, state and seen-markers
are unaffected: they stay in the commit's MULTI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

# How often a busy worker writes its counters; a drain or delivery that ends writes them then.
FLUSH_INTERVAL_S = 1.0


class Taken(NamedTuple):
    """What a flush writes: counts to add, keys' expiry (epoch s), latest values to set (the
    highest asked since the last flush: times a thing was last seen), and lists to trim."""

    counts: dict[tuple[str, str], int]
    expiry: dict[str, int]
    latest: dict[tuple[str, str], int]
    trims: dict[str, int]  # list key -> how many entries it keeps (LTRIM 0 n-1)


class Tally:
    """(key, field) -> n, summed until taken. Thread-safe (delivery settles from one thread,
    but a lease keeper or stop handler may flush from another)."""

    def __init__(
        self, interval_s: float = FLUSH_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._counts: dict[tuple[str, str], int] = {}
        self._expiry: dict[str, int] = {}  # key -> epoch s it may expire at (the latest asked)
        self._latest: dict[tuple[str, str], int] = {}  # (key, field) -> the highest value set
        self._trims: dict[str, int] = {}  # list key -> entries kept (the fewest asked)
        self._lock = threading.Lock()
        self._last = clock()

    def add(
        self,
        counts: Iterable[tuple[tuple[str, str], int]],
        expiry: Mapping[str, int] | None = None,
        latest: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """Add counts; `expiry` gives keys that expire (EXPIREAT with the flush, latest wins);
        `latest` gives fields to set (HSET with the flush, the highest wins)."""
        with self._lock:
            mine = self._counts
            for slot, n in counts:
                if n:
                    mine[slot] = mine.get(slot, 0) + n
            for key, at in (expiry or {}).items():
                if at > self._expiry.get(key, 0):
                    self._expiry[key] = at
            for slot, v in (latest or {}).items():
                if v > self._latest.get(slot, v - 1):
                    self._latest[slot] = v

    def trim(self, keys: Iterable[str], keep: int) -> None:
        """Trim these lists to their first `keep` entries with the next flush (a person's
        ledger a batch took past its length: trimmed a second later rather than with an
        LTRIM every batch)."""
        with self._lock:
            for key in keys:
                self._trims[key] = min(keep, self._trims.get(key, keep))

    def due(self) -> bool:
        return bool(len(self)) and self._clock() - self._last >= self.interval_s

    def take(self) -> Taken:
        """Everything summed so far, the keys' expiry and the latest values (the tally starts
        again from nothing)."""
        with self._lock:
            taken = Taken(self._counts, self._expiry, self._latest, self._trims)
            self._counts, self._expiry, self._latest, self._trims = {}, {}, {}, {}
            self._last = self._clock()
            return taken

    def forget(self, prefix: str) -> int:
        """Drop the unwritten counts of every key starting with `prefix` (a shop erased: its
        counters must not come back at the next flush); returns how many were dropped."""
        with self._lock:
            gone = [slot for slot in self._counts if slot[0].startswith(prefix)]
            for slot in gone:
                del self._counts[slot]
            for key in [key for key in self._expiry if key.startswith(prefix)]:
                del self._expiry[key]
            for slot in [slot for slot in self._latest if slot[0].startswith(prefix)]:
                del self._latest[slot]
            for key in [key for key in self._trims if key.startswith(prefix)]:
                del self._trims[key]
            return len(gone)

    def __len__(self) -> int:
        """How many fields a flush would write."""
        return len(self._counts) + len(self._latest) + len(self._trims)
