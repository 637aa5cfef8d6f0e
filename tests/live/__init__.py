"""The real thing over HTTP: gunicorn+gevent servers (and nginx in front), started as processes, marked `live`."""
