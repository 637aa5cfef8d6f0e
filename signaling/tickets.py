"""Join tickets (PROTOCOL.md, "Join tickets"): the application's backend signs a JWT; a fresh join shows it.

PyJWT does the JWT work. Which algorithm a ticket may use comes from the
settings, never from the ticket's header: HS256 with a `JOIN_SECRET`, and
the one algorithm that fits `JOIN_PUBLIC_KEY`'s key (RS256, ES256 or EdDSA).
So neither `none` nor an HS256 ticket "signed" with the public key's text
ever passes. `JOIN_SECRET` may list several secrets, comma-separated, so a
new one can be rolled out before the old one is dropped.

    python -m signaling.tickets --room demo --peer alice [--ttl 60] [--once] [--meta '{"name": "Alice"}']

prints a ticket signed with the first `JOIN_SECRET`, for curl and for trying
the demo by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

import jwt

from . import errors
from .config import ConfigError, Settings
from .protocol import ID_PATTERN, meta_text
from .ticket_keys import load_public_key

#: seconds that the service's and the application's clocks may differ
LEEWAY = 30
#: the longest `jti` taken: it becomes part of a stored key
MAX_JTI = 128
#: the latest `exp` taken (the year 5138): a used jti is stored until then, and Redis must be able to say so
MAX_EXP = 10**11
#: what every ticket must carry; claims the protocol does not name (`aud`, `iss`, ...) are ignored
OPTIONS = {"require": ["exp", "room"], "verify_aud": False}


@dataclasses.dataclass(frozen=True)
class Ticket:
    """The claims of a ticket that passed every check, as a join acts on them."""

    sub: str | None  # the peer id the ticket is for, if it names one
    jti: str | None  # set: the ticket admits one join only
    meta: str | None  # its `meta` claim as compact JSON text (protocol 1.2): the peer's meta, which only it sets
    usable_until: float  # exp plus the leeway: until then the ticket passes, so its used jti is kept as long


class Verifier:
    """Checks tickets against the configured keys; one per process, made from the settings."""

    def __init__(self, join_secrets: Sequence[str] = (), public_key: str | None = None):
        # (key, the one algorithm it verifies): a ticket's header only picks among these
        self._keys: list[tuple[Any, str]] = [(secret.encode(), "HS256") for secret in join_secrets]
        if public_key:
            self._keys.append(load_public_key(public_key))

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifier | None:
        """The verifier the settings ask for, or None when tickets are off."""
        if not (settings.join_secret or settings.join_public_key):
            return None
        return cls(settings.join_secret, settings.join_public_key)

    def check(self, raw: object, room: str, peer_id: str | None) -> Ticket:
        """The ticket's claims, or `TicketRequired` / `BadTicket` naming the check that failed.

        `peer_id` is the id the join asks for (None: the ticket's `sub` names it).
        """
        if raw is None:
            raise errors.TicketRequired.about(room=room)
        if not isinstance(raw, str) or not raw or not raw.isascii():  # a JWT is ASCII: base64url parts and dots
            raise errors.BadTicket.failed("malformed", "'ticket' must be a JWT string")
        claims = self._decode(raw)
        ticket_room, sub, jti = claims["room"], claims.get("sub"), claims.get("jti")
        if not isinstance(ticket_room, str):
            raise errors.BadTicket.failed("malformed", "its 'room' claim is not a string")
        if sub is not None and not (isinstance(sub, str) and ID_PATTERN.fullmatch(sub)):
            raise errors.BadTicket.failed("malformed", "its 'sub' claim is not a peer id")
        if jti is not None and not (isinstance(jti, str) and 1 <= len(jti) <= MAX_JTI):
            raise errors.BadTicket.failed("malformed", f"its 'jti' claim is not a string of 1-{MAX_JTI} characters")
        if not isinstance(claims["exp"], (int, float)) or isinstance(claims["exp"], bool) or claims["exp"] > MAX_EXP:
            raise errors.BadTicket.failed("malformed", "its 'exp' claim is not a time in Unix seconds")
        meta = claims.get("meta")
        if meta is not None:
            try:
                meta = meta_text(meta)
            except errors.BadMeta as exc:
                raise errors.BadTicket.failed("meta", exc.message) from None
        if ticket_room != room:
            raise errors.BadTicket.failed("another room", f"it is for room {ticket_room!r:.80}, not {room!r}")
        if sub is not None and peer_id is not None and sub != peer_id:
            raise errors.BadTicket.failed("another peer id", f"it is for {sub!r}, not {peer_id!r}")
        return Ticket(sub=sub, jti=jti, meta=meta, usable_until=float(claims["exp"]) + LEEWAY)

    def _decode(self, raw: str) -> dict:
        """Verify the signature with the key for the header's algorithm (any listed secret), then the times."""
        try:
            algorithm = jwt.get_unverified_header(raw).get("alg")
        except jwt.DecodeError as exc:
            raise errors.BadTicket.failed("malformed", str(exc)) from None
        keys = [key for key, accepted in self._keys if accepted == algorithm]
        if not keys:
            raise errors.BadTicket.failed("signature", f"algorithm {algorithm!r:.20} is not accepted here")
        for key in keys:
            try:
                return jwt.decode(raw, key, algorithms=[algorithm], leeway=LEEWAY, options=OPTIONS)
            except jwt.InvalidSignatureError:
                continue  # another of the rotated secrets may have signed it
            except jwt.ExpiredSignatureError:
                raise errors.BadTicket.failed("expired", f"its exp is past, beyond {LEEWAY} s of leeway") from None
            except jwt.ImmatureSignatureError:
                raise errors.BadTicket.failed("not yet valid", "its nbf or iat is in the future") from None
            except jwt.MissingRequiredClaimError as exc:
                raise errors.BadTicket.failed("malformed", f"it has no {exc.claim!r} claim") from None
            except jwt.InvalidTokenError as exc:
                raise errors.BadTicket.failed("malformed", str(exc)) from None
        raise errors.BadTicket.failed("signature", "it was not signed with a key this server accepts")


def mint(secret: str, room: str, peer: str | None = None, ttl: float = 60, once: bool = False,
         now: float | None = None, meta: dict | None = None) -> str:
    """A ticket for `room` (and `peer`), good for `ttl` seconds; `once` adds a random jti; `meta`, the peer's."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {"room": room, "iat": int(now), "exp": int(now + ttl)}
    if peer is not None:
        claims["sub"] = peer
    if once:
        claims["jti"] = secrets.token_urlsafe(16)
    if meta is not None:
        claims["meta"] = meta
    return jwt.encode(claims, secret, algorithm="HS256")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m signaling.tickets",
        description="Print a join ticket signed with the first JOIN_SECRET (for curl and for trying the demo).",
    )
    parser.add_argument("--room", required=True, help="the room the ticket admits to")
    parser.add_argument("--peer", help="the peer id it is for (its 'sub'); without it the join picks one")
    parser.add_argument("--ttl", type=float, default=60, help="seconds it stays good (default 60)")
    parser.add_argument("--once", action="store_true", help="single use: add a random 'jti'")
    parser.add_argument("--meta", help='the peer\'s meta, a JSON object such as \'{"name": "Alice"}\'')
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    if not settings.join_secret:
        parser.exit(2, "error: JOIN_SECRET is not set: set the same value as the server's\n")
    for value, what in ((args.room, "--room"), (args.peer, "--peer")):
        if value is not None and not ID_PATTERN.fullmatch(value):
            parser.exit(2, f"error: {what} must be 1-64 characters of A-Z a-z 0-9 _ -\n")
    meta = None
    if args.meta is not None:
        try:
            meta = json.loads(args.meta)
            meta_text(meta)
        except (ValueError, errors.BadMeta) as exc:
            parser.exit(2, f"error: --meta must be a JSON object of at most 2048 bytes: {exc}\n")
    print(mint(settings.join_secret[0], args.room, args.peer, args.ttl, args.once, meta=meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
