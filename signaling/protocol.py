"""The wire format: ids, JSON bodies, envelopes and how they are encoded once, poll answers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import secrets
from typing import Any

import orjson

from . import errors

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RESERVED_TYPES = frozenset({"peer-joined", "peer-left"})
MAX_LIMIT = 100
MAX_BATCH = 100
IDEMPOTENCY_TTL = 600
#: receipts one sender (one life of a peer) keeps: its newest; a client retries a request long before it made 1,000 more
IDEMPOTENCY_KEYS_PER_PEER = 1000
MAX_IDEMPOTENCY_KEY = 64
#: the largest peer meta, in bytes as compact UTF-8 JSON (1.2)
MAX_META_BYTES = 2048
#: the `from` of what the application sends through the server API: no peer id can be it ('@' is no id character)
SERVER_SENDER = "@server"


def check_id(value: Any, what: str) -> str:
    """Return a room or peer id, or refuse it with a 400 naming the rule."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise errors.BadId(f"{what} must be 1-64 characters of A-Z a-z 0-9 _ -, got {value!r:.80}")
    return value


def meta_text(meta: Any) -> str:
    """A peer's meta as it is kept and sent on: compact UTF-8 JSON text; `BadMeta` unless a small object.

    Kept as text, so every backend stores it and writes it into events and answers as it is.
    """
    if not isinstance(meta, dict):
        raise errors.BadMeta(f"'meta' must be a JSON object, got {type(meta).__name__}")
    try:
        text = json.dumps(meta, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (ValueError, RecursionError):
        raise errors.BadMeta("'meta' must be JSON: no NaN or Infinity, nested at most a few hundred deep") from None
    text = text if text.isascii() else _LONE_SURROGATE.sub(_escaped, text)
    size = len(text.encode())
    if size > MAX_META_BYTES:
        raise errors.BadMeta(f"'meta' takes {size} bytes as compact JSON, more than {MAX_META_BYTES}")
    return text


def dumps(body: Any) -> str:
    """A response body: compact JSON (orjson's UTF-8; the standard library's for what orjson refuses)."""
    try:
        return orjson.dumps(body).decode()
    except orjson.JSONEncodeError:
        return json.dumps(body, separators=(",", ":"))


def new_peer_id() -> str:
    """An unguessable peer id that fits ID_PATTERN."""
    return secrets.token_urlsafe(12)


def _reject_constant(name: str) -> None:
    raise errors.BadJson(f"the body holds {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise errors.BadJson(f"the number {text:.40} is out of range")
    return value


#: at most this many brackets: nested no deeper than orjson encodes again (254) nor deep enough to near the
#: standard library's recursion limit when an answer is encoded
_ORJSON_BRACKETS = 200


def parse_json(raw: bytes) -> Any:
    """Parse a request body strictly: UTF-8 JSON, no NaN or Infinity, no number that overflows to them.

    orjson parses it (five times faster than the standard library, and this is
    on every send) when its value is the one the standard library gives; the
    standard library parses the rest, and says what is wrong with a bad body.
    orjson refuses NaN, Infinity, overflowing numbers, lone surrogates and a
    BOM, so whatever it accepts the rules below accept too; but it makes a
    float of an integer past 64 bits, silently: a value holding a float that
    large is parsed again.
    """
    if raw.count(b"[") + raw.count(b"{") <= _ORJSON_BRACKETS:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if not _holds_huge_float(value):
                return value
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, errors.SignalingError):
            raise
        raise errors.BadJson(f"the body is not valid JSON: {exc}") from None


_TWO_TO_63 = float(2**63)


def _holds_huge_float(value: Any) -> bool:
    """Whether a parsed value holds a float of magnitude 2**63 or more (orjson's reading of an integer past 64 bits)."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
        elif kind is float and abs(item) >= _TWO_TO_63:
            return True
    return False


def parse_object(raw: bytes, *, empty_ok: bool = False) -> dict:
    """Parse a body that must be a JSON object (an empty body counts as {} if allowed; whitespace is no JSON)."""
    if empty_ok and not raw:
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise errors.BadJson(f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _envelope(body: Any, where: str) -> tuple[str, Any]:
    """(type, data) of one envelope as a client gives it; `where` names it in a batch ("messages[3]: ")."""
    if not isinstance(body, dict):
        raise errors.BadField(f"{where}an envelope must be a JSON object, got {type(body).__name__}")
    kind = body.get("type")
    if not isinstance(kind, str) or not TYPE_PATTERN.fullmatch(kind):
        raise errors.BadField(f"{where}'type' must be 1-64 characters of A-Z a-z 0-9 _ . : -, got {kind!r:.80}")
    if kind in RESERVED_TYPES:
        raise errors.ReservedType(f"{where}'{kind}' is reserved for events the server sends")
    return kind, body.get("data")


def parse_envelopes(raw: bytes) -> tuple[list[tuple[str, Any]], bool]:
    """The (type, data) pairs of a send or broadcast body, and whether it was a batch (1.1).

    A body is one envelope `{"type", "data"}` or a batch `{"messages": [envelope, ...]}`
    of 1 to MAX_BATCH envelopes, never both.
    """
    body = parse_object(raw)
    if "messages" not in body:
        return [_envelope(body, "")], False
    if "type" in body:
        raise errors.BadField("a body is one envelope ('type', 'data') or a batch ('messages'), not both")
    items = body["messages"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        got = f"{len(items)} items" if isinstance(items, list) else type(items).__name__
        raise errors.BadField(f"'messages' must be a list of 1-{MAX_BATCH} envelopes, got {got}")
    return [_envelope(item, f"messages[{i}]: ") for i, item in enumerate(items)], True


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One send or broadcast, read and encoded once: what the backend stores, all of it or none."""

    room: str
    sender: str
    token: str | None
    to: str | None  # None: every other live member (broadcast)
    tails: tuple[str, ...]  # the envelopes without their seqs (`envelope_tail`), in the order they arrive
    digest: str  # what the Idempotency-Key is bound to ('' without a key: nothing to bind)
    idempotency_key: str | None
    now: float
    batch: bool  # sent as {"messages": [...]}: answered with every seq

    @classmethod
    def read(cls, raw: bytes, room: str, sender: str, token: str | None, to: str | None,
             idempotency_key: str | None, now: float) -> Outgoing:
        envelopes, batch = parse_envelopes(raw)
        tails = tuple(envelope_tail(sender, kind, data, now) for kind, data in envelopes)
        digest = body_digest(envelopes, batch) if idempotency_key is not None else ""
        return cls(room, sender, token, to, tails, digest, idempotency_key, now, batch)


@dataclasses.dataclass(frozen=True)
class Join:
    """One join, read once: who joins which room, with which tokens, from where, and what its ticket said."""

    room: str
    peer: str
    new_token: str  # the token a fresh join gets
    token: str | None  # the token presented: the join resumes the live peer whose own it is
    now: float
    client_ip: str | None = None  # whose place the peer takes (`Backend.admit`); None: no per-IP admission
    jti: str | None = None  # the single-use id of the ticket that passed, if it has one
    jti_until: float = 0.0  # until when that jti is kept (Unix s): the ticket's exp plus the leeway
    refusal: errors.SignalingError | None = None  # what a fresh join gets: its ticket was missing or bad
    meta: str | None = None  # a fresh peer's meta (`meta_text`), from its ticket or body; a resume keeps its own


@dataclasses.dataclass(frozen=True, slots=True)
class Fetch:
    """What a poll or stream asks of its mailbox: acknowledge every seq up to `after`, read up to `limit` at a time."""

    room: str
    peer: str
    token: str | None
    after: int
    limit: int


def check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY:
        raise errors.BadIdempotencyKey(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    return value


def body_digest(envelopes: list[tuple[str, Any]], batch: bool) -> str:
    """What an Idempotency-Key is bound to: the same key with another body is refused."""
    shape = ["messages", envelopes] if batch else list(envelopes[0])
    canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def envelope_tail(sender: str, kind: str, data: Any, ts: float) -> str:
    """The envelope's JSON without its seq; a backend completes it with `with_seq`.

    The server encodes an envelope once, here, and never parses it again: a
    poll answer is the stored texts joined together. Compact UTF-8 (not
    `\\uXXXX` escapes), so an envelope is stored in no more bytes than it was sent in.
    orjson encodes it (a send's costliest step with the standard library); what
    orjson refuses (an integer past 64 bits, a lone surrogate, nesting past 254)
    the standard library encodes, so every body `parse_json` accepts is stored.
    """
    envelope = {"from": sender, "type": kind, "data": data, "ts": round(ts, 3)}
    try:
        return orjson.dumps(envelope).decode()[1:]
    except orjson.JSONEncodeError:
        pass
    tail = json.dumps(envelope, separators=(",", ":"), allow_nan=False, ensure_ascii=False)[1:]
    return tail if tail.isascii() else _LONE_SURROGATE.sub(_escaped, tail)  # isascii: a flag, no scan


#: JSON may carry a lone surrogate ("\ud800"), which `json.loads` keeps and UTF-8 cannot encode
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(match: re.Match) -> str:
    """A lone surrogate written back as the JSON escape it came in, so every stored text is UTF-8."""
    return f"\\u{ord(match.group()):04x}"


def stored_size(seq: int, tail: str) -> int:
    """Bytes of an envelope as stored (`with_seq` in UTF-8): what MAILBOX_BYTES counts."""
    return len(with_seq(seq, tail).encode())


def with_seq(seq: int, tail: str) -> str:
    return f'{{"seq":{seq},{tail}'


def seq_of(envelope: str) -> int:
    """The seq of an envelope made by `with_seq`, without parsing its JSON."""
    return int(envelope[7:envelope.index(",", 7)])


_EVENT_TYPES = tuple(f'"type":"{kind}"' for kind in sorted(RESERVED_TYPES))


def is_server_event(envelope: str) -> bool:
    """Whether an envelope made by `with_seq` is a server event, without parsing its JSON.

    Its first `"type":"` is its own: only the seq and the sender's id, which
    holds no quote, come before it.
    """
    return envelope.startswith(_EVENT_TYPES, envelope.index('"type":"'))


def poll_body(messages: list[str], cursor: int) -> str:
    return f'{{"messages":[{",".join(messages)}],"cursor":{cursor}}}'
