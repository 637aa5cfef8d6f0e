"""The floor: a bare WSGI app, so that the bench can say what the stack alone costs per request.

gunicorn serves it with the service's worker settings (see `procs.FloorServer`);
whatever the service spends per request beyond this is Flask, the app and its backend.
A request under /hold/ waits before it answers, as a held poll does: what the
stack alone keeps in memory per held request.
"""

import threading

BODY = b"hello world\n"  # 12 bytes
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


#: never set: a held request waits until the server stops (the worker is monkey-patched: a gevent Event)
_NEVER = threading.Event()
HOLD_SECONDS = 600


def app(environ, start_response):
    if environ["PATH_INFO"].startswith("/hold/"):
        _NEVER.wait(HOLD_SECONDS)
    start_response("200 OK", HEADERS)
    return [BODY]
