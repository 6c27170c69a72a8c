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

from bridge.config.settings import Settings
from bridge.config.stores import stores_for
from bridge.monitoring import alerts, volume
from bridge.monitoring.volume import DetectorConfig, Series, Verdict
from bridge.store.facade import Store
from bridge.store.keys import CHECK_LAST_RUN_KEY, CHECK_LOCK_KEY, CHECK_SCHEDULED_KEY, Keys

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

LOCK_KEY = CHECK_LOCK_KEY
SCHEDULED_KEY = CHECK_SCHEDULED_KEY
LAST_RUN_KEY = CHECK_LAST_RUN_KEY  # epoch ms of the last completed check (also a metric)
LOCK_MS = 120_000
FIRST_RUN_DELAY_S = 1.0  # a (re)started chain checks soon, then every VOLUME_CHECK_EVERY_S


def alerts_key(shop: str) -> str:
    return Keys(shop).alerts


def gauges_key(shop: str) -> str:
    """The last check's window count and baseline per event, for /metrics."""
    return Keys(shop).volume_gauges


def detector_config(settings: Settings) -> DetectorConfig:
    return DetectorConfig(
        window_s=settings.volume_window_min * 60,
        drop_fraction=settings.volume_drop_fraction,
        min_baseline=settings.volume_min_baseline,
        gap_factor=settings.volume_gap_factor,
        min_silence_s=settings.volume_min_silence_s,
        spike_factor=settings.volume_spike_factor,
        spike_min_events=settings.volume_spike_min_events,
    )


def watched_events(settings: Settings) -> list[str]:
    """Every event the check reads: the key events (drops) and the spike events (rises)."""
    return list(dict.fromkeys([*settings.key_events, *settings.spike_events]))


def _evaluate(
    settings: Settings, series: dict[str, Series], now_s: float, tz: ZoneInfo
) -> list[Verdict]:
    config = detector_config(settings)
    # An event named in both lists is watched for a drop (the money events' rule wins).
    rising = set(settings.spike_events) - set(settings.key_events)
    return [volume.evaluate(e, s, now_s, tz, config, rises=e in rising) for e, s in series.items()]


def _ints(raw: dict[bytes, bytes]) -> dict[int, int]:
    out: dict[int, int] = {}
    for k, v in raw.items():
        try:
            out[int(k)] = int(v)
        except ValueError:
            continue
    return out


def load_series(store: Store, shop: str, events: list[str]) -> dict[str, Series]:
    """Every key event's buckets and last-seen time for one shop, in one round trip."""
    readings = store.monitoring.volume(shop, events)
    seen = {k.decode(): int(v) for k, v in readings.last_seen.items()}
    out: dict[str, Series] = {}
    for event, (fine, coarse) in zip(events, readings.buckets, strict=True):
        last_ms = seen.get(event)
        out[event] = Series(
            fine=_ints(fine),
            coarse=_ints(coarse),
            last_seen_s=None if last_ms is None else last_ms / 1000,
        )
    return out


def trim(store: Store, shop: str, series: dict[str, Series], now_s: float) -> int:
    """Delete buckets past their retention; returns how many fields went."""
    keep_fine, keep_coarse = volume.trim_before(now_s)
    fine: dict[str, list[str]] = {}
    coarse: dict[str, list[str]] = {}
    for event, s in series.items():
        fine[event] = [str(b) for b in s.fine if b < keep_fine]
        coarse[event] = [str(b) for b in s.coarse if b < keep_coarse]
    n = sum(map(len, fine.values())) + sum(map(len, coarse.values()))
    if n:
        store.monitoring.drop_buckets(shop, fine, coarse)
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


