"""The baseline: a bare Flask POST route that reads the whole body and answers `{}`.

Run by bench/ingest.py under the very same gunicorn command and gunicorn.conf.py as the bridge.
"""

from __future__ import annotations

from flask import Flask, Response, request

app = Flask("bare")


@app.get("/healthz")
def healthz() -> Response:
    return Response(b"{}", mimetype="application/json")


@app.post("/webhooks/shopify")
def webhook() -> Response:
    request.get_data()
    return Response(b"{}", mimetype="application/json")
