"""WebRTC signaling over plain HTTP.

`create_app` (signaling/service.py) builds the server's Flask app. The package
imports nothing at its top, so a module that needs neither Flask nor Redis
(a Python peer's client, say) can be imported without them.
"""


def __getattr__(name: str):
    if name in ("create_app", "Service"):
        from . import service

        return getattr(service, name)
    raise AttributeError(f"module 'signaling' has no attribute {name!r}")
