"""The ops console in a real browser (headless Debian chromium through Playwright) against a
real stack: gunicorn with the Procfile's command, an RQ worker process, a private redis-server
and the Pipelines stand-in. An operator logs in, sees a chart drawn from the traffic just
sent, finds a shopper who bought and sees the cart addition that was suppressed, opens a dead
letter whose product title carries a <script> tag (shown as text, never run) and replays it
until Pipelines has it. Screenshots go to tests/screenshots/ (docs/screenshots/ holds two)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis as redis_lib
from playwright.sync_api import Browser, Dialog, Page, expect

from bridge.config.settings import Settings
from bridge.store.keys import Keys
from tests import journeys
from tests.browser import SCREENSHOTS
from tests.conftest import ROOT, SHOP, free_port, service_env, wait_until, webhook_headers
from tests.integration.test_end_to_end import procfile_command
from tests.pipelines_standin import PipelinesStandIn

ADMIN = "browser-admin-token"
VIEWER = "browser-viewer-token"
SCRIPT_TITLE = "<script>alert('owned')</script> Tee"


class Stack:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def post(self, topic: str, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + "/webhooks/shopify",
            data=raw,
            headers=webhook_headers(raw, topic),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


@pytest.fixture
def stack(settings: Settings, worker: subprocess.Popen[bytes]) -> Iterator[Stack]:
    port = free_port()
    env = service_env(
        settings,
        PORT=str(port),
        WEB_CONCURRENCY="2",
        OPS_TOKEN=VIEWER,
        OPS_ADMIN_TOKEN=ADMIN,
        OPS_COOKIE_SECURE="false",  # plain http on loopback
    )
    proc = subprocess.Popen(procfile_command("web"), env=env, cwd=ROOT)

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    assert wait_until(up, 20), "gunicorn did not come up"
    yield Stack(port)
    proc.terminate()
    proc.wait(20)


def no_dialogs(page: Page) -> None:
    """Fail on any alert(): a script that ran."""

    def fail(dialog: Dialog) -> None:
        dialog.dismiss()
        raise AssertionError(f"a script ran: {dialog.message}")

    page.on("dialog", fail)


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def seed_history(redis: redis_lib.Redis, now_s: int) -> None:
    """Four weeks of hourly history before the last 24 h (so the charts have a baseline), and
    a drop alert that ended 6 hours ago; the last 24 h are left to the real traffic."""
    k = Keys(SHOP)
    pipe = redis.pipeline(transaction=False)
    first = now_s // 3600 * 3600 - 28 * 86400
    for hour in range(first, now_s - 86400, 3600):
        busy = 6 + 5 * ((hour // 3600) % 24 in range(9, 22))
        for event, share in (("added_to_cart", 3), ("checkout_started", 2), ("order_completed", 1)):
            pipe.hset(k.volume_coarse(event), hour, busy * share)
        pipe.hset(k.webhook_buckets("1h", hour // 86400), hour, busy * 9)
    ended = {"event": "added_to_cart", "kind": "drop", "since": (now_s - 7 * 3600) * 1000}
    pipe.lpush(k.alert_history, orjson.dumps({**ended, "until": (now_s - 6 * 3600) * 1000}))
    pipe.execute()


def test_an_operator_logs_in_sees_traffic_finds_a_buyer_and_replays_a_dead_letter(
    stack: Stack, pipelines: PipelinesStandIn, browser: Browser, redis: redis_lib.Redis
) -> None:
    seed_history(redis, int(time.time()))
    # Traffic: a shopper's cart, checkout and order, then one more line added to the cart.
    stack.post("carts/create", journeys.cart(journeys.CART, {111: 1}, "2024-11-06T01:00:00Z"))
    assert pipelines.wait_for(1, 20)
    stack.post("checkouts/create", journeys.checkout(email=True, updated_at="2024-11-06T01:05:00Z"))
    assert wait_until(
        lambda: any(c.get("event") == "checkout_started" for c in pipelines.calls), 20
    )
    stack.post("orders/create", journeys.order())
    stack.post(
        "carts/update",
        journeys.cart(journeys.CART, {111: 1, 222: 1}, "2024-11-06T02:00:00Z"),
    )
    # A cart whose product title carries a script, refused by Pipelines: a dead letter.
    quiet(pipelines)  # the fault below must meet the hostile cart's call, no other
    pipelines.script(422)
    hostile = journeys.cart("hostile-cart", {333: 1}, "2024-11-06T03:00:00Z")
    hostile["line_items"][0]["title"] = SCRIPT_TITLE
    stack.post("carts/create", hostile)

    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    no_dialogs(page)
    try:
        # Without a session: the login page.
        page.goto(stack.base + "/ops/")
        expect(page).to_have_url(re.compile(r"/ops/login$"))
        page.fill("input[name=token]", "wrong")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_contain_text("not valid")
        page.fill("input[name=token]", ADMIN)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_contain_text("Shops (1)")

        # The shop's charts, drawn from the traffic above.
        page.click(f"text={SHOP}")
        webhooks = page.locator('#fine [data-series="webhooks"] svg')
        expect(webhooks).to_have_attribute("data-total", re.compile(r"^[1-9]\d*$"))
        assert int(webhooks.get_attribute("data-total") or 0) >= 5
        carts = page.locator('#fine [data-series="added_to_cart"] svg')
        assert int(carts.get_attribute("data-total") or 0) >= 1
        assert page.locator("#fine svg polyline.counts").count() == 4
        assert page.locator("#fine svg polyline.baseline").count() >= 4
        assert page.locator('#fine [data-series="added_to_cart"] svg rect.alert-drop').count() >= 1
        shot(page, "ops-shop.png")

        # The buyer, found by customer id: the addition after the order was suppressed.
        page.click("text=Person lookup")
        page.select_option("select[name=kind]", "customer_id")
        page.fill("input[name=value]", journeys.CUSTOMER_ID)
        page.click("text=Look up")
        suppressed = page.locator("#calls tr.o-row-suppressed")
        expect(suppressed.first).to_contain_text("added_to_cart")
        expect(suppressed.first).to_contain_text("converted")
        expect(page.locator("#calls tr.o-row-delivered").first).to_be_visible()
        assert "customer_id" not in page.url and journeys.CUSTOMER_ID not in page.url
        shot(page, "ops-person.png")

        # The dead letter: its title is text on the page, and no script ran.
        assert wait_until(lambda: _letters(page, stack) == 1, 20)
        page.goto(stack.base + "/ops/letters")
        page.click("#letters tr:nth-child(2) a")
        expect(page.locator("pre#call")).to_contain_text("<script>alert('owned')</script>")
        assert page.locator("script").count() == 0
        expect(page.locator("pre#response")).to_be_visible()
        shot(page, "ops-letter.png")

        # Replay it: a preview, then the replay, then Pipelines has it.
        page.goto(stack.base + "/ops/letters")
        page.check("#letters input[name=ids]")
        page.click("text=Replay selected")
        expect(page.locator("#preview-count")).to_have_text("1")
        before = len(pipelines.calls)
        page.click("#confirm")
        expect(page.locator("#done")).to_contain_text("1 dead letter replayed")
        assert wait_until(
            lambda: any(
                item.get("name", "").startswith("<script>")
                for c in pipelines.calls_since(before)
                for item in c.get("properties", {}).get("items", [])
            ),
            20,
        ), pipelines.calls_since(before)
        page.goto(stack.base + "/ops/letters")
        expect(page.locator("#letters")).to_contain_text("No dead letters match")
        shot(page, "ops-letters-after-replay.png")
    finally:
        context.close()


def quiet(pipelines: PipelinesStandIn) -> None:
    """Wait until no call has arrived for 1.5 s."""
    for _ in range(40):
        seen = len(pipelines.calls)
        if not wait_until(lambda: len(pipelines.calls) > seen, 1.5):  # noqa: B023
            return
    raise AssertionError("calls kept coming")


def _letters(page: Page, stack: Stack) -> int:
    page.goto(stack.base + "/ops/letters")
    return page.locator("#letters input[name=ids]").count()


def test_another_site_cannot_sign_a_browser_in(stack: Stack, browser: Browser) -> None:
    """Login CSRF in a real browser: a page of another origin posts the login form (with a
    valid token of its choosing); Chromium says the post is cross-site and no session opens."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.set_content(
            f'<form method="post" action="{stack.base}/ops/login">'
            f'<input name="token" value="{ADMIN}"><button id="go">go</button></form>'
        )
        with page.expect_navigation():
            page.click("#go")
        assert "a form posted from another site is refused" in page.content()
        assert not [c for c in context.cookies() if c["name"] == "cartbridge_ops"]
        page.goto(stack.base + "/ops/")
        expect(page).to_have_url(re.compile(r"/ops/login$"))
    finally:
        context.close()