def evaluate_shop(store: Store, settings: Settings, shop: str, now_s: float) -> list[Verdict]:
    """Run the detector over one shop's key events (read only)."""
    tz = shop_zone(settings, shop)
    series = load_series(store, shop, watched_events(settings))
    return _evaluate(settings, series, now_s, tz)


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
    store: Store,
    settings: Settings,
    shop: str,
    verdicts: list[Verdict],
    now_ms: int,
) -> list[alerts.Alert]:
    """Send new, repeating and resolved alerts for one shop; record state and gauges."""
    state = {k.decode(): orjson.loads(v) for k, v in store.monitoring.alert_state(shop).items()}
    url = settings.alert_webhook_url.get_secret_value()
    sent: list[alerts.Alert] = []
    gauges: dict[str, dict[str, float]] = {}
    raised: dict[str, bytes] = {}
    cleared: list[str] = []
    ended: list[bytes] = []  # the cleared alerts' periods, for the ops console's charts
    for v in verdicts:
        gauges[v.event] = {
            f"{v.event}:window": v.window_count,
            f"{v.event}:baseline": -1 if v.baseline is None else v.baseline,
        }
        for kind in volume.KINDS:
            name = f"{v.event}:{kind}"
            prior = state.get(name)
            if kind in v.alerts:
                due = prior is None or now_ms - int(prior["sent"]) >= settings.alert_repeat_s * 1000
                if due:
                    alert = _alert(shop, v, kind)
                    alerts.send(alert, url)
                    sent.append(alert)
                    since = now_ms if prior is None else int(prior["since"])
                    raised[name] = orjson.dumps({"since": since, "sent": now_ms})
            elif prior is not None:
                alert = _alert(shop, v, kind, resolved=True)
                alerts.send(alert, url)
                sent.append(alert)
                cleared.append(name)
                ended.append(
                    orjson.dumps(
                        {
                            "event": v.event,
                            "kind": kind,
                            "since": prior.get("since"),
                            "until": now_ms,
                        }
                    )
                )
    store.monitoring.record_check(shop, gauges, raised, cleared, ended)
    return sent


def check(
    store: Store,
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
    targets = [only_shop] if only_shop else store.shops()
    if not send:
        return [
            ShopVerdict(shop, v)
            for shop in targets
            for v in evaluate_shop(store, settings, shop, now_s)
        ]
    token = uuid.uuid4().hex
    if not store.acquire(LOCK_KEY, token, LOCK_MS):
        raise CheckBusy("another check holds the lock")
    try:
        out: list[ShopVerdict] = []
        for shop in targets:
            series = load_series(store, shop, watched_events(settings))
            tz = shop_zone(settings, shop)
            verdicts = _evaluate(settings, series, now_s, tz)
            notify(store, settings, shop, verdicts, int(now_s * 1000))
            trim(store, shop, series, now_s)
            out.extend(ShopVerdict(shop, v) for v in verdicts)
        store.monitoring.set_last_run(int(now_s * 1000))
        return out
    finally:
        store.release(LOCK_KEY, token)


class CheckBusy(Exception):
    """Another process is running the check right now (it will send any alert)."""


# --- the periodic job ------------------------------------------------------------------------
def ensure_scheduled(services: Services) -> None:
    """Start the periodic check chain unless one is known to be alive (cheap: one SET NX)."""
    from bridge.worker.queues import enqueue_check

    every = services.settings.volume_check_every_s
    if services.store.claim(SCHEDULED_KEY, every * 3):
        enqueue_check(services.queue, delay_s=FIRST_RUN_DELAY_S)


def periodic(services: Services, now_s: float | None = None) -> None:
    """Run the check with alerts, then schedule the next run. Raises redis errors."""
    from bridge.worker.queues import enqueue_check

    every = services.settings.volume_check_every_s
    now_s = time.time() if now_s is None else now_s
    last = services.store.monitoring.last_run_ms()
    if last is not None and now_s * 1000 - last < every * 500:
        return  # a second chain: the first one ran moments ago, so this one ends here
    try:
        check(services.store, services.settings, now_s=now_s)
    except CheckBusy:
        return  # the lock holder's chain carries on
    services.store.mark(SCHEDULED_KEY, every * 3)
    enqueue_check(services.queue, delay_s=every)
