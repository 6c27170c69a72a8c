"""The webhook endpoint's checks answer in the order web/webhooks.py's docstring lists them: a
request failing several checks at once gets the earliest one's answer. Each check has a way to
fail it, and every adjacent pair (and every tail of the list) is failed together, through the
real app on a private Redis."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from bridge.config.settings import Settings
from bridge.web.app import create_app
from tests.conftest import SECRET, SHOP, free_port, webhook_headers

URL = "/webhooks/shopify"
MAX_BODY = 2048
BODY = b'{"id": 1, "token": "cart-1"}'
OLD = "2020-01-01T00:00:00.000Z"

# The docstring's checks, in its order, each with the ways a test request fails it. Check 4
# fails for an unknown shop or for a wrong signature; check 7 is two filters, stale first.
CHECKS: list[list[str]] = [
    ["method"],  # 1. 405
    ["size"],  # 2. 413
    ["headers"],  # 3. 400
    ["unknown_shop", "signature"],  # 4. 401
    ["content_type"],  # 5. 415
    ["json"],  # 6. 400
    ["stale"],  # 7. 200 stale
    ["ignored"],  # 7. 200 ignored
    ["redis_down"],  # 8. 503
]
ORDER = [way for ways in CHECKS for way in ways]
ADJACENT = [
    (first, second) for earlier, later in pairwise(CHECKS) for first in earlier for second in later
]

# Bodies of the answers; None: only the status is part of the promise (the two 401s may share
# one body, so that they tell nobody whether a shop exists).
ANSWERS: dict[str, tuple[int, Any]] = {
    "method": (405, {"error": "method not allowed"}),
    "size": (413, {"error": "body too large"}),
    "headers": (400, {"error": "missing header X-Shopify-Webhook-Id"}),
    "unknown_shop": (401, None),
    "signature": (401, None),
    "content_type": (415, {"error": "content type must be application/json"}),
    "json": (400, {"error": "body is not a JSON object"}),
    "stale": (200, {"ignored": "stale"}),
    "ignored": (200, {"ignored": True}),
    "redis_down": (503, None),
}


@pytest.fixture
def clients(settings: Settings, tmp_path: Path) -> Iterator[dict[bool, FlaskClient]]:
    """Two apps: one on the private Redis, one whose Redis is not there (keyed by `redis_down`).
    The stores file names the one shop served and there is no default store, so that any other
    shop is unknown."""
    stores = tmp_path / "stores.toml"
    stores.write_text(f'[stores."{SHOP}"]\nwebhook_secret = "{SECRET}"\n')
    limited = settings.model_copy(
        update={
            "max_body_bytes": MAX_BODY,
            "bridge_stores_file": str(stores),
            "shopify_webhook_secret": SecretStr(""),
            "identity_hash_key": SecretStr("check-order-identity-key"),
        }
    )
    down = limited.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    yield {False: create_app(limited).test_client(), True: create_app(down).test_client()}


def send(clients: dict[bool, FlaskClient], broken: set[str]) -> tuple[int, Any]:
    """Send one webhook that fails exactly the checks named in `broken`."""
    assert broken <= set(ORDER)
    body = b"[1]" if "json" in broken else BODY
    if "size" in broken:
        body += b" " * (MAX_BODY + 1 - len(body))  # still the same JSON, one byte too long
    topic = "collections/update" if "ignored" in broken else "carts/create"
    headers = webhook_headers(
        body,
        topic,
        shop="nobody.myshopify.com" if "unknown_shop" in broken else SHOP,
        secret="not-the-secret" if "signature" in broken else SECRET,
        triggered_at=OLD if "stale" in broken else None,
    )
    if "headers" in broken:
        del headers["X-Shopify-Webhook-Id"]
    if "content_type" in broken:
        headers["Content-Type"] = "text/plain"
    client = clients["redis_down" in broken]
    method = client.put if "method" in broken else client.post
    resp = method(URL, data=body, headers=headers)
    return resp.status_code, resp.json


def expect(clients: dict[bool, FlaskClient], broken: set[str], first: str) -> None:
    status, body = send(clients, broken)
    want_status, want_body = ANSWERS[first]
    assert status == want_status, (sorted(broken), body)
    if want_body is not None:
        assert body == want_body, sorted(broken)


def test_a_request_failing_no_check_is_queued(clients: dict[bool, FlaskClient]) -> None:
    assert send(clients, set()) == (200, {"ok": True})


@pytest.mark.parametrize("check", ORDER)
def test_each_way_of_failing_fails_its_check(clients: dict[bool, FlaskClient], check: str) -> None:
    # Without this, a pair below could pass because one of its two failures did nothing.
    expect(clients, {check}, check)


@pytest.mark.parametrize(("first", "second"), ADJACENT, ids=lambda c: str(c))
def test_of_two_adjacent_failed_checks_the_earlier_answers(
    clients: dict[bool, FlaskClient], first: str, second: str
) -> None:
    expect(clients, {first, second}, first)


@pytest.mark.parametrize("start", range(len(ORDER)), ids=lambda i: ORDER[i])
def test_failing_every_check_from_one_on_gets_that_checks_answer(
    clients: dict[bool, FlaskClient], start: int
) -> None:
    expect(clients, set(ORDER[start:]), ORDER[start])
