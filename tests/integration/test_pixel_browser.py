"""The shipped pixel as it will run: extensions/web-pixel/ in headless Chromium, inside a page
that provides the Web Pixels API (tests/pixel_harness/: `register`, analytics, browser, init),
posting to a real stack (gunicorn with the Procfile's command, a `bridge worker`, Redis, the
Pipelines stand-in). The app pixel runs in a web worker (the strict sandbox), the custom pixel
in a sandboxed iframe with an opaque origin (the lax one); both must reach Pipelines."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Browser, Page

from bridge.config.settings import Settings
from bridge.ids import client_anonymous_id
from tests import pixel_events as px
from tests.conftest import ROOT, SHOP, fixture_bytes, free_port, service_env, wait_until
from tests.integration.test_end_to_end import Web, procfile_command
from tests.journeys import CART, CUSTOMER_ID
from tests.pipelines_standin import PipelinesStandIn

HARNESS = ROOT / "tests" / "pixel_harness"
EXTENSION = ROOT / "extensions" / "web-pixel"
PLACEHOLDER = "https://YOUR-CARTBRIDGE-HOST/pixel"


class _Harness(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path.startswith("/harness/"):
            text = (HARNESS / Path(url.path).name).read_text()
        elif url.path.startswith("/ext/src/"):
            text = (EXTENSION / "src" / Path(url.path).name).read_text()
            # What Shopify's bundler resolves: the package name, here the harness's stand-in.
            text = text.replace(
                '"@shopify/web-pixels-extension"', '"/harness/web-pixels-extension.js"'
            )
        elif url.path == "/ext/custom-pixel.js":
            collector = parse_qs(url.query)["collector"][0]
            text = (EXTENSION / "custom-pixel.js").read_text().replace(PLACEHOLDER, collector)
        else:
            self.send_error(404)
            return
        data = text.encode()
        kind = "text/html" if url.path.endswith(".html") else "text/javascript"
        self.send_response(200)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def harness() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Harness)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def stack(settings: Settings) -> Iterator[Web]:
    """gunicorn serving this shop's pixels (SHOPIFY_SHOP), and a worker."""
    port = free_port()
    env = service_env(settings, PORT=str(port), WEB_CONCURRENCY="2", SHOPIFY_SHOP=SHOP)
    web = subprocess.Popen(procfile_command("web"), env=env, cwd=ROOT)
    worker = subprocess.Popen(procfile_command("worker"), env=service_env(settings), cwd=ROOT)

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    assert wait_until(up, 20), "gunicorn did not come up"
    yield Web(port, web)
    for proc in (web, worker):
        proc.terminate()
    for proc in (web, worker):
        proc.wait(40)


def start(page: Page, harness: str, mode: str, collector: str, client_id: str) -> Any:
    page.goto(f"{harness}/harness/index.html")
    page.wait_for_function("window.harnessLoaded === true")
    config = {
        "init": {
            "context": px.context(),
            "data": {
                "shop": {"name": "Test", "myshopifyDomain": SHOP, "countryCode": "US"},
                "cart": None,  # no cart yet: the first add creates it
                "customer": {"id": "gid://shopify/Customer/42", "email": "someone@example.com"},
            },
            "customerPrivacy": {"analyticsProcessingAllowed": True, "marketingAllowed": True},
        },
        "settings": {"collectorUrl": collector},
        "cookies": {},
    }
    return page.evaluate("([mode, config]) => harness.start(mode, config)", [mode, config])


def publish(page: Page, event: dict[str, Any]) -> None:
    page.evaluate("event => harness.publish(event)", event)


def browse_session(page: Page, client_id: str) -> None:
    """A visit: a product page, a big collection (trimmed, and off by default), then the
    first add to cart, after which the cart cookie holds the cart's token."""
    publish(page, px.event("product_viewed", client_id=client_id))
    big = px.data_for("collection_viewed")
    big["collection"]["productVariants"] = [px.variant(7000 + i, 9000 + i) for i in range(2000)]
    publish(page, px.event("collection_viewed", client_id=client_id, data=big))
    page.evaluate("([n, v]) => harness.cookie(n, v)", ["cart", f"{CART}?key=secret"])
    publish(page, px.event("product_added_to_cart", client_id=client_id))
    page.wait_for_function("window.answers.length >= 3", timeout=15_000)


def sent(page: Page) -> list[dict[str, Any]]:
    return list(page.evaluate("window.sent"))


