"""`bridge backfill shopify|file PATH` and `bridge reconcile --since 2h` (issue 5)."""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import orjson

from bridge.backfill.admin import (
    EMPTY_EMAIL_WARNING,
    AdminAccessDenied,
    AdminClient,
    AdminError,
    BulkError,
    BulkUrlExpired,
    check_visibility,
    version_warning,
)
from bridge.backfill.contracts import CONTRACTS_SCOPE
from bridge.backfill.run import (
    Backfill,
    BackfillOptions,
    Batch,
    Progress,
    Summary,
    count_file_orders,
    file_batches,
    file_job,
)
from bridge.cli import common as cli_common
from bridge.cli.common import first_bad_json_line
from bridge.config.settings import ConfigError, Settings, load_settings
from bridge.config.stores import stores_for
from bridge.sources import MappingError
from bridge.sources.shopify.graphql import rest_order, webhook_contract
from bridge.store.backfill import Checkpoint, ProductTypeCache
from bridge.store.wire import Envelope

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `2h`, `7d` -> timedelta. Raises argparse.ArgumentTypeError."""
    m = _DURATION.match(text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration like 2h or 30m: {text!r}")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _err(message: str) -> int:
    """A usage or configuration error: one line, exit 2."""
    sys.stderr.write(f"cartbridge: {message}\n")
    return 2


def _problem(message: str) -> int:
    """A run that found a problem (a failed export, an Admin API error): one line, exit 1."""
    sys.stderr.write(f"cartbridge: {message}\n")
    return 1


def _loud(message: str) -> None:
    sys.stderr.write(f"\n!!! WARNING: {message}\n\n")


def _report(summary: Summary, *, dry_run: bool, events: bool, elapsed_s: float) -> None:
    out = sys.stdout
    if dry_run and summary.samples:
        out.write("sample calls (not sent):\n")
        for call in summary.samples:
            out.write(orjson.dumps(call).decode() + "\n")
    out.write("backfill " + ("dry run " if dry_run else "") + "summary:\n")
    for line in summary.lines(dry_run=dry_run, events=events):
        out.write(f"  {line}\n")
    out.write(f"  elapsed: {elapsed_s:.1f}s\n")
    if summary.resumed_from:
        out.write(f"  resumed from checkpoint {summary.resumed_from}\n")
    if summary.interrupted:
        out.write("  interrupted: run the same command again to resume from the checkpoint\n")
    if summary.empty_emails:
        _loud(EMPTY_EMAIL_WARNING.format(n=summary.empty_emails, total=summary.with_customer))
    out.flush()


def _say(message: str) -> None:
    sys.stderr.write(f"cartbridge: {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Export:
    """A bulk operation's result on disk and where in it this run starts."""

    path: Path
    position: int
    orders: int | None


def _export_path(work_dir: Path, shop: str, op_id: str) -> Path:
    return work_dir / f"cartbridge-{shop}-bulk-{op_id.rsplit('/', 1)[-1]}.jsonl"


def bulk_export(
    admin: AdminClient, checkpoint: Checkpoint, search: str | None, work_dir: Path
) -> Export:
    """Run (or pick up) the bulk export of orders and download its JSONL to `work_dir`.

    The operation id and the position reached live in the checkpoint, so an interrupted run
    picks up the same operation. When its result URL has expired, the export runs again from
    position 0: orders already queued are then skipped by their deterministic ids.
    Raises BulkError (whose text says what to do) and AdminError.
    """
    state = checkpoint.load()
    op_id = state.get("op") or None
    position = int(state.get("position") or 0)
    for attempt in range(2):
        if op_id is None:
            op_id = admin.start_bulk(search)
            position = 0
            checkpoint.note(op=op_id, position="0")
            _say(f"started Shopify bulk export {op_id}; waiting for it to finish")
        try:
            status = admin.wait_bulk(op_id)
            path = _export_path(work_dir, admin.shop, op_id)
            if status.url is None:  # a store with no orders: an empty result
                path.write_bytes(b"")
            elif path.is_file() and path.stat().st_size == status.file_size:
                _say(f"using the export already downloaded to {path}")
            else:
                with path.open("wb") as fh:
                    admin.download(status.url, fh)
            return Export(path, position, status.root_count)
        except BulkUrlExpired as exc:
            if attempt:
                raise
            _say(f"{exc}: running the export again; orders already queued are skipped")
            _export_path(work_dir, admin.shop, op_id).unlink(missing_ok=True)
            op_id = None
        except BulkError:
            # A failed or cancelled operation is not picked up again by the next run.
            checkpoint.note(op="")
            raise
    raise AssertionError("unreachable")


