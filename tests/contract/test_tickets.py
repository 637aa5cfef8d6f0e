"""Join tickets (PROTOCOL.md, "Join tickets"), every rule on every backend: memory, Redis, Redis Cluster."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from signaling.config import ConfigError, Settings
from signaling.tickets import LEEWAY, Verifier, mint

from ..support.helpers import Api
from ..support.openapi import conforms
from ..support.servers import ROOT

SECRET = "a-join-secret-of-at-least-32-bytes-0001"
OLD_SECRET = "the-previous-join-secret-still-in-use-02"
ROUNDS = 20  # races of two joins with one single-use ticket


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict, claims: dict, sign=lambda signing_input: b"") -> str:
    """A JWT put together by hand, for what PyJWT refuses to sign (alg none, HS256 keyed by a PEM)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def claims(room: str = "r1", ttl: float = 60, **more) -> dict:
    now = int(time.time())
    return {"room": room, "iat": now, "exp": now + ttl, **more}


def ticket(room: str = "r1", secret: str = SECRET, **more) -> str:
    return jwt.encode(claims(room, **more), secret, algorithm="HS256")


@pytest.fixture
def api(make_app) -> Api:
    """The test's backend with tickets on."""
    return Api.over_flask(make_app(join_secret=(SECRET,)).test_client())


def refused(reply, code: str, check: str | None = None) -> None:
    """A 401 with `code`, as the OpenAPI document says, its message naming the failed `check`."""
    assert reply.status == 401 and reply.code == code, reply.raw
    conforms(reply, "join")
    if check is not None:
        assert reply.body["error"]["message"].startswith(f"bad ticket: {check}"), reply.raw


# -- who needs a ticket


def test_a_fresh_join_needs_a_ticket(api):
    refused(api.join("r1", "alice"), "ticket_required")
    refused(api.request("POST", "/rooms/r1/peers", data=b""), "ticket_required")
    refused(api.request("POST", "/rooms/r1/peers", {"ticket": None}), "ticket_required")
    reply = api.join("r1", "alice", ticket=ticket())
    assert reply.status == 201 and reply.body["peer_id"] == "alice"


def test_without_join_settings_a_ticket_is_ignored(make_app):
    api = Api.over_flask(make_app().test_client())
    assert api.join("r1", "alice", ticket="not a ticket at all").status == 201
    assert api.request("POST", "/rooms/r1/peers", {"ticket": 42}).status == 201


def test_a_resume_needs_no_ticket_even_beside_a_bad_one(api):
    alice = api.peer("r1", "alice", ticket=ticket())
    assert api.join("r1", "alice", token=alice.token).status == 200
    again = api.join("r1", "alice", token=alice.token, ticket=ticket(ttl=-3600))
    assert again.status == 200 and again.body["token"] == alice.token
    # a token that resumes nothing is no admission: the join is a fresh one, and needs its ticket
    alice.leave()
    refused(api.join("r1", "alice", token=alice.token), "ticket_required")
    refused(api.join("r1", "bob", token=alice.token), "ticket_required")


# -- each check, named in the message


def test_sub_binds_the_peer_id_and_names_it_when_the_join_gives_none(api):
    reply = api.join("r1", ticket=ticket(sub="alice"))
    assert reply.status == 201 and reply.body["peer_id"] == "alice"
    assert reply.body["token"].startswith("alice.")
    refused(api.join("r1", "mallory", ticket=ticket(sub="bob")), "bad_ticket", "another peer id")
    assert api.join("r1", "bob", ticket=ticket(sub="bob")).status == 201


def test_without_sub_any_peer_id_may_join_with_it(api):
    assert api.join("r1", "alice", ticket=ticket()).status == 201
    anonymous = api.join("r1", ticket=ticket())
    assert anonymous.status == 201 and anonymous.body["peer_id"] not in ("alice", "")


def test_claims_the_protocol_does_not_name_are_ignored(api):
    assert api.join("r1", "alice", ticket=ticket(aud="my-app", iss="https://app.example", role="host")).status == 201


def test_a_ticket_is_for_one_room(api):
    reply = api.join("r2", "alice", ticket=ticket("r1"))
    refused(reply, "bad_ticket", "another room")
    assert "'r1'" in reply.body["error"]["message"]


