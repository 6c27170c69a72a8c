"""The volume-drop detector over synthetic counts on a simulated clock (no Redis, no sleeping).

A "store" is a rate function of local time; `history` turns it into the 5-minute and hourly
buckets the drain would have written, and `checks` runs the detector every 5 minutes over a
stretch of simulated time, like the worker's periodic job.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.monitoring import volume
from bridge.monitoring.volume import COARSE_S, FINE_S, DetectorConfig, Series, Verdict, evaluate
from bridge.store.facade import Commit

BERLIN = ZoneInfo("Europe/Berlin")
CONFIG = DetectorConfig()  # 60 min window, fraction 0.3, min baseline 20, gap x10, >= 15 min

Rate = Callable[[datetime], float]  # events per hour at a local time


def ts(tz: ZoneInfo, *args: int) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp())  # type: ignore[misc]


class Store:
    """Counts per 5-minute bucket drawn from `rate`, from `start` until `until` (epoch s)."""

    def __init__(self, rate: Rate, tz: ZoneInfo, start: int, until: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.buckets: dict[int, int] = {}
        for b in range(start // FINE_S * FINE_S, until, FINE_S):
            mean = rate(datetime.fromtimestamp(b, tz)) * FINE_S / 3600
            # +-20 % noise, rounded stochastically: real traffic is never a flat line.
            x = mean * rng.uniform(0.8, 1.2)
            n = int(x) + (1 if rng.random() < x - int(x) else 0)
            if n:
                self.buckets[b] = n

    def series_at(self, now_s: int) -> Series:
        """What Redis would hold at `now_s`, as far as the detector looks: it reads nothing past
        its window's end, so later buckets may stay in (which keeps the simulation fast)."""
        if getattr(self, "_frozen", None) is not self.buckets:
            self._frozen = self.buckets
            self._fine = dict(self.buckets)
            self._coarse: dict[int, int] = {}
            for b, n in self.buckets.items():
                h = b // COARSE_S * COARSE_S
                self._coarse[h] = self._coarse.get(h, 0) + n
            self._seen = sorted(b for b, n in self.buckets.items() if n)
        i = bisect.bisect_right(self._seen, now_s - FINE_S) - 1
        last = self._seen[i] + FINE_S - 1 if i >= 0 else None
        return Series(fine=self._fine, coarse=self._coarse, last_seen_s=last)


def checks(
    store: Store, tz: ZoneInfo, start: int, end: int, every_s: int = 300
) -> Iterator[Verdict]:
    for now in range(start, end, every_s):
        yield evaluate("order_completed", store.series_at(now), now, tz, CONFIG)


def shop_hours(open_h: int, close_h: int, per_hour: float) -> Rate:
    return lambda t: per_hour if open_h <= t.hour < close_h else 0.0


def daily_curve(peak: float) -> Rate:
    """A web shop's day: busy evenings, a near-empty night."""
    shape = [0.05, 0.03, 0.02, 0.02, 0.03, 0.05, 0.1, 0.2, 0.35, 0.45, 0.5, 0.55,
             0.6, 0.55, 0.5, 0.5, 0.55, 0.65, 0.8, 0.95, 1.0, 0.9, 0.6, 0.2]  # fmt: skip
    return lambda t: peak * shape[t.hour] * (1.3 if t.weekday() >= 5 else 1.0)


# --- the calendar -------------------------------------------------------------------------------


def test_same_hour_of_week_follows_local_wall_clock_across_dst() -> None:
    # Berlin springs forward on 2026-03-29: a week before Monday 30 March 20:00 CEST is
    # Monday 23 March 20:00 CET, 167 h earlier, not 168.
    start = ts(BERLIN, 2026, 3, 30, 20, 0)
    s1, _ = volume.same_hour_of_week(start, start + 3600, BERLIN, 1)
    assert start - s1 == 167 * 3600
    assert datetime.fromtimestamp(s1, BERLIN).hour == 20
    # ... and falls back on 2026-10-25: a week before is 169 h earlier.
    start = ts(BERLIN, 2026, 10, 26, 20, 0)
    s1, _ = volume.same_hour_of_week(start, start + 3600, BERLIN, 1)
    assert start - s1 == 169 * 3600


# --- a steady store -----------------------------------------------------------------------------


def test_a_steady_store_never_alerts_over_a_week_of_checks() -> None:
    start = ts(BERLIN, 2026, 5, 1, 0, 0)
    end = start + 6 * 7 * 86400
    store = Store(daily_curve(peak=240), BERLIN, start, end)
    verdicts = list(checks(store, BERLIN, end - 7 * 86400, end))
    assert len(verdicts) == 7 * 288
    assert [v for v in verdicts if v.alerts] == []
    assert {v.basis for v in verdicts} == {"same_hour_of_week"}
    assert {v.weeks_used for v in verdicts} == {4}


