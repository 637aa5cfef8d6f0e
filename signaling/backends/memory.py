"""The in-process backend: the whole contract in dicts, for one process only."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import json
import math
import struct
import threading

from .. import errors
from ..protocol import IDEMPOTENCY_KEYS_PER_PEER, IDEMPOTENCY_TTL, SERVER_SENDER, Outgoing, envelope_tail, with_seq
from ..tokens import hash_token, same_hash
from .base import UNREAD_EVENTS, Backend, Broadcast, Event, Joined, Member, event_data, event_ids


@dataclasses.dataclass(eq=False)
class _Peer:
    token_hash: str
    last_seen: float
    since: float  # when it joined: receipts of an earlier peer with its id do not apply
    ip: str = ""  # the client IP whose place it holds ("" for none)
    meta: str | None = None  # its meta as compact JSON text, fixed for its life
    seq: int = 0  # the last seq given out
    acked: int = 0
    events: int = 0  # server events among the stored envelopes
    size: int = 0  # bytes of the stored envelopes that are not events (MAILBOX_BYTES)
    # (seq, is_event, UTF-8 text), oldest first: bytes, not str, which one emoji makes take 4 bytes a character
    mailbox: collections.deque = dataclasses.field(default_factory=collections.deque)


class _Receipts:
    """What each send with an Idempotency-Key answered, kept IDEMPOTENCY_TTL to answer its repeats.

    A receipt is two small bytes objects: the digest of who sent what key to
    whom, and its expiry, body digest and answer packed together (about 200
    bytes, where a dataclass holding the request's strings took 550). A sender
    (one life of a peer: room, id, join time) keeps its newest
    IDEMPOTENCY_KEYS_PER_PEER receipts, their keys in a deque of its own,
    oldest first: one past the bound drops the front one. Expiry scans
    nothing: senders are filed by the second their receipts expire in, and as
    all live equally long the files are in time order, so `expire` takes whole
    files off the front and drops from each of their senders' deques only the
    receipts at the front that are due.
    """

    _HEAD = struct.Struct("<d16s")  # expires, the body's digest
    _SEQS = struct.Struct("<QI")  # a send's first seq and how many: a batch's seqs follow each other

    def __init__(self):
        self._by_key: dict[bytes, bytes] = {}
        # (room, peer, since) -> its receipts' keys, oldest first; every receipt's key is in one deque, once
        self._by_sender: dict[tuple[str, str, float], collections.deque[bytes]] = {}
        self._files: collections.deque[tuple[int, set]] = collections.deque()  # (second, senders), oldest first

    def __len__(self) -> int:
        return len(self._by_key)

    @staticmethod
    def key(room: str, sender: str, since: float, to: str, to_since: float, idempotency_key: str) -> bytes:
        """The receipt's key: ids hold no '/', and the client's key, which may, comes last."""
        text = f"{room}/{sender}/{since!r}/{to}/{to_since!r}/{idempotency_key}"
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def answer(self, key: bytes, digest: str, now: float) -> list[int] | Broadcast | None:
        """What the first send with this key answered; None if there was none (or it expired)."""
        record = self._by_key.get(key)
        if record is None:
            return None
        expires, body = self._HEAD.unpack_from(record)
        if expires <= now:
            return None
        if body != bytes.fromhex(digest):
            raise errors.IdempotencyKeyReused()
        result = record[self._HEAD.size:]
        if result[:1] == b"b":  # a broadcast's: "b" delivered ids ";" full ids
            delivered, full = result[1:].decode().split(";")
            return Broadcast(delivered.split(","), full.split(",") if full else [])
        first, count = self._SEQS.unpack_from(result, 1)  # a send's: "s" and its seqs
        return list(range(first, first + count))

    def keep(self, sender: tuple[str, str, float], key: bytes, digest: str, result: list[int] | Broadcast,
             now: float) -> None:
        """Keep a receipt of `sender` (room, id, since) for IDEMPOTENCY_TTL; past the bound, its oldest goes."""
        keys = self._by_sender.setdefault(sender, collections.deque())
        self._drop_due(keys, now)  # this key's expired receipt, if it has one: a key is in its deque once
        # never before the sender's last receipt, so its deque stays in time order (a request's `now` may be older)
        expires = max(now + IDEMPOTENCY_TTL, self._expires(keys[-1]) if keys else 0.0)
        if isinstance(result, Broadcast):  # ids hold neither ',' nor ';'
            packed = b"b" + f"{','.join(result.delivered_to)};{','.join(result.mailbox_full)}".encode()
        else:
            packed = b"s" + self._SEQS.pack(result[0], len(result))  # tagged: seq 98 packs to a first byte b"b"
        self._by_key[key] = self._HEAD.pack(expires, bytes.fromhex(digest)) + packed
        keys.append(key)
        if len(keys) > IDEMPOTENCY_KEYS_PER_PEER:
            del self._by_key[keys.popleft()]
        second = int(expires)
        if not self._files or self._files[-1][0] < second:
            self._files.append((second, set()))
        self._files[-1][1].add(sender)  # a receipt a little older than the last file's waits with it

    def forget(self, sender: tuple[str, str, float]) -> None:
        """Drop every receipt of a peer that is gone: no one can send as it again."""
        for key in self._by_sender.pop(sender, ()):
            del self._by_key[key]

    def expire(self, now: float) -> None:
        """Drop the receipts due by `now`, one whole file at a time."""
        while self._files and self._files[0][0] + 1 <= now:
            for sender in self._files.popleft()[1]:
                keys = self._by_sender.get(sender)
                if keys is not None:
                    self._drop_due(keys, now)
                    if not keys:
                        del self._by_sender[sender]

    def _expires(self, key: bytes) -> float:
        return self._HEAD.unpack_from(self._by_key[key])[0]

    def _drop_due(self, keys: collections.deque[bytes], now: float) -> None:
        """Drop a sender's receipts due by `now`: the front of its deque."""
        while keys and self._expires(keys[0]) <= now:
            del self._by_key[keys.popleft()]


class MemoryBackend(Backend):
    """Rooms in a dict, guarded by one lock; wake-ups go straight to this process's hub."""

    name = "memory"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._rooms: dict[str, dict[str, _Peer]] = {}
        self._receipts = _Receipts()
        self._windows: dict[tuple, tuple[int, float]] = {}  # rate key -> (count, window end)
        self._leases: dict[str, dict[tuple[str, str], float]] = {}  # ip -> (room, peer) -> expiry
        self._used_tickets: dict[tuple[str, str], float] = {}  # (room, jti) -> until when it is kept
        # webhook events (base.py): each room's outbox, oldest first, as Event records; when its first is due
        # (a lease's end while leased); the lease and failed attempts of its first
        self._webhooks = bool(self.settings.webhook_url)
        self._outbox: dict[str, collections.deque[str]] = {}
        self._event_due: dict[str, float] = {}
        self._event_claim: dict[str, tuple[str, int]] = {}
        self._event_ids, self._events_recorded = event_ids(), 0
        self._bans: dict[tuple[str, str], float] = {}  # (room, peer id) -> when the ban ends
        # (room, peer id) -> (the removed peer's token hash, the reason, until when its token hears it)
        self._removed: dict[tuple[str, str], tuple[str, str, float]] = {}

    # -- helpers; callers hold the lock

    def _live(self, peer: _Peer | None, now: float) -> bool:
        return peer is not None and peer.last_seen > now - self.settings.peer_ttl

    def _authenticate(self, room: str, peer_id: str, token: str | None, now: float) -> _Peer:
        peer = self._rooms.get(room, {}).get(peer_id)
        if not self._live(peer, now):
            self._check_removed(room, peer_id, token, now)
            raise errors.NotJoined.about(room=room, peer=peer_id)
        if not same_hash(peer.token_hash, token):
            self._check_removed(room, peer_id, token, now)
            raise errors.Unauthorized.about(peer=peer_id)
        self._heartbeat(room, peer_id, peer, now)
        return peer

    def _check_removed(self, room: str, peer_id: str, token: str | None, now: float) -> None:
        """Raise `Removed` when `token` is that of a peer the application removed within PEER_TTL."""
        removed = self._removed.get((room, peer_id))
        if removed is not None and removed[2] > now and same_hash(removed[0], token):
            raise errors.Removed.about(room=room, peer=peer_id, reason=removed[1])

    def _heartbeat(self, room: str, peer_id: str, peer: _Peer, now: float) -> None:
        """The peer is live from now, and keeps its place leased to its IP as long."""
        peer.last_seen = now
        leases = self._leases.get(peer.ip)
        if leases and (room, peer_id) in leases:
            leases[(room, peer_id)] = now + self.settings.peer_ttl

    @staticmethod
    def _texts(peer: _Peer, tails: tuple[str, ...]) -> list[bytes]:
        """The envelopes as `peer`'s mailbox would store them, with the next seqs."""
        return [with_seq(peer.seq + i, tail).encode() for i, tail in enumerate(tails, 1)]

    def _push(self, room: str, peer_id: str, peer: _Peer, texts: list[bytes], is_event: bool) -> list[int]:
        """Store envelopes (`_texts`) with the next seqs and wake the peer's poll once."""
        first = peer.seq + 1
        for text in texts:
            peer.seq += 1
            peer.mailbox.append((peer.seq, is_event, text))
        if is_event:
            peer.events += len(texts)
            if peer.events >= UNREAD_EVENTS:  # it does not read its mailbox: gone, as if silent (base.py)
                peer.last_seen = -math.inf
        else:
            peer.size += sum(map(len, texts))
        self.hub.wake(room, peer_id)
        return list(range(first, peer.seq + 1))

    def _announce(self, room: str, about: str, kind: str, data: object, now: float) -> None:
        tail = envelope_tail(about, kind, data, now)
        for other_id, other in self._rooms.get(room, {}).items():
            if other_id != about and self._live(other, now):
                self._push(room, other_id, other, self._texts(other, (tail,)), is_event=True)

    def _record(self, room: str, kind: str, data: str, now: float) -> None:
        """Put a webhook event in the room's outbox, in the step that makes the change (webhooks on only)."""
        if not self._webhooks:
            return
        self._events_recorded += 1
        record = f"{self._event_ids}.{self._events_recorded} {kind} {round(now, 3)!r} {data}"
        self._outbox.setdefault(room, collections.deque()).append(record)
        self._event_due.setdefault(room, now)  # a room already waiting (a retry, a lease) keeps its time

    def _remove(self, room: str, peer_id: str, reason: str, now: float) -> None:
        members = self._rooms[room]
        gone = members.pop(peer_id)
        self._receipts.forget((room, peer_id, gone.since))
        self._announce(room, peer_id, "peer-left", {"reason": reason}, now)
        self._record(room, "peer.left", event_data(room, peer_id, reason=f'"{reason}"'), now)
        if not members:
            del self._rooms[room]
            self._record(room, "room.ended", event_data(room), now)
        if reason == "left":
            self.hub.end_held(room, peer_id)  # its own leave ends its poll as a newer poll would: 200, what it has
        else:
            self.hub.wake(room, peer_id)  # removed: a poll it still holds looks again and ends with not_joined

    def _remove_by_server(self, room: str, peer_id: str, reason: str, why: str, now: float) -> None:
        """The application removes a live member: a leave with `reason`, and its token answers `why` for PEER_TTL."""
        gone = self._rooms[room][peer_id]
        self._removed[(room, peer_id)] = (gone.token_hash, why, now + self.settings.peer_ttl)
        self._remove(room, peer_id, reason, now)
        self._leases.get(gone.ip, {}).pop((room, peer_id), None)

    def _reap_room(self, room: str, now: float) -> list[str]:
        expired = [pid for pid, p in self._rooms.get(room, {}).items() if not self._live(p, now)]
        for peer_id in expired:
            self._remove(room, peer_id, "timeout", now)
        return expired

    def _has_room(self, peer: _Peer, texts: list[bytes]) -> bool:
        settings = self.settings
        return (len(peer.mailbox) - peer.events + len(texts) <= settings.mailbox_limit
                and peer.size + sum(map(len, texts)) <= settings.mailbox_bytes)

    def _over_rate(self, key: tuple, limit: int, window: float, now: float, hits: int = 1) -> float | None:
        """Count `hits` in a fixed window; the seconds until it ends when they go past `limit`.

        Hits that find the window untouched always pass, so a batch larger than the limit is not refused forever.
        """
        if not limit:
            return None
        count, ends = self._windows.get(key, (0, 0.0))
        if ends <= now:
            count, ends = 0, now + window
        self._windows[key] = (count + hits, ends)
        return ends - now if count and count + hits > limit else None

    # -- the contract

    def admit(self, client_ip, room, peer, now):
        settings = self.settings
        with self._lock:
            wait = self._over_rate(("join", client_ip), settings.joins_per_ip_per_minute, 60, now)
            if wait is not None:
                raise errors.JoinRateLimited.about(client_ip=client_ip, settings=settings, retry_after=wait)
            if not (settings.peers_per_ip or settings.rooms_per_ip):
                return False
            leases = {place: end for place, end in self._leases.get(client_ip, {}).items() if end > now}
            self._leases[client_ip] = leases
            new = (room, peer) not in leases
            if new and leases:
                wait = min(leases.values()) - now
                rooms = {r for r, _ in leases}
                if settings.peers_per_ip and len(leases) >= settings.peers_per_ip:
                    raise errors.TooManyPeers.about(client_ip=client_ip, settings=settings, retry_after=wait)
                if settings.rooms_per_ip and room not in rooms and len(rooms) >= settings.rooms_per_ip:
                    raise errors.TooManyRooms.about(client_ip=client_ip, settings=settings, retry_after=wait)
            leases[(room, peer)] = now + settings.peer_ttl
            return new

    def release(self, client_ip, room, peer):
        with self._lock:
            self._leases.get(client_ip, {}).pop((room, peer), None)

    def add_or_resume(self, join):
        room, peer, token, now = join.room, join.peer, join.token, join.now
        limits = self.settings.peers_per_ip or self.settings.rooms_per_ip
        leased_to = join.client_ip if join.client_ip and limits else ""
        with self._lock:
            existing = self._rooms.get(room, {}).get(peer)
            if not (self._live(existing, now) and same_hash(existing.token_hash, token)):  # not a resume
                if self._bans.get((room, peer), 0) > now:
                    raise errors.Banned.about(room=room, peer=peer)
                self._check_removed(room, peer, token, now)
                if join.refusal is not None:
                    raise join.refusal
                if join.jti is not None and self._used_tickets.get((room, join.jti), 0) > now:
                    raise errors.BadTicket.used()
            self._reap_room(room, now)
            members = self._rooms.get(room, {})
            existing = members.get(peer)
            if existing is not None:
                if not same_hash(existing.token_hash, token):
                    raise errors.PeerIdTaken.about(room=room, peer=peer)
                existing.ip = leased_to or existing.ip  # resumed from another address: its place now
                self._heartbeat(room, peer, existing, now)
                others = self._listed(room, now, but=peer)
                return Joined(created=False, others=others, cursor=existing.acked, meta=existing.meta)
            if len(members) >= self.settings.room_capacity:
                raise errors.RoomFull.about(room=room, settings=self.settings)
            others = self._listed(room, now)
            if not members:
                self._record(room, "room.started", event_data(room), now)
            fresh = _Peer(hash_token(join.new_token), now, now, leased_to, meta=join.meta)
            self._rooms.setdefault(room, {})[peer] = fresh
            if join.jti is not None:
                self._used_tickets[(room, join.jti)] = join.jti_until
            data = None if join.meta is None else {"meta": json.loads(join.meta)}
            self._announce(room, peer, "peer-joined", data, now)
            self._record(room, "peer.joined", event_data(room, peer, meta=join.meta or "null"), now)
            return Joined(created=True, others=others, cursor=0, meta=join.meta)

    def _listed(self, room: str, now: float, but: str | None = None) -> list[Member]:
        """The room's live members (but one), in join order."""
        return [Member(pid, p.meta, p.since) for pid, p in self._rooms.get(room, {}).items()
                if pid != but and self._live(p, now)]

    def acknowledge_and_read(self, fetch, now, hold=None, read_after=None):
        after, limit = fetch.after, fetch.limit
        with self._lock:
            p = self._authenticate(fetch.room, fetch.peer, fetch.token, now)
            if after > p.seq:
                raise errors.BadCursor.about(after=after, seq=p.seq)
            while p.mailbox and p.mailbox[0][0] <= after:
                _, is_event, text = p.mailbox.popleft()
                if is_event:
                    p.events -= 1
                else:
                    p.size -= len(text)
            p.acked = max(p.acked, after)
            start = 0 if read_after is None else max(0, read_after - p.acked)  # the mailbox holds acked+1, ...
            batch = [p.mailbox[i] for i in range(start, min(start + limit, len(p.mailbox)))]
            cursor = batch[-1][0] if batch else (after if read_after is None else read_after)
            return [text.decode() for _, _, text in batch], cursor

    def keep_alive(self, listeners, now):
        with self._lock:
            for listener in listeners:
                p = self._rooms.get(listener.room, {}).get(listener.peer)
                if self._live(p, now) and hmac.compare_digest(p.token_hash, listener.token_hash):
                    self._heartbeat(listener.room, listener.peer, p, now)

    def _check_send_rate(self, out: Outgoing) -> None:
        limit = self.settings.sends_per_peer_per_second
        wait = self._over_rate(("send", out.room, out.sender), limit, 1.0, out.now, len(out.tails))
        if wait is not None:
            raise errors.SendRateLimited.about(peer=out.sender, settings=self.settings, retry_after=wait)

    def _sender(self, out: Outgoing) -> float:
        """Authenticate a send's sender and count its rate: its join time, which its receipts are bound to.

        The application (the server API) is no member: nothing to check, no rate, and its receipts' time 0.
        """
        if out.sender == SERVER_SENDER:
            return 0.0
        me = self._authenticate(out.room, out.sender, out.token, out.now)
        self._check_send_rate(out)
        return me.since

    def send(self, out):
        room, to = out.room, out.to
        with self._lock:
            since = self._sender(out)
            recipient = self._rooms.get(room, {}).get(to)
            if not self._live(recipient, out.now):
                raise errors.PeerNotFound.about(room=room, to=to)
            if out.idempotency_key is not None:
                key = self._receipts.key(room, out.sender, since, to, recipient.since, out.idempotency_key)
                seqs = self._receipts.answer(key, out.digest, out.now)
                if seqs is not None:
                    return seqs
            texts = self._texts(recipient, out.tails)
            if not self._has_room(recipient, texts):
                raise errors.MailboxFull.about(to=to, settings=self.settings)
            seqs = self._push(room, to, recipient, texts, is_event=False)
            if out.idempotency_key is not None:
                self._receipts.keep((room, out.sender, since), key, out.digest, seqs, out.now)
            return seqs

    def broadcast(self, out):
        room, now = out.room, out.now
        with self._lock:
            since = self._sender(out)
            if out.idempotency_key is not None:
                key = self._receipts.key(room, out.sender, since, "*", 0, out.idempotency_key)
                result = self._receipts.answer(key, out.digest, now)
                if result is not None:
                    return result
            delivered, full = [], []
            for peer_id, p in self._rooms.get(room, {}).items():
                if peer_id == out.sender or not self._live(p, now):
                    continue
                texts = self._texts(p, out.tails)
                if self._has_room(p, texts):
                    self._push(room, peer_id, p, texts, is_event=False)
                    delivered.append(peer_id)
                else:
                    full.append(peer_id)
            result = Broadcast(delivered, full)
            if out.idempotency_key is not None and delivered:
                self._receipts.keep((room, out.sender, since), key, out.digest, result, now)
            return result

    def members(self, room, peer, token, now):
        with self._lock:
            if peer is not None:
                self._authenticate(room, peer, token, now)
            return self._listed(room, now)

    def remove(self, room, peer, reason, ban, now):
        with self._lock:
            if ban > 0:
                self._bans[(room, peer)] = now + ban
            if not self._live(self._rooms.get(room, {}).get(peer), now):
                return False
            self._remove_by_server(room, peer, "removed", reason, now)
            return True

    def close_room(self, room, now):
        with self._lock:
            self._reap_room(room, now)
            gone = list(self._rooms.get(room, {}))
            for peer in gone:
                self._remove_by_server(room, peer, "room_closed", "room_closed", now)
            return gone

    def leave(self, room, peer, token, now):
        with self._lock:
            try:
                p = self._authenticate(room, peer, token, now)
            except errors.NotJoined:
                return
            self._remove(room, peer, "left", now)
            self._leases.get(p.ip, {}).pop((room, peer), None)

    def reap(self, now):
        with self._lock:
            removed = [(room, pid) for room in list(self._rooms) for pid in self._reap_room(room, now)]
            self._receipts.expire(now)
            for key in [k for k, (_, ends) in self._windows.items() if ends <= now]:
                del self._windows[key]
            for kept in (self._used_tickets, self._bans):
                for key in [k for k, until in kept.items() if until <= now]:
                    del kept[key]
            for key in [k for k, (_, _, until) in self._removed.items() if until <= now]:
                del self._removed[key]
            for ip in list(self._leases):
                self._leases[ip] = {p: end for p, end in self._leases[ip].items() if end > now}
                if not self._leases[ip]:
                    del self._leases[ip]
            return removed

    def claim_events(self, now, lease_until, limit):
        with self._lock:
            claimed = []
            for room, due in self._event_due.items():
                if len(claimed) >= limit:
                    break
                if due <= now:
                    claimed.append(self._lease_first(room, lease_until))
            return claimed

    def _lease_first(self, room: str, lease_until: float) -> Event:
        lease, attempts = event_ids(), self._event_claim.get(room, ("", 0))[1]
        self._event_claim[room] = (lease, attempts)
        self._event_due[room] = lease_until
        return Event.parse(room, self._outbox[room][0], attempts, lease)

    def settle_event(self, event, now, retry_at, lease_until):
        room = event.room
        with self._lock:
            lease, attempts = self._event_claim.get(room, ("", 0))
            if lease != event.lease:
                return None
            if retry_at is not None:
                self._event_claim[room] = ("", attempts + 1)
                self._event_due[room] = retry_at
                return None
            outbox = self._outbox[room]
            outbox.popleft()
            self._event_claim[room] = ("", 0)
            if outbox:
                return self._lease_first(room, lease_until)
            del self._outbox[room], self._event_due[room], self._event_claim[room]
            return None

    def event_backlog(self, now):
        with self._lock:
            depth = sum(map(len, self._outbox.values()))
            oldest = min((Event.parse(room, events[0], 0, "").ts for room, events in self._outbox.items()),
                         default=None)
            return depth, oldest

    def ping(self):
        return None

    def census(self):
        with self._lock:
            return len(self._rooms), sum(map(len, self._rooms.values()))