def backfill_contracts(run: Backfill, admin: AdminClient, scopes: frozenset[str] | None) -> None:
    """Queue the shop's subscription contracts after its orders; a token that may not read
    them (no `read_own_subscription_contracts`, or refused) is a note in the summary, not a
    failure: most bridges are not the store's subscription app. Raises other AdminErrors."""
    denied = (
        f"not read (the token lacks {CONTRACTS_SCOPE}: Shopify shows an app only the "
        "contracts it created)"
    )
    if scopes is not None and CONTRACTS_SCOPE not in scopes:
        run.summary.contracts_note = denied
        return
    try:
        run.run_contracts(
            webhook_contract(node) for page in admin.contract_pages() for node in page.nodes
        )
    except AdminAccessDenied:
        run.summary.contracts_note = denied


def _warn_version(settings: Settings) -> None:
    warning = version_warning(settings.shopify_api_version, datetime.now(UTC).date())
    if warning:
        _loud(warning)


def _settings() -> Settings:
    return load_settings()


def cmd_backfill(args: argparse.Namespace) -> int:
    import time

    from bridge.backfill.reconcile import note_api_version
    from bridge.sources.shopify import ShopifySource
    from bridge.store.facade import connect, open_store
    from bridge.worker.processor import ProcessConfig
    from bridge.worker.queues import enqueue_drain

    try:
        settings = _settings()
    except ConfigError as exc:
        return _err(f"configuration error: {exc}")
    _warn_version(settings)
    shop = (args.shop or settings.shopify_shop).strip().lower()
    if not shop:
        return _err("SHOPIFY_SHOP is not set (or pass --shop)")
    admin: AdminClient | None = None
    if args.source == "shopify" or (settings.shopify_admin_token.get_secret_value() and shop):
        try:
            admin = AdminClient.from_settings(
                settings.model_copy(update={"shopify_shop": shop}),
                timeout_s=max(settings.http_timeout_s, 30.0),
            )
        except AdminError as exc:
            if args.source == "shopify":
                return _err(str(exc))
    from rq import Queue

    client = connect(settings.redis_url, tls_verify=settings.redis_tls_verify)
    store = open_store(settings, client=client)
    queue = Queue(settings.queue_name, connection=client)
    config = ProcessConfig.for_shop(settings, stores_for(settings).get(shop))
    opts = BackfillOptions(
        shop=shop,
        config=config,
        events=args.events,
        dry_run=args.dry_run,
        rate_per_s=args.rate or settings.backfill_rate_per_s,
        category_traits=args.categories or settings.backfill_category_traits,
        category_limit=settings.backfill_category_traits_max,
        max_backlog=args.max_backlog,
    )
    method = args.method
    if method == "auto":
        # A bulk operation for whole-store exports; cost-aware pages for a narrow --query.
        method = "paged" if args.query else "bulk"
    if args.source == "shopify":
        digest = hashlib.sha256((args.query or "").encode()).hexdigest()[:12]
        job = f"shopify:{method}:{digest}"
    else:
        job = file_job(Path(args.path))
    if args.events:
        # An events run is its own job: an identify-only run's checkpoint must not skip it.
        job += ":events"
    checkpoint = Checkpoint(client, shop, job)
    if args.restart:
        checkpoint.clear()
    types = (
        ProductTypeCache(client, shop, admin.product_types if admin else None)
        if opts.category_traits
        else None
    )
    products = None
    if admin is not None and not args.dry_run:
        from bridge.products.sync import prefetch

        reader = admin

        def products(ids: list[str]) -> list[Envelope]:
            return prefetch(reader, store, shop, config.metafields, ids)

    run = Backfill(
        opts,
        source=ShopifySource(),
        store=store,
        queue=queue,
        checkpoint=checkpoint,
        product_types=types,
        enqueue_drain=enqueue_drain,
        products=products,
    )
    position = None if args.dry_run else run.resume_position()
    started = time.monotonic()
    export: Export | None = None
    progress: Progress | None = None

    def _on_total(n: int) -> None:
        if progress is not None:
            progress.set_total(n)

    scopes: frozenset[str] | None = None
    try:
        if args.source == "shopify":
            assert admin is not None
            visibility = check_visibility(admin, datetime.now(UTC))
            scopes = visibility.scopes
            for warning in visibility.warnings:
                _loud(warning)
            if method == "bulk":
                work_dir = Path(args.work_dir or tempfile.gettempdir())
                export = bulk_export(admin, checkpoint, args.query, work_dir)
                if not args.dry_run:
                    run.summary.resumed_from = str(export.position) if export.position else None
                total = export.orders
                batches: Iterator[Batch] = file_batches(
                    export.path, start=export.position, size=args.batch_size, on_total=_on_total
                )
            else:
                total = admin.orders_count(args.query)
                batches = (
                    Batch([rest_order(n) for n in page.nodes], page.end_cursor or "")
                    for page in admin.order_pages(
                        search=args.query, after=position, page_size=args.page_size
                    )
                )
        else:
            path = Path(args.path)
            if not path.is_file():
                return _err(f"no such file: {path}")
            total = count_file_orders(path)
            batches = file_batches(
                path, start=int(position or 0), size=args.batch_size, on_total=_on_total
            )
        progress = Progress(total, sys.stderr, start=run.summary.orders)
        summary = run.run(batches, progress)
        if args.source == "shopify" and args.subscriptions and not summary.interrupted:
            assert admin is not None
            backfill_contracts(run, admin, scopes)
    except AdminAccessDenied as exc:
        return _err(f"the Admin API refused the token: {exc} (needs read_orders)")
    except BulkError as exc:
        return _problem(str(exc))
    except KeyboardInterrupt:
        # Stopped while the export ran or downloaded: its id is in the checkpoint.
        _say("interrupted: run the same command again to pick up the same export")
        return 130
    except AdminError as exc:
        _report(
            run.summary,
            dry_run=args.dry_run,
            events=args.events,
            elapsed_s=time.monotonic() - started,
        )
        return _problem(f"Admin API: {exc}; run the same command again to resume")
    finally:
        if admin is not None:
            note_api_version(admin, store, shop)
            admin.close()
        if export is not None and not run.summary.interrupted:
            export.path.unlink(missing_ok=True)
    _report(summary, dry_run=args.dry_run, events=args.events, elapsed_s=time.monotonic() - started)
    if summary.interrupted:
        return 130
    return 1 if summary.errors else 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from rq import Queue

    from bridge.backfill.reconcile import reconcile
    from bridge.store.facade import connect, open_store
    from bridge.worker.queues import enqueue_drain

    try:
        settings = _settings()
        admin = AdminClient.from_settings(settings, timeout_s=max(settings.http_timeout_s, 30.0))
    except (ConfigError, AdminError) as exc:
        return _err(f"configuration error: {exc}")
    _warn_version(settings)
    client = connect(settings.redis_url, tls_verify=settings.redis_tls_verify)
    store = open_store(settings, client=client)
    grace_s = settings.reconcile_grace_s if args.grace is None else args.grace
    try:
        report = reconcile(
            admin,
            store,
            Queue(settings.queue_name, connection=client),
            shop=admin.shop,
            window=args.since,
            grace=timedelta(seconds=grace_s),
            enqueue_drain=enqueue_drain,
            dry_run=args.dry_run,
        )
    except AdminError as exc:
        return _problem(f"Admin API: {exc}")
    finally:
        admin.close()
    print(report.line())
    if args.dry_run and report.missing_ids:
        print("missing order ids: " + " ".join(report.missing_ids[:50]))
    if report.contracts is not None:
        print(report.contracts.line())
        if args.dry_run and report.contracts.unseen_ids:
            print("unseen contract ids: " + " ".join(report.contracts.unseen_ids[:50]))
    return 0


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except argparse.ArgumentTypeError as exc:
        raise click.BadParameter(str(exc)) from None