def test_daylight_saving_change_does_not_shift_the_baseline() -> None:
    # A store open 09:00-21:00 local. The checks run over the week after Berlin's spring
    # change; a baseline taken 168 h back in UTC would compare 21:00-22:00 (closed) with
    # 20:00-21:00 (open) and page every evening, and miss drops in the first open hour.
    start = ts(BERLIN, 2026, 2, 22, 0, 0)
    dst_week = ts(BERLIN, 2026, 3, 29, 3, 0)
    store = Store(shop_hours(9, 21, 120), BERLIN, start, dst_week + 8 * 86400)
    verdicts = list(checks(store, BERLIN, dst_week, dst_week + 7 * 86400))
    assert [v for v in verdicts if v.alerts] == []

    closed = ts(BERLIN, 2026, 3, 30, 22, 0)  # window 21:00-22:00 local, shop just closed
    v = evaluate("order_completed", store.series_at(closed), closed, BERLIN, CONFIG)
    assert v.weeks_used == 4
    assert v.baseline == 0 and v.window_count == 0

    # The same clock read in UTC terms (a zone without DST) does see the shift: the test
    # would catch a detector that compares UTC hours.
    utc = ZoneInfo("UTC")
    v_utc = evaluate("order_completed", store.series_at(closed), closed, utc, CONFIG)
    assert v_utc.baseline is not None and v_utc.baseline > 60
    assert volume.DROP in v_utc.alerts


def test_autumn_change_too() -> None:
    start = ts(BERLIN, 2026, 9, 20, 0, 0)
    change = ts(BERLIN, 2026, 10, 25, 4, 0)
    store = Store(shop_hours(9, 21, 120), BERLIN, start, change + 8 * 86400)
    verdicts = list(checks(store, BERLIN, change, change + 7 * 86400))
    assert [v for v in verdicts if v.alerts] == []


# --- a quiet store ------------------------------------------------------------------------------


def test_a_quiet_store_never_pages() -> None:
    # Three orders an hour at best and whole hours with none: below the minimum baseline,
    # neither silence nor a drop is meaningful, even when it stops for a day.
    start = ts(BERLIN, 2026, 5, 1, 0, 0)
    end = start + 6 * 7 * 86400
    store = Store(daily_curve(peak=3), BERLIN, start, end)
    assert [v for v in checks(store, BERLIN, end - 7 * 86400, end) if v.alerts] == []
    stopped = {b: n for b, n in store.buckets.items() if b < end - 86400}
    store.buckets = stopped
    assert [v for v in checks(store, BERLIN, end - 86400, end) if v.alerts] == []


# --- a real drop --------------------------------------------------------------------------------


def busy_store_that_breaks(at: int, keep: float) -> tuple[Store, int]:
    start = at - 5 * 7 * 86400
    store = Store(daily_curve(peak=300), BERLIN, start, at + 2 * 3600)
    store.buckets = {b: (n if b < at else int(n * keep)) for b, n in store.buckets.items()}
    return store, start


def first_alert(store: Store, start: int, end: int, kind: str) -> int | None:
    for now in range(start, end, 300):
        v = evaluate("order_completed", store.series_at(now), now, BERLIN, CONFIG)
        if kind in v.alerts:
            return now
    return None


def test_a_store_that_stops_dead_is_paged_within_minutes() -> None:
    broke = ts(BERLIN, 2026, 6, 12, 19, 2)  # Friday evening, a theme deploy breaks checkout
    store, _ = busy_store_that_breaks(broke, keep=0.0)
    before = [
        evaluate("order_completed", store.series_at(t), t, BERLIN, CONFIG)
        for t in range(broke - 6 * 3600, broke, 300)
    ]
    assert [v for v in before if v.alerts] == []
    silent_at = first_alert(store, broke, broke + 7200, volume.SILENCE)
    drop_at = first_alert(store, broke, broke + 7200, volume.DROP)
    assert silent_at is not None and drop_at is not None
    assert silent_at - broke <= CONFIG.min_silence_s + 300  # floor 15 min, checks every 5
    assert drop_at - broke <= 3600  # the window is 60 min
    assert silent_at < drop_at


def test_a_partial_drop_alerts_as_a_drop_not_as_silence() -> None:
    broke = ts(BERLIN, 2026, 6, 12, 19, 2)
    store, _ = busy_store_that_breaks(broke, keep=0.1)  # nine in ten orders lost
    drop_at = first_alert(store, broke, broke + 7200, volume.DROP)
    assert drop_at is not None and drop_at - broke <= 3600
    assert first_alert(store, broke, broke + 7200, volume.SILENCE) is None


def test_a_mild_dip_is_not_a_drop() -> None:
    broke = ts(BERLIN, 2026, 6, 12, 19, 2)
    store, _ = busy_store_that_breaks(broke, keep=0.6)
    assert first_alert(store, broke, broke + 7200, volume.DROP) is None


