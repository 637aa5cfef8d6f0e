"""The keys that verify join tickets: a JOIN_SECRET's and a JOIN_PUBLIC_KEY's, read and checked.

config.py checks them when the settings are read (a key that could never
verify a ticket is refused at start); tickets.py verifies with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

#: the algorithm each kind of public key verifies
_KEY_ALGORITHMS = (
    (rsa.RSAPublicKey, "RS256"),
    (ec.EllipticCurvePublicKey, "ES256"),
    (ed25519.Ed25519PublicKey, "EdDSA"),
    (ed448.Ed448PublicKey, "EdDSA"),
)


def read_pem(value: str) -> bytes:
    """JOIN_PUBLIC_KEY's PEM: the value itself (`\\n` escapes allowed, as env files write them) or a file's text."""
    text = value.strip().replace("\\n", "\n")
    if text.startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(text).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"neither a PEM (-----BEGIN PUBLIC KEY-----...) nor a readable file: {exc.strerror}") from None


def load_public_key(value: str) -> tuple[Any, str]:
    """(key, algorithm) for a JOIN_PUBLIC_KEY value; ValueError saying why it cannot be used."""
    try:
        key = load_pem_public_key(read_pem(value))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    algorithm = next((algorithm for kind, algorithm in _KEY_ALGORITHMS if isinstance(key, kind)), None)
    if algorithm is None:
        raise ValueError(f"a {type(key).__name__}: only RSA, EC P-256, Ed25519 and Ed448 keys verify tickets")
    if algorithm == "ES256" and not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"an EC key on {key.curve.name}: ES256 needs P-256 (secp256r1)")
    weak = jwt.get_algorithm_by_name(algorithm).check_key_length(key)
    if weak:
        raise ValueError(weak)
    return key, algorithm


def check_secret(secret: str) -> None:
    """ValueError for a JOIN_SECRET too short for HS256 (RFC 7518, 3.2: at least 32 bytes)."""
    if len(secret.encode()) < 32:
        raise ValueError(
            "each secret must be at least 32 bytes; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    try:
        jwt.get_algorithm_by_name("HS256").prepare_key(secret)
    except jwt.InvalidKeyError as exc:  # PyJWT refuses a PEM or SSH key as an HMAC secret
        raise ValueError(str(exc)) from None
