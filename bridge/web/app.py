"""The web app: `create_app` builds the process's Services once and wires the routes.

The Shopify webhook route is a WSGI middleware in front of Flask (web/webhooks.py, the hot
path), and so is the storefront browse collector POST /pixel (web/pixel.py); Recharge's
webhook route (web/recharge.py), health, readiness and /metrics (web/metrics.py) are
ordinary Flask views.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from bridge.config.settings import Settings, load_settings
from bridge.services import Services
from bridge.store import StoreError
from bridge.web import ops as ops_console
from bridge.web.metrics import bp as metrics_bp
from bridge.web.pixel import PixelEndpoint
from bridge.web.recharge import add_recharge_routes
from bridge.web.webhooks import WebhookEndpoint

# Web requests wait for Redis at most this long: a stuck Redis answers 503, and Shopify retries.
REDIS_TIMEOUT_S = 2.0


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask app; `settings` defaults to the environment (read once, here), and so does
    the stores file. Raises ConfigError for an invalid stores file."""
    services = Services.build(settings or load_settings(), timeout_s=REDIS_TIMEOUT_S)
    app = Flask("cartbridge")
    app.extensions["cartbridge"] = services

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        names = {405: "method not allowed", 404: "not found", 413: "body too large"}
        code = exc.code or 500
        return _json({"error": names.get(code, exc.name.lower())}, code)

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"ok": True})

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            services.store.ping()
        except StoreError:
            return _json({"ok": False, "error": "redis unavailable"}, 503)
        return _json({"ok": True})

    app.register_blueprint(metrics_bp)
    ops_console.register(app, services)  # /ops, only when OPS_TOKEN is set
    add_recharge_routes(app, services)
    # The webhook route sits in front of Flask (see WebhookEndpoint), the browse collector in
    # front of that (web/pixel.py); the rest is Flask's.
    webhooks = WebhookEndpoint(app, services)
    app.wsgi_app = PixelEndpoint(app, services, webhooks)  # type: ignore[method-assign]
    return app
