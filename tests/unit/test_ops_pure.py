"""The ops console's pure parts: the SVG charts (escaping, shape), the call redaction, the
ledger folding, the webhook counts and ledger commands, and the templates' escaping."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from flask import Flask, render_template
from hypothesis import given
from hypothesis import strategies as st

from bridge.ops.letters import REDACTED, redact_call
from bridge.ops.overview import Chart, Span, _spans
from bridge.ops.people import Call, PersonView, fold
from bridge.store import ops as ops_records
from bridge.store.keys import Keys
from bridge.web.ops import charts

HOSTILE = "<script>alert(1)</script>&\"'<img src=x onerror=alert(2)>"


def chart(name: str = "added_to_cart", **kw: Any) -> Chart:
    fields: dict[str, Any] = {
        "name": name,
        "start_s": 1_764_547_200,
        "step_s": 300,
        "counts": [0, 3, 5, 2],
        "baseline": [None, 2.0, 4.0, None],
        "spans": [Span(1_764_547_500, 1_764_547_800, "drop")],
    }
    fields.update(kw)
    return Chart(**fields)


def test_a_chart_escapes_every_text_it_draws() -> None:
    svg = str(charts.svg(chart(spans=[Span(1_764_547_500, 1_764_547_800, HOSTILE)]), HOSTILE))
    assert "<script" not in svg and "<img" not in svg
    assert "&lt;script&gt;" in svg
    # Nothing but the chart's own elements.
    assert set(re.findall(r"<(\w+)", svg)) <= {
        "svg",
        "title",
        "rect",
        "polygon",
        "polyline",
        "text",
    }


def test_a_chart_draws_counts_baseline_runs_and_alert_periods() -> None:
    svg = str(charts.svg(chart(), "t"))
    assert 'data-total="10"' in svg and 'data-points="4"' in svg
    assert svg.count('class="baseline"') == 1  # one run: the buckets with history
    assert svg.count("alert-drop") == 1
    # A period wholly outside the range is not drawn.
    outside = str(charts.svg(chart(spans=[Span(0, 10, "drop")]), "t"))
    assert "alert-drop" not in outside


@given(
    st.lists(st.integers(min_value=0, max_value=10**12), min_size=0, max_size=300),
    st.lists(st.one_of(st.none(), st.floats(0, 1e9)), max_size=300),
)
def test_charts_survive_empty_huge_and_ragged_series(
    counts: list[int], baseline: list[Any]
) -> None:
    svg = str(charts.svg(chart(counts=counts, baseline=baseline, spans=[]), "t"))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "nan" not in svg.lower() and "inf" not in svg.lower()


def test_ended_alerts_survive_garbage_in_the_history() -> None:
    history = [
        b"not json",
        b"[]",
        b'{"event": "added_to_cart"}',
        b'{"event": "added_to_cart", "kind": "drop", "since": "x", "until": 1}',
        orjson.dumps({"event": "added_to_cart", "kind": "drop", "since": 1000, "until": 5000}),
        orjson.dumps({"event": "checkout_started", "kind": "drop", "since": 1000, "until": 5000}),
    ]
    state = {b"added_to_cart:silence": b'{"since": 2000, "sent": 2000}', b"bad": b"{", b"x:y": b"1"}
    spans = _spans("added_to_cart", history, state, 10.0)
    assert spans == [Span(1, 5, "drop"), Span(2, 10, "silence", ongoing=True)]


def test_a_redacted_call_keeps_ids_events_and_items_and_hides_the_shopper() -> None:
    call = {
        "type": "identify",
        "userId": "123",
        "messageId": "01ABC",
        "traits": {
            "email": "a@b.co",
            "first_name": "Ann",
            "phone": "+15555550100",
            "address": {"city": "Paris", "zip": "75001"},
            "note": "call me at +1 555 555 0100",
            "checkout_url": "https://shop/recover?key=secret",
            "orders_count": 2,
            "empty_email": "",
        },
        "properties": {"items": [{"name": HOSTILE, "product_id": "9"}], "comment": "x@y.com"},
    }
    out = redact_call(call)
    assert out["userId"] == "123" and out["messageId"] == "01ABC"
    traits = out["traits"]
    for key in ("email", "first_name", "phone", "address", "note", "checkout_url"):
        assert traits[key] == REDACTED, key
    assert traits["orders_count"] == 2 and traits["empty_email"] == ""
    assert out["properties"]["items"][0] == {"name": HOSTILE, "product_id": "9"}
    assert "x@y.com" not in orjson.dumps(out).decode()


def test_the_ledger_folds_by_message_id_newest_first() -> None:
    entries = [
        {"t": 3, "e": "added_to_cart", "o": "delivered", "m": "A"},
        {"t": 1, "e": "added_to_cart", "o": "queued", "m": "A", "w": "carts/create"},
        {"t": 2, "e": "checkout_started", "o": "held", "m": "B", "r": "attempt 1 failed (503)"},
        {"t": 5, "e": "added_to_cart", "o": "suppressed", "r": "converted"},
        {"t": 4, "e": "added_to_cart", "o": "suppressed", "r": "converted"},
        {},
    ]
    calls = fold(entries)
    assert [(c.event, c.outcome, c.history) for c in calls] == [
        ("added_to_cart", "suppressed", ["suppressed"]),
        ("added_to_cart", "suppressed", ["suppressed"]),
        ("added_to_cart", "delivered", ["queued", "delivered"]),
        ("checkout_started", "held", ["held"]),
        ("", "", [""]),
    ]
    assert calls[2].topic == "carts/create"


def test_ledger_commands_cap_each_person_and_skip_nobody() -> None:
    entries = [("p1", b"%d" % i) for i in range(120)] + [("", b"x"), ("p2", b"y")]
    commands = ops_records.ledger_commands("s.myshopify.com", entries)
    k = Keys("s.myshopify.com")
    pushes = {c[1]: c[2:] for c in commands if c[0] == "LPUSH"}
    assert set(pushes) == {k.ledger("p1"), k.ledger("p2")}
    assert len(pushes[k.ledger("p1")]) == ops_records.LEDGER_CALLS
    assert pushes[k.ledger("p1")][-1] == b"119"  # the newest pushed last: first in the list
    assert ("LTRIM", k.ledger("p1"), 0, ops_records.LEDGER_CALLS - 1) in commands
    assert ("EXPIRE", k.ledger("p1"), ops_records.LEDGER_KEEP_S) in commands


def test_webhook_counts_go_to_day_keys_that_expire() -> None:
    day = 20_000
    at = [(day * 86400 + 301) * 1000, (day * 86400 + 599) * 1000, 0, -5]
    counts, expiries = ops_records.webhook_counts("s.myshopify.com", at)
    k = Keys("s.myshopify.com")
    assert counts == {
        (k.webhook_buckets("5m", day), str(day * 86400 + 300)): 2,
        (k.webhook_buckets("1h", day), str(day * 86400)): 2,
    }
    assert expiries[k.webhook_buckets("5m", day)] == (day + 3) * 86400
    assert expiries[k.webhook_buckets("1h", day)] == (day + 31) * 86400


def _reference_webhook_counts(
    shop: str, received_ms: list[int]
) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """webhook_counts one webhook at a time, as it was before it counted by the second."""
    k = Keys(shop)
    counts: dict[tuple[str, str], int] = {}
    expiry: dict[str, int] = {}
    for ms in received_ms:
        if ms <= 0:
            continue
        s = ms // 1000
        day = s // 86400
        for size, width, keep in (("5m", 300, 2), ("1h", 3600, 30)):
            key = k.webhook_buckets(size, day)
            slot = (key, str(s // width * width))
            counts[slot] = counts.get(slot, 0) + 1
            expiry[key] = (day + keep + 1) * 86400
    return counts, expiry


@given(
    at=st.lists(
        st.one_of(
            st.integers(-(10**6), 0),
            st.integers(1_700_000_000_000, 1_700_000_000_000 + 3 * 86_400_000),
        ),
        max_size=40,
    )
)
def test_webhook_counts_are_the_one_by_one_counts_in_the_same_order(at: list[int]) -> None:
    counts, expiries = ops_records.webhook_counts("s.myshopify.com", at)
    ref_counts, ref_expiries = _reference_webhook_counts("s.myshopify.com", at)
    assert list(counts.items()) == list(ref_counts.items())
    assert list(expiries.items()) == list(ref_expiries.items())


def test_message_ids_are_found_without_parsing() -> None:
    assert ops_records.message_id_of(b'{"type":"track","messageId":"01ABC"}') == "01ABC"
    assert ops_records.message_id_of(b'{"type":"track"}') == ""
    assert ops_records.message_id_of(b'{"messageId":"' + b"x" * 500 + b'"}') == ""
    assert ops_records.message_id_of(b'{"messageId":"') == ""


def test_the_person_template_escapes_what_the_records_hold() -> None:
    from bridge import web
    from bridge.web.ops import redacted

    app = Flask("t", template_folder=str(next(iter(web.__path__)) + "/ops/templates"))

    @app.context_processor
    def _context() -> dict[str, Any]:
        return {"role": "viewer", "csrf": "c", "when": str, "is_admin": False}

    app.add_template_filter(redacted, "redact")
    app.add_url_rule("/ops/people", "ops.person", lambda: "")
    app.add_url_rule("/ops/", "ops.index", lambda: "")
    app.add_url_rule("/ops/letters", "ops.letters", lambda: "")
    app.add_url_rule("/ops/logout", "ops.logout", lambda: "")
    app.add_url_rule("/ops/static/<path:filename>", "ops.static", lambda filename: "")
    result = PersonView(
        found=True,
        user=HOSTILE,
        links=[(HOSTILE, HOSTILE)],
        traits=[("cart_items", "v", HOSTILE)],
        calls=[Call(1, HOSTILE, HOSTILE, HOSTILE, HOSTILE, HOSTILE, [HOSTILE])],
    )
    with app.test_request_context():
        page = render_template(
            "ops/people.html",
            shops=[HOSTILE],
            kinds={"customer_id": "Customer id"},
            result=result,
            form={"shop": HOSTILE, "kind": "customer_id", "value": HOSTILE},
            pretty={HOSTILE: HOSTILE},
        )
    assert "<script" not in page and "<img" not in page
    assert page.count("&lt;script&gt;") >= 8


def test_anonymous_ids_of_a_record_survive_hostile_values() -> None:
    from bridge.compliance.requests import anonymous_ids

    assert anonymous_ids(b'{"anon": "a1", "anons": ["a2", "a1", 3, null, ""], "user": "7"}') == [
        "a1",
        "a2",
    ]
    for raw in (b"", b"not json", b"[1]", b'"a"', b'{"anons": "a3"}', b'{"anon": {"x": 1}}'):
        assert anonymous_ids(raw) == [], raw


def test_redaction_matches_whole_words_of_keys_so_money_and_items_stay() -> None:
    personal = [
        "contact_email",
        "emailAddress",
        "sms_marketing_phone",
        "firstName",
        "lastname",
        "addresses",
        "billing_address1",
        "postalCode",
        "countryCode",
        "birthday",
        "browser_ip",
        "clientIp",
        "ipAddress",
        "userAgent",
        "abandoned_checkout_url",
        "note_attributes",
        "recipient",
    ]
    kept = [
        "shipping_lines",
        "description",
        "total_tip_received",
        "tip",
        "vip",
        "multiple",
        "customer_id",
        "phone_id",
        "name",
        "items",
        "total_price",
        "skip",
        "cityscape",
    ]
    call = {"properties": {**dict.fromkeys(personal, "v"), **dict.fromkeys(kept, "v")}}
    out = redact_call(call)["properties"]
    assert [k for k in personal if out[k] != REDACTED] == []
    assert [k for k in kept if out[k] != "v"] == []


def test_an_age_too_long_for_any_letter_is_a_value_error_not_a_crash() -> None:
    from bridge.ops.letters import parse_time

    assert parse_time("2d", 10**12) == 10**12 - 2 * 86_400_000
    for text in ("9" * 400 + "d", "1" * 30 + "d", "1e400d", "yesterday"):
        with pytest.raises(ValueError):
            parse_time(text, 10**12)


def test_wrong_logins_are_counted_per_address_and_per_ipv6_64() -> None:
    from bridge.config.settings import Settings
    from bridge.web.ops.auth import client_key

    s = Settings(identity_hash_key="k" * 32)
    a, b = client_key("2001:db8:1:2::1", s), client_key("2001:db8:1:2:ffff::9", s)
    assert a == b  # one /64
    assert client_key("2001:db8:1:3::1", s) != a
    assert client_key("203.0.113.9", s) == client_key("::ffff:203.0.113.9", s)
    assert client_key("203.0.113.9", s) != client_key("203.0.113.10", s)
    assert client_key("", s) and client_key("not an address", s)


def test_long_ledgers_are_those_an_lpush_took_past_the_length() -> None:
    k = Keys("s.myshopify.com")
    entries = [("p1", b"a"), ("p2", b"b"), ("p3", b"c")]
    commands = ops_records.ledger_commands("s.myshopify.com", entries, keep=3, trim=False)
    assert not [c for c in commands if c[0] == "LTRIM"]
    commands = [("LPUSH", k.webhook_log, b"w"), *commands]
    # LPUSH replies are list lengths; EXPIRE's are 1; the webhook log is no ledger.
    replies = [9, 4, 1, 3, 1, 7, 1]
    assert ops_records.long_ledgers("s.myshopify.com", commands, replies, 3) == [
        k.ledger("p1"),
        k.ledger("p3"),
    ]
