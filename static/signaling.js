/**
 * Browser client for the signaling service (protocol version 1, revision 1.2: batch sends, the cursor as a
 * header, streaming receive).
 *
 * An ES module with no dependencies: `import { join } from "https://host/static/signaling.js"`.
 * The service may sit on another origin than the page (it answers CORS).
 *
 *     const session = await join("https://signal.example", "room1", { peerId: "alice" });
 *     session.addEventListener("message", (e) => console.log(e.detail.from, e.detail.type, e.detail.data));
 *     await session.send("bob", "offer", { sdp: "..." });
 *
 * A session is an EventTarget; every event is a CustomEvent whose `detail` is:
 *   - `message`      the envelope `{seq, from, type, data, ts}` of a peer's send or broadcast
 *   - `peer-joined`  `{peerId, meta}`: `meta` is the peer's meta object (protocol 1.2), or null
 *   - `peer-left`    `{peerId, reason}`: "left", "timeout", "removed" or "room_closed" from the
 *                    server, "rejoined" when this session had to join afresh (its peers are then
 *                    announced again)
 *   - `removed`      `{code, message}`: the application removed this peer ("removed", the message
 *                    giving its reason) or banned its id ("banned"); final: the session is closed
 *                    (a fatal `error` follows) and never joins again by itself
 *   - `state`        `{state, delay?}`: "connected", "reconnecting" (waiting `delay` ms after
 *                    a failure), "rejoining", "suspended" (page hidden in the back-forward
 *                    cache), "closed"
 *   - `error`        `{error, fatal}`: a SignalingError; after a fatal one the session is closed
 *   - `receive-mode` `{mode, reason}`: how envelopes arrive changed (`session.receiveMode`, below)
 *
 * Join tickets: a server that sets JOIN_SECRET or JOIN_PUBLIC_KEY admits a
 * fresh join only with a ticket that the application's backend issued. Pass
 * it as `join(url, room, {ticket})`, or pass `{getTicket: async () => ticket}`,
 * which is called before each join the session makes (the first one, and each
 * after the server forgot this peer: `404 not_joined`), so a long-lived page
 * keeps going with short-lived, single-use tickets (a join that resumes with
 * the session's token leaves its ticket unused). A join refused with
 * `ticket_required` or `bad_ticket` is not retried: the first join rejects
 * with that code, a later one is a fatal `error` event.
 *
 * `session.peerId` and `session.token` are this member's id and secret (keep
 * both to resume after a reload: `join(url, room, {peerId, token})`);
 * `session.resumed` is true when the join resumed a live member (200) rather
 * than making a new one (201).
 * `session.peers` is a live Set of the other members' ids, updated before the
 * `peer-joined` and `peer-left` events fire; the members present at the join
 * are in it when `join` resolves. `session.members` is a Map of the same ids to
 * each one's meta (null without), kept with it; `session.meta` is this
 * peer's own. Meta (protocol 1.2) is a JSON object of at most 2,048 bytes
 * such as `{name: "Alice"}`, given as `join(url, room, {meta})`; with tickets
 * on, the server takes it from the ticket instead. `session.iceServers` is the join's
 * `ice_servers`, ready for `new RTCPeerConnection({iceServers})`.
 *
 * Receiving (protocol 1.2): the session holds one streamed response open
 * (`Accept: text/event-stream`, read with `fetch()`: `EventSource` cannot send
 * the Authorization header) and gets each envelope on it as it is stored. When
 * the server ends a stream, the session opens the next one at once. Nothing is
 * acknowledged by being streamed: each new stream, or poll, carries the last
 * seq seen in `Last-Event-ID`, which acknowledges everything up to it. With
 * `receive: "auto"` (the default) it falls back to long polls: for good when
 * the server answers JSON (a 1.1 server: that answer's envelopes are
 * delivered too), and for `streamTiming.pollFor` (5 min) when no byte of a
 * stream arrives within `streamTiming.firstByte` (5 s), which is what a proxy
 * that buffers responses does. A stream silent for longer than the server's
 * heartbeat plus a grace (15 s + 10 s) is taken for dead: it is cut and opened
 * again. `session.receiveMode` is "stream" or "poll" (null until the first
 * stream opened or the first poll went out); a `receive-mode` event says each
 * change, with a `reason`: "stream-open", "receive-option" (`receive:
 * "poll"`), "server-sends-json" or "no-first-byte".
 *
 * Reliability: the receive loop, streaming or polling, acknowledges what it
 * has seen by carrying the cursor, drops envelopes it already delivered (by
 * seq), backs off with jitter on network errors and 5xx, and joins again (same
 * peer id, resuming with its token) when the server no longer knows it. Polls
 * and streams carry the cursor in the `Last-Event-ID` header (protocol 1.1)
 * and have one URL, so a page on another origin pays one CORS preflight for
 * it, not one per request (`Accept` is a CORS-safelisted header).
 *
 * Sending: one request at a time per recipient (and one for broadcasts); what
 * is sent to that recipient while it is in flight waits and goes as one batch
 * request (protocol 1.1, up to 100 envelopes and `batchBytes` of body) when it
 * ends. Each send still resolves to its own `{seq}`, and sends to one peer
 * arrive in the order they were made. Each request carries an Idempotency-Key
 * and is retried with it on network errors and 5xx, so its envelopes are
 * stored once. A request refused with `429 mailbox_full` (or
 * `send_rate_limited`) is retried after the server's `Retry-After` up to
 * `sendRetries` times, then its sends reject with a SignalingError of that
 * code; any other 4xx rejects every send of the batch at once. On `pagehide` the session leaves with `navigator.sendBeacon`;
 * a page restored from the back-forward cache joins again by itself.
 */

