"""Gunicorn entry point (`bridge.web.wsgi:app`): a bad setting stops the web with one clear line."""

from __future__ import annotations

import sys

from flask import Flask

from bridge import logs
from bridge.config.settings import ConfigError, load_settings
from bridge.config.stores import require_service_config
from bridge.gctune import tune_gc
from bridge.web.app import create_app


def build() -> Flask:
    try:
        settings = load_settings()
        require_service_config(settings)
    except ConfigError as exc:
        sys.stderr.write(f"cartbridge web: configuration error: {exc}\n")
        sys.stderr.flush()
        # Exit code 4 tells gunicorn the app cannot load: it stops instead of respawning.
        raise SystemExit(4) from None
    logs.setup(settings.log_level, batched=not settings.dry_run)
    app = create_app(settings)
    tune_gc()  # gunicorn preloads the app: the master freezes it before forking its workers
    return app


app = build()
