"""`bridge backfill` on real parts: the Admin API stand-in, Redis, an RQ worker, the Pipelines
stand-in. Historic orders take the live drain path as `backfill/order` envelopes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from bridge.backfill.run import QUEUE_CHUNK
from bridge.cli.main import main
from bridge.config.settings import Settings
from bridge.sources.shopify.graphql import rest_order
from bridge.store.facade import Keys, Store, now_ms
from bridge.store.wire import Envelope
from bridge.worker.queues import enqueue_drain
from tests.conftest import ROOT, SHOP, wait_until
from tests.pipelines_standin import PipelinesStandIn
from tests.shopify_admin_standin import AdminStandIn, bulk_lines, cursor_position, gql_order

EMPTY_QUERY = "e3b0c44298fc"  # the checkpoint names a job by its --query's sha256 prefix


def some_orders(n: int, customers: int) -> list[dict[str, Any]]:
    return [
        gql_order(
            1000 + i,
            customer_id=500 + i % customers,
            email=f"c{i % customers}@example.com",
            created=f"2023-01-{i + 1:02d}T10:00:00Z",
            total=f"{10 + i}.00",
            lines=[(70 + i % 3, "Coffee", f"{10 + i}.00", 1)],
        )
        for i in range(n)
    ]


@pytest.fixture
def admin() -> Iterator[AdminStandIn]:
    with AdminStandIn() as standin:
        yield standin


def kinds(calls: list[dict[str, Any]]) -> list[str]:
    return sorted(c.get("event") or c["type"] for c in calls)


def test_pages_with_a_throttled_answer_become_identify_calls(
    env: dict[str, str],
    admin: AdminStandIn,
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin.orders = some_orders(7, customers=4)
    admin.script("throttled", op="Orders")
    argv = ["backfill", "shopify", "--method", "paged", "--page-size", "3", "--rate", "1000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "customers identified: 4" in out and "orders counted: 7" in out
    assert "errors: 0" in out and "events sent: none" in out

    # Three pages, the first asked twice because the stand-in throttled it once.
    assert [cursor_position(r["after"]) for r in admin.order_requests()] == [None, None, 3, 6]
    assert "throttled" in admin.answers

    assert pipelines.wait_for(7, 30), pipelines.calls
    assert kinds(pipelines.calls) == ["identify"] * 7  # identify only without --events
    assert {c["userId"] for c in pipelines.calls} == {"500", "501", "502", "503"}
    # Each person's first identify carries the email; later ones only what changed.
    emails = {c["userId"]: c["traits"]["email"] for c in pipelines.calls if "email" in c["traits"]}
    assert set(emails) == {"500", "501", "502", "503"}
    assert all(e.endswith("@example.com") for e in emails.values())


def test_events_from_a_bulk_file_and_a_rerun_sends_the_same_message_ids(
    env: dict[str, str],
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    orders = some_orders(2, customers=2)
    orders[0] = gql_order(
        1000,
        customer_id=500,
        email="c0@example.com",
        created="2023-01-01T10:00:00Z",
        total="40.00",
        refunds=[(9001, "15.00", "2023-01-05T00:00:00Z")],
    )
    path = tmp_path / "bulk.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in bulk_lines(orders)))
    argv = ["backfill", "file", str(path), "--events", "--rate", "1000"]
    assert main(argv) == 0
    # Two customers' identifies, one more for the refund's new lifetime_value.
    assert pipelines.wait_for(6, 30), pipelines.calls
    first = list(pipelines.calls)
    assert kinds(first) == [
        "identify",
        "identify",
        "identify",
        "order_completed",
        "order_completed",
        "order_refunded",
    ]
    completed = [c for c in first if c.get("event") == "order_completed"]
    assert {c["timestamp"] for c in completed} == {
        "2023-01-01T10:00:00.000Z",
        "2023-01-02T10:00:00.000Z",
    }
    assert all(c["properties"]["backfill"] is True for c in completed)
    refund = next(c for c in first if c.get("event") == "order_refunded")
    assert refund["userId"] == "500" and refund["properties"]["amount"] == 15.0

    # A rerun inside the dedupe window queues nothing.
    capsys.readouterr()
    assert main(argv) == 0
    assert "2 already sent" in capsys.readouterr().out

    # Past the dedupe window (seen ids gone) the once-only state still sends nothing again.
    for key in redis.scan_iter(match=Keys(SHOP).seen("*")):
        redis.delete(key)
    assert main(argv) == 0
    assert not wait_until(lambda: len(pipelines.calls) > 6, 2.0)
    # With the bridge's state gone too, a rerun sends the very same messageIds.
    for key in redis.scan_iter(match=Keys(SHOP).prefix + "*"):
        redis.delete(key)
    assert main(argv) == 0
    assert pipelines.wait_for(12, 30)
    second = pipelines.calls[6:]
    assert sorted(c["messageId"] for c in second) == sorted(c["messageId"] for c in first)


def test_dry_run_prints_a_sample_and_queues_nothing(
    env: dict[str, str],
    settings: Settings,
    redis: redis_lib.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "rest.jsonl"
    path.write_text("".join(json.dumps(rest_order(o)) + "\n" for o in some_orders(3, 3)))
    assert main(["backfill", "file", str(path), "--dry-run", "--events"]) == 0
    out = capsys.readouterr().out
    assert "sample calls (not sent):" in out
    assert '"event":"order_completed"' in out
    assert "customers that would be identified: 3" in out
    assert "events that would be sent: 3" in out
    depth = Store(redis).depth(SHOP)
    assert (depth["inbound"], depth["outbox"], depth["parked"]) == (0, 0, 0)
    assert not list(redis.scan_iter(match=Keys(SHOP).seen("*")))


def test_interrupted_run_resumes_from_its_checkpoint(
    env: dict[str, str],
    admin: AdminStandIn,
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin.orders = some_orders(12, customers=12)
    checkpoint = Keys(SHOP).prefix + "backfill:shopify:paged:" + EMPTY_QUERY
    # A slow run (4 orders/s) so Ctrl-C lands mid-way, after at least one finished page.
    argv = ["backfill", "shopify", "--method", "paged", "--page-size", "2", "--rate", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert wait_until(lambda: redis.hget(checkpoint, "position") is not None, 30)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert b"interrupted" in out
    position = redis.hget(checkpoint, "position")
    assert position is not None
    asked_before = len(admin.order_requests())

    assert main([*argv[:-1], "1000"]) == 0
    assert f"resumed from checkpoint {position.decode()}" in capsys.readouterr().out
    assert admin.order_requests()[asked_before]["after"] == position.decode()
    assert redis.exists(checkpoint) == 0  # a finished run leaves no checkpoint

    # Every order exactly once, though the interrupted page was queued twice.
    assert pipelines.wait_for(12, 30)
    assert not wait_until(lambda: len(pipelines.calls) > 12, 1.5)
    assert sorted(c["userId"] for c in pipelines.calls) == sorted(str(500 + i) for i in range(12))


def _live(store: Store, settings: Settings, order: dict[str, Any]) -> None:
    from rq import Queue

    env = Envelope(
        shop=SHOP,
        topic="orders/paid",
        webhook_id=f"live-{order['id']}",
        body=json.dumps(order).encode(),
        received_ms=now_ms(),
    )
    store.ingest(env)
    enqueue_drain(Queue(settings.queue_name, connection=store.redis), SHOP)


def test_traits_from_the_order_index_with_refunds_currencies_and_live_orders(
    env: dict[str, str],
    settings: Settings,
    admin: AdminStandIn,
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
) -> None:
    orders = [
        gql_order(
            3001,
            customer_id=900,
            email="t@example.com",
            created="2023-01-01T00:00:00Z",
            total="50.00",
        ),
        # Paid in EUR; the shop's money is USD 110.00, which is what lifetime value sums.
        gql_order(
            3002,
            customer_id=900,
            email="t@example.com",
            created="2023-02-01T00:00:00Z",
            total="110.00",
            presentment=("100.00", "EUR"),
            refunds=[(9101, "30.00", "2023-02-03T00:00:00Z")],
        ),
        gql_order(
            3003,
            customer_id=900,
            email="t@example.com",
            created="2023-03-01T00:00:00Z",
            total="20.00",
        ),
    ]
    admin.orders = orders
    store = Store(redis)
    _live(store, settings, rest_order(orders[0]))  # seen live before the backfill
    assert pipelines.wait_for(2, 30)
    assert main(["backfill", "shopify", "--rate", "1000"]) == 0

    def identifies() -> list[dict[str, Any]]:
        return [c for c in pipelines.calls if c["type"] == "identify" and c["userId"] == "900"]

    # Identifies carry only what changed: the profile is what they add up to, in order.
    def profile() -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for call in identifies():
            merged.update(call["traits"])
        return merged

    assert wait_until(lambda: profile().get("last_order_id") == "3003", 30), identifies()
    assert wait_until(lambda: profile().get("lifetime_value") == 150.0, 10), identifies()
    traits = profile()
    assert traits["orders_count"] == 3  # 3001 counted once though seen live and backfilled
    assert traits["lifetime_value"] == 150.0  # 50 + 110 + 20 - 30 refunded
    assert traits["first_order_date"].startswith("2023-01-01")
    assert traits["last_order_date"].startswith("2023-03-01")
    assert traits["last_order_id"] == "3003"


def test_category_dates_use_the_cached_product_lookup(
    env: dict[str, str],
    admin: AdminStandIn,
    redis: redis_lib.Redis,
    tmp_path: Path,
) -> None:
    admin.products = {"81": "Coffee Beans", "82": "Filters"}
    a = rest_order(
        gql_order(
            5001,
            customer_id=800,
            email="k@example.com",
            created="2023-05-01T00:00:00Z",
            total="9.00",
            lines=[(81, "", "9.00", 1)],
        )
    )
    b = rest_order(
        gql_order(
            5002,
            customer_id=800,
            email="k@example.com",
            created="2023-06-01T00:00:00Z",
            total="9.00",
            lines=[(81, "", "4.00", 1), (82, "", "5.00", 1)],
        )
    )
    path = tmp_path / "rest.jsonl"
    # REST exports carry no product type: the lookup finds it.
    path.write_text("".join(json.dumps(o) + "\n" for o in (a, b)))
    assert main(["backfill", "file", str(path), "--categories", "--rate", "1000"]) == 0
    asked = [v["ids"] for op, v in admin.requests if op == "ProductTypes"]
    # Product 81 is looked up once; the second order only asks for the one it has not seen.
    assert asked == [["gid://shopify/Product/81"], ["gid://shopify/Product/82"]]
    assert redis.hget(Keys(SHOP).prefix + "product_types", "82") == b"Filters"
    queued = [Envelope.decode(raw) for raw in redis.lrange(Keys(SHOP).inbound, 0, -1)]
    (traits,) = [json.loads(e.body) for e in queued if e.topic == "backfill/traits"]
    assert traits["customer"] == {"id": "800", "email": "k@example.com"}
    assert traits["traits"] == {
        "last_order_date_coffee_beans": "2023-06-01T00:00:00.000Z",
        "last_order_date_filters": "2023-06-01T00:00:00.000Z",
    }


def parent_after_child(jsonl: bytes) -> bool:
    """True when some child line comes before its parent's line (refund children name a
    refund inline on its order's line, which has no line of its own: not counted)."""
    lines = [json.loads(raw) for raw in jsonl.splitlines()]
    own_lines = {line["id"] for line in lines}
    seen: set[str] = set()
    for line in lines:
        parent = line.get("__parentId")
        if parent in own_lines and parent not in seen:
            return True
        seen.add(line["id"])
    return False