/** An HTTP or network failure; `code` is the server's error code, or "network_error". */
export class SignalingError extends Error {
  constructor(message, { status = 0, code = "network_error", retryAfter = null } = {}) {
    super(message);
    this.name = "SignalingError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

const DEFAULTS = {
  backoff: { base: 500, max: 10000 },
  sendRetries: 5,
  // Added to the server's poll_wait before a silent connection is given up on.
  pollGraceMs: 10000,
  // The most bytes of body in one batch: the server's default MAX_MESSAGE_BYTES, which bounds a whole request.
  batchBytes: 65536,
  // Streaming receive, in ms: the server's STREAM_HEARTBEAT, the grace added to it before a silent stream
  // counts as dead, how long a stream may take to show its first byte before the session polls instead
  // (`receive: "auto"` only), and how long it then polls before it tries a stream again.
  streamTiming: { heartbeat: 15000, grace: 10000, firstByte: 5000, pollFor: 300000 },
};

/** The ways a session may receive: stream and fall back to polls, or only one of the two. */
const RECEIVE_MODES = new Set(["auto", "stream", "poll"]);

/**
 * Refusals that say "not now": the request is sent again after Retry-After. A send rate limit is
 * among them because the server counts envelopes: a batch that arrives while the second's budget
 * is half spent is refused whole, and goes through once the next second starts.
 */
const WAIT_AND_RETRY = new Set(["mailbox_full", "send_rate_limited"]);
/** Refusals that end a session for good (protocol 1.2): the application removed this peer or banned its id. */
export const FINAL_CODES = new Set(["removed", "banned"]);

/** The most envelopes one batch request may carry (PROTOCOL.md 1.1). */
const BATCH_ITEMS = 100;

/**
 * Joins `room` and starts polling; resolves to a Session once the server has accepted the join.
 *
 * Options: `peerId` (else the server picks one, or the ticket's `sub` names
 * it), `token` (a previous session's token, to resume it after a page
 * reload), `lastSeq` (that session's `session.lastSeq`, so a resume is not
 * handed again what the previous page already saw: a stream acknowledges only
 * when it reconnects), `ticket` (a join ticket), `getTicket` (an async function returning
 * a fresh ticket before each join), `fetch` (a stand-in for tests),
 * `backoff` `{base, max}` in ms, `sendRetries`, `batchBytes` (set it to the
 * server's `MAX_MESSAGE_BYTES` when that is below the default 65536),
 * `receive` ("auto", the default: stream and fall back to polls; "stream":
 * never poll; "poll": never stream), `streamTiming` `{heartbeat, grace,
 * firstByte, pollFor}` in ms (the heartbeat is the server's
 * `STREAM_HEARTBEAT`).
 * Rejects with a SignalingError when the join is refused (`401 ticket_required`,
 * `401 bad_ticket`, `409 peer_id_taken`, `409 room_full`, …) or the service
 * cannot be reached.
 */
export async function join(baseUrl, room, options = {}) {
  if (options.receive !== undefined && !RECEIVE_MODES.has(options.receive)) {
    throw new TypeError(`receive must be "auto", "stream" or "poll", not ${JSON.stringify(options.receive)}`);
  }
  const session = new Session(baseUrl, room, options);
  await session._join();
  session._start();
  return session;
}

class Session extends EventTarget {
  constructor(baseUrl, room, options) {
    super();
    this.baseUrl = String(baseUrl).replace(/\/+$/, "");
    this.room = room;
    this.peerId = options.peerId ?? null;
    this.token = options.token ?? null;
    this._ticket = options.ticket ?? null;
    this._getTicket = options.getTicket ?? null;
    this.peers = new Set();
    /** The other members' meta by peer id (null for one without), kept with `peers` (protocol 1.2). */
    this.members = new Map();
    /** This peer's own meta, as the server keeps it. */
    this.meta = options.meta ?? null;
    this.iceServers = [];
    this.state = "connecting";
    this._fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this._backoff = { ...DEFAULTS.backoff, ...options.backoff };
    this._sendRetries = options.sendRetries ?? DEFAULTS.sendRetries;
    this._batchBytes = options.batchBytes ?? DEFAULTS.batchBytes;
    this._pollWait = 25;
    this._receive = options.receive ?? "auto";
    this._streamTiming = { ...DEFAULTS.streamTiming, ...options.streamTiming };
    // Polls, not streams, until this time (ms since the epoch), for `_pollReason`.
    this._pollUntil = this._receive === "poll" ? Infinity : 0;
    this._pollReason = "receive-option";
    /** "stream" or "poll": how envelopes arrive now; null until the first stream opened or poll went out. */
    this.receiveMode = this._receive === "poll" ? "poll" : null;
    this._cursor = 0;
    this._lastSeq = 0;
    this._resumeAfter = Number.isInteger(options.lastSeq) ? options.lastSeq : 0;
    this._closed = false;
    this._suspended = false;
    this._looping = false;
    this._receiving = null; // AbortController of the poll or stream the loop is waiting on
    this._stop = new AbortController(); // cuts backoff sleeps short on leave()
    this._outboxes = new Map(); // request path -> Outbox, while it has envelopes to send
    this._onPageHide = () => this._suspend();
    this._onPageShow = (event) => event.persisted && this._resume();
  }

  /**
   * Sends one envelope to peer `to`; resolves to `{seq}`, rejects with a SignalingError.
   * Sends to one peer arrive in call order (an ICE candidate never overtakes
   * the answer before it): they go one request at a time, those made meanwhile
   * as one batch.
   */
  send(to, type, data = null) {
    return this._outbox(`/rooms/${enc(this.room)}/peers/${enc(to)}/messages`, seqAt).push(type, data);
  }

  /**
   * Sends one envelope to every other member; resolves to `{delivered_to, mailbox_full}`.
   * Broadcasts are batched like sends; every broadcast of one batch reached the same members.
   */
  broadcast(type, data = null) {
    return this._outbox(`/rooms/${enc(this.room)}/messages`, deliveryReport).push(type, data);
  }

  _outbox(path, answer) {
    let outbox = this._outboxes.get(path);
    if (!outbox) {
      outbox = new Outbox(this, path, answer, () => this._outboxes.delete(path));
      this._outboxes.set(path, outbox);
    }
    return outbox;
  }

  /** The seq of the last envelope delivered: keep it with the token to resume after a reload (`lastSeq`). */
  get lastSeq() {
    return this._lastSeq;
  }

  /** Leaves the room and stops polling; safe to call twice. */
  async leave() {
    if (this._closed) return;
    this._close();
    let response;
    try {
      response = await this._fetch(this._url(`/rooms/${enc(this.room)}/peers/${enc(this.peerId)}`), {
        method: "DELETE",
        headers: this._auth(),
        keepalive: true,
      });
    } catch (error) {
      throw networkError(error);
    }
    if (!response.ok) throw await errorFrom(response);
  }

  async _join() {
    const headers = { "Content-Type": "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const body = this.peerId ? { peer_id: this.peerId } : {};
    if (this.meta) body.meta = this.meta;
    const ticket = await this._ticketForJoin();
    if (ticket) body.ticket = ticket;
    let response;
    try {
      response = await this._fetch(this._url(`/rooms/${enc(this.room)}/peers`), {
        method: "POST",
        headers,
        body: JSON.stringify(body),
      });
    } catch (error) {
      throw networkError(error);
    }
    if (!response.ok) throw await errorFrom(response);
    const joined = await response.json();
    const fresh = response.status === 201;
    this.peerId = joined.peer_id;
    this.token = joined.token;
    this.iceServers = joined.ice_servers ?? [];
    this._pollWait = joined.poll_wait ?? this._pollWait;
    this._cursor = joined.cursor ?? 0;
    // A fresh mailbox starts again at seq 1; a resumed one redelivers what was not acknowledged,
    // less what a previous page of this session saw (`lastSeq`): that is acknowledged with the next request.
    if (fresh) this._lastSeq = 0;
    else if (this._resumeAfter > this._cursor) this._cursor = this._lastSeq = this._resumeAfter;
    this._resumeAfter = 0;
    this.meta = joined.meta ?? null;
    const metas = new Map((joined.members ?? []).map((member) => [member.peer_id, member.meta ?? null]));
    this._setPeers(joined.peers ?? [], fresh, metas);
    this.resumed = !fresh;
  }

  /**
   * The ticket a join carries: a fresh one from `getTicket`, else the one given.
   * A `getTicket` that fails is a passing failure (status 0), retried like a network error.
   */
  async _ticketForJoin() {
    if (!this._getTicket) return this._ticket;
    try {
      return await this._getTicket();
    } catch (error) {
      throw new SignalingError(`getTicket failed: ${error?.message ?? error}`, { code: "ticket_unavailable" });
    }
  }

  /** Makes `peers` equal `ids` (and `members` their `metas`); after a fresh rejoin every old peer is announced again. */
  _setPeers(ids, fresh, metas) {
    const next = new Set(ids);
    for (const id of [...this.peers]) {
      if (fresh || !next.has(id)) {
        this.peers.delete(id);
        this.members.delete(id);
        this._emit("peer-left", { peerId: id, reason: "rejoined" });
      }
    }
    for (const id of next) {
      const meta = metas.get(id) ?? null;
      this.members.set(id, meta);
      if (!this.peers.has(id)) {
        this.peers.add(id);
        this._emit("peer-joined", { peerId: id, meta });
      }
    }
  }

  _start() {
    if (typeof window !== "undefined") {
      window.addEventListener("pagehide", this._onPageHide);
      window.addEventListener("pageshow", this._onPageShow);
    }
    this._setState("connected");
    this._loop();
  }

  async _loop() {
    this._looping = true;
    try {
      await this._receiveUntilStopped();
    } finally {
      this._looping = false;
    }
  }

  /**
   * Streams or polls, one request after another, until the session closes or is suspended.
   * Both kinds of request share the handling of their answers: an error status, a poll's JSON, a
   * network failure; a stream that ended is followed by the next one at once.
   */
  async _receiveUntilStopped() {
    let failures = 0;
    while (!this._closed && !this._suspended) {
      const streaming = Date.now() >= this._pollUntil;
      let response;
      try {
        response = streaming ? await this._streamOnce(() => { failures = 0; }) : await this._pollOnce();
      } catch (error) {
        if (this._closed || this._suspended) return;
        failures = await this._retryLater(error instanceof SignalingError ? error : networkError(error), failures);
        continue;
      }
      if (response === "ended" || response === "silent") continue; // the next stream acknowledges what this one carried
      if (response === "no-first-byte") {
        this._pollFor(this._streamTiming.pollFor, "no-first-byte");
        continue;
      }
      if (response.ok) {
        const body = await response.json().catch(() => null);
        if (body && Array.isArray(body.messages)) {
          failures = 0;
          // A server that does not stream (protocol 1.1) answers a stream's request as a poll.
          if (streaming && this._receive === "auto") this._pollFor(Infinity, "server-sends-json");
          this._setState("connected");
          this._deliver(body.messages, body.cursor);
          continue;
        }
        failures = await this._retryLater(new SignalingError("malformed poll response", { status: response.status }), failures);
        continue;
      }
      const error = await errorFrom(response);
      if (error.code === "not_joined") {
        failures = await this._rejoin(failures);
      } else if (error.code === "bad_cursor") {
        // The mailbox started over without this session noticing: read it from the start.
        this._cursor = 0;
        this._lastSeq = 0;
      } else if (error.status >= 500 || error.status === 429) {
        failures = await this._retryLater(error, failures);
      } else {
        this._fail(error);
      }
    }
  }

  /** Receives by polls from now on, for `ms` (Infinity: for good), saying why. */
  _pollFor(ms, reason) {
    this._pollUntil = Date.now() + ms;
    this._pollReason = reason;
    this._setReceiveMode("poll", reason);
  }

  /** One long poll, aborted by leave() or pagehide, or when the connection goes silent. */
  async _pollOnce() {
    this._setReceiveMode("poll", this._pollReason);
    const controller = new AbortController();
    this._receiving = controller;
    const timer = setTimeout(() => controller.abort(), this._pollWait * 1000 + DEFAULTS.pollGraceMs);
    try {
      return await this._fetch(this._receiveUrl(), { headers: this._receiveHeaders(), signal: controller.signal });
    } finally {
      clearTimeout(timer);
      this._receiving = null;
    }
  }

  /**
   * One stream: delivers its envelopes as they come, and returns how it ended: "ended" (by the
   * server), "silent" (no byte for the heartbeat plus the grace: cut), "no-first-byte" (none within
   * `firstByte`: cut, with `receive: "auto"`), or the response itself when it is no stream (an
   * error, or a poll's JSON). Throws on a network failure. `opened` is called at its first byte.
   */
  async _streamOnce(opened) {
    const controller = new AbortController();
    this._receiving = controller;
    const { heartbeat, grace, firstByte } = this._streamTiming;
    let stalled = null;
    let timer = null;
    const cutAfter = (ms, why) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = why;
        controller.abort();
      }, ms);
    };
    if (this._receive === "auto") cutAfter(firstByte, "no-first-byte");
    else cutAfter(heartbeat + grace, "silent");
    try {
      const response = await this._fetch(this._receiveUrl(), {
        headers: { ...this._receiveHeaders(), Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (!response.ok || !isEventStream(response)) return response;
      const reader = response.body.getReader();
      const parser = new EventStreamParser();
      let open = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done && !open) throw new SignalingError("the stream ended before its first byte", { status: 200 });
        if (done) return "ended"; // an event cut off by the end is not dispatched: the parser still holds it
        if (!value || value.length === 0) continue;
        cutAfter(heartbeat + grace, "silent");
        if (!open) {
          open = true;
          opened();
          this._setState("connected");
          this._setReceiveMode("stream", "stream-open");
        }
        this._deliverEvents(parser.push(value), parser.lastEventId);
      }
    } catch (error) {
      controller.abort(); // a malformed event: let go of the connection
      if (stalled && !this._closed && !this._suspended) return stalled;
      throw error;
    } finally {
      clearTimeout(timer);
      if (this._receiving === controller) this._receiving = null;
    }
  }

  /** Delivers the envelopes of a stream's events; the last dispatched event's id is the cursor. */
  _deliverEvents(events, lastEventId) {
    const envelopes = [];
    for (const event of events) {
      if (event.type !== "message") continue;
      try {
        envelopes.push(JSON.parse(event.data));
      } catch {
        throw new SignalingError("malformed stream event", { status: 200 });
      }
    }
    if (envelopes.length > 0) this._deliver(envelopes, /^[0-9]+$/.test(lastEventId) ? Number(lastEventId) : null);
  }

  /**
   * Polls and streams of this peer share one URL and the same headers, so that a page on another
   * origin pays its CORS preflight once (the server lets browsers cache it) instead of before every
   * request: the cursor goes in Last-Event-ID (protocol 1.1), not in the URL.
   */
  _receiveUrl() {
    return this._url(`/rooms/${enc(this.room)}/peers/${enc(this.peerId)}/messages?wait=${this._pollWait}`);
  }

  _receiveHeaders() {
    return { ...this._auth(), "Last-Event-ID": String(this._cursor) };
  }

  _setReceiveMode(mode, reason) {
    if (mode === this.receiveMode) return;
    this.receiveMode = mode;
    this._emit("receive-mode", { mode, reason });
  }

  _deliver(messages, cursor) {
    for (const envelope of messages) {
      if (this._closed) return;
      if (envelope.seq <= this._lastSeq) continue;
      this._lastSeq = envelope.seq;
      if (envelope.type === "peer-joined") {
        const meta = envelope.data?.meta ?? null;
        this.peers.add(envelope.from);
        this.members.set(envelope.from, meta);
        this._emit("peer-joined", { peerId: envelope.from, meta });
      } else if (envelope.type === "peer-left") {
        this.peers.delete(envelope.from);
        this.members.delete(envelope.from);
        this._emit("peer-left", { peerId: envelope.from, reason: envelope.data?.reason ?? "left" });
      } else {
        this._emit("message", envelope);
      }
    }
    this._cursor = Number.isInteger(cursor) ? cursor : this._lastSeq;
  }

  /**
   * Joins again with the same id and the old token: resumed (200) or fresh (201).
   * A refusal (4xx: a ticket refused, the id taken, ...) is fatal; the rest is retried.
   */
  async _rejoin(failures) {
    while (!this._closed && !this._suspended) {
      this._setState("rejoining");
      try {
        await this._join();
        this._setState("connected");
        return 0;
      } catch (error) {
        if (this._closed || this._suspended) return failures;
        if (error.status && error.status < 500) {
          this._fail(error);
          return failures;
        }
        failures = await this._retryLater(error, failures);
      }
    }
    return failures;
  }

  /** Reports a passing failure and sleeps the backoff for the `failures`-th one in a row. */
  async _retryLater(error, failures) {
    const delay = this._retryDelay(error, failures);
    this._emit("error", { error, fatal: false });
    this._setState("reconnecting", { delay });
    await sleep(delay, this._stop.signal);
    return failures + 1;
  }

  /**
   * The server's Retry-After when it gave one, plus up to half again so that
   * the clients one outage turned away do not all come back in the same
   * instant (capped); else the jittered backoff.
   */
  _retryDelay(error, failures) {
    if (error.retryAfter != null) return Math.min(error.retryAfter * 1000 * (1 + Math.random() / 2), this._backoff.max);
    return backoffDelay(this._backoff, failures);
  }

  /** POSTs a JSON body (already encoded) with one Idempotency-Key for all its attempts. */
  async _post(path, body) {
    const key = randomId();
    for (let attempt = 0; ; attempt++) {
      if (this._closed) throw new SignalingError("session is closed", { code: "closed" });
      let response = null;
      let error;
      try {
        response = await this._fetch(this._url(path), {
          method: "POST",
          headers: { ...this._auth(), "Content-Type": "application/json", "Idempotency-Key": key },
          body,
        });
        if (response.ok) return await response.json();
        error = await errorFrom(response);
      } catch (thrown) {
        error = thrown instanceof SignalingError ? thrown : networkError(thrown);
      }
      const retriable = !response || response.status >= 500 || WAIT_AND_RETRY.has(error.code);
      if (!retriable || attempt >= this._sendRetries) throw error;
      await sleep(this._retryDelay(error, attempt), this._stop.signal);
    }
  }

  _suspend() {
    if (this._closed || this._suspended) return;
    this._suspended = true;
    this._receiving?.abort();
    const url = this._url(`/rooms/${enc(this.room)}/peers/${enc(this.peerId)}/leave`);
    navigator.sendBeacon(url, JSON.stringify({ token: this.token }));
    this._setState("suspended");
  }

  /** Back from the back-forward cache: the beacon made us leave, so the loop's 404 rejoins. */
  _resume() {
    if (this._closed || !this._suspended) return;
    this._suspended = false;
    // The frozen page may not have seen its aborted poll fail yet: that loop then carries on.
    if (!this._looping) this._loop();
  }

  _fail(error) {
    if (FINAL_CODES.has(error.code)) this._emit("removed", { code: error.code, message: error.message });
    this._emit("error", { error, fatal: true });
    this._close();
  }

  _close() {
    this._closed = true;
    this._receiving?.abort();
    this._stop.abort();
    if (typeof window !== "undefined") {
      window.removeEventListener("pagehide", this._onPageHide);
      window.removeEventListener("pageshow", this._onPageShow);
    }
    this._setState("closed");
  }

  _setState(state, extra = {}) {
    if (state === this.state && !("delay" in extra)) return;
    this.state = state;
    this._emit("state", { state, ...extra });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _auth() {
    return { Authorization: `Bearer ${this.token}` };
  }

  _url(path) {
    return this.baseUrl + path;
  }
}

/**
 * The envelopes waiting for one request path: a peer's mailbox, or the room for broadcasts.
 *
 * One request is in flight at a time. Whatever is pushed while it is waits,
 * and goes as the next request when it ends: one batch of up to 100 envelopes
 * and `batchBytes` of body, the rest in the batches after. So a burst of ICE
 * candidates costs two or three requests instead of one each, and envelopes
 * still reach the peer in push order.
 *
 * Every request uses the batch form `{"messages": [...]}`, a lone envelope
 * too (a batch of one), rather than the 1.0 form `{type, data}` for one: one
 * request shape and one answer (`seqs`) to handle, and no pretence of
 * working with a 1.0 server, which any batch of two would break anyway
 * (the client is served by the service it talks to, so both are one version).
 */
class Outbox {
  constructor(session, path, answer, onIdle) {
    this.session = session;
    this.path = path;
    this.answer = answer; // (batch answer, index in the batch) -> what that send resolves to
    this.onIdle = onIdle;
    this.queue = []; // {json, bytes, resolve, reject}, oldest first
    this.sending = false;
  }

  /**
   * Queues one envelope, encoded now (so later changes to `data` do not leak in, and data that
   * cannot be JSON rejects this send alone); resolves to its answer.
   */
  push(type, data) {
    return new Promise((resolve, reject) => {
      const json = JSON.stringify({ type, data });
      this.queue.push({ json, bytes: utf8.encode(json).length, resolve, reject });
      if (this.sending) return;
      this.sending = true;
      // Start after the current task, so that sends made in one go (a loop over candidates) share the first request.
      queueMicrotask(() => this._drain());
    });
  }

  async _drain() {
    while (this.queue.length > 0) {
      const batch = this._nextBatch();
      let answers;
      try {
        const body = await this.session._post(this.path, `{"messages":[${batch.map((item) => item.json).join(",")}]}`);
        answers = batch.map((_, index) => this.answer(body, index));
      } catch (error) {
        if (error.status === 413 && batch.length > 1) {
          // The server takes less than `batchBytes`. Nothing was stored: send the same envelopes again,
          // in batches no bigger than this one's first half, from now on.
          this.session._batchBytes = batchSize(batch.slice(0, Math.ceil(batch.length / 2)));
          this.queue.unshift(...batch);
          continue;
        }
        for (const item of batch) item.reject(error);
        continue;
      }
      batch.forEach((item, index) => item.resolve(answers[index]));
    }
    this.sending = false;
    this.onIdle();
  }

  /** Takes the oldest envelopes that fit in one request: up to 100 and `batchBytes`, at least one. */
  _nextBatch() {
    let count = 1;
    let size = batchSize(this.queue.slice(0, 1));
    while (count < this.queue.length && count < BATCH_ITEMS) {
      const grown = size + 1 + this.queue[count].bytes; // a comma, then the envelope
      if (grown > this.session._batchBytes) break;
      size = grown;
      count++;
    }
    return this.queue.splice(0, count);
  }
}

const utf8 = new TextEncoder();

/** Whether an answer is a stream (protocol 1.2) rather than JSON. */
function isEventStream(response) {
  return (response.headers.get("Content-Type") ?? "").toLowerCase().startsWith("text/event-stream");
}

/**
 * Server-Sent Events read from a body that arrives in chunks cut anywhere, as the HTML standard
 * says: lines end with CRLF, LF or CR; `data` lines of one event are joined with "\n"; a blank
 * line dispatches the event; `:` starts a comment; `id` is kept for the events after it; an event
 * the body ends in the middle of is never dispatched (it stays here, unfinished), nor its id seen.
 */
class EventStreamParser {
  constructor() {
    this._decoder = new TextDecoder(); // UTF-8, and drops a leading byte order mark, as the standard asks
    this._partial = ""; // the start of a line whose end has not arrived
    this._afterCR = false; // the last text ended with CR: an LF that starts the next is that line's end
    this._data = "";
    this._type = "";
    this._id = ""; // the last `id` field, which the next dispatch makes the last event id
    /** The id of the last event dispatched: what a reconnect's Last-Event-ID carries. */
    this.lastEventId = "";
    /** The last `retry` field, in ms (null until one came). */
    this.retry = null;
  }

  /** Reads one chunk of bytes; returns the events it completed, each `{type, data, id}`. */
  push(bytes) {
    let text = this._decoder.decode(bytes, { stream: true });
    if (text === "") return [];
    if (this._afterCR && text[0] === "\n") text = text.slice(1);
    this._afterCR = text.endsWith("\r");
    const lines = (this._partial + text).split(/\r\n|\r|\n/);
    this._partial = lines.pop();
    const events = [];
    for (const line of lines) {
      const event = this._line(line);
      if (event) events.push(event);
    }
    return events;
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line[0] === ":") return null; // a comment: the server's heartbeat, or its first line
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this._data += `${value}\n`;
    else if (field === "event") this._type = value;
    else if (field === "id" && !value.includes("\0")) this._id = value;
    else if (field === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
    return null;
  }

  _dispatch() {
    const data = this._data;
    const type = this._type || "message";
    this._data = "";
    this._type = "";
    this.lastEventId = this._id;
    if (data === "") return null;
    return { type, data: data.slice(0, -1), id: this._id };
  }
}

/** Bytes of the request body `{"messages":[...]}` carrying these queued envelopes. */
function batchSize(items) {
  return '{"messages":[]}'.length + items.reduce((sum, item) => sum + item.bytes, 0) + Math.max(0, items.length - 1);
}

/** A send's answer: its own seq, out of the batch's `seqs`. */
function seqAt(body, index) {
  const seq = body?.seqs?.[index];
  if (!Number.isInteger(seq)) throw new SignalingError("malformed send response", { status: 202 });
  return { seq };
}

/** A broadcast's answer: every member got the whole batch or none of it, so each broadcast gets the batch's report. */
function deliveryReport(body) {
  if (!Array.isArray(body?.delivered_to) || !Array.isArray(body?.mailbox_full)) {
    throw new SignalingError("malformed broadcast response", { status: 202 });
  }
  return { delivered_to: [...body.delivered_to], mailbox_full: [...body.mailbox_full] };
}

/** Exponential backoff with equal jitter: half the step, plus a random half. */
function backoffDelay({ base, max }, failures) {
  const step = Math.min(max, base * 2 ** failures);
  return step / 2 + Math.random() * (step / 2);
}

async function errorFrom(response) {
  const body = await response.json().catch(() => null);
  const retryAfter = Number.parseFloat(response.headers.get("Retry-After"));
  return new SignalingError(body?.error?.message ?? `HTTP ${response.status}`, {
    status: response.status,
    code: body?.error?.code ?? `http_${response.status}`,
    retryAfter: Number.isFinite(retryAfter) ? retryAfter : null,
  });
}

function networkError(error) {
  return new SignalingError(`network error: ${error?.message ?? error}`, { code: "network_error" });
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

const enc = encodeURIComponent;

/** 32 hex characters; getRandomValues works on plain-HTTP pages, where randomUUID does not. */
function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
