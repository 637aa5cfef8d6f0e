"""Peer tokens: issued at a join, stored only as a hash, and naming the peer they were issued to."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from . import errors
from .protocol import ID_PATTERN


def new_token(peer_id: str) -> str:
    """A secret that also names its peer, so a send or a member list knows its caller.

    The peer id part is public; only the random part is secret, and only the
    token's hash is stored.
    """
    return f"{peer_id}.{secrets.token_urlsafe(32)}"


def token_peer(token: str | None) -> str | None:
    """The peer id a token was issued to, or None for something that is no token of ours."""
    if not token:
        return None
    peer_id, dot, secret = token.partition(".")
    return peer_id if dot and secret and ID_PATTERN.fullmatch(peer_id) else None


def hash_token(token: str) -> str:
    """Tokens are stored only as this hash, so a leaked store reveals no usable token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(stored: str | None, token: str | None) -> bool:
    """Constant-time comparison of a stored hash with a presented token."""
    if not stored or not token:
        return False
    return hmac.compare_digest(stored, hash_token(token))


def caller(token: str | None) -> tuple[str, str]:
    """(peer id, token) of a request that names no peer in its path: the token tells."""
    peer = token_peer(token)
    if peer is None:
        raise errors.Unauthorized("this call needs 'Authorization: Bearer <token>' from your join")
    return peer, token
