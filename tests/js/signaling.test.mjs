// Unit tests for static/signaling.js against a scripted stand-in for fetch.
// Run: node --test tests/js/
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { join, SignalingError } from "../../static/signaling.js";

const BASE = "http://signal.test";
const BACKOFF = { base: 4, max: 16 };

/**
 * A stand-in service: each "METHOD /path" answers from its own queue of
 * responders, in order; a request with nothing queued is held like a long poll
 * that nothing wakes, until its signal aborts it.
 */
function stubService() {
  const requests = [];
  const queues = new Map();
  const watchers = new Set();

  async function fetch(url, init = {}) {
    const parsed = new URL(url);
    const request = {
      method: init.method ?? "GET",
      url,
      path: parsed.pathname,
      query: Object.fromEntries(parsed.searchParams),
      headers: init.headers ?? {},
      body: init.body === undefined ? undefined : JSON.parse(init.body),
      bytes: init.body === undefined ? 0 : Buffer.byteLength(init.body),
      signal: init.signal,
      aborted: false,
    };
    init.signal?.addEventListener("abort", () => { request.aborted = true; });
    requests.push(request);
    for (const watcher of watchers) watcher();
    const responder = queues.get(`${request.method} ${request.path}`)?.shift();
    if (responder) return responder(request);
    return new Promise((_, reject) => {
      init.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
    });
  }

  return {
    fetch,
    requests,
    /** Queues responders for one route. */
    on(route, ...responders) {
      const queue = queues.get(route) ?? [];
      queue.push(...responders);
      queues.set(route, queue);
    },
    /** Requests so far on one route. */
    to(route) {
      return requests.filter((r) => `${r.method} ${r.path}` === route);
    },
    /** Resolves once `count` requests went to `route`; fails after a second. */
    waitFor(route, count) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (this.to(route).length >= count) {
            watchers.delete(check);
            clearTimeout(timer);
            resolve(this.to(route)[count - 1]);
          }
        };
        const timer = setTimeout(() => {
          watchers.delete(check);
          reject(new Error(`expected ${count} requests to ${route}, saw ${this.to(route).length}`));
        }, 1000);
        watchers.add(check);
        check();
      });
    },
  };
}

function json(status, body, headers = {}) {
  return () => new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

function failure(status, code, headers = {}) {
  return json(status, { error: { code, message: code } }, headers);
}

function networkDown() {
  throw new TypeError("fetch failed");
}

function joined(overrides = {}) {
  return {
    room: "r1", peer_id: "alice", token: "tok-1", peers: ["bob"], cursor: 0,
    poll_wait: 25, peer_ttl: 60, ice_servers: [{ urls: "stun:stun.test" }], ...overrides,
  };
}

function envelope(seq, type = "offer", from = "bob", data = { n: seq }) {
  return { seq, from, type, data, ts: 1763900000 + seq };
}

function messages(list, cursor = list.at(-1)?.seq ?? 0) {
  return json(200, { messages: list, cursor });
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const utf8 = (text) => new TextEncoder().encode(text);

/**
 * A streamed answer (protocol 1.2) with a real body: `parts` are text (one chunk of UTF-8),
 * Uint8Arrays (chunks as they are) or numbers (a pause of that many ms). The body then ends, or
 * fails with `fail`, or with `open` stays open; an abort of the request errors it, as fetch does.
 */
function streamed(parts, { open = false, fail = null } = {}) {
  return (request) => {
    let over = false;
    const body = new ReadableStream({
      async start(controller) {
        request.signal?.addEventListener("abort", () => {
          if (!over) controller.error(new DOMException("aborted", "AbortError"));
          over = true;
        });
        await pause(1); // bytes come from the network: after the caller's current task, never within it
        for (const part of parts) {
          if (over) return;
          if (typeof part === "number") await pause(part);
          else controller.enqueue(typeof part === "string" ? utf8(part) : part);
        }
        if (over || open) return;
        over = true;
        if (fail) controller.error(fail);
        else controller.close();
      },
    });
    return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
  };
}

/** One envelope as the server streams it: its seq as the event's id, the envelope as its data. */
function sse(envelope) {
  return `id: ${envelope.seq}\ndata: ${JSON.stringify(envelope)}\n\n`;
}

/** The bytes of `text` cut into chunks of `size` bytes: through lines, line ends and UTF-8 sequences. */
function chunks(text, size) {
  const bytes = utf8(text);
  const cut = [];
  for (let at = 0; at < bytes.length; at += size) cut.push(bytes.subarray(at, at + size));
  return cut;
}

/** Resolves once `check()` holds; fails after a second. */
async function until(check) {
  const deadline = Date.now() + 1000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`still false after a second: ${check}`);
    await pause(2);
  }
}

/** Whether a request to the mailbox asked for a stream rather than a poll. */
function isStream(request) {
  return request.headers.Accept === "text/event-stream";
}

/** The cursor a poll carried: protocol 1.1's Last-Event-ID header. */
function cursorOf(poll) {
  return poll.headers["Last-Event-ID"];
}

/** Collects the `detail` of every event of the given types, in order, as [type, detail]. */
function record(session, ...types) {
  const seen = [];
  for (const type of types) session.addEventListener(type, (e) => seen.push([type, e.detail]));
  return seen;
}

const JOIN = "POST /rooms/r1/peers";
const POLL = "GET /rooms/r1/peers/alice/messages";

let service;
let sessions;

async function start(options = {}) {
  const session = await join(BASE, "r1", { peerId: "alice", fetch: service.fetch, backoff: BACKOFF, ...options });
  sessions.push(session);
  return session;
}

beforeEach(() => {
  service = stubService();
  sessions = [];
});

afterEach(async () => {
  service.on("DELETE /rooms/r1/peers/alice", () => new Response(null, { status: 204 }));
  await Promise.all(sessions.map((s) => s.leave().catch(() => {})));
});

