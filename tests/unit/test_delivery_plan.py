"""Delivery's pure parts: segments per person, request packing, splitting on 400/413, redaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
import pytest

from bridge.delivery import pipelines
from bridge.delivery.deadletters import DeadLetter, call_letter, log_dead_letter
from bridge.delivery.deliver import (
    Item,
    Segment,
    _item,
    latency_counters,
    pack,
    segments_by_person,
    send_request,
)
from bridge.delivery.outbox import OutboxEntry
from bridge.logs import JsonFormatter


def item(i: int, person: str, kind: str = "batch", size: int = 0, bad: bool = False) -> Item:
    call: dict[str, object] = {
        "type": "track",
        "messageId": f"m{i}",
        "event": "e",
        "userId": person,
    }
    if kind == "alias":
        call = {"type": "alias", "messageId": f"m{i}", "previousId": "x", "userId": person}
    if bad:
        call["bad"] = True
    if size:
        call["pad"] = "x" * size
    entry = OutboxEntry(orjson.dumps(call), 0, person, (), kind)
    return Item(entry.encode(), entry, i, person)


def ids(items: Sequence[Item]) -> list[int]:
    return [i.index for i in items]


def test_segments_keep_each_persons_order_and_put_alias_alone() -> None:
    items = [item(0, "a"), item(1, "b"), item(2, "a"), item(3, "a", "alias"), item(4, "a")]
    q = segments_by_person(items)
    assert list(q) == ["a", "b"]
    assert [(s.kind, ids(s.items)) for s in q["a"]] == [
        ("batch", [0, 2]),
        ("alias", [3]),
        ("batch", [4]),
    ]
    assert [ids(s.items) for s in q["b"]] == [[1]]


def test_segments_and_requests_respect_the_byte_limit() -> None:
    items = [item(i, "a", size=300) for i in range(10)]
    segs = segments_by_person(items, max_bytes=1000)
    assert all(s.size <= 1000 for s in segs["a"])
    assert [i for s in segs["a"] for i in ids(s.items)] == list(range(10))
    heads = [Segment("batch", [it], it.size) for it in items]
    jobs = pack(heads, max_bytes=1000)
    assert len(jobs) > 1 and all(j.size <= 1000 for j in jobs)
    assert [i for j in jobs for i in ids(j.items)] == list(range(10))


def test_pack_puts_many_people_in_one_request_and_an_alias_in_its_own() -> None:
    heads = [Segment("batch", [item(i, f"p{i}")], 50) for i in range(5)]
    heads.append(Segment("alias", [item(9, "q", "alias")], 50))
    jobs = pack(heads)
    assert [(j.kind, len(j.items)) for j in jobs] == [("batch", 5), ("alias", 1)]


class FakeSink:
    """Answers like Pipelines in strict mode: 400 for a whole request holding a bad call."""

    def __init__(self, retry_on: int | None = None) -> None:
        self.requests: list[list[str]] = []
        self.retry_on = retry_on

    def send_batch(self, calls: Sequence[bytes]) -> None:
        docs = [orjson.loads(c) for c in calls]
        self.requests.append([d["messageId"] for d in docs])
        if self.retry_on is not None and len(self.requests) == self.retry_on:
            raise pipelines.RetryableError("503", status=503)
        if any(d.get("bad") for d in docs):
            raise pipelines.BadRequestError("400", status=400, errors=["batch[0]: bad"])

    def send_alias(self, call: bytes) -> None:
        self.requests.append(["alias:" + orjson.loads(call)["messageId"]])

    def probe(self) -> None:
        return None


def test_a_400_is_split_until_only_the_bad_call_is_dead() -> None:
    items = [item(i, f"p{i}", bad=(i == 5)) for i in range(8)]
    sent = send_request(FakeSink(), Segment("batch", items), lambda: False)
    assert ids(sent.delivered) == [0, 1, 2, 3, 4, 6, 7]
    assert [(it.index, err.status) for it, err in sent.dead] == [(5, 400)]
    assert not sent.waiting and not sent.unsent


def test_a_retryable_error_while_splitting_makes_the_rest_wait() -> None:
    items = [item(i, f"p{i}", bad=(i == 1)) for i in range(8)]
    # request 1: all (400); 2: first half (400); 3: [0,1] -> 503
    sent = send_request(FakeSink(retry_on=3), Segment("batch", items), lambda: False)
    assert not sent.delivered
    assert sorted(ids(sent.waiting)) == list(range(8))
    assert sent.retry is not None and sent.retry.status == 503


def test_stopping_leaves_calls_unsent() -> None:
    sent = send_request(FakeSink(), Segment("batch", [item(0, "a")]), lambda: True)
    assert ids(sent.unsent) == [0] and sent.requests == 0


@pytest.mark.parametrize(
    "err",
    [pipelines.FatalError("404", status=404), pipelines.PayloadTooLargeError("big", status=413)],
)
def test_a_lone_call_that_cannot_be_sent_is_dead(err: pipelines.PipelinesError) -> None:
    class Refuses(FakeSink):
        def send_batch(self, calls: Sequence[bytes]) -> None:
            raise err

    sent = send_request(Refuses(), Segment("batch", [item(0, "a")]), lambda: False)
    assert [it.index for it, _ in sent.dead] == [0]


def test_dead_letter_round_trips_and_has_a_stable_id() -> None:
    it = item(3, "a")
    letter = call_letter("s.myshopify.com", it.raw, "why", status=400, response="r" * 5000)
    again = DeadLetter.decode(letter.encode())
    assert again.id == "c-m3" and again.payload == it.raw and again.status == 400
    assert len(again.response) == 2048
    assert again.stamped(7).first_error_ms == 7


def test_a_dead_letter_log_line_summarises_the_call_without_its_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = {
        "type": "track",
        "messageId": "m1",
        "userId": "42",
        "event": "checkout_started",
        "properties": {
            "email": "a@b.co",
            "checkout_url": "https://s.example/checkouts/ac/abc/recover?key=SECRETKEY",
            "items": [{"name": "Hat " * 20_000}],
        },
    }
    entry = OutboxEntry(orjson.dumps(call), 1, "p", ())
    letter = call_letter("s.myshopify.com", entry.encode(), "refused: https://x.example/r?key=K9")
    with caplog.at_level(logging.ERROR):
        log_dead_letter(letter)
    [record] = caplog.records
    line = JsonFormatter().format(record)
    assert len(line) < 1000  # a summary, whatever the call's size
    for value in ("a@b.co", "SECRETKEY", "Hat", "K9"):
        assert value not in line
    doc = orjson.loads(line)
    assert doc["call"]["fields"] == ["checkout_url", "email", "items"]
    assert doc["call"]["bytes"] > 80_000
    assert doc["reason"] == "refused: https://x.example/r?[redacted]"


@pytest.mark.parametrize(
    "entry",
    [
        OutboxEntry(
            b'{"type":"track"}', 12, "c:1", ("g1", "g2"), "batch", "e", "h1", "orders/paid"
        ),
        OutboxEntry(b'{"type":"alias"}', 0, "c:2", (), "alias", "alias", "", ""),
        # An entry queued before headers carried the person's keyed hash: named as the take
        # script names it.
        OutboxEntry(b"{}", 5, "c:3", (), "batch", "", "", ""),
    ],
)
def test_a_window_call_is_decoded_as_outbox_entry_decode_and_hold_name_give(
    entry: OutboxEntry,
) -> None:
    raw = entry.encode()
    if not entry.person_hash:  # `encode` fills it in: strip it again, as an old entry has none
        header, _, call = raw.partition(b"\n")
        stored = orjson.loads(header)
        del stored["h"]
        raw = orjson.dumps(stored) + b"\n" + call
    decoded = OutboxEntry.decode(raw)
    it = _item(raw, 7)
    assert (it.raw, it.entry, it.index, it.person) == (raw, decoded, 7, decoded.hold_name())
    assert type(it.entry) is OutboxEntry


def test_latency_counters_count_each_event_and_the_one_bucket_of_each_latency() -> None:
    def delivered(event: str, received_ms: int, call: bytes = b'{"type":"track"}') -> Item:
        entry = OutboxEntry(call, received_ms, "p", (), "batch", event)
        return Item(entry.encode(), entry, 0, "p")

    now = 100_000
    items = [
        delivered("order_completed", now - 40),
        delivered("identify", now - 40),
        delivered("order_completed", now - 70_000),  # past every bucket: none
        delivered("", now - 100, b'{"type":"track","event":"cart_viewed"}'),  # queued unnamed
        delivered("identify", 0),  # no arrival time: counted, no latency
        delivered("alias", now + 5),  # a clock behind: latency 0
    ]
    counters = latency_counters(items, now)
    assert list(counters.items()) == [
        ("events:order_completed:delivered", 2),
        ("latency_ms_sum", 40 + 40 + 70_000 + 100 + 0),
        ("latency_count", 5),
        ("latency_in_50", 3),
        ("events:identify:delivered", 2),
        ("events:cart_viewed:delivered", 1),
        ("latency_in_100", 1),
        ("events:alias:delivered", 1),
    ]


def test_latency_counters_name_an_unnamed_entry_odd_event_as_it_says() -> None:
    """An entry queued before headers named their event is counted by its call's own "event":
    not text in a malformed call (a boolean, a number, an object) is named as formatted, each
    apart (True and 1 are one dict key; an object none), and never crashes the round."""

    def unnamed(event: object) -> Item:
        entry = OutboxEntry(orjson.dumps({"type": "track", "event": event}), 0, "p", (), "batch")
        return Item(entry.encode(), entry, 0, "p")

    counters = latency_counters([unnamed(True), unnamed(1), unnamed({"a": 1}), unnamed(True)], 0)
    assert list(counters.items()) == [
        ("events:True:delivered", 2),
        ("events:1:delivered", 1),
        ("events:{'a': 1}:delivered", 1),
    ]