def test_bulk_export_joins_children_by_parent_and_refunds_carry_their_lines(
    env: dict[str, str],
    admin: AdminStandIn,
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin.orders = some_orders(5, customers=5)
    admin.orders.append(
        gql_order(
            1100,
            customer_id=590,
            email="r@example.com",
            created="2023-02-01T00:00:00Z",
            total="30.00",
            lines=[(81, "Coffee", "10.00", 1), (82, "Filters", "20.00", 1)],
            refunds=[(9201, "20.00", "2023-02-03T00:00:00Z")],
            refund_lines={9201: [(1, 1)]},
        )
    )
    assert main(["backfill", "shopify", "--events", "--rate", "1000"]) == 0
    assert [op for op, _ in admin.requests if op == "Orders"] == []  # no paging: one export
    (bulk,) = admin.bulk.values()
    assert parent_after_child(bulk.jsonl)  # lines out of order, as Shopify may write them
    assert "groupObjects: false" in next(q for q in admin.queries if "bulkOperationRunQuery" in q)

    assert pipelines.wait_for(6 + 6 + 2, 30), pipelines.calls
    completed = {
        c["properties"]["order_id"]: c
        for c in pipelines.calls
        if c.get("event") == "order_completed"
    }
    assert len(completed) == 6
    assert [p["product_id"] for p in completed["1100"]["properties"]["items"]] == ["81", "82"]
    refund = next(c for c in pipelines.calls if c.get("event") == "order_refunded")
    assert refund["properties"]["amount"] == 20.0
    assert [p["product_id"] for p in refund["properties"]["items"]] == ["82"]


@pytest.mark.parametrize(
    ("status", "code", "advice"),
    [
        ("FAILED", "ACCESS_DENIED", "grant read_orders"),
        ("FAILED", "TIMEOUT", "narrow it with --query"),
        ("FAILED", "INTERNAL_SERVER_ERROR", "run the same command again later"),
        ("CANCELED", None, "was cancelled"),
    ],
)
def test_a_bulk_export_that_ends_badly_says_what_to_do(
    env: dict[str, str],
    admin: AdminStandIn,
    redis: redis_lib.Redis,
    capsys: pytest.CaptureFixture[str],
    status: str,
    code: str | None,
    advice: str,
) -> None:
    admin.orders = some_orders(2, customers=2)
    admin.finish_next_bulk(status, code)
    assert main(["backfill", "shopify"]) == 1  # the run found a problem
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert advice in err[-1] and err[-1].startswith("cartbridge: ")
    # The next run starts a new export rather than polling the failed one.
    assert main(["backfill", "shopify"]) == 0
    assert len(admin.bulk) == 2


def test_the_shops_bulk_query_limit_is_reported(
    env: dict[str, str], admin: AdminStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.backfill.admin import AdminClient
    from tests.shopify_admin_standin import TOKEN

    other = AdminClient(shop=SHOP, token=TOKEN, url=admin.url)
    for _ in range(5):  # five exports of other jobs still running: the 2026-01 limit
        other.start_bulk(None)
    other.close()
    assert main(["backfill", "shopify"]) == 1
    assert "wait for them to finish, or cancel one" in capsys.readouterr().err


def interrupt_once_past(
    env: dict[str, str], redis: redis_lib.Redis, checkpoint: str, argv: list[str], past: int
) -> tuple[bytes, bytes]:
    """Run the CLI in a process of its own; Ctrl-C once its checkpoint is past `past` orders."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert wait_until(lambda: int(redis.hget(checkpoint, "position") or 0) > past, 30)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    return out, err


def test_interrupted_bulk_backfill_resumes_and_an_expired_result_is_exported_again(
    env: dict[str, str],
    admin: AdminStandIn,
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin.orders = some_orders(24, customers=24)
    checkpoint = Keys(SHOP).prefix + "backfill:shopify:bulk:" + EMPTY_QUERY
    work = ["--work-dir", str(tmp_path)]
    argv = ["backfill", "shopify", "--rate", "4", "--batch-size", "2", *work]
    interrupt_once_past(env, redis, checkpoint, argv, 0)
    first_op = redis.hget(checkpoint, "op")
    assert first_op is not None and list(admin.bulk) == [first_op.decode()]
    reached = int(redis.hget(checkpoint, "position") or 0)

    # The same command picks up the same export where it stopped: no new operation, and the
    # file already downloaded is used again.
    out, err = interrupt_once_past(env, redis, checkpoint, argv, reached)
    assert f"resumed from checkpoint {reached}".encode() in out
    assert b"using the export already downloaded" in err
    assert list(admin.bulk) == [first_op.decode()] and len(admin.downloads) == 1

    # Shopify keeps the result 7 days; past that the same command exports again.
    admin.expire_bulk()
    capsys.readouterr()
    assert main(["backfill", "shopify", "--rate", "1000", *work]) == 0
    assert "running the export again" in capsys.readouterr().err
    assert len(admin.bulk) == 2
    assert redis.exists(checkpoint) == 0
    assert list(tmp_path.iterdir()) == []  # a finished run leaves no download behind

    # Every order exactly once: those queued before were skipped by the new export's run.
    assert pipelines.wait_for(24, 30)
    assert not wait_until(lambda: len(pipelines.calls) > 24, 1.5)
    assert sorted(c["userId"] for c in pipelines.calls) == sorted(str(500 + i) for i in range(24))


def test_events_after_an_identify_only_run_go_out_once_per_order(
    env: dict[str, str],
    settings: Settings,
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    orders = some_orders(3, customers=3)
    orders[0] = gql_order(
        1000,
        customer_id=500,
        email="c0@example.com",
        created="2023-01-01T10:00:00Z",
        total="40.00",
        refunds=[(9001, "15.00", "2023-01-05T00:00:00Z")],
    )
    # Order 1002 was seen live: its order_completed already went out.
    _live(Store(redis), settings, rest_order(orders[2]))
    assert pipelines.wait_for(2, 30)
    path = tmp_path / "bulk.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in bulk_lines(orders)))

    assert main(["backfill", "file", str(path), "--rate", "1000"]) == 0
    assert wait_until(lambda: len(pipelines.calls) >= 5, 30), pipelines.calls
    assert not [c for c in pipelines.calls[2:] if c["type"] == "track"]  # identify only

    capsys.readouterr()
    argv = ["backfill", "file", str(path), "--events", "--rate", "1000"]
    assert main(argv) == 0
    assert "events queued to be sent: 4" in capsys.readouterr().out

    def events() -> list[str]:
        return sorted(
            f"{c['event']}:{c['properties'].get('refund_id') or c['properties']['order_id']}"
            for c in pipelines.calls
            if c["type"] == "track"
        )

    expected = [
        "order_completed:1000",
        "order_completed:1001",
        "order_completed:1002",  # the live one, not again
        "order_refunded:9001",
    ]
    assert wait_until(lambda: events() == expected, 30), events()

    # The same events run again sends nothing new.
    calls = len(pipelines.calls)
    assert main(argv) == 0
    assert "3 already sent" in capsys.readouterr().out
    assert not wait_until(lambda: len(pipelines.calls) > calls, 1.5)


def test_dry_run_shows_the_traits_the_real_run_sends(
    env: dict[str, str], redis: redis_lib.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orders = some_orders(3, customers=1)  # one customer, three orders
    path = tmp_path / "rest.jsonl"
    path.write_text("".join(json.dumps(rest_order(o)) + "\n" for o in orders))
    assert main(["backfill", "file", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    samples = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    counts = [c["traits"]["orders_count"] for c in samples if "orders_count" in c["traits"]]
    assert counts == [1, 2, 3]
    assert samples[-1]["traits"]["lifetime_value"] == 10.0 + 11.0 + 12.0
    assert "customers that would be identified: 1" in out


def test_the_backfill_waits_while_the_queue_is_full_so_live_webhooks_are_not_starved(
    env: dict[str, str],
    settings: Settings,
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
    tmp_path: Path,
) -> None:
    import threading

    from tests.conftest import start_worker

    path = tmp_path / "rest.jsonl"
    orders = [
        gql_order(
            2000 + i,
            customer_id=800 + i,
            email=f"q{i}@example.com",
            created=f"2023-{i // 28 + 1:02d}-{i % 28 + 1:02d}T10:00:00Z",
            total="5.00",
        )
        for i in range(60)
    ]
    path.write_text("".join(json.dumps(rest_order(o)) + "\n" for o in orders))
    argv = ["backfill", "file", str(path), "--rate", "100000", "--max-backlog", "5"]
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(main(argv)))
    run.start()
    # No worker yet: the backfill fills the queue to its limit (looking before each chunk of
    # orders it queues) and then waits rather than queueing the file ahead of live webhooks.
    assert wait_until(lambda: redis.llen(Keys(SHOP).inbound) >= 5, 30)
    assert not wait_until(lambda: not run.is_alive(), 1.0)
    assert redis.llen(Keys(SHOP).inbound) <= 5 + QUEUE_CHUNK
    worker = start_worker(settings)
    try:
        run.join(60)
        assert codes == [0]
        assert pipelines.wait_for(60, 30)
    finally:
        worker.terminate()
        worker.wait(40)