describe("join", () => {
  test("sends the peer id, keeps token, peers and ICE servers, then polls with the token", async () => {
    service.on(JOIN, json(201, joined({ poll_wait: 7 })));
    const session = await start();

    const [joinRequest] = service.to(JOIN);
    assert.deepEqual(joinRequest.body, { peer_id: "alice" });
    assert.equal(session.token, "tok-1");
    assert.deepEqual([...session.peers], ["bob"]);
    assert.deepEqual(session.iceServers, [{ urls: "stun:stun.test" }]);

    const poll = await service.waitFor(POLL, 1);
    assert.deepEqual(poll.query, { wait: "7" });
    assert.equal(cursorOf(poll), "0");
    assert.equal(poll.headers.Authorization, "Bearer tok-1");
  });

  test("a refused join rejects with the server's code", async () => {
    service.on(JOIN, failure(409, "peer_id_taken"));
    await assert.rejects(start(), (error) => error instanceof SignalingError && error.code === "peer_id_taken" && error.status === 409);
  });

  test("a join with a token resumes: Bearer header sent, polling starts at the returned cursor", async () => {
    service.on(JOIN, json(200, joined({ token: "old", cursor: 4 })));
    const session = await start({ token: "old" });
    assert.equal(service.to(JOIN)[0].headers.Authorization, "Bearer old");
    assert.equal(session.resumed, true);
    assert.equal(cursorOf(await service.waitFor(POLL, 1)), "4");
  });

  test("a resume with the previous page's lastSeq acknowledges what that page saw and delivers only the rest", async () => {
    // A stream acknowledges only when it reconnects: the server's cursor (4) lags what the old page saw (6).
    service.on(JOIN, json(200, joined({ token: "old", cursor: 4 })));
    service.on(POLL, messages([envelope(5), envelope(6), envelope(7)]));
    const session = await start({ token: "old", lastSeq: 6, receive: "poll" });
    const seen = record(session, "message");
    assert.equal(cursorOf(await service.waitFor(POLL, 1)), "6");
    await service.waitFor(POLL, 2);
    assert.deepEqual(seen.map(([, e]) => e.seq), [7]);
    assert.equal(session.lastSeq, 7);
  });

  test("lastSeq counts for a resume only: a fresh join starts at seq 1", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, messages([envelope(1)]));
    const session = await start({ token: "old", lastSeq: 6, receive: "poll" });
    const seen = record(session, "message");
    assert.equal(cursorOf(await service.waitFor(POLL, 1)), "0");
    await service.waitFor(POLL, 2);
    assert.deepEqual(seen.map(([, e]) => e.seq), [1]);
  });
});

