"""Fixtures: real Redis, apps on either backend, and live gunicorn servers."""

from __future__ import annotations

import dataclasses

import hypothesis
import pytest

from signaling import create_app
from signaling.config import Settings
from signaling.service import Service

from .support.helpers import Api
from .support.receiver import Receiver
from .support.servers import LiveServer, NginxServer, RedisClusterServers, RedisServer

# Every property-based test here is reproducible (derandomized, no example database), and has no
# deadline: its examples talk to real servers, whose timings vary.
hypothesis.settings.register_profile("signaling", derandomize=True, database=None, deadline=None)
hypothesis.settings.load_profile("signaling")

#: Abuse limits are on by default; tests of other things turn them off, tests of limits set them.
NO_LIMITS = {"joins_per_ip_per_minute": 0, "sends_per_peer_per_second": 0, "peers_per_ip": 0, "rooms_per_ip": 0}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the whole run; tests empty it through `redis_url`."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real three-master Redis Cluster for the whole run; tests empty it through `cluster_url`."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster) -> str:
    redis_cluster.flush()
    return redis_cluster.url


#: The backends every contract test runs on: memory, one Redis, and a Redis Cluster.
BACKEND_URLS = {"memory": None, "redis": "redis_url", "cluster": "cluster_url"}


@pytest.fixture(params=list(BACKEND_URLS))
def backend_name(request) -> str:
    return request.param


@pytest.fixture
def make_app(request, backend_name):
    """Build apps on the test's backend with settings overrides; closed after the test."""
    apps = []

    def make(**overrides):
        overrides = {**NO_LIMITS, **overrides}
        if BACKEND_URLS[backend_name]:
            overrides.setdefault("redis_url", request.getfixturevalue(BACKEND_URLS[backend_name]))
        app = create_app(dataclasses.replace(Settings(), **overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        Service.of(app).close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def api(app) -> Api:
    return Api.over_flask(app.test_client())


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test's own, which it may stop and start again on the same port."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def start_server(tmp_path):
    """Start gunicorn servers: `start_server(env={...}, workers=1)`; all stopped after the test.

    Abuse limits are off unless `limits=True` (then the defaults, or what `env` sets).
    """
    servers = []

    def start(env: dict[str, str] | None = None, workers: int = 1, limits: bool = False, preexec=None) -> LiveServer:
        if not limits:
            env = {**{name.upper(): "0" for name in NO_LIMITS}, **(env or {})}
        server = LiveServer(tmp_path, env, workers, preexec).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(start_server) -> LiveServer:
    """A gunicorn+gevent server on the memory backend."""
    return start_server()


@pytest.fixture
def start_behind_nginx(start_server, redis_url, tmp_path):
    """Two instances on one Redis behind Debian's nginx with the recommended configuration (docs/nginx.conf).

    `start_behind_nginx(env={...}, limits=False) -> (nginx, [instance, instance])`; both instances
    run with TRUSTED_PROXIES=1, as the configuration's header says.
    """
    started = []

    def start(env: dict[str, str] | None = None, limits: bool = False) -> tuple[NginxServer, list[LiveServer]]:
        env = {"REDIS_URL": redis_url, "TRUSTED_PROXIES": "1", **(env or {})}
        instances = [start_server(env=env, limits=limits) for _ in range(2)]
        nginx = NginxServer(tmp_path / f"nginx{len(started)}", [i.url.removeprefix("http://") for i in instances])
        started.append(nginx)
        return nginx.start(), instances

    yield start
    for nginx in started:
        nginx.stop()


@pytest.fixture
def receiver():
    """A webhook receiver on a free port, verifying every request with standardwebhooks (support/receiver.py)."""
    receiver = Receiver().start()
    yield receiver
    receiver.release()
    receiver.stop()
    assert receiver.bad == [], "a request failed standardwebhooks' verification"