def register(group: click.Group) -> None:
    """Add `backfill` and `reconcile` to the `bridge` command."""

    @group.command("backfill", context_settings=cli_common.CONTEXT)
    @click.argument("source", type=click.Choice(["shopify", "file"]), metavar="SOURCE")
    @click.argument("path", required=False, type=click.Path(dir_okay=False), metavar="[PATH]")
    @click.option("--events", is_flag=True, help="Also send historic order_completed events.")
    @click.option("--dry-run", is_flag=True, help="Map and summarise; queue nothing.")
    @click.option(
        "--rate",
        type=float,
        show_default="BACKFILL_RATE_PER_S",
        help="Orders queued per second.",
    )
    @click.option("--shop", show_default="SHOPIFY_SHOP", help="The shop domain.")
    @click.option(
        "--query",
        show_default="every order",
        help="Admin API order search, e.g. \"created_at:>='2024-01-01'\".",
    )
    @click.option(
        "--method",
        type=click.Choice(["auto", "bulk", "paged"]),
        default="auto",
        show_default=True,
        help="`shopify`: a bulk operation (whole store) or cost-aware pages; "
        "auto pages with --query.",
    )
    @click.option(
        "--page-size",
        type=click.IntRange(1, 250),
        default=250,
        show_default=True,
        help="Most orders per page (paged; fewer when the query's cost needs it).",
    )
    @click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=200,
        show_default=True,
        help="Orders per checkpoint (files and bulk exports).",
    )
    @click.option(
        "--max-backlog",
        type=click.IntRange(1),
        default=20,
        show_default=True,
        help="Pause while the shop's queue holds this many webhooks (live ones wait behind).",
    )
    @click.option(
        "--work-dir",
        type=click.Path(file_okay=False),
        show_default="TMPDIR",
        help="Where a bulk export is downloaded.",
    )
    @click.option(
        "--subscriptions/--no-subscriptions",
        default=True,
        show_default=True,
        help="`shopify`: also queue the subscription contracts this app can read "
        "(needs read_own_subscription_contracts).",
    )
    @click.option("--categories", is_flag=True, help="Per-category last order dates.")
    @click.option("--restart", is_flag=True, help="Ignore the checkpoint and start over.")
    def backfill(source: str, path: str | None, **options: Any) -> int:
        """Queue historic orders (Admin API or a JSONL file).

        SOURCE `shopify` reads them from the Admin GraphQL API, then the shop's subscription
        contracts; SOURCE `file` from PATH, a JSONL file (one REST order per line, or
        bulk-operation output). Resumes from its checkpoint. Exit 1 when orders or contracts
        failed, 130 when interrupted."""
        if source == "file":
            if not path:
                raise cli_common.InputError("bridge backfill file PATH: the path is missing")
            if not Path(path).is_file():
                raise cli_common.InputError(f"{path}: no such file")
        try:
            return cli_common.run(cmd_backfill, source=source, path=path, **options)
        except MappingError:
            bad = first_bad_json_line(Path(path)) if source == "file" and path else None
            if bad is None:
                raise
            raise cli_common.InputError(f"{path}:{bad[0]}: not JSON ({bad[1]})") from None

    @group.command("reconcile", context_settings=cli_common.CONTEXT)
    @click.option(
        "--since",
        callback=_duration,
        default="2h",
        metavar="DURATION",
        help="How far back to look for changed orders: 90s, 15m, 2h, 7d.",
    )
    @click.option(
        "--grace",
        type=float,
        show_default="RECONCILE_GRACE_S",
        help="Seconds of recent changes to leave alone.",
    )
    @click.option("--dry-run", is_flag=True, help="Report missing orders; queue nothing.")
    def reconcile(since: timedelta, grace: float | None, dry_run: bool) -> int:
        """Queue recent orders and subscription contracts the bridge missed.

        Orders changed within --since that the bridge holds no record of are queued, and every
        subscription contract changed within it (Shopify does not guarantee webhook
        delivery)."""
        return cli_common.run(cmd_reconcile, since=since, grace=grace, dry_run=dry_run)