describe("poll loop", () => {
  test("delivers envelopes in order and carries the cursor to the next poll", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, messages([envelope(1), envelope(2)]), messages([], 2), messages([envelope(3)]));
    const session = await start();
    const seen = record(session, "message");

    assert.equal(cursorOf(await service.waitFor(POLL, 2)), "2");
    assert.equal(cursorOf(await service.waitFor(POLL, 3)), "2");
    assert.equal(cursorOf(await service.waitFor(POLL, 4)), "3");
    assert.deepEqual(seen.map(([, e]) => e.seq), [1, 2, 3]);
    assert.deepEqual(seen[0][1], envelope(1));
  });

  test("every poll goes to one URL: the cursor travels in Last-Event-ID, never in the query", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, messages([envelope(1)]), messages([envelope(2), envelope(3)]), messages([], 3));
    await start();

    await service.waitFor(POLL, 4);
    const polls = service.to(POLL);
    assert.deepEqual([...new Set(polls.map((r) => r.url))], [`${BASE}/rooms/r1/peers/alice/messages?wait=25`]);
    assert.deepEqual(polls.map(cursorOf), ["0", "1", "3", "3"]);
  });

  test("drops an envelope whose seq it already delivered", async () => {
    service.on(JOIN, json(201, joined()));
    // A superseded poll and its successor may both return seq 2.
    service.on(POLL, messages([envelope(1), envelope(2)]), messages([envelope(2), envelope(3)]));
    const session = await start();
    const seen = record(session, "message");

    await service.waitFor(POLL, 3);
    assert.deepEqual(seen.map(([, e]) => e.seq), [1, 2, 3]);
  });

  test("peer-joined and peer-left update peers and are not messages", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, messages([
      envelope(1, "peer-joined", "carol", null),
      envelope(2, "peer-left", "bob", { reason: "timeout" }),
    ]));
    const session = await start();
    const seen = record(session, "message", "peer-joined", "peer-left");

    await service.waitFor(POLL, 2);
    assert.deepEqual(seen, [
      ["peer-joined", { peerId: "carol", meta: null }],
      ["peer-left", { peerId: "bob", reason: "timeout" }],
    ]);
    assert.deepEqual([...session.peers], ["carol"]);
  });

  describe("backoff", () => {
    let realRandom;
    beforeEach(() => {
      realRandom = Math.random;
    });
    afterEach(() => {
      Math.random = realRandom;
    });

    test("5xx and network errors back off exponentially with jitter, capped, reset by a success", async () => {
      const randoms = [0, 1, 0.5, 1, 0];
      Math.random = () => randoms.shift();
      service.on(JOIN, json(201, joined()));
      service.on(POLL,
        messages([envelope(1)]),
        failure(503, "backend_unavailable"), networkDown, failure(500, "internal"), networkDown,
        messages([envelope(2)]),
        failure(502, "bad_gateway"));
      const session = await start();
      const seen = record(session, "state", "error", "message");

      const last = await service.waitFor(POLL, 8);
      const delays = seen.filter(([t, d]) => t === "state" && d.state === "reconnecting").map(([, d]) => d.delay);
      // step = min(16, 4 * 2^n); delay = step/2 + random * step/2
      assert.deepEqual(delays, [2, 8, 12, 16, 2]);
      const errors = seen.filter(([t]) => t === "error").map(([, d]) => [d.error.code, d.fatal]);
      assert.deepEqual(errors, [
        ["backend_unavailable", false], ["network_error", false], ["internal", false],
        ["network_error", false], ["bad_gateway", false],
      ]);
      // Failed polls acknowledged nothing new: the cursor stays where the last success left it.
      assert.deepEqual(service.to(POLL).map(cursorOf), ["0", "1", "1", "1", "1", "1", "2", "2"]);
      assert.equal(cursorOf(last), "2");
      const states = seen.filter(([t]) => t === "state").map(([, d]) => d.state);
      assert.deepEqual(states, ["reconnecting", "reconnecting", "reconnecting", "reconnecting", "connected", "reconnecting"]);
    });

    test("a 503 with Retry-After waits that long plus up to half again, capped at the backoff maximum", async () => {
      service.on(JOIN, json(201, joined()));
      service.on(POLL, failure(503, "backend_unavailable", { "Retry-After": "0.008" }), failure(503, "backend_unavailable", { "Retry-After": "30" }));
      const session = await start();
      const seen = record(session, "state");

      await service.waitFor(POLL, 3);
      const [first, second] = seen.filter(([, d]) => d.state === "reconnecting").map(([, d]) => d.delay);
      assert.ok(first >= 8 && first <= 12, `first delay ${first}`);
      assert.equal(second, 16);
    });
  });

  test("404 not_joined joins again with the same id and old token; a resume keeps the seq dedup", async () => {
    service.on(JOIN, json(201, joined()), json(200, joined({ cursor: 0 })));
    service.on(POLL, messages([envelope(1), envelope(2)]), failure(404, "not_joined"), messages([envelope(1), envelope(2), envelope(3)]));
    const session = await start();
    const seen = record(session, "message", "state", "peer-joined", "peer-left");

    await service.waitFor(POLL, 4);
    const rejoin = service.to(JOIN)[1];
    assert.deepEqual(rejoin.body, { peer_id: "alice" });
    assert.equal(rejoin.headers.Authorization, "Bearer tok-1");
    assert.equal(cursorOf(service.to(POLL)[2]), "0");
    assert.deepEqual(seen.filter(([t]) => t === "message").map(([, e]) => e.seq), [1, 2, 3]);
    assert.ok(seen.some(([t, d]) => t === "state" && d.state === "rejoining"));
    // A resume changes no membership, so nothing is announced.
    assert.equal(seen.filter(([t]) => t.startsWith("peer-")).length, 0);
  });

  test("a fresh rejoin takes the new token, restarts the seq count and announces peers again", async () => {
    service.on(JOIN, json(201, joined()), json(201, joined({ token: "tok-2", peers: ["bob", "carol"] })));
    service.on(POLL, messages([envelope(5)], 5), failure(404, "not_joined"), messages([envelope(1)]));
    const session = await start();
    const seen = record(session, "message", "peer-joined", "peer-left");

    const poll = await service.waitFor(POLL, 4);
    assert.equal(poll.headers.Authorization, "Bearer tok-2");
    assert.equal(cursorOf(service.to(POLL)[2]), "0");
    assert.deepEqual(seen, [
      ["message", envelope(5)],
      ["peer-left", { peerId: "bob", reason: "rejoined" }],
      ["peer-joined", { peerId: "bob", meta: null }],
      ["peer-joined", { peerId: "carol", meta: null }],
      ["message", envelope(1)],
    ]);
    assert.equal(session.token, "tok-2");
  });

  test("a rejoin that is refused is fatal: error, closed, no more polls", async () => {
    service.on(JOIN, json(201, joined()), failure(409, "peer_id_taken"));
    service.on(POLL, failure(404, "not_joined"));
    const session = await start();
    const seen = record(session, "error", "state");

    await service.waitFor(JOIN, 2);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(service.to(POLL).length, 1);
    assert.equal(session.state, "closed");
    assert.deepEqual(seen.map(([t, d]) => (t === "error" ? [t, d.error.code, d.fatal] : [t, d.state])), [
      ["state", "rejoining"], ["error", "peer_id_taken", true], ["state", "closed"],
    ]);
  });

  test("401 on a poll is fatal", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, failure(401, "unauthorized"));
    const session = await start();
    await service.waitFor(POLL, 1);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(session.state, "closed");
    assert.equal(service.to(POLL).length, 1);
  });
});

