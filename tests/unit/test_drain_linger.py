"""A drain that emptied its queue waits a little for the shop's next webhook (`_linger`), then
lets more gather behind it (`_gather`), but never makes another shop's queued job wait more than
one slice."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from bridge.store.wire import Envelope
from bridge.worker import drain


class FakeStore:
    def __init__(self, arrivals: list[bytes | None], queued: list[bytes] | None = None) -> None:
        self.arrivals = arrivals
        self.waits: list[float] = []
        self.queued = queued or []  # what a take finds
        self.takes: list[int] = []

    def send_take(self, shop: str, n: int) -> Any:
        self.takes.append(n)
        taken, self.queued = self.queued[:n], self.queued[n:]
        return SimpleNamespace(result=lambda: taken)

    def wait_inbound(self, shop: str, timeout_s: float) -> bytes | None:
        self.waits.append(timeout_s)
        if self.arrivals:
            return self.arrivals.pop(0)
        time.sleep(timeout_s)  # as BLMOVE does when nothing comes
        return None


class FakeQueue:
    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    @property
    def count(self) -> int:
        return self.counts.pop(0) if self.counts else 0


def services(store: FakeStore, queue: FakeQueue, linger_ms: int = 250, gather_ms: int = 500) -> Any:
    return SimpleNamespace(
        settings=SimpleNamespace(drain_linger_ms=linger_ms, drain_gather_ms=gather_ms),
        stopping=threading.Event(),
        store=store,
        queue=queue,
    )


def lease() -> Any:
    return SimpleNamespace(lost=threading.Event())


FAR = 1e12  # a time budget that does not end during the test


def test_the_next_webhook_within_the_linger_becomes_the_next_batch() -> None:
    store = FakeStore([None, None, b"envelope"])  # Nones: slices that ended with nothing
    got = drain._linger(services(store, FakeQueue([])), "s", lease(), time.monotonic() + FAR)
    assert got == [b"envelope"]
    assert len(store.waits) == 3
    assert all(w <= drain.LINGER_SLICE_S for w in store.waits)


def test_it_stops_waiting_as_soon_as_another_job_is_queued() -> None:
    store = FakeStore([])
    queue = FakeQueue([0, 0, 1])  # another shop's job arrives during the second slice
    got = drain._linger(
        services(store, queue, linger_ms=2000), "s", lease(), time.monotonic() + FAR
    )
    assert got == []
    assert len(store.waits) == 2


def test_it_does_not_wait_when_off_stopping_lost_or_out_of_time() -> None:
    off = FakeStore([b"x"])
    assert drain._linger(services(off, FakeQueue([]), 0), "s", lease(), FAR) == []
    stopping = services(FakeStore([b"x"]), FakeQueue([]))
    stopping.stopping.set()
    assert drain._linger(stopping, "s", lease(), FAR) == []
    lost = lease()
    lost.lost.set()
    assert drain._linger(services(FakeStore([b"x"]), FakeQueue([])), "s", lost, FAR) == []
    budget_over = FakeStore([b"x"])
    assert drain._linger(services(budget_over, FakeQueue([])), "s", lease(), 0.0) == []
    assert not off.waits and not budget_over.waits


def test_an_empty_linger_ends_within_its_bound() -> None:
    store = FakeStore([])
    got = drain._linger(services(store, FakeQueue([])), "s", lease(), time.monotonic() + FAR)
    assert got == []
    # 250 ms in slices of at most 50 ms: five waits, six if the last slice was cut short
    assert 5 <= len(store.waits) <= 6
    assert all(0 < w <= drain.LINGER_SLICE_S for w in store.waits)


class CountingQueue(FakeQueue):
    """A job queue that counts how often it was asked (one LLEN each)."""

    def __init__(self, counts: list[int]) -> None:
        super().__init__(counts)
        self.asked = 0

    @property
    def count(self) -> int:
        self.asked += 1
        return self.counts.pop(0) if self.counts else 0


def test_gathering_waits_its_time_then_takes_what_came_up_to_the_room_left() -> None:
    store = FakeStore([], queued=[b"a", b"b", b"c"])
    queue = CountingQueue([])
    started = time.monotonic()
    got = drain._gather(services(store, queue, gather_ms=300), "s", lease(), started + FAR, 2)
    waited = time.monotonic() - started
    assert got == [b"a", b"b"] and store.takes == [2]
    assert waited >= 0.29
    # it looked for other jobs once a slice, no more
    assert 3 <= queue.asked <= 4


def test_gathering_ends_early_when_another_job_is_queued_and_takes_what_came() -> None:
    store = FakeStore([], queued=[b"a"])
    started = time.monotonic()
    got = drain._gather(
        services(store, FakeQueue([0, 1]), gather_ms=5000), "s", lease(), started + FAR, 10
    )
    assert got == [b"a"]
    assert time.monotonic() - started < 1.0


def test_gathering_never_outlasts_the_time_budget() -> None:
    store = FakeStore([], queued=[b"a"])
    started = time.monotonic()
    got = drain._gather(
        services(store, FakeQueue([]), gather_ms=5000), "s", lease(), started + 0.15, 10
    )
    assert got == [b"a"]
    assert time.monotonic() - started < 1.0


def test_no_gathering_when_off_full_stopping_or_lost() -> None:
    off = FakeStore([], queued=[b"a"])
    assert drain._gather(services(off, FakeQueue([]), gather_ms=0), "s", lease(), FAR, 5) == []
    full = FakeStore([], queued=[b"a"])
    assert drain._gather(services(full, FakeQueue([])), "s", lease(), FAR, 0) == []
    assert not off.takes and not full.takes
    # A stopping worker or a lost lease leaves what gathered queued for the next drain.
    stopping_store = FakeStore([], queued=[b"a"])
    stopping = services(stopping_store, FakeQueue([]))
    stopping.stopping.set()
    assert drain._gather(stopping, "s", lease(), time.monotonic() + FAR, 5) == []
    lost_store, lost = FakeStore([], queued=[b"a"]), lease()
    lost.lost.set()
    assert drain._gather(services(lost_store, FakeQueue([])), "s", lost, FAR, 5) == []
    assert not stopping_store.takes and not lost_store.takes


def test_nothing_gathers_behind_a_compliance_request() -> None:
    def queued(topic: str) -> bytes:
        return Envelope("s.myshopify.com", topic, "w", b"{}").encode()

    assert drain.gathers_behind(queued("carts/update"))
    assert drain.gathers_behind(queued("orders/paid"))
    for topic in ("customers/redact", "shop/redact", "customers/data_request"):
        assert not drain.gathers_behind(queued(topic))
