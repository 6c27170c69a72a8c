"""`bridge check`: run the volume-drop detector now; exit 1 when any key event alerts.

For cron jobs and uptime monitors: exit 0 = all well (or still learning), 1 = an alert (or no
shop seen at all: most likely the wrong Redis), 2 = the check could not run (configuration,
Redis). Read-only unless `--notify`, which also sends the
alerts (log line, ALERT_WEBHOOK_URL) through the same once-only state as the worker's job.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import click
import orjson

from bridge.cli import common as cli_common
from bridge.config.settings import ConfigError, load_settings
from bridge.store import StoreError


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.0f} min ago"


def cmd_check(args: argparse.Namespace) -> int:
    from bridge.monitoring import monitor
    from bridge.store.facade import open_store

    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"cartbridge: configuration error: {exc}\n")
        return 2
    from datetime import UTC, datetime

    from bridge.backfill.admin import version_warning

    warning = version_warning(settings.shopify_api_version, datetime.now(UTC).date())
    if warning:
        sys.stderr.write(f"cartbridge: WARNING: {warning}\n")
    store = open_store(settings)
    now_s = time.time()
    try:
        try:
            results = monitor.check(
                store, settings, now_s=now_s, only_shop=args.shop, send=args.notify
            )
        except monitor.CheckBusy:
            # The worker's check is sending alerts right now; report without sending.
            results = monitor.check(store, settings, now_s=now_s, only_shop=args.shop, send=False)
    except StoreError as exc:
        where = cli_common.where(settings.redis_url)
        sys.stderr.write(f"cartbridge: Redis at {where} unavailable: {type(exc).__name__}\n")
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
        # Most often the wrong Redis (another terminal's REDIS_URL): say which one was read.
        no_data = cli_common.no_data(settings.redis_url)
        sys.stderr.write(f"cartbridge: no shops seen yet: {no_data}\n")
        return 1
    return 1 if alerting else 0


def register(group: click.Group) -> None:
    """Add `check` to the `bridge` command."""

    @group.command("check", context_settings=cli_common.CONTEXT)
    @click.option("--shop", show_default="every shop seen", help="Check this shop only.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per shop and event.")
    @click.option("--notify", is_flag=True, help="Also send alerts (log, ALERT_WEBHOOK_URL).")
    def check(shop: str | None, as_json: bool, notify: bool) -> int:
        """Run the volume-drop check now.

        For cron and uptime monitors: exit 0 all well (or still learning), 1 an alert or no
        shop seen at all, 2 the check could not run."""
        return cli_common.run(cmd_check, shop=shop, json=as_json, notify=notify)
