"""`bridge gdpr export`: print the exports that `customers/data_request` webhooks recorded.

Each export is one JSON line: the shop, the customer (id, email, phones), when it was requested,
and every record the bridge held naming that customer. Exports expire after GDPR_EXPORT_TTL_S.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from bridge.compliance import EXPORT_SEGMENT
from bridge.settings import ConfigError, load_settings
from bridge.store import Keys, Store, connect


def cmd_export(args: argparse.Namespace) -> int:
    import redis

    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"cartbridge: configuration error: {exc}\n")
        return 2
    client = connect(settings.redis_url, tls_verify=settings.redis_tls_verify)
    try:
        shops = [args.shop.strip().lower()] if args.shop else Store(client).shops()
        found = 0
        for shop in shops:
            pattern = Keys(shop).prefix.replace("[", "\\[") + EXPORT_SEGMENT + "*"
            for key in sorted(client.scan_iter(match=pattern, count=1000)):
                raw = client.get(key)
                if raw is None:
                    continue
                export = orjson.loads(raw)
                customer = export.get("customer") or {}
                if args.customer and args.customer not in (
                    str(customer.get("id")),
                    str(customer.get("email")),
                ):
                    continue
                sys.stdout.write(orjson.dumps(export).decode() + "\n")
                found += 1
    except redis.RedisError as exc:
        sys.stderr.write(f"cartbridge: redis unavailable: {type(exc).__name__}\n")
        return 2
    finally:
        client.close()
    if not found:
        sys.stderr.write("cartbridge: no export found\n")
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `gdpr export` to the `bridge` command."""
    gdpr = sub.add_parser("gdpr", help="compliance exports (customers/data_request)")
    gsub = gdpr.add_subparsers(dest="gdpr_command", required=True)
    p = gsub.add_parser("export", help="print recorded customer exports as JSON lines")
    p.add_argument("--shop", help="only this shop (default: every shop)")
    p.add_argument("--customer", help="only this customer id (or email)")
    p.set_defaults(func=cmd_export)
