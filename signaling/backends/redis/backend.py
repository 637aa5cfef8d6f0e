"""`RedisBackend`: each operation is one Lua script, in one round trip shared with concurrent requests.

The parts: keys.py (the layout), scripts.py and lua/ (the scripts),
wakeups.py (how a script wakes a held poll) and listener.py (the thread that
receives them), autopipeline.py (the shared round trips), connection.py.

Renewals. A heartbeat keeps two things alive outside its room's slot: the
room's entry in `sig:reap` and the lease of the IP the peer counts against.
A script cannot reach them, so once it has authenticated the caller it asks
for them (RENEW, a list: a keep-alive beats for many peers), at most once per
PEER_TTL / 2 per peer (the peer hash's `renewed`), and the backend sends the
commands after it, all of a round trip's in one more (`_renew`). A request
that fails its token check writes nothing at all.

Round trips: requests do not borrow a connection each; their commands queue
for a few lanes, and one round trip carries everything waiting
(`autopipeline.py`), so a burst of woken polls costs a few pipelines, not a
queue for the connection pool.

Webhook outboxes on a cluster. An event is recorded in its room's outbox and
the room put in its slot's index by the script that makes the change
(keys.py), so nothing can be lost between two steps. On one Redis that index
is one key, which `claim_events` reads each tick. On a cluster a script may
only touch its room's slot, so there is an index per slot (16,384 keys); a
global index written after the script would lose the events of an instance
that dies in between. So each instance looks first at the rooms it recorded
events for or settled itself (`_hinted`, in memory: the hot path costs no
round trip), and sweeps every slot's index each `SWEEP_INTERVAL` (three
commands a slot, pipelined per node: about a second of one core, once a
minute), which is how the rooms of an instance that died, or another's
retries, are found: at most that much later. The backlog's gauges are the
last sweep's.

Scripts, not Redis Functions. Functions (Redis 7) would be loaded once by
name instead of by sha, but on Redis Cluster they must be loaded on every
primary, and again on each node that joins, fails over to a replica that
missed the load, or is flushed; nothing tells a caller which node forgot
them. EVALSHA answers NOSCRIPT on the very node that forgot a script, and
`_pipeline` loads the scripts and runs again there, so one Redis and a
cluster recover alike, with nothing to load ahead on any node.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading

import redis

from ... import errors
from ...protocol import IDEMPOTENCY_TTL
from ...tokens import hash_token
from ..base import CENSUS_ROOMS, Backend, Broadcast, Event, Joined, Member, event_ids
from . import keys, scripts, wakeups
from .autopipeline import Autopipeline
from .connection import TIMEOUT, UNREACHABLE, connect, is_cluster, is_noscript, reachable
from .listener import Listener

log = logging.getLogger(__name__)

#: round trips in flight at once per process (each on a connection of its own), carrying every request's commands
LANES = 4

#: a script's refusal {'err', code, retry_ms, seq, reason} names one of these
_ERRORS = errors.by_code()

#: seconds between two sweeps of every slot's webhook outbox index on a cluster (see above)
SWEEP_INTERVAL = 60

#: streaming peers per `keep_alive` script: Lua unpacks at most about 8,000 ARGV, two a peer
KEEP_ALIVE_BATCH = 1000


class RedisBackend(Backend):
    """All state in Redis; any number of processes share it."""

    name = "redis"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance = secrets.token_hex(8)
        self.sharded = is_cluster(self.settings)
        self.name = "redis-cluster" if self.sharded else "redis"
        self._lanes = max(1, min(LANES, self.settings.redis_max_connections - 1))  # and one left for the pool
        self.client = connect(self.settings, f"signaling:{self.instance}", pooled_besides=self._lanes)
        self.scripts = scripts.load(self.sharded, self.instance)
        self._loading = threading.Lock()
        self._script_loads = 0  # how many times the scripts were loaded: a NOSCRIPT seen before a load needs none
        self._rewake_pending = False  # a look of every held poll and stream is due (`_wake_all_twice`)
        self._round_trips = Autopipeline(self.client, self._lanes, TIMEOUT, self.settings.redis_wait_replicas,
                                         self.settings.redis_wait_timeout)
        self._listener = Listener(self.settings, self.instance, self.hub, self.outage)
        self._webhooks = bool(self.settings.webhook_url)
        self._hinted: dict[str, float] = {}  # cluster: room -> when its outbox is due, as this instance knows
        self._swept = -math.inf  # cluster: when every slot's index was last read
        self._backlog: tuple[int, float | None] = (0, None)  # cluster: what the last sweep counted

    # -- plumbing

    def _pipeline(self, commands: list[tuple]) -> tuple[list, list]:
        """Run script commands (`Script.command`) in one round trip: (their replies, the renewals they asked for).

        A renewal is (room, peer, its IP or '', now as text): see `_renew`.

        Scripts go by EVALSHA; after a Redis restart forgot them, they are
        loaded and the ones that got NOSCRIPT (and so did not run) run again.
        """
        with reachable():
            loads = self._script_loads
            try:
                replies = self._round_trips.execute(commands)
            except BaseException:
                self._wake_all_twice()
                raise
            forgotten = [i for i, reply in enumerate(replies) if is_noscript(reply)]
            if forgotten:
                with self._loading:  # one request loads them; the others that found them gone meanwhile wait
                    if self._script_loads == loads:
                        for script in self.scripts.values():
                            self.client.script_load(script.source)
                        self._script_loads += 1
                again = self._round_trips.execute([commands[i] for i in forgotten])
                for i, reply in zip(forgotten, again, strict=True):
                    replies[i] = reply
            for command, reply in zip(commands, replies, strict=True):
                if isinstance(reply, Exception):
                    raise self._explained(command[1], reply)
            results, renewals, wakes = [], [], []
            for result, notify, renew in replies:
                results.append(result)
                renewals += renew
                wakes += notify
            if wakes:
                self._wake(wakes)
        return results, renewals

    def _wake_all_twice(self) -> None:
        """A round trip was cut short: its scripts may have run, or may run yet (Redis reads what was sent even
        after the connection closes), and their replies carried the wake-ups of this instance's own polls and
        streams (`_wake`). Every one looks again now and once more TIMEOUT later, rather than wait for the next."""
        self.hub.wake_all()
        with self._loading:
            if self._rewake_pending:
                return
            self._rewake_pending = True
        threading.Timer(TIMEOUT, self._rewake).start()

    def _rewake(self) -> None:
        self._rewake_pending = False
        self.hub.wake_all()

    def _wake(self, wakes: list[list[str]]) -> None:
        """Hand on the wake-ups scripts returned: this instance's to its hub, the others' (a cluster) by SPUBLISH."""
        elsewhere = []
        for instance, message in wakes:
            if instance == self.instance:
                wakeups.dispatch(self.hub, message)
            else:  # Redis Cluster: the script could not publish to another slot's channel
                elsewhere.append((instance, message))
        if elsewhere:
            self._round_trips.execute(wakeups.spublish(elsewhere))

    def _explained(self, sha: str, error: Exception) -> Exception:
        """A script's error with the line Redis names written as its file's (`send.lua:12`)."""
        if not isinstance(error, redis.ResponseError) or isinstance(error, redis.exceptions.OutOfMemoryError):
            return error
        script = next((s for s in self.scripts.values() if s.sha == sha), None)
        return type(error)(script.explain(str(error))) if script else error

    def _run(self, script: scripts.Script, room: str, /, on: list[str] | None = None, about: dict | None = None,
             **args) -> list:
        """Run one script on the room's keys (or the keys it is `on`) with these ARGV: its reply, or its refusal raised.

        A refusal is {'err', code, retry_ms, seq, reason}: the error class of
        `code`, its message filled from `about`, the room and the reason,
        `retry_ms` its Retry-After.
        """
        (reply,), renewals = self._pipeline([script.command(on or [keys.members(room)], **args)])
        self._renew(renewals)  # the caller authenticated, even if the script then refused what it asked
        if reply[0] == "err":
            _, code, retry_ms, seq, reason = reply
            raise _ERRORS[code].about(room=room, settings=self.settings, seq=seq, reason=reason, **(about or {}),
                                      retry_after=retry_ms / 1000 if retry_ms is not None else None)
        return reply

    def _renew(self, renewals: list[list[str]]) -> None:
        """What heartbeats asked for, in one round trip: each room stays in `sig:reap`, each IP keeps its peer's place.

        A lease runs 1.5 * PEER_TTL + TIMEOUT from a renewal: without another
        renewal the peer outlives this one by at most 1.5 * PEER_TTL (a heartbeat
        just before the next renewal is due, then PEER_TTL of silence), and
        TIMEOUT covers the next renewal's way here. The request's own work is
        done by now: a renewal that fails is logged, not answered.
        """
        if not renewals:
            return
        ttl, commands = self.settings.peer_ttl, []
        for room, peer, client_ip, now in renewals:
            since = float(now)
            commands.append(("ZADD", keys.REAP, "NX", repr(since + ttl), room))
            if client_ip:
                leases, until = keys.ip_leases(client_ip), since + 1.5 * ttl + TIMEOUT
                commands += [("ZADD", leases, "XX", "GT", repr(until), f"{room} {peer}"),
                             ("PEXPIREAT", leases, math.ceil(until * 1000))]
        try:
            failed = [reply for reply in self._round_trips.execute(commands) if isinstance(reply, Exception)]
        except UNREACHABLE as exc:
            failed = [exc]
        if failed:
            room, peer = renewals[0][:2]
            log.warning("renewal of %d peers (%s in room %s first) failed: %s", len(renewals), peer, room, failed[0])

    def _leases(self) -> bool:
        """Whether places are leased per IP (PEERS_PER_IP or ROOMS_PER_IP)."""
        return bool(self.settings.peers_per_ip or self.settings.rooms_per_ip)

    # -- the contract

    def admit(self, client_ip, room, peer, now):
        settings = self.settings
        _, new = self._run(
            self.scripts["admit"], room, on=[keys.ip_joins(client_ip), keys.ip_leases(client_ip)],
            about=dict(client_ip=client_ip),
            now=repr(now), place=f"{room} {peer}", room=room, per_minute=settings.joins_per_ip_per_minute,
            max_peers=settings.peers_per_ip, max_rooms=settings.rooms_per_ip, expiry=repr(now + settings.peer_ttl),
        )
        return bool(new)

    def release(self, client_ip, room, peer):
        if not self._leases():
            return
        with reachable():
            self.client.zrem(keys.ip_leases(client_ip), f"{room} {peer}")

    def add_or_resume(self, join):
        settings, now = self.settings, join.now
        try:
            _, created, cursor, others, meta = self._run(
                self.scripts["join"], join.room, about=dict(peer=join.peer),
                peer=join.peer, new_hash=hash_token(join.new_token), given=_hashed(join.token), since=repr(now),
                ts=_ts(now), ttl=repr(settings.peer_ttl), capacity=settings.room_capacity,
                refused=join.refusal.code if join.refusal else "", jti=join.jti or "",
                jti_until=math.ceil(join.jti_until * 1000) if join.jti else 0,
                ip=join.client_ip if join.client_ip and self._leases() else "", meta=join.meta or "",
                on=self._room_keys(join.room), hook=self._hook(join.room, now),
            )
        except (errors.TicketRequired, errors.BadTicket):
            # the script names the code; which check failed, the view's refusal says, or the jti was used
            raise (join.refusal or errors.BadTicket.used()) from None
        return Joined(created=bool(created), others=_members(others), cursor=cursor, meta=meta)

    def acknowledge_and_read(self, fetch, now, hold=None, read_after=None):
        _, cursor, items = self._run(
            self.scripts["acknowledge_and_read"], fetch.room, about=dict(peer=fetch.peer, after=fetch.after),
            peer=fetch.peer, given=_hashed(fetch.token), now=repr(now), ttl=repr(self.settings.peer_ttl),
            after=fetch.after, limit=fetch.limit, holder=f"{self.instance} {hold}" if hold is not None else "",
            read_after=fetch.after if read_after is None else read_after,
        )
        return [item[1:] for item in items], cursor  # each without its mark ("M" or "E")

    def keep_alive(self, listeners, now):
        """One round trip: a `keep_alive` script per room (per KEEP_ALIVE_BATCH of its peers); the renewals
        their heartbeats ask for in a second."""
        by_room: dict[str, list[str]] = {}
        for listener in listeners:
            by_room.setdefault(listener.room, []).extend((listener.peer, listener.token_hash))
        if not by_room:
            return
        at, ttl, batch = repr(now), repr(self.settings.peer_ttl), 2 * KEEP_ALIVE_BATCH
        _, renewals = self._pipeline([
            self.scripts["keep_alive"].command([keys.members(room)], now=at, ttl=ttl, listeners=peers[i:i + batch])
            for room, peers in by_room.items() for i in range(0, len(peers), batch)
        ])
        self._renew(renewals)

    def send(self, out):
        settings = self.settings
        _, seqs = self._run(
            self.scripts["send"], out.room, about=dict(peer=out.sender, to=out.to),
            sender=out.sender, given=_hashed(out.token), now=repr(out.now), ttl=repr(settings.peer_ttl),
            to=out.to, digest=out.digest, key=out.idempotency_key or "", limit=settings.mailbox_limit,
            max_bytes=settings.mailbox_bytes, receipt_ttl=IDEMPOTENCY_TTL,
            per_second=settings.sends_per_peer_per_second, tails=out.tails,
        )
        return seqs

    def broadcast(self, out):
        settings = self.settings
        _, delivered, full = self._run(
            self.scripts["broadcast"], out.room, about=dict(peer=out.sender),
            sender=out.sender, given=_hashed(out.token), now=repr(out.now), ttl=repr(settings.peer_ttl),
            digest=out.digest, key=out.idempotency_key or "", limit=settings.mailbox_limit,
            max_bytes=settings.mailbox_bytes, receipt_ttl=IDEMPOTENCY_TTL,
            per_second=settings.sends_per_peer_per_second, tails=out.tails,
        )
        return Broadcast(delivered, full)

    def members(self, room, peer, token, now):
        _, listed = self._run(
            self.scripts["members"], room, about=dict(peer=peer),
            peer=peer or "", given=_hashed(token), now=repr(now), ttl=repr(self.settings.peer_ttl),
        )
        return _members(listed)

    def remove(self, room, peer, reason, ban, now):
        _, was_member, client_ip = self._run(
            self.scripts["remove"], room, about=dict(peer=peer),
            peer=peer, reason=reason, ban_ms=math.ceil(ban * 1000), now=repr(now), ts=_ts(now),
            ttl=repr(self.settings.peer_ttl), on=self._room_keys(room), hook=self._hook(room, now),
        )
        if client_ip:
            self.release(client_ip, room, peer)
        return bool(was_member)

    def close_room(self, room, now):
        _, gone, ips = self._run(self.scripts["close_room"], room, now=repr(now), ts=_ts(now),
                                 ttl=repr(self.settings.peer_ttl), on=self._room_keys(room), hook=self._hook(room, now))
        for peer, client_ip in zip(gone, ips, strict=True):
            if client_ip:
                self.release(client_ip, room, peer)
        return gone

    def leave(self, room, peer, token, now):
        _, client_ip = self._run(
            self.scripts["leave"], room, about=dict(peer=peer),
            peer=peer, given=_hashed(token), now=repr(now), ts=_ts(now), ttl=repr(self.settings.peer_ttl),
            on=self._room_keys(room), hook=self._hook(room, now),
        )
        if client_ip:
            self.release(client_ip, room, peer)

    def reap(self, now):
        with reachable():
            due = self.client.zrangebyscore(keys.REAP, "-inf", now, start=0, num=200)
        if not due:
            return []
        ts, ttl = _ts(now), repr(self.settings.peer_ttl)
        replies, _ = self._pipeline([self.scripts["reap"].command(self._room_keys(room), now=repr(now), ts=ts, ttl=ttl,
                                                                  hook=self._hook(room, now))
                                     for room in due])
        removed, empty, next_look = [], [], {}
        for room, (_, look, gone) in zip(due, replies, strict=True):
            removed += [(room, peer) for peer in gone]
            if float(look) < 0:
                empty.append(room)
            else:
                next_look[room] = float(look)
        with reachable():
            pipe = self.client.pipeline(transaction=False)
            if empty:
                pipe.zrem(keys.REAP, *empty)
            if next_look:
                pipe.zadd(keys.REAP, next_look)
            pipe.execute()
            if empty:
                self._keep_joined_rooms(empty, now)
        return removed

    def _keep_joined_rooms(self, rooms: list[str], now: float) -> None:
        """Schedule again the rooms found empty that a join has filled since.

        The look and the ZREM are two steps: a join between them adds its room
        to `sig:reap` while it is still there, and the ZREM then takes it out.
        Looking once more after the ZREM closes the gap: a join this look does
        not see comes after the ZREM, and its own renewal puts the room back.
        """
        pipe = self.client.pipeline(transaction=False)
        for room in rooms:
            pipe.exists(keys.members(room))
        joined = {room: now for room, found in zip(rooms, pipe.execute(), strict=True) if found}
        if joined:
            self.client.zadd(keys.REAP, joined, nx=True)

    # -- webhook outboxes

    def _room_keys(self, room: str) -> list[str]:
        """KEYS of a script that may record webhook events: the members key and the room's outbox index."""
        return [keys.members(room), keys.hooks_index(room, self.sharded)]

    def _hook(self, room: str, now: float) -> str:
        """The ids for the events a script records ('' when webhooks are off); on a cluster, a hint to look."""
        if not self._webhooks:
            return ""
        if self.sharded:
            self._hinted.setdefault(room, now)
        return event_ids()

    def claim_events(self, now, lease_until, limit):
        rooms = self._due_rooms(now, limit)
        if not rooms:
            return []
        lease = event_ids()
        replies, _ = self._pipeline([
            self.scripts["claim_event"].command(self._room_keys(room), now=repr(now), lease=lease,
                                                lease_until=repr(lease_until))
            for room in rooms
        ])
        claimed = []
        for room, (_, record, *attempts) in zip(rooms, replies, strict=True):
            if record:  # else not due after all: leased by another instance, or waiting for a retry
                claimed.append(Event.parse(room, record, attempts[0], lease))
        return claimed

    def _due_rooms(self, now: float, limit: int) -> list[str]:
        """Rooms whose outbox may be due: the index's (one Redis), or the hinted and swept ones (a cluster)."""
        if not self.sharded:
            with reachable():
                return self.client.zrangebyscore(keys.HOOKS, "-inf", now, start=0, num=limit)
        if now - self._swept >= SWEEP_INTERVAL:
            self._sweep(now)
        due = [room for room, when in self._hinted.items() if when <= now][:limit]
        for room in due:
            del self._hinted[room]  # claimed below, or not due after all: its settling hints it again
        return due

    def _sweep(self, now: float) -> None:
        """Read every slot's outbox index, a pipeline per node: the rooms due (hinted) and the backlog's figures."""
        by_node: dict[str, list[str]] = {}
        with reachable():
            for index in keys.hooks_indexes(sharded=True):
                by_node.setdefault(self.client.get_node_from_key(index).name, []).append(index)
            replies = []
            for name, indexes in by_node.items():
                pipe = self.client.get_node(node_name=name).redis_connection.pipeline(transaction=False)
                for index in indexes:
                    pipe.zrange(index, 0, -1, withscores=True)
                    pipe.get(f"{index}:count")
                    pipe.zrange(f"{index}:oldest", 0, 0, withscores=True)
                replies += pipe.execute()
        depth, oldest = 0, None
        for i in range(0, len(replies), 3):
            rooms, count, first = replies[i:i + 3]
            for room, due in rooms:
                self._hinted[room] = min(due, self._hinted.get(room, due))
            depth += int(count or 0)
            if first and (oldest is None or first[0][1] < oldest):
                oldest = first[0][1]
        self._swept, self._backlog = now, (depth, oldest)

    def settle_event(self, event, now, retry_at, lease_until):
        ((_, record, *rest),), _ = self._pipeline([self.scripts["settle_event"].command(
            self._room_keys(event.room), lease=event.lease, retry_at="" if retry_at is None else repr(retry_at),
            lease_until=repr(lease_until),
        )])
        if self.sharded and (retry_at is not None or lease_until <= now):  # to be tried again, or handed back
            self._hinted[event.room] = retry_at if retry_at is not None else lease_until
        if not record:
            return None
        return Event.parse(event.room, record, rest[0], event.lease)

    def event_backlog(self, now):
        if self.sharded:
            return self._backlog
        with reachable():
            count, oldest = self.client.pipeline(transaction=False).get(f"{keys.HOOKS}:count").zrange(
                f"{keys.HOOKS}:oldest", 0, 0, withscores=True).execute()
        return int(count or 0), oldest[0][1] if oldest else None

    def ping(self):
        with reachable():
            self.client.ping()

    def census(self):
        """Rooms: `sig:reap`'s size. Peers: its rooms' members, counted in up to CENSUS_ROOMS of them picked at
        random (all of them when there are no more), scaled up to every room."""
        with reachable():
            rooms = self.client.zcard(keys.REAP)
            sample = self.client.zrandmember(keys.REAP, CENSUS_ROOMS) if rooms else []
            pipe = self.client.pipeline(transaction=False)
            for room in sample:
                pipe.zcard(keys.members(room))
            counted = sum(pipe.execute()) if sample else 0
        return rooms, round(counted * rooms / len(sample)) if sample else 0

    # -- wake-ups

    def start(self) -> None:
        self._listener.start()

    def close(self) -> None:
        self._listener.stop()
        self._round_trips.close()
        if self.sharded:
            self.client.close()
        else:  # Redis.close() leaves a pool it was given alone
            self.client.connection_pool.disconnect()


def _members(listed: list) -> list[Member]:
    """Members as the scripts list them (room.lua's `listed`): [id, meta or None, join time as text] each."""
    return [Member(peer, meta, float(since)) for peer, meta, since in listed]


def _hashed(token: str | None) -> str:
    return hash_token(token) if token else ""


def _ts(now: float) -> str:
    """`now` as envelopes carry it (protocol.envelope_tail's "ts"): the scripts write server events with it."""
    return repr(round(now, 3))
