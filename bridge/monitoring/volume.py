"""Volume-drop detection for key events: is a shop's traffic of a money event unusually low?

Pure: counts come in as a `Series` (bucketed counts plus a last-seen time), the clock comes in as
`now_s`, the shop's time zone as a `ZoneInfo`; nothing here reads Redis, settings or the clock.
`monitor` is the shell that loads series from Redis, runs `evaluate` and sends alerts.

The rule, per shop and key event:
- window: the last `window_s` seconds of complete 5-minute buckets (the current bucket is still
  filling, so it is left out);
- baseline: the same local wall-clock window 1..4 weeks earlier in the shop's time zone (so a
  daylight-saving change does not shift Monday 20:00 to Monday 19:00), averaged over the weeks
  the series has history for; while it has less than one week, the trailing 24 h average scaled
  to the window; with less than 24 h of history the event is still "learning" and never alerts;
- drop: baseline >= `min_baseline` (quiet hours and quiet stores never page) and the window count
  < `drop_fraction` x baseline;
- silence: baseline >= `min_baseline`, nothing seen for at least `min_silence_s`, and the history
  expects at least `gap_factor` events in the silent stretch (i.e. the silence is `gap_factor`
  times the usual gap at that time of the week): a fast signal for busy stores that does not
  fire when a shop with opening hours closes.

Storage (written by the drain commit through `record`): per event a 5-minute hash (kept 26 h) and
an hourly hash (kept 29 days), fields = bucket start in epoch seconds, values = counts; and one
hash of last-seen times per shop (event -> epoch ms). Older hourly buckets are pro-rated linearly
when a window is not hour-aligned (time zones with half-hour offsets, windows ending at :35).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bridge.store.facade import Commit
from bridge.store.keys import shop_keys

FINE_S = 300
COARSE_S = 3600
FINE_KEEP_S = 26 * 3600
COARSE_KEEP_S = 29 * 86400
TRAILING_S = 86400

DROP = "drop"
SILENCE = "silence"
SPIKE = "spike"
KINDS = (DROP, SILENCE, SPIKE)


def fine_key(shop: str, event: str) -> str:
    return shop_keys(shop).volume_fine(event)


def coarse_key(shop: str, event: str) -> str:
    return shop_keys(shop).volume_coarse(event)


def last_seen_key(shop: str) -> str:
    return shop_keys(shop).last_seen


def record(commit: Commit, shop: str, event: str, at_ms: int) -> None:
    """Count one `event` seen at `at_ms` into `commit` (written in the drain's MULTI)."""
    if at_ms <= 0:
        return
    s = at_ms // 1000
    for key, size in ((fine_key(shop, event), FINE_S), (coarse_key(shop, event), COARSE_S)):
        slot = (key, str(s // size * size))
        commit.hash_incr[slot] = commit.hash_incr.get(slot, 0) + 1
    seen = (last_seen_key(shop), event)
    commit.hash_set[seen] = max(int(commit.hash_set.get(seen, 0)), at_ms)


def _prorated(buckets: Mapping[int, int], size: int, start: float, end: float) -> float:
    total = 0.0
    b = int(start // size * size)
    while b < end:
        n = buckets.get(b)
        if n:
            overlap = min(b + size, end) - max(b, start)
            total += n * overlap / size
        b += size
    return total


@dataclass(frozen=True)
class Series:
    """One event's counts: 5-minute and hourly buckets (start epoch s -> n), last seen (s)."""

    fine: Mapping[int, int]
    coarse: Mapping[int, int]
    last_seen_s: float | None = None

    @property
    def history_start_s(self) -> int | None:
        """Start of the oldest bucket with data: before it the series knows nothing."""
        starts = [*self.coarse.keys(), *self.fine.keys()]
        if not starts:
            return None
        return min(starts) // COARSE_S * COARSE_S

    def count(self, start: float, end: float, now_s: float) -> float:
        """Events in [start, end): exact 5-minute buckets when kept, else pro-rated hours."""
        if start >= now_s - FINE_KEEP_S + FINE_S:
            return _prorated(self.fine, FINE_S, start, end)
        return _prorated(self.coarse, COARSE_S, start, end)


@dataclass(frozen=True)
class DetectorConfig:
    window_s: int = 3600
    drop_fraction: float = 0.3
    min_baseline: float = 20.0
    gap_factor: float = 10.0
    min_silence_s: int = 900
    weeks: int = 4
    spike_factor: float = 3.0
    spike_min_events: int = 10


@dataclass(frozen=True)
class Verdict:
    """What the detector concluded for one event; `alerts` is empty when all is well."""

    event: str
    window_start_s: int
    window_end_s: int
    window_count: float
    baseline: float | None
    basis: str  # "same_hour_of_week" | "trailing_24h" | "learning"
    weeks_used: int
    last_seen_s: float | None
    silence_s: float | None
    usual_gap_s: float | None
    alerts: tuple[str, ...]


def same_hour_of_week(
    start_s: int, end_s: int, tz: ZoneInfo, weeks_back: int
) -> tuple[float, float]:
    """[start, end) moved back `weeks_back` weeks in local wall-clock time, as epoch seconds."""
    delta = timedelta(weeks=weeks_back)
    # Aware datetime minus timedelta is wall-clock arithmetic: 20:00 stays 20:00 across DST.
    local_start = datetime.fromtimestamp(start_s, tz) - delta
    local_end = datetime.fromtimestamp(end_s, tz) - delta
    return local_start.timestamp(), local_end.timestamp()


def evaluate(
    event: str,
    series: Series,
    now_s: float,
    tz: ZoneInfo,
    config: DetectorConfig,
    *,
    rises: bool = False,
) -> Verdict:
    """Compare the last window with its baseline; never raises on empty or odd data.

    `rises` watches the event for a spike instead of a drop or a silence (cancels, failed
    payments): the window holds at least `spike_min_events` and `spike_factor` times the
    baseline. Like a drop, it needs a baseline (a learning series never alerts)."""
    end = int(now_s) // FINE_S * FINE_S
    start = end - config.window_s
    window_count = series.count(start, end, now_s)
    history = series.history_start_s

    baseline: float | None
    weeks_used: list[int] = []
    if history is not None:
        for k in range(1, config.weeks + 1):
            s_k, e_k = same_hour_of_week(start, end, tz, k)
            if s_k >= history and e_k > s_k:
                weeks_used.append(k)

    def expected(a: float, b: float) -> float:
        """Events the history predicts for [a, b): the same local time in the used weeks,
        or the trailing 24 h average rate."""
        if weeks_used:
            total = 0.0
            for k in weeks_used:
                s_k, e_k = same_hour_of_week(int(a), int(b), tz, k)
                if e_k > s_k:
                    total += series.count(s_k, e_k, now_s) * (b - a) / (e_k - s_k)
            return total / len(weeks_used)
        return series.count(start - TRAILING_S, start, now_s) * (b - a) / TRAILING_S

    if weeks_used:
        baseline, basis = expected(start, end), "same_hour_of_week"
    elif history is not None and history <= start - TRAILING_S:
        baseline, basis = expected(start, end), "trailing_24h"
    else:
        baseline, basis = None, "learning"

    alerts: list[str] = []
    spike_floor = max(config.spike_min_events, config.spike_factor * (baseline or 0.0))
    if rises and baseline is not None and window_count >= spike_floor:
        alerts.append(SPIKE)
    busy = not rises and baseline is not None and baseline >= config.min_baseline
    if busy and baseline is not None and window_count < config.drop_fraction * baseline:
        alerts.append(DROP)
    silence = None
    if not rises and series.last_seen_s is not None:
        silence = max(0.0, now_s - series.last_seen_s)
    usual_gap = None
    if busy and silence is not None and silence > 0:
        # "Several times its usual gap", judged by what the history expects for the silent
        # stretch itself: a shop that closes at 21:00 is not silent at 21:15.
        quiet_from = max(series.last_seen_s or 0.0, now_s - TRAILING_S)
        due = expected(quiet_from, now_s)
        usual_gap = (now_s - quiet_from) / due if due > 0 else None
        if due >= config.gap_factor and silence >= config.min_silence_s:
            alerts.append(SILENCE)
    return Verdict(
        event=event,
        window_start_s=start,
        window_end_s=end,
        window_count=round(window_count, 3),
        baseline=None if baseline is None else round(baseline, 3),
        basis=basis,
        weeks_used=len(weeks_used),
        last_seen_s=series.last_seen_s,
        silence_s=silence,
        usual_gap_s=usual_gap,
        alerts=tuple(alerts),
    )


def trim_before(now_s: float) -> tuple[int, int]:
    """Oldest bucket starts to keep (5-minute, hourly): older fields are deleted by the check."""
    return int(now_s - FINE_KEEP_S), int(now_s - COARSE_KEEP_S)
