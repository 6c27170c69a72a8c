"""`bridge gdpr export`: print the exports that `customers/data_request` webhooks recorded.

Each export is one JSON line: the shop, the customer (id, email, phones), when it was requested,
and every record the bridge held naming that customer. Exports expire after GDPR_EXPORT_TTL_S.
"""

from __future__ import annotations

import argparse
import sys

import click
import orjson

from bridge.cli import common as cli_common
from bridge.config.settings import ConfigError, load_settings
from bridge.store import StoreError
from bridge.store.facade import open_store


def cmd_export(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"cartbridge: configuration error: {exc}\n")
        return 2
    store = open_store(settings)
    try:
        shops = [args.shop.strip().lower()] if args.shop else store.shops()
        found = 0
        for shop in shops:
            for raw in store.shop_data.exports(shop):
                export = orjson.loads(raw)
                customer = export.get("customer") or {}
                if args.customer and args.customer not in (
                    str(customer.get("id")),
                    str(customer.get("email")),
                ):
                    continue
                sys.stdout.write(orjson.dumps(export).decode() + "\n")
                found += 1
    except StoreError as exc:
        where = cli_common.where(settings.redis_url)
        sys.stderr.write(f"cartbridge: Redis at {where} unavailable: {type(exc).__name__}\n")
        return 2
    finally:
        store.close()
    if not found:
        where = cli_common.where(settings.redis_url)
        sys.stderr.write(f"cartbridge: no export found in Redis at {where}\n")
        return 1
    return 0


def register(group: click.Group) -> None:
    """Add `gdpr export` to the `bridge` command."""

    @group.group("gdpr", context_settings=cli_common.CONTEXT)
    def gdpr() -> None:
        """Compliance exports (customers/data_request).

        Each customers/data_request webhook records an export of what the bridge holds on that
        customer; these commands print them."""

    @gdpr.command("export")
    @click.option("--shop", show_default="every shop", help="This shop only.")
    @click.option("--customer", show_default="all", help="This customer only: an id or an email.")
    def export(shop: str | None, customer: str | None) -> int:
        """Print recorded customer exports as JSON lines. Exit 1 when none is found."""
        return cli_common.run(cmd_export, shop=shop, customer=customer)
