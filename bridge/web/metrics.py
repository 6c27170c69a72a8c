"""GET /metrics: the whole bridge's counters in Prometheus text format, read from Redis.

Every process (gunicorn workers, RQ workers) writes its counters into Redis, so any web process
answers a scrape with the same totals: this view keeps no process-local counter. One pipelined
round trip reads up to SHOPS_PER_ROUND_TRIP shops. With METRICS_TOKEN set, the scrape must send
`Authorization: Bearer <token>`; without it /metrics answers 401 unless METRICS_PUBLIC is set
(the exposition names every shop and its volumes). A Redis outage answers 503 (the scrape fails,
`up` goes to 0). `BridgeCollector` turns the Redis reads into prometheus_client metric families
in the app's own registry; `generate_latest` writes the text format.

Shops are those the bridge has seen (SHOPS_KEY) and those the stores file names (a configured
shop whose every webhook is refused has never been seen). Rejections naming any other shop are
counted in one hash (store REJECTED_KEY) and exported under the shop label "other", so
made-up shop names cannot create series.

Counter naming convention (hash `cb:{shop}:stats`, HINCRBY by anyone), mapped by PATTERN so that a
counter added elsewhere shows up without touching this file:
- `webhooks:{topic}:{result}` -> cartbridge_webhooks_total{shop, topic, result}
  (accepted = queued by the web, duplicate = skipped by the drain: another copy claimed or
  processed the id,
  ignored, bad_signature, stale, rejected, processed, parked, skipped...);
- `events:{event}:{outcome}` -> cartbridge_events_total{shop, event, outcome}
  (queued, delivered, suppressed, held, parked, dead_lettered...);
- `{family}:{what}` -> cartbridge_{family}_total{shop, outcome=what}
  (`calls:delivered` -> cartbridge_calls_total{outcome="delivered"}, `deliver:retries`...);
- `{family}:{name}:{outcome}` (other families) -> cartbridge_{family}_total{shop, name, outcome};
- `latency_in_{ms}` (and `latency_le_{ms}`, written before), `latency_ms_sum`, `latency_count`
  -> the histogram
  cartbridge_delivery_latency_seconds (webhook received -> Pipelines 2xx), buckets in seconds;
- a name without a colon -> cartbridge_{name}_total{shop}.
Names are lower-cased and anything outside [a-z0-9_] becomes `_`. Keep one label shape per family
(do not mix `x:a` and `x:a:b`). Gauges (not counters) are read from their own keys: queue depths,
dead-letter size, delivery paused, last-seen time per key event, volume-check window/baseline and
firing alerts.
"""

from __future__ import annotations

import contextlib
import hmac
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from bridge.delivery.deliver import LATENCY_BUCKETS_MS
from bridge.monitoring import volume
from bridge.store import StoreError
from bridge.store.facade import Store
from bridge.store.monitoring import ShopReadings

if TYPE_CHECKING:
    from bridge.services import Services

bp = Blueprint("metrics", __name__)

# The text format generate_latest writes with its default (legacy) name escaping: the header
# prometheus_client itself sends with it when the scrape does not negotiate another format.
# (CONTENT_TYPE_LATEST announces 1.0.0, which the library pairs with a negotiated escaping.)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SHOPS_PER_ROUND_TRIP = 100
# The shop label of REJECTED_KEY's counters: real shops are domains, so it names none of them.
OTHER_SHOPS = "other"
_UNSAFE = re.compile(r"[^a-z0-9_]")
# Where create_app's registry lives (app.extensions), next to its Services.
REGISTRY_EXTENSION = "cartbridge.metrics"


def _name(raw: str) -> str:
    return _UNSAFE.sub("_", raw.lower()).strip("_") or "unnamed"


def _le(ms: int) -> str:
    """A bucket's `le` label in seconds, as the series have always been named (`60`, `0.25`)."""
    seconds = ms / 1000
    return str(int(seconds)) if seconds.is_integer() else repr(seconds)


_KINDS: dict[str, type[CounterMetricFamily | GaugeMetricFamily]] = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
}


class Exposition:
    """Metric families in the order first added; prometheus_client renders them.

    `family` is the exposed name (a counter's ends in `_total`). Samples are added with their own
    label sets (add_sample, not add_metric's fixed label names): a counter's labels come from its
    name in Redis (see `counter_family`), and one shape per family is a convention, not a check."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def add(
        self,
        family: str,
        kind: Literal["counter", "gauge"],
        help_: str,
        value: float,
        labels: dict[str, str],
    ) -> None:
        metric = self.families.get(family)
        if metric is None:
            metric = self.families[family] = _KINDS[kind](family, help_)
        metric.add_sample(family, labels, value)

    def histogram(
        self, family: str, help_: str, shop: str, buckets: list[tuple[str, float]], sum_: float
    ) -> None:
        """One shop's histogram; `buckets` are (le, cumulative count), ending with +Inf."""
        metric = self.families.get(family)
        if not isinstance(metric, HistogramMetricFamily):
            metric = self.families[family] = HistogramMetricFamily(family, help_, labels=["shop"])
        metric.add_metric([shop], buckets, sum_)

    def metrics(self) -> list[Metric]:
        return list(self.families.values())


