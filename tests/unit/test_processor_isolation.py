"""`process` parks the one webhook that fails and keeps the rest of its batch (issue 12).

Pure: `process` runs with its state loader injected, no Redis. These cover what the odd bodies of
tests/integration/test_poison.py cannot reach through the Shopify mapping: a webhook whose
decision fails after writing part of its state, and one whose state writes alone fail to encode.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bridge import keyed
from bridge.identity import decide as real_decide
from bridge.sources.shopify import ShopifySource
from bridge.store.facade import Keys
from bridge.store.wire import Envelope
from bridge.worker import processor
from bridge.worker.processor import ProcessConfig, process
from tests.conftest import SHOP, fixture_bytes

K = Keys(SHOP)


def cart(token: str) -> bytes:
    body = orjson.loads(fixture_bytes("carts-create"))
    body["id"] = body["token"] = token
    env = Envelope(SHOP, "carts/create", "w-" + token, orjson.dumps(body), received_ms=1)
    return env.encode()


def run(batch: list[bytes]) -> Any:
    return process(
        SHOP,
        batch,
        source=ShopifySource(),
        config=ProcessConfig.defaults(api_version=""),
        load=lambda names: dict.fromkeys(names),
        key_of=K.state,
    )


@pytest.mark.parametrize("how", ["raises after writing", "writes what cannot be encoded"])
def test_a_failing_webhook_is_parked_with_nothing_it_wrote(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    def decide(mapped: Any, view: Any, policy: Any, triggered_at: Any) -> Any:
        outs = real_decide(mapped, view, policy, triggered_at)
        if mapped.cart is not None and mapped.cart.cart_token == "bad":
            view.put("cart:bad", {"huge": 2**80})  # orjson refuses integers past 64 bits
            view.put("cart:good", {"clobbered": True})  # and overwrites another cart's record
            if how == "raises after writing":
                raise KeyError("shopper@example.com")
        return outs

    monkeypatch.setattr(processor, "decide", decide)
    commit = run([cart("good"), cart("bad"), cart("later")])
    [letter] = [orjson.loads(p) for p in (letter.encode() for letter in commit.letters)]
    assert letter["webhook_id"] == "w-bad"
    assert letter["reason"].startswith("processing failed: ")
    assert "shopper@example.com" not in letter["reason"]  # reasons are redacted
    written = {k: orjson.loads(v) for k, (v, _ttl) in commit.state_set.items()}
    assert K.state("cart:bad") not in written
    assert "clobbered" not in written[K.state("cart:good")]
    assert K.state("cart:later") in written
    assert commit.counters["webhooks:carts/create:parked"] == 1
    assert commit.counters["webhooks:carts/create:processed"] == 2
    assert {orjson.loads(c.partition(b"\n")[2])["properties"]["cart_id"] for c in commit.calls} == {
        "good",
        "later",
    }
    assert len(commit.seen) == 3  # the parked one is marked too: a redelivery is a duplicate


def test_the_api_version_webhooks_carry_is_counted_against_the_configured_one() -> None:
    def env(i: int, version: str | None, topic: str = "carts/create") -> bytes:
        body = orjson.loads(fixture_bytes("carts-create"))
        body["id"] = body["token"] = f"c{i}"
        e = Envelope(SHOP, topic, f"w{i}", orjson.dumps(body), api_version=version)
        return e.encode()

    batch = [env(1, "2026-10"), env(2, "2026-10"), env(3, "2025-07"), env(4, "<b>x"), env(5, None)]
    batch.append(env(6, None, topic="backfill/traits"))  # the bridge's own: carries no version
    commit = process(
        SHOP,
        batch,
        source=ShopifySource(),
        config=ProcessConfig.defaults(api_version="2026-10"),
        load=lambda names: dict.fromkeys(names),
        key_of=K.state,
    )
    versions = {k: v for k, v in commit.counters.items() if k.startswith("webhook_api_version:")}
    assert versions == {
        "webhook_api_version:2026-10:match": 2,
        "webhook_api_version:2025-07:mismatch": 1,
        "webhook_api_version:other:mismatch": 2,
    }


@pytest.mark.parametrize(
    "topic,fixture",
    [
        ("orders/paid", "orders-paid"),
        ("orders/create", "orders-create"),
        ("checkouts/update", "checkouts-update"),
        ("carts/update", "carts-update"),
        ("customers/update", "customers-create"),
    ],
)
def test_a_batch_of_fresh_shoppers_is_decided_in_one_load(topic: str, fixture: str) -> None:
    """Every record a webhook's decision reads is named up front (`keys_for`), so a batch of
    first-time shoppers costs one state lookup and one decide round, not two: a record named
    only after the first round (an email's subscription index, read when the email joins its
    customer) made every order batch decide twice (issue 19, the order path)."""
    loads: list[list[str]] = []

    def load(names: list[str]) -> dict[str, bytes | None]:
        loads.append(names)
        return dict.fromkeys(names)

    batch = []
    for i in range(3):
        body = orjson.loads(fixture_bytes(fixture))
        body["id"] = 5_000_000 + i
        body["test"] = False
        batch.append(
            Envelope(
                shop=SHOP,
                topic=topic,
                webhook_id=f"fresh-{i}",
                body=orjson.dumps(body),
                received_ms=0,
            ).encode()
        )
    commit = process(
        SHOP,
        batch,
        source=ShopifySource(),
        config=ProcessConfig.defaults(api_version=""),
        load=load,
        key_of=K.state,
    )
    assert not commit.letters
    assert commit.counters.get(f"webhooks:{topic}:processed") == 3
    assert len(loads) == 1, f"records read only after a first round: {loads[1:]}"


def test_no_email_or_token_outlives_its_batch_in_the_digests_memos() -> None:
    """The keyed digests are memoised (bridge/keyed.py) with the emails and tokens as the memos'
    keys: a long-lived worker must not keep them past the batch, nor an erased person's."""
    body = orjson.loads(fixture_bytes("orders-paid"))
    body["test"] = False
    seen: list[int] = []
    real = processor.decide

    def deciding(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        seen.append(keyed.email_digest.cache_info().currsize)
        return out

    processor.decide = deciding  # type: ignore[assignment]
    try:
        run([Envelope(SHOP, "orders/paid", "w-mail", orjson.dumps(body), received_ms=1).encode()])
    finally:
        processor.decide = real  # type: ignore[assignment]
    assert seen and seen[0] > 0, "the batch's decision used the memo"
    assert keyed.email_digest.cache_info().currsize == 0
    assert keyed.record_digest.cache_info().currsize == 0


def test_an_erasure_run_after_its_batch_leaves_no_email_in_the_digests_memos() -> None:
    """Compliance requests run once their batch is committed (worker/drain.py), after `process`
    forgot the digests: a customers/redact names the erased email (`needles_for`), which must
    not stay a memo key in an idle worker until some later batch."""
    from bridge.compliance import erasure

    class Requests:
        def compliance_requests(self, shop: str) -> list[bytes]:
            keyed.email_digest("erased.person@example.com")  # as `needles_for` does
            return []

    services: Any = type("Services", (), {"store": Requests()})()
    keyed.forget()
    erasure.run_pending(services, SHOP)
    assert keyed.email_digest.cache_info().currsize == 0
