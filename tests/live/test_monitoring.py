"""Metrics and health on the real server: /metrics kept private, the store's gauges, liveness beside
readiness while Redis is away, and a dashboard and alert rules that name only metrics the service exports."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from ..contract.test_observability import metric
from ..support.helpers import Api
from ..support.servers import ROOT

pytestmark = pytest.mark.live

MONITORING = ROOT / "docs" / "monitoring"
TOKEN = "scrape-me-0123456789abcdef"
#: series Prometheus makes itself for every target
PROMETHEUS_OWN = {"up"}
#: PromQL's words that are not metric names: functions, aggregations, keywords
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "topk", "bottomk",
    "abs", "clamp_min", "clamp_max", "delta", "deriv", "absent", "vector", "scalar", "time", "le",
}


def names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    words = set(re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w.(])", expr))
    return {word for word in words if word not in PROMQL_WORDS and not re.fullmatch(r"\d+|e\d+", word)}


def expressions() -> dict[str, str]:
    """Every expression of the dashboard and the alert rules, by where it stands."""
    found = {}
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found[f"dashboard: {panel['title']} {target['refId']}"] = target["expr"]
    for group in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            found[f"alert: {rule['alert']}"] = rule["expr"]
    return found


def exported(text: str) -> set[str]:
    """Every series name in a Prometheus text exposition, histogram and counter suffixes included."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def scrape(server, token: str | None = None, **headers: str):
    return Api.over_http(server.url, timeout=10).request("GET", "/metrics", token=token, headers=headers or None)


def exercise(server) -> None:
    """Touch every metric: joins, sends, broadcasts, polls held and answered, a stream, errors."""
    api = Api.over_http(server.url, timeout=10)
    alice, bob = api.peer("m1", "alice"), api.peer("m1", "bob")
    api.peer("m2", "carol")
    alice.send("bob", "offer", {"sdp": "v=0"})
    alice.broadcast("note")
    bob.receive()
    bob.poll(wait=0.2)
    stream = bob.stream()
    try:
        stream.until_end(timeout=10)  # STREAM_MAX ends it: a stream ended, by its reason
    finally:
        stream.close()
    api.request("GET", "/rooms/m1/peers/nobody/messages", token=alice.token)
    api.request("GET", "/static/nothing-here")


def test_the_dashboard_and_the_alerts_name_only_metrics_the_service_exports(start_server, redis_url):
    server = start_server(env={"REDIS_URL": redis_url, "STREAM_HEARTBEAT": "0.5", "STREAM_MAX": "1"})
    exercise(server)
    names = exported(scrape(server).raw.decode()) | PROMETHEUS_OWN
    missing = {where: sorted(names_in(expr) - names) for where, expr in expressions().items() if names_in(expr) - names}
    assert not missing, missing
    # the checker sees names at all (a parser that found none would pass anything)
    assert {"signaling_requests_total", "signaling_redis_round_trip_seconds_bucket"} <= set().union(
        *map(names_in, expressions().values()))


def test_the_name_check_fails_on_a_metric_that_does_not_exist():
    assert names_in('sum by (endpoint) (rate(signaling_no_such_total{status=~"5.."}[5m])) > 0') == {
        "signaling_no_such_total"}


def test_metrics_answer_only_a_local_unforwarded_caller_or_the_token_and_carry_no_cors(start_server):
    local = start_server()
    reply = scrape(local, Origin="https://evil.example")
    assert reply.status == 200 and "access-control-allow-origin" not in reply.headers
    assert scrape(local, **{"X-Forwarded-For": "203.0.113.9"}).code == "forbidden"

    guarded = start_server(env={"METRICS_TOKEN": TOKEN})
    assert scrape(guarded).code == "unauthorized"
    assert scrape(guarded, token="wrong-token-0123456789").code == "unauthorized"
    assert scrape(guarded, token=TOKEN, **{"X-Forwarded-For": "203.0.113.9"}).status == 200


def test_rooms_peers_and_requests_are_counted_from_the_store_and_by_endpoint(start_server, redis_url):
    server = start_server(env={"REDIS_URL": redis_url})
    api = Api.over_http(server.url, timeout=10)
    api.peer("g1", "a"), api.peer("g1", "b"), api.peer("g2", "c")
    text = scrape(server).raw.decode()
    assert (metric(text, "signaling_rooms"), metric(text, "signaling_peers")) == (2, 3)
    assert metric(text, "signaling_backend_up") == 1
    assert metric(text, "signaling_requests_total", endpoint="POST /rooms/{room}/peers", status="201") == 3
    assert metric(text, "signaling_worker_resident_memory_bytes", pid=str(server.worker_pids()[0])) > 10e6


def test_liveness_holds_while_redis_is_away_and_readiness_says_why_not(start_server, private_redis):
    server = start_server(env={"REDIS_URL": private_redis.url})
    api = Api.over_http(server.url, timeout=10)
    assert api.request("GET", "/readyz").body["status"] == "ready"
    private_redis.stop()
    live, ready, health = (api.request("GET", path) for path in ("/livez", "/readyz", "/healthz"))
    assert (live.status, live.body) == (200, {"status": "ok"})
    assert ready.code == "backend_unavailable" and ready.status == 503 and ready.headers["retry-after"] == "1"
    assert health.code == "backend_unavailable"  # the protocol's check is unchanged
    assert metric(scrape(server).raw.decode(), "signaling_backend_up") == 0
