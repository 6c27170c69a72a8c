"""The ops console over a real Redis: the app's own test client, webhooks posted to the real
route, drained and delivered in-process to the Pipelines stand-in. Login, roles, CSRF, the
off switch, escaping, and the ledger and webhook log the drain and delivery write (and that an
erasure removes and an export carries)."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from typing import Any

import orjson
import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from pydantic import SecretStr

from bridge import keyed
from bridge.config.settings import ConfigError, Settings, load_settings
from bridge.delivery.deadletters import call_letter, webhook_letter
from bridge.delivery.deliver import deliver
from bridge.delivery.outbox import OutboxEntry
from bridge.services import Services
from bridge.store import deadletters as letter_store
from bridge.store.facade import Keys
from bridge.store.wire import Envelope
from bridge.web import ops as ops_web
from bridge.web.app import create_app
from bridge.worker.drain import drain
from tests import journeys
from tests.conftest import SHOP, fixture_json, wait_until, webhook_headers
from tests.pipelines_standin import PipelinesStandIn

VIEWER_TOKEN = "viewer-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"
SCRIPT_TITLE = "<script>alert('owned')</script> Tee"


@pytest.fixture
def ops_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "ops_token": SecretStr(VIEWER_TOKEN),
            "ops_admin_token": SecretStr(ADMIN_TOKEN),
            "ops_cookie_secure": False,
            "identity_hash_key": SecretStr("ops-test-identity-key"),
        }
    )


@pytest.fixture
def client(ops_settings: Settings) -> FlaskClient:
    return create_app(ops_settings).test_client()


@pytest.fixture
def services(ops_settings: Settings) -> Services:
    return Services.build(ops_settings)


def post(client: FlaskClient, topic: str, body: dict[str, Any], **kw: Any) -> None:
    raw = json.dumps(body).encode()
    resp = client.post("/webhooks/shopify", data=raw, headers=webhook_headers(raw, topic, **kw))
    assert resp.status_code == 200, resp.data


def paid_order() -> dict[str, Any]:
    body = fixture_json("orders-paid")
    body["test"] = False
    return body


def settle(services: Services) -> None:
    """Drain and deliver until nothing is left (in-process)."""
    for _ in range(5):
        drain(services, SHOP)
        deliver(services, SHOP)
        depth = services.store.depth(SHOP)
        if not depth["inbound"] and not depth["outbox"]:
            return


def login(client: FlaskClient, token: str) -> str:
    resp = client.post("/ops/login", data={"token": token})
    assert resp.status_code == 302, resp.data
    page = client.get("/ops/letters").get_data(as_text=True)
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def converted_journey(client: FlaskClient, services: Services) -> None:
    """A shopper adds to a cart, checks out with their email, orders, then the cart gets one
    more line: that addition is suppressed (the cart is converted)."""
    cart = journeys.cart(journeys.CART, {111: 1}, "2024-11-06T01:00:00.000Z")
    cart["line_items"][0]["title"] = SCRIPT_TITLE
    post(client, "carts/create", cart)
    settle(services)
    checkout = journeys.checkout(email=True, updated_at="2024-11-06T01:05:00Z")
    post(client, "checkouts/create", checkout)
    settle(services)
    post(client, "orders/create", journeys.order())
    settle(services)
    later = journeys.cart(journeys.CART, {111: 1, 222: 1}, "2024-11-06T02:00:00.000Z")
    post(client, "carts/update", later)
    settle(services)


# --- the off switch, login, roles, CSRF ---------------------------------------------------


def test_without_ops_token_there_is_no_console(settings: Settings) -> None:
    plain = create_app(settings).test_client()
    for path in ("/ops/", "/ops/login", "/ops/letters", "/ops/static/ops.css"):
        assert plain.get(path).status_code == 404
    assert plain.post("/ops/login", data={"token": ""}).status_code == 404


def test_without_a_session_every_page_sends_to_the_login(client: FlaskClient) -> None:
    for path in ("/ops/", "/ops/letters", "/ops/people", f"/ops/shops/{SHOP}"):
        resp = client.get(path)
        assert resp.status_code == 302
        assert resp.headers["Location"].endswith("/ops/login")
    resp = client.post("/ops/letters/replay", data={"all": "1", "confirm": "1"})
    assert resp.status_code == 302


def test_a_wrong_token_is_refused_and_opens_no_session(client: FlaskClient) -> None:
    forms = [
        f"token={wrong}"
        for wrong in ("", "nope", VIEWER_TOKEN + "x", VIEWER_TOKEN[:-1], "x" * 100_000)
    ]
    forms += ["token=%ED%A0%80", "token=%FF%FE", "other=1", f"token={VIEWER_TOKEN}%00"]
    for form in forms:
        resp = client.post(
            "/ops/login", data=form, content_type="application/x-www-form-urlencoded"
        )
        assert resp.status_code == 401
        assert "not valid" in resp.get_data(as_text=True)
        assert client.get("/ops/").status_code == 302


def test_the_session_cookie_is_signed_httponly_and_strict(ops_settings: Settings) -> None:
    client = create_app(ops_settings.model_copy(update={"ops_cookie_secure": True})).test_client()
    resp = client.post("/ops/login", data={"token": VIEWER_TOKEN})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
    assert "Path=/ops" in cookie
    # A forged cookie (another app's key) opens nothing.
    other = create_app(
        ops_settings.model_copy(
            update={"ops_admin_token": SecretStr("another"), "ops_cookie_secure": True}
        )
    ).test_client()
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    other.set_cookie("cartbridge_ops", value, path="/ops")
    assert other.get("/ops/").status_code == 302


def test_a_form_posted_from_another_site_is_refused_login_included(
    client: FlaskClient, services: Services, pipelines: PipelinesStandIn
) -> None:
    # Login CSRF: another site must not sign the operator's browser in (with its own token).
    hostile = [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another site's too
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ]
    for headers in hostile:
        resp = client.post("/ops/login", data={"token": ADMIN_TOKEN}, headers=headers)
        assert resp.status_code == 403, headers
        assert "Set-Cookie" not in resp.headers
        assert client.get("/ops/").status_code == 302
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": "http://localhost"}, {}):
        resp = client.post("/ops/login", data={"token": VIEWER_TOKEN}, headers=headers)
        assert resp.status_code == 302, headers
    # And a replay with the right CSRF token, posted from elsewhere, moves nothing.
    pipelines.script(422)
    post(client, "orders/paid", paid_order())
    settle(services)
    letters = services.store.depth(SHOP)["dead_letters"]
    assert letters >= 1
    csrf = login(client, ADMIN_TOKEN)
    resp = client.post(
        "/ops/letters/replay",
        data={"csrf": csrf, "all": "1", "confirm": "1"},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert resp.status_code == 403
    # Nor does a GET (a link, an image) or a GET claiming to be a POST.
    for path in ("/ops/letters/replay", "/ops/letters/purge", "/ops/logout"):
        resp = client.get(
            path + "?all=1&confirm=1&csrf=" + csrf, headers={"X-HTTP-Method-Override": "POST"}
        )
        assert resp.status_code == 405, path
    assert services.store.depth(SHOP)["dead_letters"] == letters


def test_wrong_tokens_from_one_address_close_its_login_for_a_while(
    ops_settings: Settings, redis: redis_lib.Redis
) -> None:
    app = create_app(ops_settings)
    guesser = app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    for i in range(10):
        resp = guesser.post("/ops/login", data={"token": f"guess-{i}"})
        assert resp.status_code == 401
    # Now even the right token is refused from there: a guesser learns nothing more.
    resp = guesser.post("/ops/login", data={"token": ADMIN_TOKEN})
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) > 0
    assert "Too many wrong tokens" in resp.get_data(as_text=True)
    assert guesser.get("/ops/").status_code == 302
    # Another address is not locked out, and no address is stored as it is.
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    assert other.post("/ops/login", data={"token": ADMIN_TOKEN}).status_code == 302
    keys = redis.keys("cb:ops:login:*")
    assert len(keys) == 1 and b"203.0.113.9" not in keys[0]
    assert 0 < redis.ttl(keys[0]) <= 15 * 60


def test_console_tokens_too_short_to_be_safe_stop_the_start() -> None:
    with pytest.raises(ConfigError, match=r"OPS_TOKEN: .*16"):
        load_settings(ops_token="hunter2")
    with pytest.raises(ConfigError, match="OPS_ADMIN_TOKEN"):
        load_settings(ops_token="x" * 24, ops_admin_token="admin")
    with pytest.raises(ConfigError, match="OPS_TOKEN"):
        load_settings(ops_token="x" * 513)
    assert load_settings(ops_token="", ops_admin_token="").ops_token.get_secret_value() == ""


def test_a_browser_that_drops_the_cookie_is_told_why(client: FlaskClient) -> None:
    # Over plain http a browser drops the Secure cookie: the next page must say so, not loop.
    resp = client.post("/ops/login", data={"token": VIEWER_TOKEN})
    landing = resp.headers["Location"]
    cookieless = client.application.test_client()
    again = cookieless.get(landing)
    assert again.status_code == 302
    page = cookieless.get(again.headers["Location"]).get_data(as_text=True)
    assert "did not keep the session cookie" in page and "OPS_COOKIE_SECURE=false" in page
    # With the cookie kept, the same landing page is simply the console.
    assert client.get(landing).status_code == 200
    # An ordinary visit without a session gets the plain login page.
    plain = cookieless.get(cookieless.get("/ops/").headers["Location"]).get_data(as_text=True)
    assert "did not keep" not in plain


def test_a_viewer_cannot_replay_or_purge(
    client: FlaskClient, services: Services, pipelines: PipelinesStandIn
) -> None:
    pipelines.script(422)
    post(client, "orders/paid", paid_order())
    settle(services)
    assert services.store.depth(SHOP)["dead_letters"] >= 1
    csrf = login(client, VIEWER_TOKEN)
    page = client.get("/ops/letters").get_data(as_text=True)
    assert "Replay selected" not in page
    for action in ("replay", "purge"):
        resp = client.post(
            f"/ops/letters/{action}", data={"csrf": csrf, "all": "1", "confirm": "1"}
        )
        assert resp.status_code == 403
    assert services.store.depth(SHOP)["dead_letters"] >= 1


def test_state_changes_need_the_sessions_csrf_token(
    client: FlaskClient, services: Services, pipelines: PipelinesStandIn
) -> None:
    pipelines.script(422)
    post(client, "orders/paid", paid_order())
    settle(services)
    letters = services.store.depth(SHOP)["dead_letters"]
    assert letters >= 1
    csrf = login(client, ADMIN_TOKEN)
    for data in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": csrf + "x"}):
        for action in ("replay", "purge"):
            resp = client.post(f"/ops/letters/{action}", data={**data, "all": "1", "confirm": "1"})
            assert resp.status_code == 400
    assert services.store.depth(SHOP)["dead_letters"] == letters
    # The person lookup is a POST too.
    lookup = client.post("/ops/people", data={"shop": SHOP, "kind": "order", "value": "1"})
    assert lookup.status_code == 400


def test_an_admin_previews_then_replays_and_the_letter_is_delivered(
    client: FlaskClient, services: Services, pipelines: PipelinesStandIn
) -> None:
    pipelines.script(422)
    post(client, "orders/paid", paid_order())
    settle(services)
    ids = services.store.dead_letters.ids(SHOP)
    assert ids
    csrf = login(client, ADMIN_TOKEN)
    preview = client.post("/ops/letters/replay", data={"csrf": csrf, "since": "1h", "shop": SHOP})
    assert preview.status_code == 200
    assert f'<strong id="preview-count">{len(ids)}</strong>' in preview.get_data(as_text=True)
    assert services.store.dead_letters.ids(SHOP) == ids  # a preview moves nothing
    before = len(pipelines.calls)
    done = client.post(
        "/ops/letters/replay", data={"csrf": csrf, "since": "1h", "shop": SHOP, "confirm": "1"}
    )
    assert done.status_code == 200
    assert f"<strong>{len(ids)}</strong>" in done.get_data(as_text=True)
    settle(services)
    assert services.store.dead_letters.ids(SHOP) == []
    assert len(pipelines.calls) > before


def test_an_admin_purges_selected_letters(
    client: FlaskClient,
    services: Services,
    pipelines: PipelinesStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipelines.script(422)
    post(client, "orders/paid", paid_order())
    settle(services)
    ids = services.store.dead_letters.ids(SHOP)
    csrf = login(client, ADMIN_TOKEN)
    resp = client.post(
        "/ops/letters/purge", data={"csrf": csrf, "shop": SHOP, "ids": ids[:1], "confirm": "1"}
    )
    assert resp.status_code == 200
    assert services.store.dead_letters.ids(SHOP) == ids[1:]
    # The logs say who changed what from the console.
    (line,) = [r for r in caplog.records if r.getMessage() == "ops console: dead letters purged"]
    assert (line.shop, line.count, line.role) == (SHOP, 1, "admin")  # type: ignore[attr-defined]


# --- what the pages show ---------------------------------------------------------------------


def test_a_product_title_with_a_script_tag_is_shown_as_text(
    client: FlaskClient, services: Services, pipelines: PipelinesStandIn
) -> None:
    pipelines.script(422, 422, 422, 422)
    cart = journeys.cart("scriptcart", {111: 1}, "2024-11-06T01:00:00.000Z")
    cart["line_items"][0]["title"] = SCRIPT_TITLE
    post(client, "carts/create", cart)
    settle(services)
    (letter_id,) = services.store.dead_letters.ids(SHOP)
    login(client, ADMIN_TOKEN)
    page = client.get(f"/ops/letters/{SHOP}/{letter_id}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "&lt;script&gt;alert(" in text
    assert "<script" not in text
    assert "script-src" not in page.headers["Content-Security-Policy"]  # no script may run
    lookup = client.post(
        "/ops/people",
        data={
            "csrf": login(client, ADMIN_TOKEN),
            "shop": SHOP,
            "kind": "cart",
            "value": "scriptcart",
        },
    )
    assert "<script" not in lookup.get_data(as_text=True)
    assert "&lt;script&gt;" in lookup.get_data(as_text=True)


def test_a_converted_shoppers_suppressed_addition_is_in_their_ledger(
    client: FlaskClient, services: Services, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    converted_journey(client, services)
    csrf = login(client, VIEWER_TOKEN)
    for kind, value in (
        ("customer_id", journeys.CUSTOMER_ID),
        ("email", journeys.EMAIL.upper()),
        ("cart", journeys.CART),
        ("order", journeys.ORDER_ID),
    ):
        resp = client.post(
            "/ops/people", data={"csrf": csrf, "shop": SHOP, "kind": kind, "value": value}
        )
        assert resp.status_code == 200
        page = resp.get_data(as_text=True)
        rows = re.findall(r'<tr class="call o-row-(\w+)">\s*<td>[^<]*</td><td>(\w+)</td>', page)
        assert ("suppressed", "added_to_cart") in rows, (kind, rows)
        assert ("delivered", "checkout_started") in rows, (kind, rows)
        assert ("delivered", "added_to_cart") in rows, (kind, rows)  # from when they were anonymous
        newest_first = rows.index(("suppressed", "added_to_cart"))
        assert newest_first < rows.index(("delivered", "checkout_started"))
    # The value typed (an email) is not kept in the browser's form history either.
    assert re.search(r'<input name="value"[^>]*autocomplete="off"', page)
    # No personal data in a URL: the lookup is a POST to a fixed path.
    assert all(journeys.EMAIL not in key.decode() for key in redis.keys("*"))


def test_the_webhook_log_shows_results_and_what_was_produced(
    client: FlaskClient, services: Services
) -> None:
    body = journeys.cart("logcart", {111: 1}, "2024-11-06T01:00:00.000Z")
    post(client, "carts/create", body, webhook_id="hook-1")
    settle(services)
    post(client, "carts/create", body, webhook_id="hook-1")  # a redelivery
    settle(services)
    login(client, VIEWER_TOKEN)
    page = client.get(f"/ops/shops/{SHOP}/webhooks").get_data(as_text=True)
    rows = re.findall(
        r'<td>(carts/create)</td>\s*<td class="muted">hook-1</td>\s*'
        r'<td><span class="badge r-(\w+)">',
        page,
    )
    assert [r[1] for r in rows] == ["duplicate", "processed"]
    assert "added_to_cart \u00d71" in page


def test_the_shop_page_charts_real_traffic(client: FlaskClient, services: Services) -> None:
    for i in range(3):
        post(client, "carts/create", journeys.cart(f"chart{i}", {111: 1}, "2024-11-06T01:00:00Z"))
    settle(services)
    login(client, VIEWER_TOKEN)
    page = client.get(f"/ops/shops/{SHOP}").get_data(as_text=True)
    totals = dict(re.findall(r'data-series="([\w ]+)"><svg[^>]*data-total="(\d+)"', page))
    assert totals["webhooks"] == "3"
    assert totals["added_to_cart"] == "3"
    assert client.get("/ops/shops/unknown-shop.myshopify.com").status_code == 404
    assert client.get("/ops/shops/%7Bbad%7D").status_code == 404


# --- the ledger under compliance ----------------------------------------------------------


def _ledger_keys(redis: redis_lib.Redis) -> list[bytes]:
    pattern = Keys(SHOP).ledger_prefix.replace("{", "\\{").replace("}", "\\}") + "*"
    return sorted(redis.keys(pattern))


def test_a_data_request_exports_the_ledger_and_a_redact_erases_it(
    client: FlaskClient, services: Services, redis: redis_lib.Redis
) -> None:
    # Known by email only first (a guest checkout), then by customer id; anonymous before both:
    # three ledgers, one named by each id their calls went under.
    guest = journeys.checkout(
        email=False, updated_at="2024-11-06T00:30:00Z", token="guestco", cart_token="guestcart"
    )
    guest["email"] = journeys.EMAIL
    post(client, "carts/create", journeys.cart("guestcart", {111: 1}, "2024-11-06T00:20:00Z"))
    post(client, "checkouts/create", guest)
    settle(services)
    converted_journey(client, services)
    hashes = {keyed.person_hash(p) for p in (journeys.CUSTOMER_ID, journeys.EMAIL) if p}
    before = _ledger_keys(redis)
    named = {k for k in before if k.decode().rpartition(":")[2] in hashes}
    assert len(named) == 2, before  # the customer id's and the email's
    assert len(before) > len(named)  # and the anonymous id's
    request = fixture_json("customers-data-request")
    request["customer"] = {"id": int(journeys.CUSTOMER_ID), "email": journeys.EMAIL}
    post(client, "customers/data_request", request)
    settle(services)
    exports = [orjson.loads(raw) for raw in services.store.shop_data.exports(SHOP)]
    assert exports
    exported = {r["key"] for e in exports for r in e["records"]}
    assert {k.decode() for k in before} <= exported, exported
    redact = fixture_json("customers-redact")
    redact["customer"] = {"id": int(journeys.CUSTOMER_ID), "email": journeys.EMAIL}
    post(client, "customers/redact", redact)
    assert wait_until(lambda: (settle(services), _ledger_keys(redis) == [])[1], 10), _ledger_keys(
        redis
    )
    csrf = login(client, VIEWER_TOKEN)
    for kind, value in (("customer_id", journeys.CUSTOMER_ID), ("cart", journeys.CART)):
        page = client.post(
            "/ops/people", data={"csrf": csrf, "shop": SHOP, "kind": kind, "value": value}
        ).get_data(as_text=True)
        assert "o-row-" not in page


def test_hostile_lookups_get_a_page_not_a_crash(client: FlaskClient, services: Services) -> None:
    post(client, "carts/create", journeys.cart("c1", {111: 1}, "2024-11-06T01:00:00Z"))
    settle(services)
    csrf = login(client, VIEWER_TOKEN)
    cases = [
        ("customer_id", "", 400),
        ("customer_id", "x" * 10_000, 400),
        ("nonsense", "1", 400),
        ("email", "%ED%A0%80@example.com", 200),  # a lone surrogate, as bytes
        ("email", "%FF%FE", 200),
        ("cart", "}{*?[", 200),
        ("order", "99999999999999999999999999999", 200),
        ("checkout", "c1", 200),
    ]
    for kind, value, status in cases:
        form = urllib.parse.urlencode({"csrf": csrf, "shop": SHOP, "kind": kind})
        raw = value if "%" in value else urllib.parse.quote(value, safe="")
        resp = client.post(
            "/ops/people",
            data=f"{form}&value={raw}",
            content_type="application/x-www-form-urlencoded",
        )
        assert resp.status_code == status, (kind, value, resp.data[:300])
    other = client.post(
        "/ops/people",
        data={"csrf": csrf, "shop": "nope.myshopify.com", "kind": "cart", "value": "c1"},
    )
    assert other.status_code == 400
    hostile_lists = [
        "/ops/letters?since=yesterday",
        "/ops/letters?status=%00&event=%F0%9F%92%A9",
        "/ops/letters?since=" + "9" * 190 + "d",
        "/ops/letters?since=0001-01-01T00:00:00%2B14:00",
        "/ops/letters?since=9999-12-31T23:59:59-14:00",
        "/ops/letters?since=1e400d",
        "/ops/letters?shop=%ED%A0%80&event=" + "x" * 100_000,
    ]
    for path in hostile_lists:
        assert client.get(path).status_code in (200, 400), path
    assert client.get(f"/ops/letters/{SHOP}/" + "x" * 5000).status_code == 404


def test_ops_ledger_calls_zero_writes_no_ledger(
    ops_settings: Settings, redis: redis_lib.Redis
) -> None:
    quiet = ops_settings.model_copy(update={"ops_ledger_calls": 0})
    client = create_app(quiet).test_client()
    converted_journey(client, Services.build(quiet))
    assert _ledger_keys(redis) == []
    assert redis.llen(Keys(SHOP).webhook_log) == 4  # the webhook log is written all the same


def test_a_call_dead_lettered_at_the_drain_is_in_its_persons_ledger(
    client: FlaskClient, services: Services, redis: redis_lib.Redis
) -> None:
    # A cart token (kept whole: the flows key on cart_id) past Pipelines' 32 KB limit: the
    # drain refuses the addition as invalid and dead-letters it without queueing it.
    post(client, "carts/create", journeys.cart("t" * 40_000, {111: 1}, "2024-11-06T01:00:00Z"))
    settle(services)
    assert services.store.depth(SHOP)["dead_letters"] == 1
    entries = [orjson.loads(e) for key in _ledger_keys(redis) for e in redis.lrange(key, 0, -1)]
    assert [(e["e"], e["o"]) for e in entries] == [("added_to_cart", "dead_lettered")], entries
    assert entries[0]["r"].startswith("invalid call: call is ")
    assert entries[0]["m"] and entries[0]["w"] == "carts/create"


def test_pipelines_messages_quoting_an_email_are_shown_and_kept_redacted(
    client: FlaskClient, services: Services, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    said = b'{"meta": {"errors": ["traits.email: henry@wfls.com is not allowed"]}}'
    pipelines.script(*[(400, {}, said)] * 8)
    post(client, "orders/paid", paid_order())
    settle(services)
    assert services.store.depth(SHOP)["dead_letters"] >= 1
    ledgers = b"".join(e for key in _ledger_keys(redis) for e in redis.lrange(key, 0, -1))
    assert b"dead_lettered" in ledgers and b"is not allowed" in ledgers
    assert journeys.EMAIL.encode() not in ledgers
    login(client, VIEWER_TOKEN)
    page = client.get("/ops/letters").get_data(as_text=True)
    assert "is not allowed" in page
    assert journeys.EMAIL not in page


def _seed_letters(redis: redis_lib.Redis, n: int, now_ms: int) -> None:
    """`n` call letters, one a second back from `now_ms` (as an outage leaves them)."""
    pipe = redis.pipeline(transaction=True)
    for i in range(n):
        call = orjson.dumps(
            {
                "type": "track",
                "event": "order_completed",
                "messageId": f"01SEED{i:020d}",
                "userId": str(1000 + i),
                "properties": {"order_id": str(i)},
            }
        )
        entry = OutboxEntry(call, now_ms, str(1000 + i)).encode()
        at = now_ms - i * 1000
        letter = call_letter(
            SHOP,
            entry,
            "not accepted by Pipelines (422)",
            status=422,
            first_error_ms=at,
            last_error_ms=at,
        )
        letter_store.stage(pipe, SHOP, [letter], at)
    pipe.sadd("cb:shops", SHOP)
    pipe.execute()


def test_the_letters_page_reads_a_bounded_number_however_many_are_stored(
    ops_settings: Settings, redis: redis_lib.Redis
) -> None:
    _seed_letters(redis, 2500, int(time.time() * 1000))
    app = create_app(ops_settings)
    client = app.test_client()
    store = app.extensions["cartbridge"].store.dead_letters
    read: list[int] = []
    get_each = store.get_each
    store.get_each = lambda wanted: (read.append(len(wanted)), get_each(wanted))[1]
    login(client, VIEWER_TOKEN)
    read.clear()
    page = client.get("/ops/letters").get_data(as_text=True)
    assert page.count("<td>order_completed</td>") == 200
    assert "Showing the newest 200 of 2500 dead letters" in page
    assert sum(read) == 200
    assert "01SEED00000000000000000000" in page  # the newest first
    read.clear()
    page = client.get("/ops/letters?event=nothing-like-it").get_data(as_text=True)
    assert "0 matches among the newest 2000 of 2500 dead letters" in page
    assert sum(read) == 2000
    page = client.get("/ops/letters?status=422&since=10m").get_data(as_text=True)
    assert page.count("<td>order_completed</td>") == 200


def test_a_console_replay_takes_a_bounded_share_per_request(
    client: FlaskClient,
    services: Services,
    redis: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ops_web, "REPLAY_PER_REQUEST", 3)
    _seed_letters(redis, 5, int(time.time() * 1000))
    csrf = login(client, ADMIN_TOKEN)
    preview = client.post("/ops/letters/replay", data={"csrf": csrf, "all": "1"})
    text = preview.get_data(as_text=True)
    assert '<strong id="preview-count">3</strong>' in text
    assert "5 match" in text
    done = client.post("/ops/letters/replay", data={"csrf": csrf, "all": "1", "confirm": "1"})
    assert "<strong>3</strong>" in done.get_data(as_text=True)
    left = services.store.dead_letters.ids(SHOP)
    assert left == [f"c-01SEED{i:020d}" for i in (1, 0)]  # the oldest went first


def test_a_webhook_letter_whose_id_holds_a_slash_can_be_opened(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    env = Envelope(
        shop=SHOP,
        topic="orders/paid",
        webhook_id="a/b?c#d%2F",
        body=b"{}",
        triggered_at="",
        received_ms=1,
    ).encode()
    letter = webhook_letter(SHOP, env, "orders/paid", "a/b?c#d%2F", "mapping failed: test")
    pipe = redis.pipeline(transaction=True)
    letter_store.stage(pipe, SHOP, [letter], int(time.time() * 1000))
    pipe.sadd("cb:shops", SHOP)
    pipe.execute()
    login(client, ADMIN_TOKEN)
    listing = client.get("/ops/letters").get_data(as_text=True)
    (href,) = re.findall(r'<a href="(/ops/letters/[^"]+)"', listing)
    page = client.get(href)
    assert page.status_code == 200
    assert "w-a/b?c#d%2F" in page.get_data(as_text=True)


def test_webhook_charts_join_the_days_at_midnight_utc(
    services: Services, redis: redis_lib.Redis
) -> None:
    from zoneinfo import ZoneInfo

    from bridge.ops import overview
    from bridge.store import ops as ops_records

    midnight = int(time.time()) // 86400 * 86400  # a UTC day boundary (keys expire after)
    arrivals = [midnight - 86400 + 30, midnight - 61, midnight - 1, midnight, midnight + 59]
    counts, _ = ops_records.webhook_counts(SHOP, [s * 1000 for s in arrivals])
    pipe = redis.pipeline(transaction=True)
    for (key, bucket), n in counts.items():
        pipe.hincrby(key, bucket, n)
    pipe.execute()
    now = midnight + 120
    drawn = overview.shop_charts(services.store, SHOP, [], ZoneInfo("Pacific/Chatham"), now)
    (fine,), (coarse,) = drawn.fine, drawn.coarse
    # The last 24 h: everything but the first arrival (24 h and 90 s ago), either side of midnight.
    assert fine.total == 4
    last = {fine.start_s + i * fine.step_s: n for i, n in enumerate(fine.counts) if n}
    assert last == {midnight - 300: 2, midnight: 2}
    assert coarse.total == 5
    assert dict((coarse.start_s + i * 3600, n) for i, n in enumerate(coarse.counts) if n) == {
        midnight - 86400: 1,
        midnight - 3600: 2,
        midnight: 2,
    }


def test_every_page_answers_on_an_empty_redis_and_for_a_shop_with_no_data(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    csrf = login(client, ADMIN_TOKEN)

    def every_page(shop: str) -> None:
        for path in ("/ops/", "/ops/letters", "/ops/letters?since=2d&event=x", "/ops/people"):
            assert client.get(path).status_code == 200, path
        for action in ("replay", "purge"):
            resp = client.post(f"/ops/letters/{action}", data={"csrf": csrf, "all": "1"})
            assert resp.status_code == 200, action
            assert '<strong id="preview-count">0</strong>' in resp.get_data(as_text=True)
        lookup = client.post(
            "/ops/people", data={"csrf": csrf, "shop": shop, "kind": "customer_id", "value": "1"}
        )
        assert lookup.status_code == (200 if shop else 400)

    every_page("")
    assert "No shop has sent a webhook yet" in client.get("/ops/").get_data(as_text=True)
    redis.sadd("cb:shops", SHOP)  # known, and nothing else
    every_page(SHOP)
    page = client.get(f"/ops/shops/{SHOP}")
    assert page.status_code == 200
    assert re.findall(r'data-total="(\d+)"', page.get_data(as_text=True)) == ["0"] * 8
    webhooks = client.get(f"/ops/shops/{SHOP}/webhooks").get_data(as_text=True)
    assert "No webhook processed yet" in webhooks


def _ledger_of(redis: redis_lib.Redis, person: str) -> list[dict[str, Any]]:
    key = Keys(SHOP).ledger(keyed.person_hash(person))
    return [orjson.loads(e) for e in reversed(redis.lrange(key, 0, -1))]  # oldest first


def test_held_then_dead_lettered_past_the_horizon_each_in_the_ledger(
    ops_settings: Settings, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    quick = ops_settings.model_copy(
        update={"retry_base_s": 0.01, "retry_cap_s": 0.02, "retry_horizon_s": 0}
    )
    services = Services.build(quick)
    client = create_app(quick).test_client()
    pipelines.script(503, 503)
    post(client, "orders/paid", paid_order())
    drain(services, SHOP)
    deliver(services, SHOP)
    time.sleep(0.4)
    deliver(services, SHOP)
    order = [
        (e["o"], e.get("r", ""))
        for e in _ledger_of(redis, str(paid_order()["customer"]["id"]))
        if e["e"] == "order_completed"
    ]
    # (a call enters the ledger when delivery settles it: no "queued" entry first)
    assert [o for o, _ in order] == ["held", "dead_lettered"], order
    assert order[0][1].startswith("attempt 1 failed (503); retry in ")
    assert order[1][1] == "retry horizon passed"


def test_a_call_overtaken_by_an_order_before_delivery_is_suppressed_at_delivery(
    client: FlaskClient, services: Services, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    # Everything is drained before anything is delivered: the addition and the checkout's
    # calls are queued, then the order converts them; delivery drops them and says why.
    post(client, "carts/create", journeys.cart(journeys.CART, {111: 1}, "2024-11-06T01:00:00Z"))
    post(
        client, "checkouts/create", journeys.checkout(email=True, updated_at="2024-11-06T01:05:00Z")
    )
    post(client, "orders/create", journeys.order())
    for _ in range(3):
        drain(services, SHOP)
    deliver(services, SHOP)
    started = [e for e in _ledger_of(redis, journeys.CUSTOMER_ID) if e["e"] == "checkout_started"]
    assert [e["o"] for e in started] == ["suppressed"], started
    assert "converted to an order after it was queued" in started[0]["r"]
    assert started[0]["m"]  # the call's messageId, to match it with the outbox and Pipelines
    assert started[0]["w"].startswith("checkouts/")  # the topic, carried by the outbox entry
    assert "checkout_started" not in {c.get("event") for c in pipelines.calls}


def test_replaying_a_selection_across_shops_is_not_cut_by_the_cap(
    client: FlaskClient,
    services: Services,
    redis: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ops_web, "REPLAY_PER_REQUEST", 3)
    other = "other-shop.myshopify.com"
    _seed_letters(redis, 2, int(time.time() * 1000))
    call = orjson.dumps(
        {"type": "track", "event": "order_completed", "messageId": "01OTHER", "userId": "9"}
    )
    letter = call_letter(other, OutboxEntry(call, 1, "9").encode(), "422", status=422)
    pipe = redis.pipeline(transaction=True)
    letter_store.stage(pipe, other, [letter], int(time.time() * 1000))
    pipe.sadd("cb:shops", other)
    pipe.execute()
    ids = [f"c-01SEED{i:020d}" for i in (0, 1)] + ["c-01OTHER"]
    csrf = login(client, ADMIN_TOKEN)
    # Every id is looked for in every shop: 3 ids x 2 shops would pass a cap of 3 in the first.
    done = client.post("/ops/letters/replay", data={"csrf": csrf, "ids": ids, "confirm": "1"})
    assert "<strong>3</strong>" in done.get_data(as_text=True)
    assert services.store.dead_letters.ids(SHOP) == []
    assert services.store.dead_letters.ids(other) == []


def test_a_session_ends_twelve_hours_after_sign_in_however_it_is_used(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import itsdangerous.timed

    clock = [int(time.time())]
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", lambda _: clock[0])
    login(client, VIEWER_TOKEN)
    clock[0] += 11 * 3600
    page = client.get("/ops/")
    assert page.status_code == 200
    assert "Set-Cookie" not in page.headers  # used, not extended
    clock[0] += 2 * 3600
    assert client.get("/ops/").status_code == 302


def test_a_lookup_by_a_merged_customer_id_shows_the_calls_made_under_it(
    client: FlaskClient, services: Services, redis: redis_lib.Redis
) -> None:
    k = Keys(SHOP)
    pipe = redis.pipeline(transaction=True)
    pipe.set(k.state("cust:111"), orjson.dumps({"merged_into": "222"}))
    for person, event in (("111", "added_to_cart"), ("222", "order_completed")):
        entry = orjson.dumps({"t": 1, "e": event, "o": "delivered", "m": "M" + person})
        pipe.lpush(k.ledger(keyed.person_hash(person)), entry)
    pipe.sadd("cb:shops", SHOP)
    pipe.execute()
    csrf = login(client, VIEWER_TOKEN)
    page = client.post(
        "/ops/people", data={"csrf": csrf, "shop": SHOP, "kind": "customer_id", "value": "111"}
    ).get_data(as_text=True)
    rows = re.findall(r'<tr class="call o-row-(\w+)">\s*<td>[^<]*</td><td>(\w+)</td>', page)
    assert sorted(rows) == [("delivered", "added_to_cart"), ("delivered", "order_completed")]


def test_a_forwarded_user_deleted_brings_no_ledger_back(
    ops_settings: Settings, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    forwarding = ops_settings.model_copy(update={"forward_redactions": True})
    services = Services.build(forwarding)
    client = create_app(forwarding).test_client()
    converted_journey(client, services)
    assert _ledger_keys(redis)
    redact = fixture_json("customers-redact")
    redact["customer"] = {"id": int(journeys.CUSTOMER_ID), "email": journeys.EMAIL}
    post(client, "customers/redact", redact)
    assert wait_until(
        lambda: (settle(services), any(c.get("event") == "User Deleted" for c in pipelines.calls))[
            1
        ],
        10,
    )
    settle(services)
    assert _ledger_keys(redis) == []


def test_a_person_looked_up_by_email_is_not_kept_by_the_web(settings: Settings) -> None:
    """The lookup hashes the email (keyed.email_digest, memoised): the web process keeps no
    memo of the emails its operators typed."""
    from bridge import keyed
    from bridge.ops.people import lookup
    from bridge.services import Services

    store = Services.build(settings).store  # sets the hash key, which empties the memos
    lookup(store, SHOP, "email", "looked.up@example.com")
    assert keyed.email_digest.cache_info().currsize == 0