describe("streaming receive", () => {
  // The first line at once, then events as the HTML standard allows them: LF, CRLF and CR line ends,
  // data on two lines (joined with "\n"), a field without a space, a comment, a multi-byte character.
  const WIRE = "retry: 2000\n: open\n\n" +
    sse(envelope(1)) +
    `id: 2\r\ndata: ${JSON.stringify(envelope(2, "chat", "bob", "héllo ✓"))}\r\n\r\n` +
    `: heartbeat\rid:3\rdata: {"seq": 3, "from": "bob",\rdata: "type": "offer", "data": {"n": 3}, "ts": 1763900003}\r\r`;

  for (const size of [1, 2, 5, 4096]) {
    test(`streams by default; events cut into chunks of ${size} bytes arrive once each, in order`, async () => {
      service.on(JOIN, json(201, joined()));
      service.on(POLL, streamed(chunks(WIRE, size), { open: true }));
      const session = await start();
      const seen = record(session, "message", "receive-mode", "state");
      await until(() => seen.filter(([t]) => t === "message").length >= 3);

      const [request] = service.to(POLL);
      assert.ok(isStream(request));
      assert.equal(request.headers.Authorization, "Bearer tok-1");
      assert.equal(cursorOf(request), "0");
      assert.equal(request.url, `${BASE}/rooms/r1/peers/alice/messages?wait=25`, "the URL of a poll: one preflight");
      assert.deepEqual(seen.filter(([t]) => t !== "message"), [["receive-mode", { mode: "stream", reason: "stream-open" }]]);
      assert.deepEqual(seen.filter(([t]) => t === "message").map(([, e]) => e), [
        envelope(1), envelope(2, "chat", "bob", "héllo ✓"), envelope(3),
      ]);
      assert.equal(session.receiveMode, "stream");
      assert.equal(service.to(POLL).length, 1, "one request, still open");
    });
  }

  test("a stream the server ends is followed at once by the next, whose Last-Event-ID acknowledges the last seq", async () => {
    service.on(JOIN, json(201, joined()));
    const cutOff = `id: 3\ndata: ${JSON.stringify(envelope(3))}\n`; // no blank line: the end cuts it off
    service.on(POLL,
      streamed([`: hi\n\n${sse(envelope(1))}${sse(envelope(2))}${cutOff}`]), // one chunk: its id 3 is not seen
      // The server may send again what the client has seen (it was not acknowledged yet): dropped by seq.
      streamed([": hi\n\n", sse(envelope(2)), sse(envelope(3)), sse(envelope(4))], { open: true }));
    const session = await start();
    const seen = record(session, "message", "state", "error");

    const second = await service.waitFor(POLL, 2);
    assert.ok(isStream(second));
    assert.equal(cursorOf(second), "2");
    await until(() => seen.length >= 4);
    await pause(10);
    assert.deepEqual(seen.map(([t, e]) => [t, e.seq]), [["message", 1], ["message", 2], ["message", 3], ["message", 4]]);
    assert.equal(service.to(POLL).length, 2);
  });

  test("a server that answers JSON (protocol 1.1): that answer's envelopes are delivered, then it polls for good", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, messages([envelope(1), envelope(2)]), messages([envelope(3)]), messages([], 3));
    const session = await start();
    const seen = record(session, "message", "receive-mode");

    await service.waitFor(POLL, 4);
    assert.deepEqual(service.to(POLL).map(isStream), [true, false, false, false]);
    assert.deepEqual(service.to(POLL).map(cursorOf), ["0", "2", "3", "3"]);
    assert.deepEqual(seen.map(([t, d]) => (t === "message" ? d.seq : d)), [
      { mode: "poll", reason: "server-sends-json" }, 1, 2, 3,
    ]);
    assert.equal(session.receiveMode, "poll");
  });

  test("no first byte within firstByte (a buffering proxy): it polls for pollFor, losing nothing, then streams again", async () => {
    service.on(JOIN, json(201, joined()));
    const held = (ms, responder) => (request) => pause(ms).then(() => responder(request));
    service.on(POLL,
      streamed([], { open: true }), // the headers, and then nothing
      messages([envelope(1)]),
      held(120, messages([], 1)),
      streamed([": hi\n\n", sse(envelope(2))], { open: true }));
    const session = await start({ streamTiming: { firstByte: 30, pollFor: 100 } });
    const seen = record(session, "message", "receive-mode");

    await service.waitFor(POLL, 4);
    await until(() => seen.length >= 4);
    const requests = service.to(POLL);
    assert.deepEqual(requests.map(isStream), [true, false, false, true]);
    assert.equal(requests[0].aborted, true, "the held-back stream is cut");
    assert.deepEqual(requests.map(cursorOf), ["0", "0", "1", "1"]);
    assert.deepEqual(seen.map(([t, d]) => (t === "message" ? d.seq : d)), [
      { mode: "poll", reason: "no-first-byte" }, 1, { mode: "stream", reason: "stream-open" }, 2,
    ]);
  });

  test("heartbeats keep a quiet stream alive; silence past heartbeat + grace cuts it and opens the next", async () => {
    service.on(JOIN, json(201, joined()));
    const heartbeats = Array.from({ length: 10 }, () => [20, ":\n"]).flat(); // 200 ms of comments only
    service.on(POLL,
      streamed([": hi\n\n", sse(envelope(1)), ...heartbeats, sse(envelope(2))], { open: true }),
      streamed([": hi\n\n"], { open: true }));
    const session = await start({ streamTiming: { heartbeat: 50, grace: 50 } });
    const seen = record(session, "message", "state", "error");

    const second = await service.waitFor(POLL, 2);
    assert.deepEqual(seen.map(([t, d]) => [t, d.seq]), [["message", 1], ["message", 2]], "kept alive past 100 ms");
    assert.equal(service.to(POLL)[0].aborted, true, "the silent stream was cut");
    assert.ok(isStream(second));
    assert.equal(cursorOf(second), "2");
  });

  test("a stream broken by the network is opened again after a backoff, from the last seq seen", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL,
      streamed([": hi\n\n", sse(envelope(1)), 5], { fail: new TypeError("network error") }),
      streamed([": hi\n\n"], { open: true }));
    const session = await start();
    const seen = record(session, "message", "state", "error");

    const second = await service.waitFor(POLL, 2);
    assert.ok(isStream(second));
    assert.equal(cursorOf(second), "1");
    await pause(10);
    assert.deepEqual(seen.map(([t, d]) => (t === "error" ? [t, d.error.code] : [t, d.state ?? d.seq])), [
      ["message", 1], ["error", "network_error"], ["state", "reconnecting"], ["state", "connected"],
    ]);
  });

  test("a stream request's errors are handled as a poll's: 503 waits Retry-After, 404 not_joined joins again", async () => {
    service.on(JOIN, json(201, joined()), json(201, joined({ token: "tok-2" })));
    service.on(POLL,
      failure(503, "backend_unavailable", { "Retry-After": "0.008" }),
      failure(404, "not_joined"),
      streamed([": hi\n\n", sse(envelope(1))], { open: true }));
    const session = await start();
    const seen = record(session, "state", "message");

    const third = await service.waitFor(POLL, 3);
    await until(() => seen.some(([t]) => t === "message"));
    assert.deepEqual(service.to(POLL).map(isStream), [true, true, true]);
    assert.equal(third.headers.Authorization, "Bearer tok-2");
    const delay = seen.find(([, d]) => d.state === "reconnecting")[1].delay;
    assert.ok(delay >= 8 && delay <= 12, `waited ${delay} ms for Retry-After: 0.008`);
    assert.deepEqual(seen.map(([t, d]) => d.state ?? t), ["reconnecting", "rejoining", "connected", "message"]);
    assert.equal(session.receiveMode, "stream");
  });

  test("a malformed event is a passing failure: the stream is cut and opened again from the last good seq", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL,
      streamed([": hi\n\n", sse(envelope(1)), "id: 2\ndata: {not json\n\n"], { open: true }),
      streamed([": hi\n\n", sse(envelope(2))], { open: true }));
    const session = await start();
    const seen = record(session, "message", "error");

    const second = await service.waitFor(POLL, 2);
    await until(() => seen.length >= 3);
    assert.equal(service.to(POLL)[0].aborted, true);
    assert.equal(cursorOf(second), "1");
    assert.deepEqual(seen.map(([t, d]) => (t === "error" ? d.error.message : d.seq)), [1, "malformed stream event", 2]);
  });

  test("receive: 'poll' never asks for a stream", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, messages([envelope(1)]), messages([envelope(2)]));
    const session = await start({ receive: "poll" });
    const seen = record(session, "message", "receive-mode");
    assert.equal(session.receiveMode, "poll");

    await service.waitFor(POLL, 3);
    assert.deepEqual(service.to(POLL).map(isStream), [false, false, false]);
    assert.deepEqual(seen.map(([, d]) => d.seq), [1, 2], "no receive-mode event: it polled from the start");
  });

  test("receive: 'stream' never falls back: a JSON answer or a stream with no first byte is followed by a stream", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, messages([envelope(1)]), streamed([], { open: true }), streamed([": hi\n\n"], { open: true }));
    const session = await start({ receive: "stream", streamTiming: { firstByte: 1, heartbeat: 20, grace: 20 } });

    await service.waitFor(POLL, 3);
    assert.deepEqual(service.to(POLL).map(isStream), [true, true, true]);
    assert.equal(service.to(POLL)[1].aborted, true, "cut after heartbeat + grace, not firstByte");
    await until(() => session.receiveMode === "stream");
  });

  test("a receive option other than auto, stream or poll is refused before anything is sent", async () => {
    await assert.rejects(start({ receive: "websocket" }), TypeError);
    assert.equal(service.requests.length, 0);
  });
});

