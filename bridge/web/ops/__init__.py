"""The ops console at /ops: a Flask blueprint with Jinja templates, served by the web process.

Off unless OPS_TOKEN is set (then no /ops route exists: 404). Views read through the store
and the operator functions of bridge/ops/ (the dead-letter ones are `bridge dlq`'s own); they
never touch the webhook path. Pages: the shops' health (`/ops/`), a shop's charts and health
(`/ops/shops/<shop>`), its webhook log, dead letters (list, one letter, replay, purge: the
last two for admins, with a preview first), and person lookup (by POST: no personal data
in a URL). Everything shown is escaped by Jinja's autoescape; charts are SVG built by
`charts.py`, which escapes its own text. No script runs on any page, and a
Content-Security-Policy says so.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from bridge.delivery.deadletters import DeadLetters
from bridge.logs import redact
from bridge.monitoring.monitor import shop_zone
from bridge.ops import letters as ops_letters
from bridge.ops import overview, people
from bridge.store.facade import now_ms
from bridge.web.ops import auth, charts

if TYPE_CHECKING:
    from werkzeug.wrappers import Response as BaseResponse

    from bridge.services import Services

log = logging.getLogger(__name__)

# A shop names Redis keys: only domain-like names are looked up (as the webhook route checks).
_SHOP = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")
LETTERS_SHOWN = 200
# Letters one console request replays at most (oldest first): a few seconds of MULTIs, well
# within the web's request timeout; the preview says so, and a second replay takes the rest.
# `bridge dlq replay` has no such cap.
REPLAY_PER_REQUEST = 5000
WEBHOOKS_SHOWN = 100
# No script, no outside fetch, no framing: the console's pages are plain HTML, SVG and one
# stylesheet of its own.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC = {"ops.login", "ops.static"}


def _when(ms: int | None) -> str:
    if not ms:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def redacted(value: object) -> str:
    """A reason as the pages show it (the `redact` filter): reasons quote what the bridge or
    Pipelines said, which may quote a call's values (emails, phones, keyed URLs)."""
    return redact(str(value))


def _audit(what: str, shop: str, count: int) -> None:
    """One line per change made from the console (the only changes are admins' replays and
    purges), so that the logs say who did what: the role, the shop (or all), how many."""
    log.warning(
        f"ops console: {what}",
        extra={"shop": shop or "(all)", "count": count, "role": auth.current_role()},
    )


def _shop_or_404(services: Services, shop: str) -> str:
    shop = shop.strip().lower()
    if len(shop) > 255 or not _SHOP.fullmatch(shop) or shop not in set(services.store.shops()):
        abort(404)
    return shop


