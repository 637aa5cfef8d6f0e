"""What the gunicorn master does once, around the workers' lives (gunicorn.conf.py's hooks call it).

- Before anything imports prometheus_client: a fresh folder for the workers'
  metrics (`metrics_folder`), removed when the master exits (`remove_metrics_folder`).
- Before binding: the listen address resolves and its port is free
  (`check_listen`), or the start ends with one line, exit 2, rather than
  gunicorn's five seconds of retries in ERROR lines.
- The open-file limit: each held poll or stream is an open connection, one
  file; the soft limit is raised to the hard one (`raise_open_files`), and a
  line says so when that is still short of what `WORKER_CONNECTIONS` needs.
- One line saying where it listens and on which backend, its password hidden.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import tempfile

from .config import Settings, redacted, refuse

#: files a worker opens besides its connections: Redis connections beyond REDIS_MAX_CONNECTIONS, the listener,
#: logs, the metrics files, gevent's and Python's own
SPARE_FILES = 64
_METRICS_PREFIX = "signaling-metrics-"


def metrics_folder() -> None:
    """Point PROMETHEUS_MULTIPROC_DIR at a fresh folder, unless the operator set it."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_METRICS_PREFIX)


def remove_metrics_folder() -> None:
    """Remove the folder `metrics_folder` made, known by its name (never one the operator set).

    By name, not by a value kept since: a configuration reload runs gunicorn.conf.py again, which keeps the
    folder it finds set.
    """
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(folder.rstrip("/")).startswith(_METRICS_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def files_needed(settings: Settings) -> int:
    """Open files one worker may need: a connection each, and its own."""
    return settings.worker_connections + settings.redis_max_connections + SPARE_FILES


def raise_open_files(settings: Settings) -> str | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; a one-line warning when it is still below `files_needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, files_needed(settings))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # some systems cap the soft limit lower (macOS: OPEN_MAX); what is left is reported below
    needed = files_needed(settings)
    if soft >= needed:
        return None
    return (f"open files: the limit is {soft} (hard {_limit(hard)}), below the {needed} that "
            f"WORKER_CONNECTIONS={settings.worker_connections} needs: past about {max(soft - SPARE_FILES, 0)} "
            f"connections a worker answers new ones 503 server_busy; raise `ulimit -n` (LimitNOFILE=, "
            f"nofile) or lower WORKER_CONNECTIONS")


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def check_listen(settings: Settings) -> None:
    """HOST resolves and PORT is free on it, or `refuse`. Skipped when the listening socket is inherited."""
    if os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS"):
        return  # gunicorn re-executed on USR2, or systemd socket activation: the socket is open already
    try:
        found = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        refuse(f"HOST={settings.host!r} does not resolve to an address to listen on ({exc.strerror})")
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            refuse(f"PORT={settings.port} cannot be listened on at {settings.host} ({exc.strerror}): "
                   f"another process has it, or it needs privileges")


def listening_line(settings: Settings) -> str:
    """Where it listens and on what, as a person opens it; never a password."""
    host = "localhost" if settings.host in ("127.0.0.1", "::1") else settings.host
    host = f"[{host}]" if ":" in host else host
    backend = f"redis ({redacted(settings.redis_url)})" if settings.redis_url else "memory"
    return f"signaling: http://{host}:{settings.port}/  backend: {backend}"