describe("join tickets", () => {
  test("a ticket goes in the join body", async () => {
    service.on(JOIN, json(201, joined()));
    await start({ ticket: "jwt-1" });
    assert.deepEqual(service.to(JOIN)[0].body, { peer_id: "alice", ticket: "jwt-1" });
  });

  test("getTicket is asked for every fresh join: the first, and after the server forgot the peer", async () => {
    let minted = 0;
    const getTicket = async () => `jwt-${++minted}`;
    service.on(JOIN, json(201, joined()), json(201, joined({ token: "tok-2" })));
    service.on(POLL, failure(404, "not_joined"));
    const session = await start({ getTicket });
    assert.equal(minted, 1);

    await service.waitFor(POLL, 2);
    assert.deepEqual(service.to(JOIN).map((r) => r.body.ticket), ["jwt-1", "jwt-2"]);
    assert.equal(session.token, "tok-2");
    assert.equal(minted, 2);
  });

  for (const code of ["ticket_required", "bad_ticket"]) {
    test(`${code} on the first join rejects with the code, and is not retried`, async () => {
      service.on(JOIN, failure(401, code));
      await assert.rejects(start({ ticket: "jwt" }), (error) => error.code === code && error.status === 401);
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(service.to(JOIN).length, 1);
    });

    test(`${code} on a rejoin is a fatal error event: closed, no retry loop`, async () => {
      service.on(JOIN, json(201, joined()), failure(401, code));
      service.on(POLL, failure(404, "not_joined"));
      const session = await start({ getTicket: async () => "jwt" });
      const seen = record(session, "error", "state");

      await service.waitFor(JOIN, 2);
      await new Promise((resolve) => setTimeout(resolve, 30));
      assert.equal(service.to(JOIN).length, 2);
      assert.equal(service.to(POLL).length, 1);
      assert.equal(session.state, "closed");
      assert.deepEqual(seen.filter(([t]) => t === "error").map(([, d]) => [d.error.code, d.fatal]), [[code, true]]);
    });
  }

  test("a getTicket that fails on a rejoin is retried with backoff, not fatal", async () => {
    let calls = 0;
    const getTicket = async () => {
      calls += 1;
      if (calls === 2) throw new Error("backend down");
      return `jwt-${calls}`;
    };
    service.on(JOIN, json(201, joined()), json(201, joined()));
    service.on(POLL, failure(404, "not_joined"));
    const session = await start({ getTicket });
    const seen = record(session, "error");

    await service.waitFor(POLL, 2);
    assert.deepEqual(service.to(JOIN).map((r) => r.body.ticket), ["jwt-1", "jwt-3"]);
    assert.deepEqual(seen.map(([, d]) => [d.error.code, d.fatal]), [["ticket_unavailable", false]]);
    assert.equal(session.state, "connected");
  });
});