@pytest.mark.parametrize("mode", ["app", "custom"])
def test_the_shipped_pixel_reaches_pipelines_and_a_signed_order_links_it(
    browser: Browser,
    harness: str,
    stack: Web,
    pipelines: PipelinesStandIn,
    mode: str,
) -> None:
    client_id = f"browser-{mode}"
    anon = client_anonymous_id(SHOP, client_id)
    page = browser.new_page()
    try:
        ready = start(page, harness, mode, f"http://127.0.0.1:{stack.port}/pixel", client_id)
        if mode == "app":
            assert ready["hasWindow"] is False  # a worker: the strict sandbox
        else:
            assert ready["origin"] == "null"  # an opaque origin: the lax sandbox
        browse_session(page, client_id)
        posts = sent(page)
        assert [json.loads(p["body"])["event"]["name"] for p in posts] == [
            "product_viewed",
            "collection_viewed",
            "product_added_to_cart",
        ]
        for p in posts:
            assert p["method"] == "POST" and p["keepalive"] is True
            assert p["contentType"] is None  # a simple request: no preflight
            assert len(p["body"].encode()) < 64 * 1024
            body = json.loads(p["body"])
            assert body["shop"] == SHOP
            assert "someone@example.com" not in p["body"]  # init's customer never leaves
        collection = json.loads(posts[1]["body"])["event"]["data"]["collection"]
        assert len(collection["productVariants"]) == 10  # trimmed in the pixel
        assert json.loads(posts[2]["body"])["cart_token"] == CART  # from the cart cookie
        assert page.evaluate("window.answers") == [204, 204, 204]
    finally:
        page.close()

    def tracked() -> list[dict[str, Any]]:
        return [c for c in pipelines.calls if c["type"] == "track"]

    assert wait_until(lambda: len(tracked()) >= 2, 20), pipelines.calls
    viewed, added = tracked()
    assert viewed["event"] == "product_viewed" and added["event"] == "product_added_to_cart"
    assert viewed["anonymousId"] == added["anonymousId"] == anon
    assert "userId" not in viewed and "userId" not in added
    assert viewed["properties"]["items"] == [
        {
            "product_id": "7001",
            "variant_id": "9001",
            "sku": "SKU-9001",
            "name": "Trail Shoe",
            "price": 24.5,
            "quantity": 1,
            "brand": "Acme",
            "category": "Shoes",
        }
    ]
    # The signed order for the cart the browser claimed joins the browser to its customer.
    assert stack.post("orders/create", fixture_bytes("orders-create")) == (200, {"ok": True})

    def link() -> list[dict[str, Any]]:
        return [
            c for c in pipelines.calls if c["type"] == "identify" and c.get("anonymousId") == anon
        ]

    assert wait_until(lambda: bool(link()), 20), pipelines.calls
    (joined,) = link()
    assert joined["userId"] == CUSTOMER_ID


@pytest.mark.parametrize("mode", ["app", "custom"])
def test_multi_byte_text_is_measured_in_utf8_bytes_and_never_loses_the_event(
    browser: Browser,
    harness: str,
    stack: Web,
    pipelines: PipelinesStandIn,
    mode: str,
) -> None:
    """A title of 3-byte characters is three times longer on the wire than its JavaScript
    length: measured as UTF-16 units, a body under the budget could still be over 64 KiB of
    UTF-8 (the browser or the collector refuses it, and the event is lost)."""
    client_id = f"utf8-{mode}"
    euro = "\u20ac"  # 1 UTF-16 unit, 3 UTF-8 bytes
    viewed = px.event("product_viewed", client_id=client_id)
    product = viewed["data"]["productVariant"]["product"]
    product["title"] = product["untranslatedTitle"] = euro * 25_000  # 75 000 bytes
    listed = px.data_for("collection_viewed")
    for v in listed["collection"]["productVariants"]:
        for text in (v, v["product"]):
            text["title"] = text["untranslatedTitle"] = "\U0001f45f" * 499 + euro  # 4+3 bytes
    listed["collection"]["productVariants"] *= 4  # 12 listed, 10 kept: ~80 000 bytes of titles
    collection = px.event("collection_viewed", client_id=client_id, data=listed)
    page = browser.new_page()
    try:
        start(page, harness, mode, f"http://127.0.0.1:{stack.port}/pixel", client_id)
        publish(page, viewed)
        publish(page, collection)
        page.wait_for_function("window.answers.length >= 2", timeout=15_000)
        posts = sent(page)
        assert page.evaluate("window.answers") == [204, 204]
    finally:
        page.close()
    for p in posts:
        assert len(p["body"].encode()) <= 60_000  # UTF-8 bytes, the pixel's own budget
    view_body, list_body = (json.loads(p["body"]) for p in posts)
    # The long title was cut (to 1 000 characters), so the product itself still goes out...
    sent_product = view_body["event"]["data"]["productVariant"]["product"]
    assert sent_product["title"] == euro * 1000 and sent_product["id"].endswith("/7001")
    # ... while a body still over budget goes without its data: a browse signal, not a 413.
    assert list_body["event"]["data"] is None

    def tracked() -> list[dict[str, Any]]:
        return [c for c in pipelines.calls if c["type"] == "track"]

    assert wait_until(lambda: len(tracked()) >= 1, 20), pipelines.calls
    (track,) = tracked()
    assert track["event"] == "product_viewed"
    assert track["properties"]["items"][0]["product_id"] == "7001"
    assert track["properties"]["items"][0]["name"] == euro * 500  # what the bridge keeps