def register(app: Flask, services: Services) -> None:
    """Mount the console on `app` when OPS_TOKEN is set; do nothing otherwise."""
    settings = services.settings
    if not auth.enabled(settings):
        return
    auth.configure(app, settings)
    bp = Blueprint(
        "ops",
        __name__,
        url_prefix="/ops",
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )

    @bp.before_request
    def _guard() -> BaseResponse | None:
        headers = request.headers
        site, origin = headers.get("Sec-Fetch-Site"), headers.get("Origin")
        if request.method == "POST" and auth.cross_site(site, origin, request.host):
            abort(403, "a form posted from another site is refused")
        if request.endpoint in PUBLIC:
            return None
        if auth.current_role() is None:
            # Just signed in, yet no session came back: the browser did not keep the cookie.
            lost = request.args.get("signed_in") == "1"
            return redirect(url_for("ops.login", cookie="lost") if lost else url_for("ops.login"))
        if request.method == "POST" and not auth.csrf_ok(request.form.get("csrf")):
            abort(400, "missing or wrong CSRF token: reload the page")
        return None

    @bp.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "ops.static":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.errorhandler(HTTPException)
    def _error(exc: HTTPException) -> tuple[str, int]:
        return render_template(
            "ops/error.html", code=exc.code, message=exc.description or exc.name
        ), exc.code or 500

    bp.add_app_template_filter(redacted, "redact")

    @bp.context_processor
    def _context() -> dict[str, Any]:
        return {
            "role": auth.current_role(),
            "csrf": auth.csrf_token(),
            "when": _when,
            "is_admin": auth.current_role() == auth.ADMIN,
        }

    def _admin() -> None:
        if auth.current_role() != auth.ADMIN:
            abort(403, "replay and purge need a session opened with OPS_ADMIN_TOKEN")

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> BaseResponse | tuple[str, int]:
        if request.method == "GET":
            lost = None
            if request.args.get("cookie") == "lost":
                lost = (
                    "You signed in, but your browser did not keep the session cookie. It is "
                    "sent over HTTPS only: open the console over https, or, on plain http "
                    "(a local or private network), set OPS_COOKIE_SECURE=false."
                )
            return render_template("ops/login.html", error=lost), 200
        client = auth.client_key(request.remote_addr or "", settings)
        if services.store.ops.login_failures(client) >= auth.LOGIN_FAILURES_ALLOWED:
            # Refused whatever the token: a guesser learns nothing more until the window ends.
            minutes = auth.LOGIN_WINDOW_S // 60
            page = render_template(
                "ops/login.html",
                error=f"Too many wrong tokens from your address: try again in {minutes} minutes.",
            )
            return Response(page, 429, {"Retry-After": str(auth.LOGIN_WINDOW_S)})
        role = auth.role_for(request.form.get("token") or "", settings)
        if role is None:
            failures = services.store.ops.note_login_failure(client, auth.LOGIN_WINDOW_S)
            if failures == auth.LOGIN_FAILURES_ALLOWED:
                log.warning(
                    "ops console: too many wrong tokens, logins refused for a while",
                    extra={"client": client, "window_s": auth.LOGIN_WINDOW_S},
                )
            return render_template("ops/login.html", error="That token is not valid."), 401
        auth.open_session(role)
        return redirect(url_for("ops.index", signed_in="1"))

    @bp.post("/logout")
    def logout() -> BaseResponse:
        from flask import session

        session.clear()
        return redirect(url_for("ops.login"))

    @bp.get("/")
    def index() -> str:
        shops = services.store.shops()
        rows = overview.health_rows(services.store, shops)
        return render_template("ops/index.html", rows=rows)

    @bp.get("/shops/<shop>")
    def shop_page(shop: str) -> str:
        shop = _shop_or_404(services, shop)
        now_s = time.time()
        tz: ZoneInfo = shop_zone(settings, shop)
        drawn = overview.shop_charts(services.store, shop, settings.key_events, tz, now_s)
        fine = [(c, charts.svg(c, f"{c.name}, per 5 minutes, last 24 h")) for c in drawn.fine]
        coarse = [(c, charts.svg(c, f"{c.name}, per hour, last 28 days")) for c in drawn.coarse]
        (health,) = overview.health_rows(services.store, [shop])
        return render_template(
            "ops/shop.html", shop=shop, fine=fine, coarse=coarse, health=health, tz=str(tz)
        )

    @bp.get("/shops/<shop>/webhooks")
    def webhooks(shop: str) -> str:
        shop = _shop_or_404(services, shop)
        entries = []
        for raw in services.store.ops.webhook_log(shop, WEBHOOKS_SHOWN):
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                entries.append(doc)
        return render_template("ops/webhooks.html", shop=shop, entries=entries)

    def _filters() -> tuple[list[str], ops_letters.LetterFilter, dict[str, str]]:
        args = {
            k: (request.args.get(k) or "").strip()[:200]
            for k in ("shop", "event", "status", "since")
        }
        shops = services.store.shops()
        if args["shop"]:
            shops = [s for s in shops if s == args["shop"].lower()]
        since = None
        if args["since"]:
            try:
                since = ops_letters.parse_time(args["since"], now_ms())
            except ValueError:
                abort(400, "since must be ISO-8601 or an age like 90m, 6h, 2d")
        return shops, ops_letters.LetterFilter(since, args["event"], args["status"]), args

    @bp.get("/letters")
    def letters() -> str:
        shops, flt, args = _filters()
        listing = ops_letters.newest(DeadLetters(services.store), shops, flt, limit=LETTERS_SHOWN)
        return render_template(
            "ops/letters.html",
            letters=listing.letters,
            listing=listing,
            filtered=bool(flt.event or flt.status),
            args=args,
        )

    # A webhook's letter is named by its webhook id, which may hold any printable character
    # (a "/" too): the id is the rest of the path.
    @bp.get("/letters/<shop>/<path:letter_id>")
    def letter(shop: str, letter_id: str) -> str:
        shop = _shop_or_404(services, shop)
        found = DeadLetters(services.store).get(shop, letter_id[:300])
        if found is None:
            abort(404, "no such dead letter (replayed, purged or expired?)")
        detail = ops_letters.detail(found, redacted=True)
        pretty = {
            k: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
            for k, v in detail.items()
            if k in ("call", "envelope", "body")
        }
        return render_template(
            "ops/letter.html", shop=shop, letter=found, detail=detail, pretty=pretty
        )

    def _selection() -> tuple[list[str], list[str], int | None, str, str]:
        shop = (request.form.get("shop") or "").strip().lower()
        shops = [s for s in services.store.shops() if not shop or s == shop]
        ids = [i[:300] for i in request.form.getlist("ids") if i][:10_000]
        when = (request.form.get("since") or request.form.get("before") or "").strip()[:100]
        at = None
        if when:
            try:
                at = ops_letters.parse_time(when, now_ms())
            except ValueError:
                abort(400, "the time must be ISO-8601 or an age like 90m, 6h, 2d")
        return shops, ids, at, shop, when

    @bp.post("/letters/replay")
    def replay() -> str:
        _admin()
        shops, ids, since, shop, when = _selection()
        if not ids and since is None and request.form.get("all") != "1":
            abort(400, "say what to replay: selected letters, a time, or all")
        store = DeadLetters(services.store)
        if request.form.get("confirm") != "1":
            # Counted from the index (or, for a selection, without reading the records).
            count = (
                sum(store.count_stored(s, ids) for s in shops)
                if ids
                else store.count_range(shops, since)
            )
            return render_template(
                "ops/confirm.html",
                action="replay",
                count=count if ids else min(count, REPLAY_PER_REQUEST),
                total=count,
                shop=shop,
                ids=ids,
                when=when,
                all=request.form.get("all") == "1",
            )
        # A web request waits a few seconds at most for a running erasure (the CLI waits more).
        plan = ops_letters.replay_plan(store, shops, ids=ids, since_ms=since)
        if not ids:  # a selection is bounded by its form (and is looked for in every shop)
            plan = ops_letters.capped(plan, REPLAY_PER_REQUEST)
        outcome = ops_letters.replay(services, plan, wait_s=5.0)
        _audit("dead letters replayed", shop, outcome.replayed)
        return render_template(
            "ops/done.html", action="replayed", count=outcome.replayed, blocked=outcome.blocked
        )

    @bp.post("/letters/purge")
    def purge() -> str:
        _admin()
        shops, ids, before, shop, when = _selection()
        if not ids and before is None and request.form.get("all") != "1":
            abort(400, "say what to purge: selected letters, a time, or all")
        store = DeadLetters(services.store)
        if request.form.get("confirm") != "1":
            if ids:
                count = sum(store.count_stored(s, ids) for s in shops)
            else:
                count = store.count_range(shops, before_ms=before)
            return render_template(
                "ops/confirm.html",
                action="purge",
                count=count,
                total=count,
                shop=shop,
                ids=ids,
                when=when,
                all=request.form.get("all") == "1",
            )
        n = ops_letters.purge(store, shops, ids=ids, before_ms=before)
        _audit("dead letters purged", shop, n)
        return render_template("ops/done.html", action="purged", count=n, blocked=[])

    @bp.route("/people", methods=["GET", "POST"])
    def person() -> str | tuple[str, int]:
        shops = services.store.shops()
        if request.method == "GET":
            return render_template(
                "ops/people.html", shops=shops, kinds=people.KINDS, result=None, form={}
            )
        form = {k: (request.form.get(k) or "").strip() for k in ("shop", "kind", "value")}
        shop = form["shop"].lower()
        if shop not in set(shops):
            return render_template(
                "ops/people.html",
                shops=shops,
                kinds=people.KINDS,
                result=None,
                form=form,
                error="Choose a shop the bridge has seen.",
            ), 400
        try:
            result = people.lookup(services.store, shop, form["kind"], form["value"])
        except people.BadLookup as exc:
            return render_template(
                "ops/people.html",
                shops=shops,
                kinds=people.KINDS,
                result=None,
                form=form,
                error=str(exc),
            ), 400
        pretty = {
            name: orjson.dumps(rec, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
            for name, rec in result.records.items()
        }
        return render_template(
            "ops/people.html",
            shops=shops,
            kinds=people.KINDS,
            result=result,
            form=form,
            pretty=pretty,
        )

    app.register_blueprint(bp)
