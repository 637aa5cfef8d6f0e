"""ICE servers for RTCConfiguration, with TURN REST credentials (coturn's static-auth-secret)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from .config import Settings


def turn_credentials(secret: str, peer_id: str, expires_at: int) -> tuple[str, str]:
    """(username, credential) that a TURN server with this shared secret accepts until `expires_at`."""
    username = f"{expires_at}:{peer_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(settings: Settings, peer_id: str, now: float) -> list[dict]:
    """The `iceServers` list for one peer: STUN as configured, TURN with fresh credentials."""
    servers: list[dict] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    if settings.turn_urls:
        turn: dict = {"urls": list(settings.turn_urls)}
        if settings.turn_secret:
            username, credential = turn_credentials(
                settings.turn_secret, peer_id, int(now) + settings.turn_ttl
            )
            turn.update(username=username, credential=credential)
        servers.append(turn)
    return servers
