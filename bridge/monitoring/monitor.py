"""The shell around `volume`: load counts from Redis, evaluate, alert once, trim old buckets.

`check` is what both `bridge check` and the periodic worker job run. The periodic job
(`periodic`, enqueued as `jobs.check.check`) reschedules itself every VOLUME_CHECK_EVERY_S and
runs under a Redis lock, so with any number of workers one check runs at a time and an alert is
sent once: alert state lives in Redis (`cb:{shop}:alerts`, field `{event}:{kind}`), a firing
alert is re-sent only every ALERT_REPEAT_S, and its clearing is announced once. A lost chain is
restarted by the worker's sweep (`ensure_scheduled`); a duplicate chain ends itself (a run that
finds the last check too recent does not reschedule).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import orjson
import redis

from bridge.config.settings import Settings
from bridge.config.stores import stores_for
from bridge.monitoring import alerts, volume
from bridge.monitoring.volume import DetectorConfig, Series, Verdict
from bridge.store.facade import SHOPS_KEY, Store

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

LOCK_KEY = "cb:check:lock"
SCHEDULED_KEY = "cb:check:scheduled"
LAST_RUN_KEY = "cb:check:last"  # epoch ms of the last completed check (also a metric)
LOCK_MS = 120_000
FIRST_RUN_DELAY_S = 1.0  # a (re)started chain checks soon, then every VOLUME_CHECK_EVERY_S


def alerts_key(shop: str) -> str:
    return f"cb:{{{shop}}}:alerts"


def gauges_key(shop: str) -> str:
    """The last check's window count and baseline per event, for /metrics."""
    return f"cb:{{{shop}}}:volume"


def detector_config(settings: Settings) -> DetectorConfig:
    return DetectorConfig(
        window_s=settings.volume_window_min * 60,
        drop_fraction=settings.volume_drop_fraction,
        min_baseline=settings.volume_min_baseline,
        gap_factor=settings.volume_gap_factor,
        min_silence_s=settings.volume_min_silence_s,
    )


def _ints(raw: dict[bytes, bytes]) -> dict[int, int]:
    out: dict[int, int] = {}
    for k, v in raw.items():
        try:
            out[int(k)] = int(v)
        except ValueError:
            continue
    return out


def load_series(client: redis.Redis[bytes], shop: str, events: list[str]) -> dict[str, Series]:
    """Every key event's buckets and last-seen time for one shop, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.hgetall(volume.fine_key(shop, event))
        pipe.hgetall(volume.coarse_key(shop, event))
    pipe.hgetall(volume.last_seen_key(shop))
    replies = pipe.execute()
    seen = {k.decode(): int(v) for k, v in replies[-1].items()}
    out: dict[str, Series] = {}
    for i, event in enumerate(events):
        last_ms = seen.get(event)
        out[event] = Series(
            fine=_ints(replies[2 * i]),
            coarse=_ints(replies[2 * i + 1]),
            last_seen_s=None if last_ms is None else last_ms / 1000,
        )
    return out


def trim(client: redis.Redis[bytes], shop: str, series: dict[str, Series], now_s: float) -> int:
    """Delete buckets past their retention; returns how many fields went."""
    keep_fine, keep_coarse = volume.trim_before(now_s)
    pipe = client.pipeline(transaction=False)
    n = 0
    for event, s in series.items():
        old_fine = [str(b) for b in s.fine if b < keep_fine]
        old_coarse = [str(b) for b in s.coarse if b < keep_coarse]
        if old_fine:
            pipe.hdel(volume.fine_key(shop, event), *old_fine)
        if old_coarse:
            pipe.hdel(volume.coarse_key(shop, event), *old_coarse)
        n += len(old_fine) + len(old_coarse)
    if n:
        pipe.execute()
    return n


@dataclass(frozen=True)
class ShopVerdict:
    shop: str
    verdict: Verdict


def shop_zone(settings: Settings, shop: str) -> ZoneInfo:
    """The zone whose local hours the shop's volume is compared in: its store's `time_zone`
    in the stores file, else SHOP_TIMEZONE."""
    store = stores_for(settings).get(shop)
    return ZoneInfo(store.time_zone if store is not None else settings.shop_timezone)


def evaluate_shop(
    client: redis.Redis[bytes], settings: Settings, shop: str, now_s: float
) -> list[Verdict]:
    """Run the detector over one shop's key events (read only)."""
    tz = shop_zone(settings, shop)
    config = detector_config(settings)
    series = load_series(client, shop, settings.key_events)
    return [volume.evaluate(e, s, now_s, tz, config) for e, s in series.items()]


def shops(client: redis.Redis[bytes]) -> list[str]:
    return sorted(s.decode() for s in client.smembers(SHOPS_KEY))