# --- short history ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history_days", "basis", "weeks"),
    [
        (0.5, "learning", 0),
        (3, "trailing_24h", 0),
        (10, "same_hour_of_week", 1),
        (40, "same_hour_of_week", 4),
    ],
)
def test_history_length_picks_the_baseline(history_days: float, basis: str, weeks: int) -> None:
    now = ts(BERLIN, 2026, 6, 12, 15, 0)
    store = Store(lambda t: 120.0, BERLIN, now - int(history_days * 86400), now)
    v = evaluate("order_completed", store.series_at(now), now, BERLIN, CONFIG)
    assert (v.basis, v.weeks_used) == (basis, weeks)
    if basis != "learning":
        assert v.baseline == pytest.approx(120, rel=0.15)


def test_learning_never_alerts_even_at_zero() -> None:
    now = ts(BERLIN, 2026, 6, 12, 15, 0)
    series = Series(fine={now - 20 * 3600: 500}, coarse={now // 3600 * 3600 - 20 * 3600: 500})
    v = evaluate("order_completed", series, now, BERLIN, CONFIG)
    assert v.basis == "learning" and v.alerts == ()


def test_empty_series_is_learning() -> None:
    v = evaluate("order_completed", Series({}, {}), 1_800_000_000, BERLIN, CONFIG)
    assert (v.basis, v.window_count, v.alerts) == ("learning", 0, ())


# --- what the drain writes ----------------------------------------------------------------------


def test_record_counts_into_both_resolutions_and_keeps_the_latest_sighting() -> None:
    commit = Commit()
    t = 1_780_000_123_456  # ms
    volume.record(commit, "s.myshopify.com", "added_to_cart", t)
    volume.record(commit, "s.myshopify.com", "added_to_cart", t - 400_000)
    volume.record(commit, "s.myshopify.com", "added_to_cart", 0)  # unknown receive time: skipped
    fine = volume.fine_key("s.myshopify.com", "added_to_cart")
    coarse = volume.coarse_key("s.myshopify.com", "added_to_cart")
    sec = t // 1000
    assert commit.hash_incr[(fine, str(sec // 300 * 300))] == 1
    assert commit.hash_incr[(fine, str((sec - 400) // 300 * 300))] == 1
    assert commit.hash_incr[(coarse, str(sec // 3600 * 3600))] == 2
    assert commit.hash_set[(volume.last_seen_key("s.myshopify.com"), "added_to_cart")] == t
    assert fine.startswith("cb:{s.myshopify.com}:")  # same hash tag as the drain's other keys


def cancels(at: int, per_hour: float, wave: int) -> Store:
    """A subscription store's cancels: a few an hour for five weeks, then `wave` extra in the
    hour after `at` (a price-change email went out)."""
    store = Store(lambda _: per_hour, BERLIN, at - 5 * 7 * 86400, at + 3600)
    for i in range(wave):
        b = (at + i * 3600 // max(wave, 1)) // FINE_S * FINE_S
        store.buckets[b] = store.buckets.get(b, 0) + 1
    return store


def spike_at(store: Store, start: int, end: int) -> int | None:
    for now in range(start, end, 300):
        v = evaluate("subscription_canceled", store.series_at(now), now, BERLIN, CONFIG, rises=True)
        assert volume.DROP not in v.alerts and volume.SILENCE not in v.alerts
        if volume.SPIKE in v.alerts:
            return now
    return None


def test_a_wave_of_cancels_is_a_spike_within_the_hour() -> None:
    at = ts(BERLIN, 2026, 6, 12, 10, 2)
    store = cancels(at, per_hour=2, wave=40)
    assert spike_at(store, at - 6 * 3600, at) is None  # the usual trickle never alerts
    found = spike_at(store, at, at + 3600 + 300)
    assert found is not None and found - at <= 3600


def test_a_few_more_cancels_than_usual_is_no_spike() -> None:
    at = ts(BERLIN, 2026, 6, 12, 10, 2)
    # Twice the usual rate, and a tiny store tripling from 1 to 3 an hour: neither alerts.
    assert spike_at(cancels(at, per_hour=6, wave=6), at, at + 3600) is None
    assert spike_at(cancels(at, per_hour=1, wave=2), at, at + 3600) is None


def test_a_spike_needs_a_baseline() -> None:
    at = ts(BERLIN, 2026, 6, 12, 10, 2)
    young = Store(lambda _: 0, BERLIN, at - 3600, at + 3600)
    young.buckets[at // FINE_S * FINE_S] = 500
    v = evaluate("payment_failed", young.series_at(at + 600), at + 600, BERLIN, CONFIG, rises=True)
    assert v.basis == "learning" and v.alerts == ()
