"""`bridge dlq`: list, show, replay and purge dead letters (see bridge/delivery/deadletters.py).

    bridge dlq list [--shop S] [--since TIME] [--limit N]
    bridge dlq show ID [--shop S]
    bridge dlq replay (--all | --since TIME | ID...) [--shop S]
    bridge dlq purge [--before TIME | ID...] [--shop S]      (no selector: every letter)

TIME is ISO-8601 (`2026-11-28T12:00:00Z`) or an age (`90m`, `6h`, `2d`). Replay puts payloads
back on their queue with their messageIds and wakes the shop's jobs; a progress bar shows on a
terminal. Output is JSON lines (one letter each), or one JSON object for `show`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

import click
import orjson

from bridge.cli import common as cli_common
from bridge.delivery.deadletters import DeadLetters
from bridge.ops import letters as ops_letters
from bridge.ops.letters import parse_time

if TYPE_CHECKING:
    from bridge.services import Services


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = total
        self.out = out
        self.width = width
        self.done = 0
        self.on = out.isatty() and total > 0

    def add(self, n: int) -> None:
        self.done += n
        if self.on:
            filled = self.width * self.done // self.total
            bar = "#" * filled + "." * (self.width - filled)
            self.out.write(f"\r[{bar}] {self.done}/{self.total}")
            self.out.flush()

    def close(self) -> None:
        if self.on:
            self.out.write("\n")
            self.out.flush()


def _shops(args: argparse.Namespace, services: Services) -> list[str]:
    return [args.shop] if args.shop else list(services.store.shops())


def cmd_dlq(args: argparse.Namespace) -> int:
    from bridge.config.settings import ConfigError, load_settings
    from bridge.services import Services
    from bridge.store.facade import now_ms

    try:
        services = Services.build(load_settings())
    except ConfigError as exc:
        sys.stderr.write(f"cartbridge: configuration error: {exc}\n")
        return 2
    letters = DeadLetters(services.store)
    now = now_ms()
    shops = _shops(args, services)
    if not shops:
        # Most often the wrong Redis (another terminal's REDIS_URL): say which one was read.
        sys.stderr.write(f"cartbridge: {cli_common.no_data(services.settings.redis_url)}\n")
        return 1
    out = sys.stdout
    try:
        since = parse_time(args.since, now) if getattr(args, "since", None) else None
        before = parse_time(args.before, now) if getattr(args, "before", None) else None
    except ValueError:
        sys.stderr.write("cartbridge: TIME must be ISO-8601 or an age like 90m, 6h, 2d\n")
        return 2

    if args.dlq_command == "list":
        shown = 0
        for d in ops_letters.iter_letters(letters, shops, ops_letters.LetterFilter(since)):
            if shown >= args.limit:
                return 0
            out.write(orjson.dumps(d.summary()).decode() + "\n")
            shown += 1
        if not shown:
            # An empty list says what was read, so an empty answer is never a silent one.
            where = cli_common.where(services.settings.redis_url)
            sys.stderr.write(f"cartbridge: no dead letters ({len(shops)} shops, {where})\n")
        return 0

    if args.dlq_command == "show":
        found = ops_letters.find(letters, shops, args.id)
        if found is None:
            sys.stderr.write(f"cartbridge: no dead letter {args.id}\n")
            return 1
        detail = ops_letters.detail(found)
        out.write(orjson.dumps(detail, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0

    if args.dlq_command == "replay":
        if not (args.all or since is not None or args.ids):
            sys.stderr.write("cartbridge: say what to replay: --all, --since TIME or IDs\n")
            return 2
        plan = ops_letters.replay_plan(letters, shops, ids=args.ids, since_ms=since)
        progress = Progress(sum(len(ids) for _, ids in plan))
        outcome = ops_letters.replay(services, plan, progress=progress.add)
        progress.close()
        replayed, blocked = outcome.replayed, outcome.blocked
        out.write(orjson.dumps({"replayed": replayed}).decode() + "\n")
        for shop in blocked:
            sys.stderr.write(f"cartbridge: {shop}: an erasure is still running; replay again\n")
        return 0 if (replayed or not args.ids) and not blocked else 1

    # purge
    purged = ops_letters.purge(letters, shops, ids=args.ids, before_ms=before)
    out.write(orjson.dumps({"purged": purged}).decode() + "\n")
    return 0


_SHOP = click.option("--shop", show_default="every shop seen", help="This shop only.")
_TIME = "ISO-8601 (2026-11-28T12:00:00Z) or an age (90m, 6h, 2d)"


def register(group: click.Group) -> None:
    """Add `dlq` and its subcommands to the `bridge` command."""

    @group.group("dlq", context_settings=cli_common.CONTEXT)
    def dlq() -> None:
        """List, show, replay or purge dead letters.

        Dead letters are calls Pipelines refused or never accepted, and webhooks that could not
        be mapped. Exit 1 when Redis holds no cartbridge data."""

    @dlq.command("list")
    @_SHOP
    @click.option("--since", show_default="all", help=f"Only letters from this time on: {_TIME}.")
    @click.option(
        "--limit", type=click.IntRange(min=0), default=1000, help="Print at most this many."
    )
    def list_(shop: str | None, since: str | None, limit: int) -> int:
        """One JSON line per dead letter, oldest first."""
        return cli_common.run(cmd_dlq, dlq_command="list", shop=shop, since=since, limit=limit)

    @dlq.command("show")
    @click.argument("id", metavar="ID")
    @_SHOP
    def show(id: str, shop: str | None) -> int:
        """One dead letter (ID as `dlq list` prints it) with its payload and the response.
        Exit 1 when there is no such letter."""
        return cli_common.run(cmd_dlq, dlq_command="show", id=id, shop=shop)

    @dlq.command("replay")
    @click.argument("ids", nargs=-1, metavar="[ID]...")
    @click.option("--all", "all_", is_flag=True, help="Every dead letter.")
    @click.option("--since", show_default="none", help=f"Letters from this time on: {_TIME}.")
    @_SHOP
    def replay(ids: tuple[str, ...], all_: bool, since: str | None, shop: str | None) -> int:
        """Put dead letters back on their queue with their messageIds (a replay is idempotent):
        the IDs given, or --all, or --since. Exit 1 when nothing named could be replayed."""
        return cli_common.run(
            cmd_dlq, dlq_command="replay", ids=list(ids), all=all_, since=since, shop=shop
        )

    @dlq.command("purge")
    @click.argument("ids", nargs=-1, metavar="[ID]...")
    @click.option("--before", show_default="none", help=f"Letters older than this: {_TIME}.")
    @_SHOP
    def purge(ids: tuple[str, ...], before: str | None, shop: str | None) -> int:
        """Delete dead letters: the IDs given, those --before a time, else every one."""
        return cli_common.run(cmd_dlq, dlq_command="purge", ids=list(ids), before=before, shop=shop)
