"""A shop's overview as the ops console draws it: webhooks and key events per 5 minutes over
24 h and per hour over 28 days, each with the volume check's baseline and alert periods, and
the shop's delivery health.

The baseline is the volume check's own (monitoring/volume.py): the same local wall-clock
window 1..4 weeks earlier, averaged over the weeks the series has history for; none while a
series has less than a week. Alert periods are the check's: alerts that ended (kept by
monitoring/monitor.py in the shop's alert history) and those still firing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from bridge.monitoring import volume
from bridge.monitoring.volume import COARSE_S, FINE_S, Series
from bridge.store.facade import Store

DAY_S = 86400
FINE_POINTS = DAY_S // FINE_S  # 288 five-minute buckets: the last 24 h
COARSE_POINTS = 28 * DAY_S // COARSE_S  # 672 hours: the last 28 days
WEEKS = 4
WEBHOOKS = "webhooks"


@dataclass(frozen=True)
class Span:
    """An alert period: [start_s, end_s) of one kind (drop, silence, spike); `ongoing` when
    still firing."""

    start_s: int
    end_s: int
    kind: str
    ongoing: bool = False


@dataclass(frozen=True)
class Chart:
    """One series over a range: counts per bucket from `start_s`, every `step_s`, with the
    baseline's expected count per bucket (None where there is no history)."""

    name: str
    start_s: int
    step_s: int
    counts: list[int]
    baseline: list[float | None]
    spans: list[Span]

    @property
    def total(self) -> int:
        return sum(self.counts)


def _ints(raw: dict[bytes, bytes]) -> dict[int, int]:
    out: dict[int, int] = {}
    for k, v in raw.items():
        try:
            out[int(k)] = int(v)
        except ValueError:
            continue
    return out


def baseline_series(
    series: Series, start_s: int, step_s: int, n: int, tz: ZoneInfo, now_s: float
) -> list[float | None]:
    """The expected count of each bucket: the same local time 1..WEEKS weeks earlier, averaged
    over the weeks with history (hourly counts pro-rated, as the check does)."""
    history = series.history_start_s
    out: list[float | None] = []
    if history is None:
        return [None] * n
    for i in range(n):
        a = start_s + i * step_s
        b = a + step_s
        total, weeks = 0.0, 0
        for k in range(1, WEEKS + 1):
            s_k, e_k = volume.same_hour_of_week(a, b, tz, k)
            if s_k < history or e_k <= s_k:
                continue
            # The coarse buckets keep 29 days: pro-rated hours, whatever the chart's step.
            total += volume._prorated(series.coarse, COARSE_S, s_k, e_k) * step_s / (e_k - s_k)
            weeks += 1
        out.append(round(total / weeks, 2) if weeks else None)
    return out


def _spans(event: str, history: list[bytes], state: dict[bytes, bytes], now_s: float) -> list[Span]:
    spans: list[Span] = []
    for raw in history:
        try:
            doc = orjson.loads(raw)
            if doc.get("event") == event and doc.get("since"):
                spans.append(
                    Span(int(doc["since"]) // 1000, int(doc["until"]) // 1000, str(doc["kind"]))
                )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue
    for name, raw in state.items():
        ev, _, kind = name.decode("utf-8", "replace").rpartition(":")
        if ev != event:
            continue
        try:
            since = int(orjson.loads(raw)["since"]) // 1000
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        spans.append(Span(since, int(now_s), kind, ongoing=True))
    return spans


@dataclass(frozen=True)
class ShopCharts:
    shop: str
    fine: list[Chart]  # 24 h per 5 minutes: webhooks first, then the key events
    coarse: list[Chart]  # 28 days per hour


def shop_charts(
    store: Store, shop: str, events: list[str], tz: ZoneInfo, now_s: float
) -> ShopCharts:
    """The shop's charts, read in two round trips (buckets and alert history; alert state)."""
    pairs, history = store.ops.charts(shop, events, int(now_s))
    state = store.monitoring.alert_state(shop)
    fine_end = int(now_s) // FINE_S * FINE_S + FINE_S  # the bucket filling now is drawn too
    fine_start = fine_end - FINE_POINTS * FINE_S
    coarse_end = int(now_s) // COARSE_S * COARSE_S + COARSE_S
    coarse_start = coarse_end - COARSE_POINTS * COARSE_S
    fine: list[Chart] = []
    coarse: list[Chart] = []
    for name, (f_raw, c_raw) in zip([*events, WEBHOOKS], pairs, strict=True):
        series = Series(fine=_ints(f_raw), coarse=_ints(c_raw))
        spans = _spans(name, history, state, now_s)
        fine.append(
            Chart(
                name,
                fine_start,
                FINE_S,
                [series.fine.get(fine_start + i * FINE_S, 0) for i in range(FINE_POINTS)],
                baseline_series(series, fine_start, FINE_S, FINE_POINTS, tz, now_s),
                spans,
            )
        )
        coarse.append(
            Chart(
                name,
                coarse_start,
                COARSE_S,
                [series.coarse.get(coarse_start + i * COARSE_S, 0) for i in range(COARSE_POINTS)],
                baseline_series(series, coarse_start, COARSE_S, COARSE_POINTS, tz, now_s),
                spans,
            )
        )
    # Webhooks first: what came in, then what it became.
    return ShopCharts(shop, [fine[-1], *fine[:-1]], [coarse[-1], *coarse[:-1]])


def health_rows(store: Store, shops: list[str]) -> list[dict[str, Any]]:
    """Every shop's delivery health at a glance (one round trip)."""
    rows: list[dict[str, Any]] = []
    for h in store.ops.health(shops):
        rows.append(
            {
                "shop": h.shop,
                "inbound": h.inbound,
                "outbox": h.outbox,
                "dead_letters": h.dead_letters,
                "waiting_people": h.waiting_people,
                "paused_ms": h.paused_ms,
                "last_delivered_ms": h.last_delivered_ms,
                "alerts": sorted(k.decode("utf-8", "replace") for k in h.alerts),
            }
        )
    return rows
