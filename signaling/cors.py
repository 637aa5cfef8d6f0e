"""CORS: which origins may read answers, and what a preflight allows.

One function serves both the Flask app's responses and the message
endpoints, which answer without Flask (messages.py); flask-cors could only
serve the first. Nor could it say two things the protocol and its tests ask
(flask-cors 6.0.5): it answers `Access-Control-Allow-Headers` with only those
of the preflight's `Access-Control-Request-Headers` that it allows, never the
whole list, and with one listed origin it sends no `Vary: Origin`, although
the answer then differs by origin.
"""

from __future__ import annotations

from .config import Settings

#: what a preflight allows, and for how long a browser may cache the answer (a peer polls one URL)
PREFLIGHT = [
    ("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"),
    ("Access-Control-Max-Age", "86400"),
]
EXPOSE = ("Access-Control-Expose-Headers", "Location, Retry-After, X-Request-Id")


def headers(settings: Settings, origin: str | None, preflight: bool = False) -> list[tuple[str, str]]:
    """The CORS headers of an answer to a request from `origin` (a preflight's, or any other's)."""
    if "*" in settings.allowed_origins:
        found = [("Access-Control-Allow-Origin", "*")]
    elif origin in settings.allowed_origins:
        found = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    else:
        found = [("Vary", "Origin")]  # refused, and a cache must not hand this answer to an allowed origin
    return found + PREFLIGHT if preflight else [*found, EXPOSE]
