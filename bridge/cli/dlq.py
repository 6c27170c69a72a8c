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
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import click
import orjson

from bridge.cli import common as cli_common
from bridge.delivery.deadletters import KIND_CALL, DeadLetter, DeadLetters, ErasureRunning
from bridge.delivery.outbox import OutboxEntry
from bridge.store import wire

if TYPE_CHECKING:
    from bridge.services import Services

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now_ms: int) -> int:
    """Milliseconds since the epoch for an ISO time or an age before `now_ms`; ValueError else."""
    m = _AGE.match(text.strip())
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1000)
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


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


def _find(services: Services, shops: Sequence[str], letter_id: str) -> DeadLetter | None:
    letters = DeadLetters(services.store)
    for shop in shops:
        found = letters.get(shop, letter_id)
        if found is not None:
            return found
    return None


def _detail(d: DeadLetter) -> dict[str, Any]:
    out: dict[str, Any] = {**d.summary(), "response": d.response}
    if d.kind == KIND_CALL:
        entry = OutboxEntry.decode(d.payload)
        out["call"] = orjson.loads(entry.call)
        out["person"] = entry.person
    else:
        head, body = wire.unframe(d.payload)
        out["envelope"] = orjson.loads(head)
        out["body"] = body.decode("utf-8", "replace")
    return out


def cmd_dlq(args: argparse.Namespace) -> int:
    from bridge.config.settings import ConfigError, load_settings
    from bridge.services import Services
    from bridge.store.facade import Keys, now_ms
    from bridge.worker.queues import enqueue_deliver, enqueue_drain

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
        for shop in shops:
            for d in letters.iter(shop, since):
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
        found = _find(services, shops, args.id)
        if found is None:
            sys.stderr.write(f"cartbridge: no dead letter {args.id}\n")
            return 1
        out.write(orjson.dumps(_detail(found), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0

    if args.dlq_command == "replay":
        if not (args.all or since is not None or args.ids):
            sys.stderr.write("cartbridge: say what to replay: --all, --since TIME or IDs\n")
            return 2
        plan: list[tuple[str, list[str]]] = []
        for shop in shops:
            ids = letters.ids(shop, since) if not args.ids else args.ids
            plan.append((shop, ids))
        progress = Progress(sum(len(ids) for _, ids in plan))
        replayed = 0
        blocked: list[str] = []
        for shop, ids in plan:
            for i in range(0, len(ids), 200):
                chunk = letters.get_many(shop, ids[i : i + 200])
                try:
                    replayed += letters.replay(shop, chunk)
                except ErasureRunning:
                    blocked.append(shop)  # what is left of this shop: another time
                    break
                progress.add(len(ids[i : i + 200]))
            keys = Keys(shop)
            if services.store.wake(keys.deliver_flag):
                enqueue_deliver(services.queue, shop)
            if services.store.wake(keys.drain_flag):
                enqueue_drain(services.queue, shop)
        progress.close()
        out.write(orjson.dumps({"replayed": replayed}).decode() + "\n")
        for shop in blocked:
            sys.stderr.write(f"cartbridge: {shop}: an erasure is still running; replay again\n")
        return 0 if (replayed or not args.ids) and not blocked else 1

    # purge
    purged = 0
    for shop in shops:
        ids = args.ids or letters.ids(shop, before_ms=before)
        purged += letters.purge(shop, ids)
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
