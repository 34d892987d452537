"""The ceiling of the stack: Flask under gunicorn, checking the signature and nothing else.

``gunicorn 'bench.apps.bare:create_app()'``
"""

from __future__ import annotations

import hashlib
import hmac
import os

from flask import Flask, Response, request


def create_app() -> Flask:
    secret = os.environ["WACONV_APP_SECRET"].encode()
    app = Flask(__name__)

    @app.post("/webhook")
    def webhook() -> Response:
        raw = request.get_data(cache=False)
        header = request.headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(header.encode(), expected.encode()):
            return Response("bad signature\n", status=403, mimetype="text/plain")
        return Response("ok\n", status=200, mimetype="text/plain")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    return app