describe("peer metadata and removal (protocol 1.2)", () => {
  test("meta goes in the join body; members and peer-joined carry the others' meta", async () => {
    service.on(JOIN, json(201, joined({ meta: { name: "Alice" }, members: [{ peer_id: "bob", meta: { name: "Bob" } }] })));
    service.on(POLL, messages([envelope(1, "peer-joined", "carol", { meta: { name: "Carol" } }),
      envelope(2, "peer-joined", "dave", null), envelope(3, "peer-left", "bob", { reason: "removed" })]));
    const session = await start({ meta: { name: "Alice" }, receive: "poll" });
    const seen = record(session, "peer-joined", "peer-left");
    assert.deepEqual(service.to(JOIN)[0].body, { peer_id: "alice", meta: { name: "Alice" } });
    assert.deepEqual(session.meta, { name: "Alice" });
    assert.deepEqual([...session.members], [["bob", { name: "Bob" }]]);

    await service.waitFor(POLL, 2);
    assert.deepEqual(seen, [["peer-joined", { peerId: "carol", meta: { name: "Carol" } }],
      ["peer-joined", { peerId: "dave", meta: null }], ["peer-left", { peerId: "bob", reason: "removed" }]]);
    assert.deepEqual([...session.members], [["carol", { name: "Carol" }], ["dave", null]]);
  });

  test("a 1.1 server's answer without members still lists the peers, with null meta", async () => {
    service.on(JOIN, json(201, joined()));
    const session = await start();
    assert.deepEqual([...session.members], [["bob", null]]);
    assert.equal(session.meta, null);
  });

  for (const [status, code, route] of [[403, "removed", POLL], [403, "banned", JOIN]]) {
    test(`${code} is final: a removed event and a fatal error, no rejoin, no leave request`, async () => {
      service.on(JOIN, json(201, joined()));
      if (route === JOIN) {
        service.on(POLL, failure(404, "not_joined"));
        service.on(JOIN, json(status, { error: { code, message: "peer id 'alice' is banned from room 'r1' for now" } }));
      } else {
        service.on(POLL, json(status, { error: { code, message: "peer 'alice' was removed from room 'r1': spam" } }));
      }
      const session = await start({ receive: "poll" });
      const seen = record(session, "removed", "error");
      await until(() => session.state === "closed");
      await pause(20);
      assert.equal(seen[0][0], "removed");
      assert.equal(seen[0][1].code, code);
      assert.match(seen[0][1].message, code === "removed" ? /spam/ : /banned/);
      assert.deepEqual(seen.slice(1).map(([t, d]) => [t, d.error.code, d.fatal]), [["error", code, true]]);
      assert.equal(service.to(JOIN).length, route === JOIN ? 2 : 1);
      await session.leave();
      assert.equal(service.to("DELETE /rooms/r1/peers/alice").length, 0);
    });
  }
});

describe("leave", () => {
  test("deletes the peer with its token, aborts the held poll and polls no more", async () => {
    service.on(JOIN, json(201, joined()));
    service.on("DELETE /rooms/r1/peers/alice", () => new Response(null, { status: 204 }));
    const session = await start();
    const seen = record(session, "state", "error");
    await service.waitFor(POLL, 1);

    await session.leave();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const [request] = service.to("DELETE /rooms/r1/peers/alice");
    assert.equal(request.headers.Authorization, "Bearer tok-1");
    assert.equal(service.to(POLL).length, 1);
    assert.equal(service.to(POLL)[0].aborted, true, "the held poll is cut, freeing its connection");
    assert.deepEqual(seen, [["state", { state: "closed" }]]);
    await assert.rejects(session.send("bob", "chat"), { code: "closed" });
  });

  test("leave during a backoff ends the loop without another poll", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(POLL, networkDown);
    service.on("DELETE /rooms/r1/peers/alice", () => new Response(null, { status: 204 }));
    const session = await start({ backoff: { base: 200, max: 200 } });
    await service.waitFor(POLL, 1);
    await session.leave();
    await new Promise((resolve) => setTimeout(resolve, 250));
    assert.equal(service.to(POLL).length, 1);
  });
});

describe("page lifecycle", () => {
  let beacons;
  beforeEach(() => {
    beacons = [];
    globalThis.window = new EventTarget();
    Object.defineProperty(globalThis, "navigator", {
      value: { sendBeacon: (url, body) => beacons.push({ url, body }) },
      configurable: true,
    });
  });
  afterEach(() => {
    delete globalThis.window;
    delete globalThis.navigator;
  });

  function pageEvent(type, persisted) {
    const event = new Event(type);
    Object.defineProperty(event, "persisted", { value: persisted });
    window.dispatchEvent(event);
  }

  test("pagehide leaves by beacon and stops polling; a restore from the cache joins again", async () => {
    service.on(JOIN, json(201, joined()), json(201, joined({ token: "tok-2" })));
    service.on(POLL, messages([envelope(1)]));
    const session = await start();
    await service.waitFor(POLL, 2);

    pageEvent("pagehide", true);
    assert.deepEqual(beacons, [{ url: `${BASE}/rooms/r1/peers/alice/leave`, body: JSON.stringify({ token: "tok-1" }) }]);
    assert.equal(service.to(POLL)[1].aborted, true);
    assert.equal(session.state, "suspended");
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(service.to(POLL).length, 2);

    // The beacon made the server forget us: the next poll is refused, and the session joins again.
    service.on(POLL, failure(404, "not_joined"));
    pageEvent("pageshow", true);
    const poll = await service.waitFor(POLL, 4);
    assert.equal(service.to(JOIN).length, 2);
    assert.equal(poll.headers.Authorization, "Bearer tok-2");
    assert.equal(session.state, "connected");
  });

  test("after leave(), pagehide sends no beacon", async () => {
    service.on(JOIN, json(201, joined()));
    service.on("DELETE /rooms/r1/peers/alice", () => new Response(null, { status: 204 }));
    const session = await start();
    await session.leave();
    pageEvent("pagehide", false);
    assert.deepEqual(beacons, []);
  });
});