def test_expired_within_and_beyond_the_leeway(api):
    refused(api.join("r1", "a", ticket=ticket(ttl=-LEEWAY - 5)), "bad_ticket", "expired")
    assert api.join("r1", "b", ticket=ticket(ttl=-LEEWAY + 10)).status == 201  # a slow clock is forgiven


def test_not_yet_valid(api):
    now = int(time.time())
    refused(api.join("r1", "a", ticket=ticket(nbf=now + LEEWAY + 30)), "bad_ticket", "not yet valid")
    refused(api.join("r1", "a", ticket=ticket(iat=now + LEEWAY + 30)), "bad_ticket", "not yet valid")
    assert api.join("r1", "b", ticket=ticket(nbf=now + LEEWAY - 10, iat=now + 5)).status == 201


def test_signature(api):
    refused(api.join("r1", "a", ticket=ticket(secret="another-secret-of-the-right-length-xyz")),
            "bad_ticket", "signature")
    tampered = ticket(room="r2")
    head, _, sig = tampered.split(".")
    refused(api.join("r1", "a", ticket=f"{head}.{b64(json.dumps(claims('r1')).encode())}.{sig}"),
            "bad_ticket", "signature")
    refused(api.join("r1", "a", ticket=forged({"alg": "none", "typ": "JWT"}, claims())), "bad_ticket", "signature")
    hs512 = forged({"alg": "HS512", "typ": "JWT"}, claims(),
                   lambda data: hmac.new(SECRET.encode(), data, hashlib.sha512).digest())
    refused(api.join("r1", "a", ticket=hs512), "bad_ticket", "signature")  # the right secret, not the algorithm


