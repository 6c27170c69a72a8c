# Gunicorn settings for `web` (Procfile). PORT and WEB_CONCURRENCY come from the environment.
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Two sync workers per core: each spends part of every request waiting on its Redis round trip,
# and a second worker per core fills that wait (bench/ingest.py: +14% req/s on 2 cores).
# The cores this process may run on (not the host's), and at most 8 workers by default.
workers = int(os.environ.get("WEB_CONCURRENCY") or min(8, 2 * len(os.sched_getaffinity(0))))
# Requests are read whole by each worker's event loop before a thread serves them, under a
# deadline (WEB_REQUEST_DEADLINE_S): a slow client never holds a worker (bridge/webworker.py).
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "bridge.webworker.BufferedWorker")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
keepalive = 5
timeout = 30
graceful_timeout = 25
preload_app = True
accesslog = None
