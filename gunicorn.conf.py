# Gunicorn settings for `web` (Procfile). PORT and WEB_CONCURRENCY come from the environment.
import os
import sys


def _whole_number(name: str, default: int) -> int:
    """The variable as a positive int. A bad value stops the web with one line naming it (an
    exception here would print gunicorn's traceback of this file)."""
    raw = os.environ.get(name) or ""
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        sys.stderr.write(
            f"cartbridge web: configuration error: {name}: not a whole number: {raw!r}\n"
        )
        raise SystemExit(4)  # 4: gunicorn's "cannot load", as bridge/web/wsgi.py exits
    return int(raw)


bind = f"0.0.0.0:{_whole_number('PORT', 8000)}"
# Two sync workers per core: each spends part of every request waiting on its Redis round trip,
# and a second worker per core fills that wait (bench/ingest.py: +14% req/s on 2 cores).
# The cores this process may run on (not the host's), and at most 8 workers by default.
workers = _whole_number("WEB_CONCURRENCY", min(8, 2 * len(os.sched_getaffinity(0))))
# Requests are read whole by each worker's event loop before a thread serves them, under a
# deadline (WEB_REQUEST_DEADLINE_S): a slow client never holds a worker (bridge/web/server.py).
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "bridge.web.server.BufferedWorker")
threads = _whole_number("GUNICORN_THREADS", 1)
keepalive = 5
timeout = 30
graceful_timeout = 25
preload_app = True
accesslog = None