def counter_family(name: str) -> tuple[str, dict[str, str]] | None:
    """Map one stats-hash counter name to (metric name, labels); None for histogram parts."""
    if name.startswith("latency_"):
        return None
    parts = name.split(":")
    if len(parts) == 1:
        return f"cartbridge_{_name(name)}_total", {}
    family = _name(parts[0])
    if len(parts) == 2:
        return f"cartbridge_{family}_total", {"outcome": parts[1]}
    middle, last = ":".join(parts[1:-1]), parts[-1]
    if family == "webhooks":
        return "cartbridge_webhooks_total", {"topic": middle, "result": last}
    if family == "events":
        return "cartbridge_events_total", {"event": middle, "outcome": last}
    return f"cartbridge_{family}_total", {"name": middle, "outcome": last}


_HELP = {
    "cartbridge_webhooks_total": "Shopify and Recharge webhooks by topic and result (web, worker).",
    "cartbridge_events_total": "Canonical events by name and outcome.",
}


def add_stats(exp: Exposition, shop: str, stats: dict[str, int]) -> None:
    """Counters and the latency histogram of one shop's stats hash."""
    cumulative: dict[int, int] = {}  # counted under each bound (written before issue 19)
    within: dict[int, int] = {}  # counted in the one bucket a latency falls in
    for name in sorted(stats):
        value = stats[name]
        if name.startswith(("latency_le_", "latency_in_")):
            with contextlib.suppress(ValueError):
                into = cumulative if name.startswith("latency_le_") else within
                into[int(name[len("latency_le_") :])] = value
            continue
        mapped = counter_family(name)
        if mapped is None:
            continue
        family, labels = mapped
        help_ = _HELP.get(family, f"Bridge counter {family[len('cartbridge_') : -len('_total')]}.")
        exp.add(family, "counter", help_, value, {"shop": shop, **labels})
    count = stats.get("latency_count")
    if count is None:
        return
    exp.histogram(
        "cartbridge_delivery_latency_seconds",
        "Webhook received to Pipelines 2xx, per delivered call.",
        shop,
        [*((_le(ms), n) for ms, n in _buckets(cumulative, within)), ("+Inf", count)],
        stats.get("latency_ms_sum", 0) / 1000,
    )


def _buckets(cumulative: dict[int, int], within: dict[int, int]) -> list[tuple[int, int]]:
    """The histogram's cumulative buckets, every bound delivery counts in: each bound's own
    older cumulative count plus every per-bucket count at or under it."""
    running = 0
    out = []
    for bound in sorted(cumulative.keys() | within.keys() | set(LATENCY_BUCKETS_MS)):
        running += within.get(bound, 0)
        out.append((bound, cumulative.get(bound, 0) + running))
    return out


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | bytes | str) else 0


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def collect(
    store: Store,
    key_events: Iterable[str],
    configured: Iterable[str] = (),
    spike_events: Iterable[str] = (),
) -> list[Metric]:
    """Every metric family for every shop seen or `configured`. Raises StoreError.

    Key events are watched for drops and silences, spike events (not also key events) for
    rises: each gets the alert kinds of its rule."""
    events = list(dict.fromkeys([*key_events, *spike_events]))
    rising = set(spike_events) - set(key_events)
    exp = Exposition()
    seen, rejected_raw = store.monitoring.totals()
    shops = sorted(seen | set(configured))
    exp.add("cartbridge_shops", "gauge", "Shops the bridge has seen.", len(seen), {})
    last_run = store.monitoring.last_run_ms()
    if last_run is not None:
        exp.add(
            "cartbridge_volume_check_last_run_timestamp_seconds",
            "gauge",
            "When the volume check last completed (epoch seconds).",
            int(last_run) / 1000,
            {},
        )
    add_stats(exp, OTHER_SHOPS, _counts(rejected_raw))
    for i in range(0, len(shops), SHOPS_PER_ROUND_TRIP):
        chunk = shops[i : i + SHOPS_PER_ROUND_TRIP]
        for shop, readings in zip(chunk, store.monitoring.shops(chunk), strict=True):
            _add_shop(exp, shop, events, readings, rising)
    return exp.metrics()


