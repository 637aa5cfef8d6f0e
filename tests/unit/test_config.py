"""Every setting is checked at start-up: a bad one stops the start with one line naming it and what it accepts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from signaling.config import CHECKS, ConfigError, Settings, redacted

from ..support.servers import ROOT, Certificates, free_port

#: a Standard Webhooks secret: whsec_ and the base64 of 24 bytes
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

#: (environment, the variable the message must name, words of what it accepts)
BAD = {
    "port-word": ({"PORT": "http"}, "PORT", "1-65535"),
    "port-range": ({"PORT": "70000"}, "PORT", "1-65535"),
    "redis-http": ({"REDIS_URL": "http://x"}, "REDIS_URL", "rediss+cluster://"),
    "redis-bare-host": ({"REDIS_URL": "localhost:6379"}, "REDIS_URL", "unix://"),
    "poll-wait-word": ({"POLL_WAIT": "soon"}, "POLL_WAIT", "seconds"),
    "poll-wait-nan": ({"POLL_WAIT": "nan"}, "POLL_WAIT", "seconds"),
    "poll-wait-over-ttl": ({"POLL_WAIT": "90"}, "POLL_WAIT", "below PEER_TTL"),
    "peer-ttl-zero": ({"PEER_TTL": "0"}, "PEER_TTL", "> 0"),
    "max-message-bytes": ({"MAX_MESSAGE_BYTES": "64k"}, "MAX_MESSAGE_BYTES", "bytes"),
    "max-message-bytes-below-a-join": ({"MAX_MESSAGE_BYTES": "10"}, "MAX_MESSAGE_BYTES", "a join with a ticket"),
    "metrics-token-short": ({"METRICS_TOKEN": "secret"}, "METRICS_TOKEN", "at least 16"),
    "mailbox-limit": ({"MAILBOX_LIMIT": "-1"}, "MAILBOX_LIMIT", "> 0"),
    "mailbox-bytes-small": ({"MAILBOX_BYTES": "100"}, "MAILBOX_BYTES", "from 1024"),
    "mailbox-bytes-large": ({"MAILBOX_BYTES": "2147483648"}, "MAILBOX_BYTES", "1 GiB"),
    "mailbox-bytes-word": ({"MAILBOX_BYTES": "1MiB"}, "MAILBOX_BYTES", "bytes"),
    "room-capacity": ({"ROOM_CAPACITY": "0"}, "ROOM_CAPACITY", "> 0"),
    "stream-heartbeat-zero": ({"STREAM_HEARTBEAT": "0"}, "STREAM_HEARTBEAT", "> 0"),
    "stream-heartbeat-over-max": ({"STREAM_HEARTBEAT": "30", "STREAM_MAX": "30"}, "STREAM_HEARTBEAT",
                                  "below STREAM_MAX"),
    "stream-max-word": ({"STREAM_MAX": "5m"}, "STREAM_MAX", "seconds > 0"),
    "stun-http": ({"STUN_URLS": "http://x"}, "STUN_URLS", "stun:host"),
    "stun-slashes": ({"STUN_URLS": "stun:ok.example,stun://x.example"}, "STUN_URLS", "stun:host"),
    "stun-as-turn": ({"STUN_URLS": "turn:x.example"}, "STUN_URLS", "stun:host"),
    "turn-http": ({"TURN_URLS": "http://x", "TURN_SECRET": "s"}, "TURN_URLS", "turns:host"),
    "turn-transport": ({"TURN_URLS": "turn:x.example?transport=sctp", "TURN_SECRET": "s"}, "TURN_URLS", "transport"),
    "turn-without-secret": ({"TURN_URLS": "turn:x.example:3478"}, "TURN_URLS", "TURN_SECRET"),
    "turn-ttl": ({"TURN_TTL": "1d"}, "TURN_TTL", "seconds"),
    "origin-word": ({"ALLOWED_ORIGINS": "notanorigin"}, "ALLOWED_ORIGINS", "https://app.example"),
    "origin-trailing-slash": ({"ALLOWED_ORIGINS": "https://app.example/"}, "ALLOWED_ORIGINS", "trailing /"),
    "redis-max-connections": ({"REDIS_MAX_CONNECTIONS": "0"}, "REDIS_MAX_CONNECTIONS", "> 0"),
    "redis-sentinel-without-service": ({"REDIS_URL": "redis+sentinel://10.0.0.1:26379"}, "REDIS_URL", "service_name"),
    "redis-sentinel-without-port": ({"REDIS_URL": "redis+sentinel://10.0.0.1/svc"}, "REDIS_URL", "host:port"),
    "redis-tls-ca-missing": ({"REDIS_URL": "rediss://x:6380", "REDIS_TLS_CA": "/no/such.pem"}, "REDIS_TLS_CA", "PEM"),
    "redis-tls-ca-not-pem": ({"REDIS_URL": "rediss://x:6380", "REDIS_TLS_CA": "-----BEGIN CERTIFICATE-----x"},
                             "REDIS_TLS_CA", "PEM"),
    "redis-tls-verify": ({"REDIS_URL": "rediss://x:6380", "REDIS_TLS_VERIFY": "off"}, "REDIS_TLS_VERIFY", "none"),
    "redis-tls-verify-plain": ({"REDIS_URL": "redis://x", "REDIS_TLS_VERIFY": "none"}, "REDIS_TLS_VERIFY", "rediss://"),
    "redis-wait-replicas": ({"REDIS_URL": "redis://x", "REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS", ">= 0"),
    "redis-wait-cluster": ({"REDIS_URL": "redis+cluster://x:7000", "REDIS_WAIT_REPLICAS": "1"}, "REDIS_WAIT_REPLICAS",
                           "not with Redis Cluster"),
    "redis-wait-memory": ({"REDIS_WAIT_REPLICAS": "1"}, "REDIS_WAIT_REPLICAS", "needs REDIS_URL"),
    "redis-wait-timeout-ms": ({"REDIS_WAIT_TIMEOUT": "500ms"}, "REDIS_WAIT_TIMEOUT", "seconds"),
    "redis-wait-timeout-large": ({"REDIS_WAIT_TIMEOUT": "500"}, "REDIS_WAIT_TIMEOUT", "to 10"),
    "reap-interval": ({"REAP_INTERVAL": "0"}, "REAP_INTERVAL", "> 0"),
    "request-read-timeout": ({"REQUEST_READ_TIMEOUT": "0"}, "REQUEST_READ_TIMEOUT", "> 0"),
    "joins-per-ip": ({"JOINS_PER_IP_PER_MINUTE": "-5"}, "JOINS_PER_IP_PER_MINUTE", "0 turns"),
    "sends-per-peer": ({"SENDS_PER_PEER_PER_SECOND": "many"}, "SENDS_PER_PEER_PER_SECOND", "0 turns"),
    "peers-per-ip": ({"PEERS_PER_IP": "1.5"}, "PEERS_PER_IP", "whole number"),
    "rooms-per-ip": ({"ROOMS_PER_IP": "-1"}, "ROOMS_PER_IP", "0 turns"),
    "trusted-proxies": ({"TRUSTED_PROXIES": "yes"}, "TRUSTED_PROXIES", "proxies"),
    "host-url": ({"HOST": "http://0.0.0.0"}, "HOST", "IP address"),
    "host-with-port": ({"HOST": "127.0.0.1:80"}, "HOST", "IP address"),
    "web-concurrency-word": ({"WEB_CONCURRENCY": "two"}, "WEB_CONCURRENCY", ">= 1"),
    "web-concurrency-zero": ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY", ">= 1"),
    "web-concurrency-memory": ({"WEB_CONCURRENCY": "2"}, "WEB_CONCURRENCY", "REDIS_URL"),
    "worker-connections": ({"WORKER_CONNECTIONS": "lots"}, "WORKER_CONNECTIONS", ">= 1"),
    "graceful-timeout": ({"GRACEFUL_TIMEOUT": "-1"}, "GRACEFUL_TIMEOUT", ">= 0"),
    "log-level": ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "debug, info"),
    "webhook-url-scheme": ({"WEBHOOK_URL": "ftp://x.example/hooks", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URL", "http://"),
    "webhook-url-without-secret": ({"WEBHOOK_URL": "https://x.example/hooks"}, "WEBHOOK_URL", "WEBHOOK_SECRET"),
    "webhook-secret-prefix": ({"WEBHOOK_SECRET": "c2VjcmV0c2VjcmV0c2VjcmV0"}, "WEBHOOK_SECRET", "whsec_"),
    "webhook-secret-short": ({"WEBHOOK_SECRET": f"{SECRET},whsec_c2hvcnQ="}, "WEBHOOK_SECRET", "16 bytes"),
    "webhook-secret-not-base64": ({"WEBHOOK_SECRET": "whsec_not base64!"}, "WEBHOOK_SECRET", "base64"),
    "webhook-timeout": ({"WEBHOOK_TIMEOUT": "0"}, "WEBHOOK_TIMEOUT", "> 0"),
    "webhook-retry-schedule": ({"WEBHOOK_RETRY_SCHEDULE": "5,soon"}, "WEBHOOK_RETRY_SCHEDULE", "seconds > 0"),
    "webhook-retry-schedule-zero": ({"WEBHOOK_RETRY_SCHEDULE": "0"}, "WEBHOOK_RETRY_SCHEDULE", "seconds > 0"),
    "webhook-retry-for": ({"WEBHOOK_RETRY_FOR": "1d"}, "WEBHOOK_RETRY_FOR", "seconds > 0"),
    "server-key-short": ({"SERVER_API_KEYS": "k" * 31}, "SERVER_API_KEYS", "at least 32"),
    "server-key-one-short": ({"SERVER_API_KEYS": "k" * 32 + ",short"}, "SERVER_API_KEYS", "at least 32"),
    "server-key-space": ({"SERVER_API_KEYS": "a key with spaces in it, which no header carries"}, "SERVER_API_KEYS",
                         "no spaces"),
}


@pytest.mark.parametrize("env, name, accepts", BAD.values(), ids=BAD.keys())
def test_a_bad_setting_is_refused_naming_it(env, name, accepts):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert message.startswith(f"{name}="), message
    assert accepts in message
    assert "\n" not in message


def test_every_setting_has_a_check_and_a_bad_value_in_the_table():
    named = {field.name.upper() for field in Settings.__dataclass_fields__.values()}
    # any string is a TURN secret; the join ticket keys are checked by Settings._validate_tickets (test_tickets)
    unchecked = {"TURN_SECRET", "JOIN_SECRET", "JOIN_PUBLIC_KEY"}
    assert named - unchecked == set(CHECKS)
    assert set(CHECKS) - {name for _, name, _ in BAD.values()} == set(), "a check without a bad value tested"


GOOD = {
    "defaults": {},
    "redis": {"REDIS_URL": "redis://localhost:6379/0", "WEB_CONCURRENCY": "4"},
    "every-redis-scheme": {"REDIS_URL": "rediss+cluster://:pw@10.0.0.1:6379"},
    "unix-socket": {"REDIS_URL": "unix:///run/redis.sock"},
    "sentinel": {"REDIS_URL": "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379,s3.example:26379/signaling/2",
                 "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT": "0.25"},
    "tls-verify-off": {"REDIS_URL": "rediss+sentinel://s1.example:26379/signaling", "REDIS_TLS_VERIFY": "none"},
    "ice": {"STUN_URLS": "stun:stun.example.org:3478, stun:[2001:db8::1]",
            "TURN_URLS": "turn:turn.example.org:3478?transport=udp,turns:turn.example.org:443?transport=tcp",
            "TURN_SECRET": "s3cret"},
    "origins": {"ALLOWED_ORIGINS": "https://a.example, http://localhost:3000, capacitor://localhost"},
    "host": {"HOST": "::", "LOG_LEVEL": "DEBUG"},
    "host-name": {"HOST": "localhost"},
    "streams": {"STREAM_HEARTBEAT": "0.5", "STREAM_MAX": "60", "MAILBOX_BYTES": "65536"},
    "webhooks": {"WEBHOOK_URL": "https://app.example/hooks?from=signaling", "WEBHOOK_SECRET": f"{SECRET}, {SECRET}",
                 "WEBHOOK_TIMEOUT": "2.5", "WEBHOOK_RETRY_SCHEDULE": "0.5,1,60", "WEBHOOK_RETRY_FOR": "3600"},
    "server-keys": {"SERVER_API_KEYS": "k" * 32 + ", " + "~!#$%&'*+-.^_`|0123456789abcdefghij"},
}


@pytest.mark.parametrize("env", GOOD.values(), ids=GOOD.keys())
def test_good_settings_pass(env):
    Settings.from_env(env)


def test_a_tls_ca_needs_a_tls_url(tmp_path):
    ca = Certificates(tmp_path).ca
    Settings.from_env({"REDIS_URL": "rediss://x:6380", "REDIS_TLS_CA": str(ca)})
    Settings.from_env({"REDIS_URL": "rediss://x:6380", "REDIS_TLS_CA": ca.read_text()})
    with pytest.raises(ConfigError, match="REDIS_TLS_CA is set, but it needs REDIS_URL with a TLS scheme"):
        Settings.from_env({"REDIS_URL": "redis://x", "REDIS_TLS_CA": str(ca)})


def procfile_command() -> list[str]:
    """The Procfile's `web:` command, run with this interpreter."""
    (line,) = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")]
    command = line.removeprefix("web:").split()
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The service as the Procfile starts it, with this environment (and none of the caller's settings)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "HOST", "PORT", "WEB_CONCURRENCY")}
    return subprocess.run([*procfile_command(), *args], cwd=ROOT, env={**environ, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("env", [{"REDIS_URL": "http://x"}, {"WEB_CONCURRENCY": "two"}, {"LOG_LEVEL": "loud"},
                                 {"TURN_URLS": "turn:x.example"}, {"ALLOWED_ORIGINS": "notanorigin"}],
                         ids=["redis-url", "workers", "log-level", "turn", "origins"])
def test_a_bad_setting_stops_the_start_with_one_line_and_no_traceback(env):
    (name,) = env
    run = start(env)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.startswith(f"signaling: bad configuration: {name}="), run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr


def test_a_redis_password_is_never_printed():
    assert redacted("redis://:hunter2@x:6379/0") == "redis://:***@x:6379/0"
    assert redacted("rediss://app:hunter2@x:6380") == "rediss://app:***@x:6380"
    assert redacted("redis://hunter2@x") == "redis://***@x"  # a lone user name is the password for Redis AUTH
    assert redacted("redis://x:6379") == "redis://x:6379"
    run = start({"REDIS_URL": "http://:hunter2@x"})
    assert run.returncode == 2 and "hunter2" not in run.stderr and ":***@x" in run.stderr, run.stderr


def serve_briefly(env: dict[str, str], seconds: float = 6) -> subprocess.CompletedProcess:
    """Start the service as `make run` does, stop it after `seconds` if it is still running."""
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "HOST", "PORT", "WEB_CONCURRENCY")}
    process = subprocess.Popen([*procfile_command()], cwd=ROOT, env={**environ, **env}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.terminate()
        out, err = process.communicate(timeout=20)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_a_port_in_use_is_refused_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = serve_briefly({"HOST": "127.0.0.1", "PORT": str(port)})
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"signaling: bad configuration: PORT={port} cannot be listened on"), run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


def test_an_unresolvable_host_is_refused_in_one_line():
    run = serve_briefly({"HOST": "no-such-host.invalid", "PORT": str(free_port())})
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("signaling: bad configuration: HOST='no-such-host.invalid' does not resolve")
    assert run.stderr.count("\n") == 1, run.stderr


def test_make_run_says_nothing_of_a_url_before_refusing_a_bad_port():
    run = subprocess.run(["make", "-o", ".venv/bin/gunicorn", "run"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PORT": "abc"}, timeout=60)
    assert run.returncode != 0
    assert "http://" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert "PORT='abc'" in run.stderr


def test_gunicorn_takes_every_value_from_the_settings():
    run = start({"HOST": "127.0.0.1", "PORT": "8123", "WORKER_CONNECTIONS": "77", "GRACEFUL_TIMEOUT": "3",
                 "LOG_LEVEL": "WARNING"}, "--print-config")
    assert run.returncode == 0, run.stderr
    config = print_config(run.stdout)
    assert config["bind"] == "['127.0.0.1:8123']"
    assert (config["workers"], config["worker_connections"], config["graceful_timeout"]) == ("1", "77", "3")
    assert config["loglevel"] == "warning"


def print_config(text: str) -> dict[str, str]:
    """gunicorn's `--print-config` lines, `name    = value`."""
    return {name.strip(): value.strip() for name, _, value in (line.partition("=") for line in text.splitlines())}


def test_the_procfile_listens_on_every_interface_of_the_platforms_port():
    """A platform sets PORT and routes to it from outside: the Procfile binds 0.0.0.0 (checked, not bound)."""
    run = start({"PORT": "5123"}, "--print-config")
    assert run.returncode == 0, run.stderr
    assert print_config(run.stdout)["bind"] == "['0.0.0.0:5123']"