describe("send", () => {
  const SEND = "POST /rooms/r1/peers/bob/messages";
  const BROADCAST = "POST /rooms/r1/messages";

  /** Answers sends like the server's mailbox: consecutive seqs, one per envelope, batches over `maxBytes` refused. */
  function mailbox({ next = 1, maxBytes = Infinity } = {}) {
    return (request) => {
      if (request.bytes > maxBytes) return failure(413, "payload_too_large")();
      return json(202, { seqs: request.body.messages.map(() => next++) })();
    };
  }

  /** A responder that answers only once `release()` is called: a request kept in flight. */
  function held(responder) {
    let release;
    const gate = new Promise((resolve) => { release = resolve; });
    return { responder: (request) => gate.then(() => responder(request)), release };
  }

  const dataOf = (request) => request.body.messages.map((message) => message.data);
  const keyOf = (request) => request.headers["Idempotency-Key"];

  test("a lone send goes as a batch of one, with an Idempotency-Key, and resolves to its seq", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(SEND, json(202, { seqs: [9] }));
    const session = await start();

    assert.deepEqual(await session.send("bob", "offer", { sdp: "v=0" }), { seq: 9 });
    const [request] = service.to(SEND);
    assert.deepEqual(request.body, { messages: [{ type: "offer", data: { sdp: "v=0" } }] });
    assert.equal(request.headers.Authorization, "Bearer tok-1");
    assert.equal(request.headers["Content-Type"], "application/json");
    assert.match(keyOf(request), /^[0-9a-f]{32}$/);
  });

  test("sends made in one go share one request, and each resolves to its own seq", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(SEND, mailbox({ next: 4 }));
    const session = await start();

    const sent = [1, 2, 3].map((n) => session.send("bob", "candidate", { n }));
    assert.deepEqual(await Promise.all(sent), [{ seq: 4 }, { seq: 5 }, { seq: 6 }]);
    assert.deepEqual(service.to(SEND).map(dataOf), [[{ n: 1 }, { n: 2 }, { n: 3 }]]);
  });

  test("data that cannot be JSON rejects that send alone", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(SEND, mailbox());
    const session = await start();

    const sent = [session.send("bob", "chat", 1n), session.send("bob", "chat", "fine")];
    await assert.rejects(sent[0], TypeError);
    assert.deepEqual(await sent[1], { seq: 1 });
    assert.deepEqual(service.to(SEND).map(dataOf), [["fine"]]);
  });

  test("while a request to a peer is in flight, sends to it wait and then go as one batch, in order", async () => {
    service.on(JOIN, json(201, joined()));
    const first = held(mailbox());
    const bob = mailbox({ next: 2 });
    service.on(SEND, first.responder, bob);
    service.on("POST /rooms/r1/peers/carol/messages", mailbox());
    const session = await start();

    const answer = session.send("bob", "description", "answer");
    await service.waitFor(SEND, 1);
    const candidates = ["c1", "c2", "c3"].map((c) => session.send("bob", "candidate", c));
    assert.deepEqual(await session.send("carol", "candidate", "another peer is not held up"), { seq: 1 });
    assert.equal(service.to(SEND).length, 1, "nothing more goes to bob while his request is in flight");

    first.release();
    assert.deepEqual(await Promise.all([answer, ...candidates]), [{ seq: 1 }, { seq: 2 }, { seq: 3 }, { seq: 4 }]);
    assert.deepEqual(service.to(SEND).map(dataOf), [["answer"], ["c1", "c2", "c3"]]);
  });

  test("an envelope is encoded when sent: changing its data afterwards changes nothing", async () => {
    service.on(JOIN, json(201, joined()));
    const first = held(mailbox());
    service.on(SEND, first.responder, mailbox({ next: 2 }));
    const session = await start();

    const sent = [session.send("bob", "chat", "first")];
    await service.waitFor(SEND, 1);
    const data = { text: "as sent" };
    sent.push(session.send("bob", "chat", data));
    data.text = "changed later";
    first.release();
    await Promise.all(sent);
    assert.deepEqual(service.to(SEND)[1].body.messages, [{ type: "chat", data: { text: "as sent" } }]);
  });

  test("a batch carries at most 100 envelopes; the rest wait for the next, order and seqs kept", async () => {
    service.on(JOIN, json(201, joined()));
    const bob = mailbox();
    service.on(SEND, bob, bob, bob);
    const session = await start();

    const sent = Array.from({ length: 250 }, (_, n) => session.send("bob", "candidate", n));
    const seqs = (await Promise.all(sent)).map(({ seq }) => seq);
    assert.deepEqual(seqs, Array.from({ length: 250 }, (_, n) => n + 1));
    assert.deepEqual(service.to(SEND).map((r) => r.body.messages.length), [100, 100, 50]);
    assert.deepEqual(service.to(SEND).flatMap(dataOf), Array.from({ length: 250 }, (_, n) => n));
  });

  test("a batch stays within batchBytes (UTF-8 bytes of the body); a bigger envelope still goes, alone", async () => {
    service.on(JOIN, json(201, joined()));
    const bob = mailbox();
    service.on(SEND, bob, bob, bob, bob);
    const session = await start({ batchBytes: 130 });

    // {"type":"x","data":"éééééééééé"} is 32 characters but 42 bytes; two fill a body of 100 bytes, three 143.
    const small = "é".repeat(10);
    const sent = [small, small, small, "x".repeat(300), small].map((data) => session.send("bob", "x", data));
    assert.deepEqual((await Promise.all(sent)).map(({ seq }) => seq), [1, 2, 3, 4, 5]);
    const requests = service.to(SEND);
    assert.deepEqual(requests.map((r) => r.body.messages.length), [2, 1, 1, 1]);
    assert.deepEqual(requests.map((r) => r.bytes), [100, 57, 337, 57]);
  });

  test("413 for a batch sends its envelopes again in smaller batches; 413 for one envelope rejects it", async () => {
    service.on(JOIN, json(201, joined()));
    const bob = mailbox({ maxBytes: 2500 });
    service.on(SEND, bob, bob, bob, bob);
    const session = await start();

    const kilobyte = "x".repeat(1000 - '{"type":"x","data":""}'.length);
    const sent = [1, 2, 3, 4].map(() => session.send("bob", "x", kilobyte));
    assert.deepEqual((await Promise.all(sent)).map(({ seq }) => seq), [1, 2, 3, 4]);
    const requests = service.to(SEND);
    assert.deepEqual(requests.map((r) => r.body.messages.length), [4, 2, 2]);
    assert.equal(new Set(requests.map(keyOf)).size, 3, "each batch has a key of its own");

    await assert.rejects(session.send("bob", "x", "y".repeat(3000)), { code: "payload_too_large", status: 413 });
  });

  test("a failed batch is retried with the same key and body; sends made meanwhile go next, with a new key", async () => {
    service.on(JOIN, json(201, joined()));
    const bob = mailbox({ next: 3 });
    service.on(SEND, networkDown, failure(503, "backend_unavailable"), bob, bob);
    const session = await start();

    const first = session.send("bob", "candidate", { c: 1 });
    await service.waitFor(SEND, 1);
    const later = [session.send("bob", "candidate", { c: 2 }), session.send("bob", "candidate", { c: 3 })];
    assert.deepEqual(await Promise.all([first, ...later]), [{ seq: 3 }, { seq: 4 }, { seq: 5 }]);

    const requests = service.to(SEND);
    assert.deepEqual(requests.map(dataOf), [[{ c: 1 }], [{ c: 1 }], [{ c: 1 }], [{ c: 2 }, { c: 3 }]]);
    assert.equal(new Set(requests.slice(0, 3).map(keyOf)).size, 1);
    assert.notEqual(keyOf(requests[3]), keyOf(requests[0]));
  });

  test("429 mailbox_full is retried after Retry-After with the same key", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(SEND, failure(429, "mailbox_full", { "Retry-After": "0.012" }), mailbox());
    const session = await start();

    const started = performance.now();
    const sent = [session.send("bob", "chat", "hi"), session.send("bob", "chat", "there")];
    assert.deepEqual(await Promise.all(sent), [{ seq: 1 }, { seq: 2 }]);
    assert.ok(performance.now() - started >= 10, "waited for Retry-After");
    const requests = service.to(SEND);
    assert.equal(keyOf(requests[0]), keyOf(requests[1]));
    assert.deepEqual(requests.map(dataOf), [["hi", "there"], ["hi", "there"]]);
  });

  test("429 send_rate_limited is waited out and retried like mailbox_full: a batch is refused whole", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(SEND, failure(429, "send_rate_limited", { "Retry-After": "0.004" }), mailbox());
    const session = await start();

    const sent = [session.send("bob", "chat", "hi"), session.send("bob", "chat", "there")];
    assert.deepEqual(await Promise.all(sent), [{ seq: 1 }, { seq: 2 }]);
    const requests = service.to(SEND);
    assert.equal(requests.length, 2);
    assert.equal(keyOf(requests[0]), keyOf(requests[1]));
  });

  test("429 mailbox_full past sendRetries rejects every send of the batch with code mailbox_full", async () => {
    service.on(JOIN, json(201, joined()));
    const full = failure(429, "mailbox_full", { "Retry-After": "0.001" });
    service.on(SEND, full, full, full, mailbox());
    const session = await start({ sendRetries: 2 });

    const sent = [session.send("bob", "chat", "hi"), session.send("bob", "chat", "there")];
    for (const send of sent) await assert.rejects(send, { code: "mailbox_full", status: 429, retryAfter: 0.001 });
    assert.equal(service.to(SEND).length, 3);
  });

  test("a 4xx other than 429 rejects every send of the batch at once; later sends still go", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(SEND, failure(400, "bad_field"), mailbox());
    const session = await start();

    const refused = [session.send("bob", "chat"), session.send("bob", "peer-left", "reserved")];
    for (const send of refused) await assert.rejects(send, { code: "bad_field", status: 400 });
    assert.equal(service.to(SEND).length, 1);
    assert.deepEqual(dataOf(service.to(SEND)[0]), [null, "reserved"]);
    assert.deepEqual(await session.send("bob", "chat", "after"), { seq: 1 });
  });

  test("an answer without a seq for every envelope rejects the batch's sends", async () => {
    service.on(JOIN, json(201, joined()));
    service.on(SEND, json(202, { seqs: [1] }));
    const session = await start();

    const sent = [session.send("bob", "chat", 1), session.send("bob", "chat", 2)];
    const results = await Promise.allSettled(sent);
    assert.deepEqual(results.map((r) => r.status), ["rejected", "rejected"]);
    assert.match(results[0].reason.message, /malformed send response/);
  });

  test("sends still queued when the session leaves reject with code closed", async () => {
    service.on(JOIN, json(201, joined()));
    const first = held(mailbox());
    service.on(SEND, first.responder);
    service.on("DELETE /rooms/r1/peers/alice", () => new Response(null, { status: 204 }));
    const session = await start();

    const inFlight = session.send("bob", "chat", "a");
    await service.waitFor(SEND, 1);
    const queued = session.send("bob", "chat", "b");
    await session.leave();
    first.release();
    assert.deepEqual(await inFlight, { seq: 1 });
    await assert.rejects(queued, { code: "closed" });
    assert.equal(service.to(SEND).length, 1);
  });

  test("broadcasts are batched like sends; each resolves to its batch's delivery report", async () => {
    service.on(JOIN, json(201, joined()));
    const first = held(json(202, { delivered_to: ["bob"], mailbox_full: [] }));
    service.on(BROADCAST, first.responder, json(202, { delivered_to: ["bob"], mailbox_full: ["carol"] }));
    const session = await start();

    const hello = session.broadcast("hello", { v: 1 });
    await service.waitFor(BROADCAST, 1);
    const later = [session.broadcast("chat", "a"), session.broadcast("chat", "b")];
    assert.equal(service.to(BROADCAST).length, 1);
    first.release();
    assert.deepEqual(await hello, { delivered_to: ["bob"], mailbox_full: [] });
    const report = { delivered_to: ["bob"], mailbox_full: ["carol"] };
    assert.deepEqual(await Promise.all(later), [report, report]);

    const requests = service.to(BROADCAST);
    assert.deepEqual(requests.map((r) => r.body.messages), [
      [{ type: "hello", data: { v: 1 } }],
      [{ type: "chat", data: "a" }, { type: "chat", data: "b" }],
    ]);
    assert.ok(keyOf(requests[0]) && keyOf(requests[1]) && keyOf(requests[0]) !== keyOf(requests[1]));
  });
});