def _counts(raw: dict[bytes, bytes]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for k, v in raw.items():
        try:
            counts[k.decode()] = int(v)
        except ValueError:
            continue
    return counts


def _add_shop(
    exp: Exposition, shop: str, events: list[str], r: ShopReadings, rising: set[str]
) -> None:
    stats_raw, inbound, inwork, out, outwork, dead, paused, seen, firing, gauges = r
    assert isinstance(stats_raw, dict)
    add_stats(exp, shop, _counts(stats_raw))
    depth_help = "Items waiting: inbound webhooks or outbound calls (including in flight)."
    depth = {"inbound": _int(inbound) + _int(inwork), "outbox": _int(out) + _int(outwork)}
    for queue, n in depth.items():
        exp.add("cartbridge_queue_depth", "gauge", depth_help, n, {"shop": shop, "queue": queue})
    exp.add(
        "cartbridge_dead_letters",
        "gauge",
        "Parked webhooks and dead-lettered calls.",
        _int(dead),
        {"shop": shop},
    )
    exp.add(
        "cartbridge_delivery_paused",
        "gauge",
        "1 while delivery is paused: Pipelines rejects the write key, or the URL is wrong.",
        1 if _int(paused) else 0,
        {"shop": shop},
    )
    assert isinstance(seen, dict) and isinstance(firing, dict) and isinstance(gauges, dict)
    last = _decode(seen)
    for event in sorted({*events, *last}):
        if event in last:
            exp.add(
                "cartbridge_event_last_seen_timestamp_seconds",
                "gauge",
                "When an event was last produced (webhook receive time, epoch seconds).",
                int(last[event]) / 1000,
                {"shop": shop, "event": event},
            )
    active = _decode(firing)
    g = _decode(gauges)
    for event in events:
        for kind in (volume.SPIKE,) if event in rising else (volume.DROP, volume.SILENCE):
            exp.add(
                "cartbridge_volume_alert",
                "gauge",
                "1 while a volume alert (drop, silence or spike) fires for a watched event.",
                1 if f"{event}:{kind}" in active else 0,
                {"shop": shop, "event": event, "kind": kind},
            )
        if f"{event}:window" in g:
            exp.add(
                "cartbridge_volume_window_events",
                "gauge",
                "Key events in the last check's window.",
                float(g[f"{event}:window"]),
                {"shop": shop, "event": event},
            )
        baseline = float(g.get(f"{event}:baseline", "-1"))
        if baseline >= 0:
            exp.add(
                "cartbridge_volume_baseline_events",
                "gauge",
                "The window's expected count (same hour of week, or trailing 24 h).",
                baseline,
                {"shop": shop, "event": event},
            )


class BridgeCollector(Collector):
    """The bridge's counters and gauges, read from Redis at each scrape.

    `collect` reads everything before it returns: a Redis error propagates out of it (and out of
    generate_latest), so a failed read answers 503, never a partial exposition."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> list[Metric]:
        services = self.services
        settings = services.settings
        return collect(
            services.store, settings.key_events, services.stores.stores, settings.spike_events
        )


@bp.record_once
def _register_collector(state: BlueprintSetupState) -> None:
    # One registry per app, not prometheus_client's global one: it holds only the bridge's
    # metrics (no process metrics of whichever process answers), and each app its own Services.
    registry = CollectorRegistry()
    registry.register(BridgeCollector(state.app.extensions["cartbridge"]))
    state.app.extensions[REGISTRY_EXTENSION] = registry


def _header_bytes(value: str) -> bytes:
    # WSGI hands header values over as latin-1-decoded text (PEP 3333): encoding them back gives
    # the bytes the client sent. Anything else (an in-process client) is taken as UTF-8.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _authorized(token: str, public: bool) -> bool:
    """Whether this scrape may read /metrics: the bearer token (compared as bytes, in constant
    time, whatever characters it holds), or no token at all only when the operator made the
    metrics public on purpose."""
    if not token:
        return public
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        _header_bytes(value.strip()), token.encode()
    )


@bp.get("/metrics")
def metrics() -> Response:
    services: Services = current_app.extensions["cartbridge"]
    settings = services.settings
    if not _authorized(settings.metrics_token.get_secret_value(), settings.metrics_public):
        return Response(
            "unauthorized\n", 401, {"WWW-Authenticate": "Bearer"}, mimetype="text/plain"
        )
    try:
        body = generate_latest(current_app.extensions[REGISTRY_EXTENSION])
    except StoreError:
        return Response("redis unavailable\n", 503, mimetype="text/plain")
    return Response(body, 200, content_type=CONTENT_TYPE)