def _alert(shop: str, v: Verdict, kind: str, resolved: bool = False) -> alerts.Alert:
    return alerts.Alert(
        shop=shop,
        event=v.event,
        kind=kind,
        window_count=v.window_count,
        baseline=v.baseline,
        basis=v.basis,
        silence_s=v.silence_s,
        resolved=resolved,
    )


def notify(
    client: redis.Redis[bytes],
    settings: Settings,
    shop: str,
    verdicts: list[Verdict],
    now_ms: int,
) -> list[alerts.Alert]:
    """Send new, repeating and resolved alerts for one shop; record state and gauges."""
    key = alerts_key(shop)
    state = {k.decode(): orjson.loads(v) for k, v in client.hgetall(key).items()}
    url = settings.alert_webhook_url.get_secret_value()
    sent: list[alerts.Alert] = []
    pipe = client.pipeline(transaction=False)
    for v in verdicts:
        pipe.hset(
            gauges_key(shop),
            mapping={
                f"{v.event}:window": v.window_count,
                f"{v.event}:baseline": -1 if v.baseline is None else v.baseline,
            },
        )
        for kind in (volume.DROP, volume.SILENCE):
            name = f"{v.event}:{kind}"
            prior = state.get(name)
            if kind in v.alerts:
                due = prior is None or now_ms - int(prior["sent"]) >= settings.alert_repeat_s * 1000
                if due:
                    alert = _alert(shop, v, kind)
                    alerts.send(alert, url)
                    sent.append(alert)
                    since = now_ms if prior is None else int(prior["since"])
                    pipe.hset(key, name, orjson.dumps({"since": since, "sent": now_ms}))
            elif prior is not None:
                alert = _alert(shop, v, kind, resolved=True)
                alerts.send(alert, url)
                sent.append(alert)
                pipe.hdel(key, name)
    pipe.execute()
    return sent


def check(
    client: redis.Redis[bytes],
    settings: Settings,
    *,
    now_s: float | None = None,
    only_shop: str | None = None,
    send: bool = True,
) -> list[ShopVerdict]:
    """Evaluate every shop (or one); with `send`, alert under the lock and trim old buckets.

    Raises redis errors. Returns every verdict; `bridge check` exits non-zero when any has alerts.
    """
    now_s = time.time() if now_s is None else now_s
    targets = [only_shop] if only_shop else shops(client)
    if not send:
        return [
            ShopVerdict(shop, v)
            for shop in targets
            for v in evaluate_shop(client, settings, shop, now_s)
        ]
    lock = Store(client)
    token = uuid.uuid4().hex
    if not lock.acquire(LOCK_KEY, token, LOCK_MS):
        raise CheckBusy("another check holds the lock")
    config = detector_config(settings)
    try:
        out: list[ShopVerdict] = []
        for shop in targets:
            series = load_series(client, shop, settings.key_events)
            tz = shop_zone(settings, shop)
            verdicts = [volume.evaluate(e, s, now_s, tz, config) for e, s in series.items()]
            notify(client, settings, shop, verdicts, int(now_s * 1000))
            trim(client, shop, series, now_s)
            out.extend(ShopVerdict(shop, v) for v in verdicts)
        client.set(LAST_RUN_KEY, int(now_s * 1000))
        return out
    finally:
        lock.release(LOCK_KEY, token)


class CheckBusy(Exception):
    """Another process is running the check right now (it will send any alert)."""


# --- the periodic job ------------------------------------------------------------------------
def ensure_scheduled(rt: Services) -> None:
    """Start the periodic check chain unless one is known to be alive (cheap: one SET NX)."""
    from bridge.worker.queues import enqueue_check

    every = rt.settings.volume_check_every_s
    if rt.redis.set(SCHEDULED_KEY, "1", nx=True, ex=every * 3):
        enqueue_check(rt.queue, delay_s=FIRST_RUN_DELAY_S)


def periodic(rt: Services, now_s: float | None = None) -> None:
    """Run the check with alerts, then schedule the next run. Raises redis errors."""
    from bridge.worker.queues import enqueue_check

    every = rt.settings.volume_check_every_s
    now_s = time.time() if now_s is None else now_s
    last = rt.redis.get(LAST_RUN_KEY)
    if last is not None and now_s * 1000 - int(last) < every * 500:
        return  # a second chain: the first one ran moments ago, so this one ends here
    try:
        check(rt.redis, rt.settings, now_s=now_s)
    except CheckBusy:
        return  # the lock holder's chain carries on
    rt.redis.set(SCHEDULED_KEY, "1", ex=every * 3)
    enqueue_check(rt.queue, delay_s=every)
