"""A pixel body's checks (pure): nesting depth before any parse, and which URLs go out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bridge.jsonio import nested_deeper_than
from bridge.sources.pixel import PixelSource
from bridge.sources.pixel.mapping import site_url
from bridge.worker.processor import ProcessConfig
from tests import pixel_events as px
from tests.conftest import SHOP


@pytest.mark.parametrize(
    ("body", "deeper"),
    [
        (b"{}", False),
        (b"[" * 32 + b"]" * 32, False),
        (b"[" * 33 + b"]" * 33, True),
        # Objects and arrays alternating count alike (one level a pass, never two).
        (b'[{"a":' * 16 + b"1" + b"}]" * 16, False),
        (b'[{"a":' * 16 + b"[1]" + b"}]" * 16, True),
        # Climbing without a run of open brackets: [[] [[] ... still 33 deep.
        (b"[[]" * 32 + b"]" * 32, True),
        (b"[[]" * 31 + b"]" * 31, False),
        # Brackets in strings, escaped quotes and backslashes do not count.
        (json.dumps({"a": "[" * 100, "b": '\\"' + "{" * 100}).encode(), False),
        (b'{"a":"\\\\","b":' + b"[" * 33 + b"]" * 33 + b"}", True),
        (b'{"a":"\\"[","b":' + b"[" * 31 + b"]" * 31 + b"}", False),
        # Wide is not deep.
        (b"[" + b"[],{}," * 5000 + b"1]", False),
    ],
)
def test_nesting_is_measured_without_parsing(body: bytes, deeper: bool) -> None:
    assert nested_deeper_than(body, 32) is deeper


# --- page and product URLs --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://shop.example/products/trail-shoe?variant=1#top", True),
        ("http://shop.example", True),
        ("HTTPS://Shop.Example/p", True),
        ("/products/trail-shoe", True),
        ("/products/caf\u00e9-cr\u00e8me", True),
        ("/", True),
        ("javascript:alert(1)", False),
        ("JavaScript:alert(1)", False),
        (" javascript:alert(1)", False),
        ("java\tscript:alert(1)", False),
        ("data:text/html;base64,PHNjcmlwdD4=", False),
        ("vbscript:msgbox", False),
        ("ftp://shop.example/x", False),
        ("mailto:x@example.com", False),
        ("//evil.example/x", False),
        ("/\\evil.example/x", False),
        ("https://shop.example@evil.example/", False),
        ("https:///no-host", False),
        ("https://", False),
        ('/p"><script>alert(1)</script>', False),
        ("products/relative", False),
        ("", False),
        ("/" + "a" * 2047, True),
        ("/" + "a" * 2048, False),  # too long: dropped, never cut
        (None, False),
        (17, False),
        (["/p"], False),
    ],
)
def test_only_http_urls_and_site_paths_are_forwarded(url: object, kept: bool) -> None:
    assert site_url(url) == (url if kept else None)


def test_a_hostile_page_or_product_url_is_left_out_of_the_event() -> None:
    ev = px.event(timestamp="2024-11-06T02:59:00Z")
    ev["context"]["document"]["location"]["href"] = "javascript:alert(document.cookie)"
    ev["data"]["productVariant"]["product"]["url"] = "data:text/html,<script>alert(1)</script>"
    received = datetime(2024, 11, 6, 3, 0, tzinfo=UTC)
    context = ProcessConfig.defaults(api_version="").map_context(SHOP, received)
    (event,) = PixelSource().map("product_viewed", px.body(ev), context).events
    assert "page_url" not in event.properties and "product_url" not in event.properties
    assert event.properties["pixel_event_id"] == ev["id"]  # the rest of the event goes out
