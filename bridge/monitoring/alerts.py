"""Alerts: one structured log line each, and a Slack-compatible POST to ALERT_WEBHOOK_URL if set.

`message` and `slack_payload` are pure; `send` does the I/O. A failed POST is logged and
reported as False, never raised: the log line and the metric still carry the alert, and the
periodic check must not die because a chat service is down. The webhook URL is a secret (Slack
puts its token in the path) and is never logged.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

log = logging.getLogger(__name__)

POST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Alert:
    """A volume alert for one shop and event; `resolved` announces that it has cleared."""

    shop: str
    event: str
    kind: str  # "drop" | "silence" | "spike"
    window_count: float
    baseline: float | None
    basis: str
    silence_s: float | None
    resolved: bool = False


def _minutes(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.0f} min"


def message(alert: Alert) -> str:
    """One human line: what is wrong, in which shop, against which baseline."""
    if alert.resolved:
        return f"RESOLVED {alert.kind} of {alert.event} in {alert.shop}"
    base = "n/a" if alert.baseline is None else f"{alert.baseline:g}"
    if alert.kind == "silence":
        return (
            f"{alert.event} not seen for {_minutes(alert.silence_s)} in {alert.shop} "
            f"(usually {base} per window, {alert.basis})"
        )
    if alert.kind == "spike":
        return (
            f"{alert.event} spiked in {alert.shop}: {alert.window_count:g} in the last "
            f"window vs a baseline of {base} ({alert.basis})"
        )
    return (
        f"{alert.event} volume dropped in {alert.shop}: {alert.window_count:g} in the last "
        f"window vs a baseline of {base} ({alert.basis})"
    )


def slack_payload(alert: Alert, at: datetime | None = None) -> dict[str, Any]:
    """Slack incoming-webhook JSON (`text` is also what Mattermost and most relays read)."""
    at = at or datetime.now(UTC)
    icon = ":white_check_mark:" if alert.resolved else ":rotating_light:"
    return {
        "text": f"{icon} cartbridge: {message(alert)}",
        "attachments": [
            {
                "color": "good" if alert.resolved else "danger",
                "fields": [
                    {"title": "shop", "value": alert.shop, "short": True},
                    {"title": "event", "value": alert.event, "short": True},
                    {"title": "kind", "value": alert.kind, "short": True},
                    {"title": "at", "value": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "short": True},
                ],
            }
        ],
    }


def post(url: str, payload: dict[str, Any], timeout_s: float = POST_TIMEOUT_S) -> bool:
    """POST JSON to `url`; True on 2xx. Never raises, never logs the URL."""
    if not url.startswith(("http://", "https://")):
        log.error("alert webhook not sent: ALERT_WEBHOOK_URL is not an http(s) URL")
        return False
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=orjson.dumps(payload),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            return 200 <= int(resp.status) < 300
    except urllib.error.HTTPError as exc:
        log.error("alert webhook refused", extra={"status": exc.code})
    except OSError as exc:
        log.error("alert webhook unreachable", extra={"error": type(exc).__name__})
    return False


def send(alert: Alert, webhook_url: str = "") -> bool:
    """Log the alert as one structured line, then POST it when a webhook URL is set."""
    fields = {
        "alert": "volume",
        "shop": alert.shop,
        "event": alert.event,
        "kind": alert.kind,
        "resolved": alert.resolved,
        "window_count": alert.window_count,
        "baseline": alert.baseline,
        "basis": alert.basis,
        "silence_s": None if alert.silence_s is None else round(alert.silence_s),
    }
    if alert.resolved:
        log.info(message(alert), extra=fields)
    else:
        log.error(message(alert), extra=fields)
    if not webhook_url:
        return True
    return post(webhook_url, slack_payload(alert))
