"""The floor: a bare WSGI app, so that the bench can say what the stack alone costs per request.

gunicorn serves it with the service's worker settings (see `procs.FloorServer`);
whatever the service spends per request beyond this is Flask, the app and its backend.
"""

BODY = b"hello world\n"  # 12 bytes
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
