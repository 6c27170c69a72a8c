"""`bridge check`: run the volume-drop detector now; exit 1 when any key event alerts.

For cron jobs and uptime monitors: exit 0 = all well (or still learning), 1 = an alert, 2 = the
check could not run (configuration, Redis). Read-only unless `--notify`, which also sends the
alerts (log line, ALERT_WEBHOOK_URL) through the same once-only state as the worker's job.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson
import redis

from bridge.settings import ConfigError, load_settings


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.0f} min ago"


def cmd_check(args: argparse.Namespace) -> int:
    from bridge import monitor
    from bridge.store import connect

    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"cartbridge: configuration error: {exc}\n")
        return 2
    from datetime import UTC, datetime

    from bridge.shopify_admin import version_warning

    warning = version_warning(settings.shopify_api_version, datetime.now(UTC).date())
    if warning:
        sys.stderr.write(f"cartbridge: WARNING: {warning}\n")
    client = connect(settings.redis_url, tls_verify=settings.redis_tls_verify)
    now_s = time.time()
    try:
        try:
            results = monitor.check(
                client, settings, now_s=now_s, only_shop=args.shop, send=args.notify
            )
        except monitor.CheckBusy:
            # The worker's check is sending alerts right now; report without sending.
            results = monitor.check(client, settings, now_s=now_s, only_shop=args.shop, send=False)
    except redis.RedisError as exc:
        sys.stderr.write(f"cartbridge: redis unavailable: {type(exc).__name__}\n")
        return 2
    alerting = False
    for r in results:
        v = r.verdict
        alerting = alerting or bool(v.alerts)
        if args.json:
            row: dict[str, Any] = {"shop": r.shop, **v.__dict__, "alerts": list(v.alerts)}
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
            continue
        status = ",".join(v.alerts).upper() if v.alerts else "ok"
        base = "-" if v.baseline is None else f"{v.baseline:g}"
        print(
            f"{status:<14} {r.shop} {v.event}: window={v.window_count:g} baseline={base} "
            f"({v.basis}, {v.weeks_used} wk) last seen {_ago(v.silence_s)}"
        )
    if not results:
        print("no shops seen yet")
    return 1 if alerting else 0


def register(sub: Any) -> None:
    """Add `check` to the `bridge` command's subparsers."""
    p = sub.add_parser("check", help="volume-drop check now; exit 1 on alert (for cron)")
    p.add_argument("--shop", help="check one shop (default: every shop seen)")
    p.add_argument("--json", action="store_true", help="one JSON object per shop and event")
    p.add_argument(
        "--notify", action="store_true", help="also send alerts (log, ALERT_WEBHOOK_URL)"
    )
    p.set_defaults(func=cmd_check)
