"""WebRTC signaling over plain HTTP: `create_app` builds the server's Flask app.

`import signaling.client` runs this file too, and a Python peer has httpx
but no Flask: so the server's modules are imported inside `create_app`,
not at the top.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app(settings=None):
    """The Flask app serving every route of routes.py; without `settings` they come from the environment."""
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from . import http
    from .config import Settings
    from .routes import ROUTES
    from .service import Service

    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes
    app.json.sort_keys = False
    service = app.extensions["signaling"] = Service.start(settings)
    http.install(app, service, ROUTES)
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(http.forwarded_address_checked(app.wsgi_app, settings), x_for=settings.trusted_proxies)
    return app