#: malformed tickets by name; each is made when its test runs, so a long suite cannot see one expire first
MALFORMED = {
    "not-a-jwt": lambda: "not-a-jwt", "three-parts": lambda: "a.b.c", "empty": lambda: "", "number": lambda: 42,
    "list": lambda: ["x"], "lone-surrogate": lambda: "\ud800",
    "surrogate-payload": lambda: "eyJhbGciOiJIUzI1NiJ9.\ud800.x", "not-ascii": lambda: "é.é.é",
    "no-room": lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
    "no-exp": lambda: jwt.encode({"room": "r1"}, SECRET, algorithm="HS256"),
    "exp-text": lambda: ticket(exp="soon"), "exp-beyond-5138": lambda: ticket(exp=10**12),
    "iat-text": lambda: ticket(iat="today"),
    "room-list": lambda: jwt.encode({**claims(), "room": ["r1"]}, SECRET, algorithm="HS256"),
    "sub-not-an-id": lambda: ticket(sub="not a peer id!"), "jti-empty": lambda: ticket(jti=""),
    "jti-too-long": lambda: ticket(jti="j" * 129), "jti-number": lambda: ticket(jti=7),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed(api, name):
    reply = api.request("POST", "/rooms/r1/peers", {"peer_id": "a", "ticket": MALFORMED[name]()})
    refused(reply, "bad_ticket", "malformed")


# -- single use


def test_a_jti_admits_one_join_until_the_ticket_expires(api):
    once = ticket(jti="t-1")
    alice = api.peer("r1", "alice", ticket=once)
    refused(api.join("r1", "bob", ticket=once), "bad_ticket", "already used")
    alice.leave()  # the room is gone: the used ticket is still remembered
    refused(api.join("r1", "alice", ticket=once), "bad_ticket", "already used")
    assert api.join("r1", "bob", ticket=ticket(jti="t-2")).status == 201
    assert api.join("r2", "carol", ticket=ticket("r2", jti="t-1")).status == 201  # another room's ticket


def test_a_failed_join_does_not_use_up_its_jti(make_app):
    api = Api.over_flask(make_app(join_secret=(SECRET,), room_capacity=1).test_client())
    alice = api.peer("r1", "alice", ticket=ticket())
    once = ticket(jti="wait-for-room")
    assert api.join("r1", "bob", ticket=once).code == "room_full"
    assert api.join("r1", "alice", ticket=once).code == "peer_id_taken"
    alice.leave()
    assert api.join("r1", "bob", ticket=once).status == 201


def test_a_resume_does_not_use_up_a_jti(api):
    alice = api.peer("r1", "alice", ticket=ticket())
    once = ticket(jti="spare")
    assert api.join("r1", "alice", token=alice.token, ticket=once).status == 200
    assert api.join("r1", "bob", ticket=once).status == 201


def race(joins) -> list[list[int]]:
    """Run each round's joins at once (threads released together); the statuses of each round, sorted."""
    rounds = []
    for round_joins in joins:
        barrier = threading.Barrier(len(round_joins))
        statuses: list[int] = []

        def run(join, barrier=barrier, statuses=statuses):
            barrier.wait(timeout=10)
            statuses.append(join().status)

        threads = [threading.Thread(target=run, args=(join,)) for join in round_joins]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        rounds.append(sorted(statuses))
    return rounds


def test_of_two_joins_at_once_with_one_ticket_exactly_one_gets_in(make_app):
    app = make_app(join_secret=(SECRET,))
    apis = [Api.over_flask(app.test_client()), Api.over_flask(app.test_client())]
    tickets = [ticket(f"r{i}", jti=f"race-{i}") for i in range(ROUNDS)]
    rounds = race([[lambda i=i, n=n: apis[n].join(f"r{i}", f"p{n}", ticket=tickets[i]) for n in (0, 1)]
                   for i in range(ROUNDS)])
    assert rounds == [[201, 401]] * ROUNDS


@pytest.mark.live
def test_of_two_joins_at_once_on_two_instances_exactly_one_gets_in(start_server, redis_url):
    env = {"REDIS_URL": redis_url, "JOIN_SECRET": SECRET}
    apis = [Api.over_http(start_server(env=env).url), Api.over_http(start_server(env=env).url)]
    tickets = [ticket(f"r{i}", jti=f"race-{i}") for i in range(ROUNDS)]
    rounds = race([[lambda i=i, n=n: apis[n].join(f"r{i}", f"p{n}", ticket=tickets[i]) for n in (0, 1)]
                   for i in range(ROUNDS)])
    assert rounds == [[201, 401]] * ROUNDS


# -- a refused join changes nothing


def test_a_refused_join_changes_nothing(make_app):
    api = Api.over_flask(make_app(join_secret=(SECRET,)).test_client())
    alice = api.peer("r1", "alice", ticket=ticket())
    api.peer("r1", "bob", ticket=ticket(jti="used"))
    alice.drain()
    attempts = [
        api.join("r1", "mallory"), api.join("r1"), api.join("r1", "mallory", ticket=ticket("r2")),
        api.join("r1", "mallory", ticket=ticket(jti="used")), api.join("r1", ticket=ticket(sub="x", ttl=-99)),
        api.join("r1", "alice", ticket="garbage"),
    ]
    assert [reply.status for reply in attempts] == [401] * len(attempts)
    assert alice.receive() == []  # no peer-joined
    assert alice.members().body["peers"] == ["alice", "bob"]


def test_the_ip_lease_of_a_refused_join_is_given_back(make_app):
    api = Api.over_flask(make_app(join_secret=(SECRET,), peers_per_ip=1).test_client())
    for _ in range(3):
        refused(api.join("r1"), "ticket_required")
        refused(api.join("r1", "alice", ticket=ticket("r2")), "bad_ticket", "another room")
    assert api.join("r1", "alice", ticket=ticket()).status == 201  # the one place was still free


# -- keys and rotation


def test_any_of_the_rotated_secrets_verifies(make_app):
    api = Api.over_flask(make_app(join_secret=(SECRET, OLD_SECRET)).test_client())
    assert api.join("r1", "new", ticket=ticket(secret=SECRET)).status == 201
    assert api.join("r1", "old", ticket=ticket(secret=OLD_SECRET)).status == 201
    refused(api.join("r1", "gone", ticket=ticket(secret="a-retired-secret-nobody-lists-anymore")),
            "bad_ticket", "signature")


def pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


KEYS = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


@pytest.fixture(scope="module")
def key_pairs():
    return {algorithm: make() for algorithm, make in KEYS.items()}


@pytest.mark.parametrize("algorithm", list(KEYS))
def test_a_public_key_verifies_its_algorithm_only(make_app, key_pairs, algorithm):
    private = key_pairs[algorithm]
    public_pem = pem(private)
    api = Api.over_flask(make_app(join_public_key=public_pem).test_client())
    assert api.join("r1", "alice", ticket=jwt.encode(claims(), private, algorithm=algorithm)).status == 201
    refused(api.join("r1", "b", ticket=ticket()), "bad_ticket", "signature")  # HS256 is off without JOIN_SECRET
    # the classic confusion: an HS256 ticket "signed" with the public key's own text
    confused = forged({"alg": "HS256", "typ": "JWT"}, claims(),
                      lambda data: hmac.new(public_pem.encode(), data, hashlib.sha256).digest())
    refused(api.join("r1", "c", ticket=confused), "bad_ticket", "signature")
    other = next(a for a in KEYS if a != algorithm)
    refused(api.join("r1", "d", ticket=jwt.encode(claims(), key_pairs[other], algorithm=other)),
            "bad_ticket", "signature")


def test_secret_and_public_key_together(make_app, key_pairs):
    api = Api.over_flask(make_app(join_secret=(SECRET,), join_public_key=pem(key_pairs["ES256"])).test_client())
    assert api.join("r1", "a", ticket=ticket()).status == 201
    assert api.join("r1", "b", ticket=jwt.encode(claims(), key_pairs["ES256"], algorithm="ES256")).status == 201


# -- settings


def test_settings_read_the_secret_list_and_the_key_inline_or_from_a_file(tmp_path, key_pairs):
    settings = Settings.from_env({"JOIN_SECRET": f"{SECRET}, {OLD_SECRET}"})
    assert settings.join_secret == (SECRET, OLD_SECRET)
    public_pem = pem(key_pairs["RS256"])
    path = tmp_path / "join.pem"
    path.write_text(public_pem)
    signed = jwt.encode(claims(sub="alice"), key_pairs["RS256"], algorithm="RS256")
    for value in (public_pem, public_pem.replace("\n", "\\n"), str(path)):
        verifier = Verifier.from_settings(Settings.from_env({"JOIN_PUBLIC_KEY": value}))
        assert verifier.check(signed, "r1", None).sub == "alice"


@pytest.mark.parametrize("env, names", [
    ({"JOIN_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----"}, "JOIN_PUBLIC_KEY"),
    ({"JOIN_PUBLIC_KEY": "/no/such/key.pem"}, "JOIN_PUBLIC_KEY"),
    ({"JOIN_SECRET": "short"}, "JOIN_SECRET"),
    ({"JOIN_SECRET": "-----BEGIN PUBLIC KEY-----MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE-----END PUBLIC KEY-----"},
     "JOIN_SECRET"),
])
def test_unusable_ticket_settings_are_refused_at_start(env, names):
    with pytest.raises(ConfigError) as refused_setting:
        Settings.from_env(env)
    message = str(refused_setting.value)
    assert message.startswith(f"{names} is not valid") and "\n" not in message


def test_a_weak_or_unsuitable_key_is_refused_at_start():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    other_curve = ec.generate_private_key(ec.SECP384R1())
    for private in (weak, other_curve):
        with pytest.raises(ConfigError, match="^JOIN_PUBLIC_KEY is not valid"):
            Settings.from_env({"JOIN_PUBLIC_KEY": pem(private)})


# -- the command that mints one by hand


def run_tickets(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "signaling.tickets", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


def test_the_command_prints_a_ticket_the_server_takes(api):
    printed = run_tickets("--room", "r1", "--peer", "alice", "--ttl", "120", "--once", env={"JOIN_SECRET": SECRET})
    assert printed.returncode == 0, printed.stderr
    minted = printed.stdout.strip()
    decoded = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert decoded["room"] == "r1" and decoded["sub"] == "alice" and decoded["jti"]
    assert 115 <= decoded["exp"] - time.time() <= 121
    reply = api.request("POST", "/rooms/r1/peers", {"ticket": minted})
    assert reply.status == 201 and reply.body["peer_id"] == "alice"
    refused(api.request("POST", "/rooms/r1/peers", {"ticket": minted, "peer_id": "alice2"}), "bad_ticket")


def test_the_command_says_what_is_missing():
    unset = run_tickets("--room", "r1", env={})
    assert unset.returncode == 2 and "JOIN_SECRET is not set" in unset.stderr
    bad_room = run_tickets("--room", "no spaces", env={"JOIN_SECRET": SECRET})
    assert bad_room.returncode == 2 and "--room" in bad_room.stderr


def test_mint_signs_with_the_given_secret():
    decoded = jwt.decode(mint(SECRET, "r9", ttl=30, now=time.time()), SECRET, algorithms=["HS256"])
    assert decoded["room"] == "r9" and "sub" not in decoded and "jti" not in decoded
